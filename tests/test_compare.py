"""`posttrain compare` end to end on two tiny saved models, through the command line."""

from __future__ import annotations

import html
import json
import re

import pytest
from typer.testing import CliRunner

from conftest import save_tiny_llama
from posttrain.cli import _register, app
from posttrain.compare import model_names, spread

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer):
    """A second tiny model (another seed, so its answers differ from tiny_model_dir's)."""
    import torch

    torch.set_num_threads(1)
    return save_tiny_llama(tmp_path_factory.mktemp("other_model"), tiny_tokenizer, seed=1)


def answer_rows(page: str) -> int:
    body = page.split('<table id="answers">', 1)[1].split("</table>", 1)[0]
    return len(re.findall(r"<tr>", body)) - 1  # less the header row


def test_compare_world_prompts_with_the_gold_judge(tiny_model_dir, other_model_dir, tmp_path):
    run_dir = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", f"models=[{tiny_model_dir},{other_model_dir}]", "names=[first,second]",
                                 "n=9", "max_new_tokens=6", "families=[arithmetic,reverse,harmful]",
                                 f"run_dir={run_dir}"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "compare.json").read_text(encoding="utf-8"))
    assert len(data["rows"]) == 9 and {r["family"] for r in data["rows"]} == {"arithmetic", "reverse", "harmful"}
    assert data["settings"]["judge"] == "gold" and data["settings"]["baseline"] == "first"
    first, second = data["summary"]
    assert first["name"] == "first" and first["vs_baseline"] is None
    vs = second["vs_baseline"]
    verdicts = [r["verdicts"]["second"] for r in data["rows"]]
    assert vs["n"] == 9 and vs["win_rate"] == pytest.approx(sum(verdicts) / 9)
    assert vs["wins"] + vs["ties"] + vs["losses"] == 9
    # The gold judge's verdicts follow the per-answer gold scores written beside them.
    for r in data["rows"]:
        s1, s2 = r["scores"]["first"], r["scores"]["second"]
        assert r["verdicts"]["second"] == (1.0 if s2 > s1 else 0.0 if s2 < s1 else 0.5)
        assert set(r["answers"]) == {"first", "second"}
    assert second["mean_score"] == pytest.approx(sum(r["scores"]["second"] for r in data["rows"]) / 9)
    page = (run_dir / "compare.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and answer_rows(page) == 9
    assert 'id="summary"' in page and "baseline" in page
    assert (run_dir / "config.yaml").exists()
    assert "Against first on 9 prompts" in result.output


def test_compare_prompt_file_with_an_llm_judge_escapes_text(tiny_model_dir, other_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "<script>alert('x')</script> & fox?"},
             {"messages": [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "dog?"}]},
             {"messages": [{"role": "user", "content": "Add 12 and 7."}, {"role": "assistant", "content": "19."}]},
             {"prompt": "left out by n"}]
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    run_dir = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", f"models=[{tiny_model_dir},{other_model_dir}]", f"prompts={prompts}",
                                 "n=3", "max_new_tokens=5", "judge=llm", f"judge_model={tiny_model_dir}",
                                 f"run_dir={run_dir}"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "compare.json").read_text(encoding="utf-8"))
    assert len(data["rows"]) == 3 and data["settings"]["judge"].startswith("llm:")
    assert data["rows"][2]["prompt"] == [{"role": "user", "content": "Add 12 and 7."}]  # its answer dropped
    assert data["rows"][0]["id"].endswith("prompts.jsonl:1")
    names = data["settings"]["names"]
    assert names[0] != names[1]  # two folders, told apart by their paths
    assert all(0.0 <= r["verdicts"][names[1]] <= 1.0 for r in data["rows"])
    page = (run_dir / "compare.html").read_text(encoding="utf-8")
    assert "<script>" not in page and html.escape("<script>alert('x')</script> & fox?") in page
    assert answer_rows(page) == 3


def test_compare_refuses_gold_without_world_prompts(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n', encoding="utf-8")
    result = runner.invoke(app, ["compare", f"models=[{tiny_model_dir}]", f"prompts={prompts}", "judge=gold",
                                 f"run_dir={tmp_path / 'cmp'}"])
    assert result.exit_code == 2
    assert "judge=gold scores the embedded world's tasks only" in result.output


def test_bad_prompt_line_names_file_and_line(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n{"prompt": \n', encoding="utf-8")
    result = runner.invoke(app, ["compare", f"models=[{tiny_model_dir}]", f"prompts={prompts}",
                                 f"run_dir={tmp_path / 'cmp'}"])
    assert result.exit_code == 2 and f"{prompts}:2" in result.output and "invalid JSON" in result.output


def test_model_names_and_spread():
    assert model_names(["runs/sft/final", "runs/dpo/final", "world"], []) == ["sft/final", "dpo/final", "world"]
    assert model_names(["a/x", "b/x"], ["one", "two"]) == ["one", "two"]
    with pytest.raises(Exception, match="one per model"):
        model_names(["a", "b"], ["one"])
    assert spread(10, 4) == [3, 3, 2, 2] and sum(spread(7, 3)) == 7


def test_compare_with_a_judge_behind_the_teacher_interface(tiny_model_dir, other_model_dir, tmp_path):
    """judge=teacher: any chat model asked both orders (here the world's judge, without position bias, so
    where the gold reward cannot tell the answers apart, each order is a coin flip), cached in run_dir."""
    run_dir = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", f"models=[{tiny_model_dir},{other_model_dir}]", "names=[first,second]",
                                 "n=12", "max_new_tokens=6", "families=[arithmetic,reverse,harmful,chat_rule]",
                                 f"run_dir={run_dir}", "judge=teacher", "judge_teacher.world.position_bias=0"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "compare.json").read_text(encoding="utf-8"))
    assert data["settings"]["judge"].startswith("judge:world-teacher") and len(data["rows"]) == 12
    assert all(r["verdicts"]["second"] in (0.0, 0.5, 1.0) for r in data["rows"])
    asked = sum(1 if r["answers"]["first"] == r["answers"]["second"] else 2 for r in data["rows"])
    assert len(list((run_dir / "judge-cache").glob("*/*.json"))) == asked  # both orders (one when the answers match)
