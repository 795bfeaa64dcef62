"""Every mistake a user can make ends in a message, never a traceback (issue 21).

Each case runs the real command line in-process: it must exit with status 2 (a user error; 1 is left
to bugs), print one message that says where (file:line:field, the override as typed, the path) and
what to do, and no traceback. Nothing here needs a model to load: the checks run before it.
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from posttrain.cli import _register, app

_register()
runner = CliRunner()
TERSE = ["train.progress=false", "train.tensorboard=false", "samples=0", "train.save_every=0"]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def chats(path, n):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                          {"role": "assistant", "content": f"It is {i + 1}."}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_args(model, data, run_dir, *extra):
    return ["sft", f"model.name_or_path={model}", f"data.train=[{data}]", f"train.run_dir={run_dir}",
            "train.batch_size=4", "train.max_steps=2", *TERSE, *extra]


@pytest.mark.parametrize("case", ["empty", "all_skipped", "all_dropped", "fewer_than_a_batch"])
def test_no_usable_record_left_is_a_message_with_the_counts_and_the_setting(case, tiny_model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    extra = []
    if case == "empty":
        data.write_text("", encoding="utf-8")
    elif case == "all_skipped":
        data.write_text('{"messages": [{"role": "bot", "content": "x"}]}\n' * 3, encoding="utf-8")
        extra = ["data.skip_invalid=true"]
    elif case == "all_dropped":
        chats(data, 6)
        extra = ["data.max_length=4", "data.overflow=drop"]
    else:
        chats(data, 2)
    result = run(*sft_args(tiny_model_dir, data, tmp_path / "run", *extra))
    assert result.exit_code == 2, result.output
    assert "one optimizer step takes 4 (train.batch_size 4" in result.output
    if case == "fewer_than_a_batch":
        assert "only 2 usable examples" in result.output and "lower train.batch_size to 2 or less" in result.output
    else:
        assert "no usable examples are left" in result.output
    if case == "all_skipped":
        assert "skipped 3: 3 unknown_role" in result.output
    if case == "all_dropped":
        assert "6 longer than max_length" in result.output


def test_a_run_dir_under_a_file_is_a_message(tiny_model_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = run(*sft_args(tiny_model_dir, chats(tmp_path / "d.jsonl", 8), tmp_path / "afile" / "run"))
    assert result.exit_code == 2 and "train.run_dir: cannot create" in result.output
    assert "afile is a file, not a folder" in result.output


def test_overflow_error_names_the_file_and_line(tiny_model_dir, tmp_path):
    data = chats(tmp_path / "d.jsonl", 8)
    result = run(*sft_args(tiny_model_dir, data, tmp_path / "run", "data.max_length=4", "data.overflow=error"))
    assert result.exit_code == 2 and f"{data}:1: " in result.output and "data.max_length=4" in result.output


def test_malformed_json_names_the_column_of_the_mistake(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]\n', encoding="utf-8")
    result = run(*sft_args(tiny_model_dir, data, tmp_path / "run"))
    assert result.exit_code == 2 and f"{data}:1: invalid JSON: Expecting ',' delimiter (column 49)" in result.output


def test_a_mistyped_override_is_blamed_on_the_command_line_not_the_file(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  max_steps: 3\n", encoding="utf-8")
    result = run("sft", "--config", config, "train.max_stpes=3")
    assert result.exit_code == 2
    assert "command-line override 'train.max_stpes=3'" in result.output and "Did you mean 'max_steps'" in result.output
    assert f"{config}" not in result.output
    result = run("sft", "--config", config, "train.batch_size=many")
    assert result.exit_code == 2 and "override 'train.batch_size=many'" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stpes: 3\n", encoding="utf-8")
    result = run("sft", "--config", bad)
    assert result.exit_code == 2 and f"{bad}.train: unknown key 'max_stpes'" in result.output


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_max_steps_must_be_positive_or_minus_one(steps):
    result = run("sft", f"train.max_steps={steps}")
    assert result.exit_code == 2
    assert f"config.train.max_steps: {steps} is not a number of steps" in result.output and "-1" in result.output


def test_a_missing_local_model_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    data = chats(tmp_path / "d.jsonl", 8)
    for name in (tmp_path / "nope", "org/not-downloaded"):
        result = run(*sft_args(name, data, tmp_path / "run"))
        assert result.exit_code == 2 and "model.name_or_path" in result.output, result.output
    assert time.perf_counter() - start < 10


def test_debug_shows_the_traceback_of_a_user_error():
    result = runner.invoke(app, ["--debug", "sft", "train.max_steps=0"])
    assert result.exit_code == 2 and "Traceback" in result.output
    from posttrain.cli import DEBUG

    DEBUG["traceback"] = False


def test_a_python_reward_function_is_imported_from_the_working_directory(tmp_path, monkeypatch):
    from posttrain.scorers import python_function as _function
    from posttrain.training.loop import TrainingError

    (tmp_path / "my_rewards_for_test.py").write_text(
        "def brevity(prompts, responses):\n    return [-len(r) for r in responses]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    fn = _function("my_rewards_for_test:brevity")
    assert fn([[{"role": "user", "content": "hi"}]], ["abc"]) == [-3]
    with pytest.raises(TrainingError, match=r"cannot import module 'not_here_at_all'.*not_here_at_all\.py.*PYTHONPATH"):
        _function("not_here_at_all:fn")
    with pytest.raises(TrainingError, match="has no function 'missing'"):
        _function("my_rewards_for_test:missing")
    help_text = run("ppo", "--help").output
    assert "list of {\"role\", \"content\"} messages" in help_text and "working directory" in help_text
