"""`posttrain pretrain` end to end on a tiny model: packing, the run folder, gradient accumulation,
kill -9 and resume, two processes (gloo DDP) against one, and a NaN that stops the run cleanly.

One uninterrupted in-process run is the reference for every comparison.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.config import load_config
from posttrain.recipes.config import PretrainConfig
from posttrain.training.metrics import read_metrics

from conftest import TINY_TEXT

STEPS = 40
SAVE_EVERY = 10


def _args(docs: Path, run_dir: Path, batch_size: int = 8, grad_accum: int = 1) -> list[str]:
    return [
        f"data.train=[{docs}]", f"train.run_dir={run_dir}",
        "arch.hidden_size=32", "arch.num_layers=2", "arch.num_heads=4", "seq_len=32", "vocab_size=400",
        f"train.max_steps={STEPS}", f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
        f"train.save_every={SAVE_EVERY}", "train.keep_checkpoints=2", "train.warmup_steps=5",
        "train.lr=3e-3", "train.tensorboard=false", "train.progress=false",
    ]


def _losses(run_dir: Path) -> dict[int, float]:
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in {run_dir}/metrics.jsonl"
    return {r["step"]: r["loss"] for r in records}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)


# The installed console script (what users run).
POSTTRAIN = str(Path(sys.executable).with_name("posttrain"))


def _env() -> dict[str, str]:
    # One thread per process: reproducible sums and no fight over the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(TINY_TEXT):
            f.write(json.dumps({"text": f"Note {i}. {text}"}) + "\n")
    return path


def _pretrain(docs: Path, run_dir: Path, **kw) -> Path:
    from posttrain.recipes.pretrain import pretrain

    torch.set_num_threads(1)
    return pretrain(load_config(PretrainConfig, None, _args(docs, run_dir, **kw)))


@pytest.fixture(scope="module")
def reference(docs, tmp_path_factory) -> Path:
    """An uninterrupted run with batch 8 on one process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _pretrain(docs, run_dir)
    return run_dir


# --- packing ------------------------------------------------------------------------------

def test_pack_documents_joins_with_eos_and_counts_the_dropped_tail():
    from posttrain.recipes.pretrain import pack_documents

    chunks, report = pack_documents([[1, 2, 3], [4], [5, 6, 7, 8, 9]], seq_len=4, eos_id=0)
    assert chunks.tolist() == [[1, 2, 3, 0], [4, 0, 5, 6], [7, 8, 9, 0]]
    assert (report.documents, report.tokens, report.chunks, report.dropped_tokens) == (3, 12, 3, 0)
    chunks, report = pack_documents([[1, 2, 3], [4, 5]], seq_len=4, eos_id=0)
    assert chunks.tolist() == [[1, 2, 3, 0]] and report.dropped_tokens == 3
    assert "3 tokens at the end" in report.summary()


# --- the reference run -------------------------------------------------------------------

