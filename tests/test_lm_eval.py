"""lm-evaluation-harness interop: world tasks exported as lm-eval tasks score as `posttrain eval` does.

One lm-eval run (in-process, offline, the shipped base model) covers plain multiple choice on four
families, chat multiple choice with two shots in the context, and zero-shot generation; the same
examples go through posttrain's evaluate_suite (what `posttrain eval` runs).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")

MC_FAMILIES = ("fact_lookup", "arithmetic", "sorting", "classification")
GEN_FAMILIES = ("arithmetic", "sorting")
N_MC, N_CHAT, N_GEN = 60, 30, 20


@pytest.fixture(scope="module")
def base():
    """The shipped base model: (folder, model, tokenizer), one thread."""
    import torch

    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.world import base_model_path

    try:
        path = base_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ModelConfig(name_or_path=str(path), device="cpu", dtype="float32")
    yield path, load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm_eval_run(base, tmp_path_factory):
    """Export the tasks and score them with lm_eval.simple_evaluate: (results, samples by task and doc id)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from posttrain.evaluation.lm_eval_export import export_world_tasks

    path, _, tokenizer = base
    plain_dir, chat_dir = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("chat")
    tasks, skipped = export_world_tasks(plain_dir, MC_FAMILIES, ["mc"], n=N_MC, prefix="pw")
    assert skipped == []
    tasks += export_world_tasks(plain_dir, GEN_FAMILIES, ["gen"], n=N_GEN, tokenizer=tokenizer, prefix="pw")[0]
    tasks += export_world_tasks(chat_dir, ["fact_lookup"], ["mc"], n=N_CHAT, mc_shots=2, chat=True,
                                tokenizer=tokenizer, prefix="pc")[0]
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={path},dtype=float32", tasks=[t.name for t in tasks], device="cpu",
        batch_size=32, bootstrap_iters=0, log_samples=True,
        task_manager=TaskManager(include_path=[str(plain_dir), str(chat_dir)], include_defaults=False))
    samples = {name: {s["doc"]["id"]: s for s in rows} for name, rows in out["samples"].items()}
    return tasks, out["results"], samples


def _posttrain(base, **kwargs):
    from posttrain.evaluation.run import evaluate_suite

    _, model, tokenizer = base
    return evaluate_suite(model, tokenizer, batch_size=32, **kwargs)


def _logps(sample) -> list[float]:
    return [ll for ll, _ in sample["filtered_resps"]]


def test_exported_files_are_lm_eval_tasks(lm_eval_run):
    tasks, _, _ = lm_eval_run
    mc = next(t for t in tasks if t.name == "pw_sorting_mc")
    text = mc.yaml_path.read_text()
    for line in ("output_type: multiple_choice", "dataset_path: json", "doc_to_choice: choices",
                 "target_delimiter: ' '", f"test: {mc.data_path.resolve()}"):
        assert line in text, line
    doc = json.loads(mc.data_path.read_text().splitlines()[0])
    assert doc["context"].startswith("Q: ") and doc["context"].endswith("\nA:")
    assert doc["choices"][doc["label"]].endswith(doc["target"] + ".")
    gen = next(t for t in tasks if t.kind == "gen")
    assert "process_results: !function utils.process_results" in gen.yaml_path.read_text()
    assert (gen.yaml_path.parent / "utils.py").exists() and (gen.yaml_path.parent / "pw.yaml").exists()


def test_multiple_choice_accuracy_matches_posttrain_eval(base, lm_eval_run):
    _, results, samples = lm_eval_run
    report = _posttrain(base, families=MC_FAMILIES, strategies=["mc"], n=N_MC)
    for family in MC_FAMILIES:
        cell = report.cells[family]["mc_sum"]
        task = f"pw_{family}_mc"
        assert results[task]["acc,none"] * N_MC == pytest.approx(cell.correct, abs=1e-6), (family, results[task])
        for pred in cell.predictions:  # the very same log-probs, option by option
            assert _logps(samples[task][pred["id"]]) == pytest.approx(pred["logps"], abs=2e-3), pred["id"]


def test_chat_multiple_choice_with_shots_matches_posttrain_eval(base, lm_eval_run):
    _, results, samples = lm_eval_run
    report = _posttrain(base, families=["fact_lookup"], strategies=["mc"], n=N_CHAT, mc_shots=2, chat=True)
    cell = report.cells["fact_lookup"]["mc_sum"]
    assert results["pc_fact_lookup_mc"]["acc,none"] * N_CHAT == pytest.approx(cell.correct, abs=1e-6)
    for pred in cell.predictions:
        # lm-eval also scores the template's newline after "assistant": one constant per document.
        ours, theirs = pred["logps"], _logps(samples["pc_fact_lookup_mc"][pred["id"]])
        assert [t - theirs[0] for t in theirs] == pytest.approx([o - ours[0] for o in ours], abs=2e-3), pred["id"]


def test_generation_accuracy_matches_posttrain_eval_within_one_example(base, lm_eval_run):
    _, results, _ = lm_eval_run
    report = _posttrain(base, families=GEN_FAMILIES, strategies=["zero_shot"], n=N_GEN)
    for family in GEN_FAMILIES:
        ours = report.cells[family]["zero_shot"].correct
        theirs = results[f"pw_{family}_gen"]["acc,none"] * N_GEN
        assert abs(theirs - ours) <= 1, (family, theirs, ours)


def test_export_command_writes_tasks_and_reports_families_without_choices(tmp_path):
    from typer.testing import CliRunner

    from posttrain.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["export-lm-eval", f"out_dir={tmp_path}", "families=[harmful, sorting]",
                                      "n_per_family=5"])
    assert result.exit_code == 0, result.output
    assert "harmful mc: the family has no answer choices" in result.output
    assert len((tmp_path / "posttrain_world_sorting_mc.jsonl").read_text().splitlines()) == 5
    assert not (tmp_path / "posttrain_world_harmful_mc.yaml").exists()
    assert "posttrain_world_sorting_mc" in (tmp_path / "posttrain_world.yaml").read_text()