def test_run_folder_has_config_metrics_checkpoints_and_a_plain_hf_model(reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = load_config(PretrainConfig, reference / "config.yaml")  # the saved config reads back
    assert cfg.train.max_steps == STEPS and cfg.arch.hidden_size == 32
    losses = _losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (38, 39, 40)])
    assert last < first - 1.0, f"the loss should fall on this tiny repetitive text: {first:.3f} -> {last:.3f}"
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step-000030", "step-000040"]
    assert json.loads((reference / "checkpoints/step-000040/state.json").read_text())["step"] == STEPS

    model = AutoModelForCausalLM.from_pretrained(reference / "final")
    tokenizer = AutoTokenizer.from_pretrained(reference / "final")
    assert tokenizer.chat_template and model.config.vocab_size == len(tokenizer)
    ids = tokenizer("Note 3. The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()


def test_evaluation_logs_held_out_loss_and_the_copying_probe(docs, tmp_path):
    from posttrain.recipes.pretrain import pretrain

    args = _args(docs, tmp_path / "run") + [f"data.eval=[{docs}]", "train.max_steps=10", "train.eval_every=5",
                                             "train.save_every=0"]
    pretrain(load_config(PretrainConfig, None, args))
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    # A 10-step model has no induction head: it gains next to nothing on a span's second appearance.
    assert all(math.isfinite(r["eval_copying_gain"]) and abs(r["eval_copying_gain"]) < 1.0 for r in evals)
    off = load_config(PretrainConfig, None, args + [f"train.run_dir={tmp_path / 'off'}", "copying_probe=false"])
    pretrain(off)
    assert all("eval_copying_gain" not in r for r in read_metrics(tmp_path / "off" / "metrics.jsonl"))


@pytest.mark.parametrize("batch_size, grad_accum", [(2, 4), (4, 2)])
def test_grad_accumulation_matches_batch_8(reference, docs, tmp_path, batch_size, grad_accum):
    """4 micro-batches of 2 and 2 micro-batches of 4 give batch 8's loss curve and weights."""
    _pretrain(docs, tmp_path / "accum", batch_size=batch_size, grad_accum=grad_accum)
    ref, acc = _losses(reference), _losses(tmp_path / "accum")
    assert ref.keys() == acc.keys()
    np.testing.assert_allclose([acc[s] for s in ref], [ref[s] for s in ref], rtol=0, atol=1e-5)
    _assert_same_weights(tmp_path / "accum", reference, atol=1e-5)


# --- interruptions ------------------------------------------------------------------------

def _latest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")]
    return max(steps, default=0)


def test_kill_9_then_resume_auto_equals_an_uninterrupted_run(reference, docs, tmp_path):
    run_dir = tmp_path / "killed"
    command = [POSTTRAIN, "pretrain", *_args(docs, run_dir)]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            saved = _latest_checkpoint_step(run_dir)
            logged = max(_losses(run_dir), default=0) if saved else 0
            if saved and logged >= saved + 3:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    saved = _latest_checkpoint_step(run_dir)
    assert max(_losses(run_dir)) > saved and not (run_dir / "final").exists()
    # What a kill during a save leaves behind: it must be ignored and removed.
    partial = run_dir / "checkpoints" / ".tmp-step-000099"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")

    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {run_dir / 'checkpoints' / f'step-{saved:06d}'}" in result.stderr.replace("\n", "")
    assert not partial.exists()
    ref, resumed = _losses(reference), _losses(run_dir)
    assert sorted(resumed) == sorted(ref)
    np.testing.assert_allclose([resumed[s] for s in ref], [ref[s] for s in ref], rtol=0, atol=1e-6)
    _assert_same_weights(run_dir, reference, atol=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_leaves_a_resumable_checkpoint(
        reference, docs, tmp_path, monkeypatch, capsys):
    import posttrain.recipes.pretrain as recipe

    bad_step = 15
    calls = {"n": 0}
    real_loss = recipe.lm_loss_sum

    def poisoned(model, input_ids):
        calls["n"] += 1  # batch 8, no accumulation: one call per step
        loss, metrics = real_loss(model, input_ids)
        return (loss * float("nan") if calls["n"] == bad_step else loss), metrics

    monkeypatch.setattr(recipe, "lm_loss_sum", poisoned)
    run_dir = tmp_path / "nan"
    from typer.testing import CliRunner

    from posttrain.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["pretrain", *_args(docs, run_dir)])
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert f"step {bad_step}: the loss is nan" in message
    assert "step-000010" in message and "lower train.lr" in message and "check the data" in message
    assert max(_losses(run_dir)) == bad_step - 1
    assert _latest_checkpoint_step(run_dir) == 10 and not (run_dir / "final").exists()

    monkeypatch.setattr(recipe, "lm_loss_sum", real_loss)
    _pretrain(docs, run_dir)  # resume: auto from step 10
    ref, resumed = _losses(reference), _losses(run_dir)
    np.testing.assert_allclose([resumed[s] for s in ref], [ref[s] for s in ref], rtol=0, atol=1e-6)
    _assert_same_weights(run_dir, reference, atol=1e-6)


# --- two processes ------------------------------------------------------------------------

def test_two_gloo_processes_match_one_process_with_the_same_global_batch(reference, docs, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               POSTTRAIN, "pretrain", *_args(docs, run_dir, batch_size=2, grad_accum=2)]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((run_dir / "checkpoints/step-000040/state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 8
    ref, ddp = _losses(reference), _losses(run_dir)
    assert sorted(ddp) == sorted(ref)
    np.testing.assert_allclose([ddp[s] for s in ref], [ref[s] for s in ref], rtol=0, atol=1e-5)
    _assert_same_weights(run_dir, reference, atol=1e-5)
