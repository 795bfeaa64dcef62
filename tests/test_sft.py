"""`posttrain sft` on a tiny model: the target-only loss, packed = padded runs, resume, LoRA and its
merged export, the exported stop token, two processes against one; and SFT on the embedded world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posttrain.config import load_config
from posttrain.data.chat import render_chat
from posttrain.data.collate import pad_collate
from posttrain.data.packing import pack_examples
from posttrain.evaluation.scoring import difference_se
from posttrain.recipes.config import SFTConfig
from posttrain.training.metrics import read_metrics

STEPS = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _conversations(n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        turns = [{"role": "user", "content": f"What is {i} plus {i % 7}?"},
                 {"role": "assistant", "content": f"{i} plus {i % 7} is {i + i % 7}."}]
        if i % 3 == 0:  # some multi-turn, some with a system rule
            turns = [{"role": "system", "content": "Answer in capitals."}, *turns,
                     {"role": "user", "content": "And twice that?"},
                     {"role": "assistant", "content": f"TWICE IS {2 * (i + i % 7)}."}]
        out.append(turns)
    return out


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chats")
    for name, convs in (("train.jsonl", _conversations(96)), ("eval.jsonl", _conversations(12)[::-1])):
        with (folder / name).open("w") as f:
            for c in convs:
                f.write(json.dumps({"messages": c}) + "\n")
    return folder


def _args(model_dir: Path, chats: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"data.train=[{chats / 'train.jsonl'}]",
            f"data.eval=[{chats / 'eval.jsonl'}]", f"train.run_dir={run_dir}", "data.max_length=128",
            f"train.max_steps={STEPS}", "train.batch_size=6", "train.grad_accum=2", "train.save_every=4",
            "train.keep_checkpoints=0", "train.lr=3e-3", "train.warmup_steps=2", "train.eval_every=4",
            "train.tensorboard=false", "train.progress=false", "samples=2", "sample_max_tokens=8", *extra]


def _sft(*args: str) -> Path:
    from posttrain.recipes.sft import sft

    return sft(load_config(SFTConfig, None, list(args)))


def _losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


@pytest.fixture(scope="module")
def packed_run(tiny_model_dir, chats, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("packed") / "run"
    _sft(*_args(tiny_model_dir, chats, run_dir, "packing=true"))
    return run_dir


# --- the loss -----------------------------------------------------------------------------

def _reference_nll(lm, batch) -> torch.Tensor:
    """Summed next-token cross-entropy from the model's full logits (what TargetNLL must equal)."""
    logits = lm(**batch.model_inputs()).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("lora", [False, True])
def test_target_only_nll_equals_full_logits_loss_and_gradients(tiny_tokenizer, tiny_model, lora):
    from posttrain.models.config import LoraConfig
    from posttrain.models.lora import apply_lora
    from posttrain.recipes.sft import TargetNLL

    lm = apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8)) if lora else tiny_model
    if lora:  # a fresh adapter is a no-op (B = 0); move it so the test sees the adapter's effect
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    examples = [render_chat(tiny_tokenizer, c) for c in _conversations(7)]
    for batch in (pad_collate(examples, tiny_tokenizer.pad_token_id),
                  pack_examples(examples, tiny_tokenizer.pad_token_id, row_length=128)):
        for chunk in (0, 5):
            lm.zero_grad()
            ours = TargetNLL(lm, chunk)(labels=batch.labels, **batch.model_inputs())
            ours.backward()
            grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}
            lm.zero_grad()
            ref = _reference_nll(lm, batch)
            ref.backward()
            torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
            for n, p in lm.named_parameters():
                if p.requires_grad:
                    torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


# --- runs ---------------------------------------------------------------------------------

def test_run_folder_samples_and_export(packed_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    cfg = load_config(SFTConfig, packed_run / "config.yaml")
    assert cfg.packing and cfg.train.max_steps == STEPS
    losses = _losses(packed_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5, f"the loss should fall: {losses}"
    assert sorted(_losses(packed_run, "eval_loss")) == [4, 8]
    samples = [r["samples"] for r in read_metrics(packed_run / "metrics.jsonl") if "samples" in r]
    assert len(samples) == 2 and all(len(s) == 2 and "completion" in s[0] for s in samples)

    final = packed_run / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    eos = GenerationConfig.from_pretrained(final).eos_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in eos and tokenizer.eos_token_id in eos, eos  # ChatML turns end at <|im_end|>
    assert model.generation_config.eos_token_id == eos


def test_packed_and_padded_runs_have_the_same_loss_curve(packed_run, tiny_model_dir, chats, tmp_path):
    padded = tmp_path / "padded"
    _sft(*_args(tiny_model_dir, chats, padded, "packing=false", "group_by_length=false"))
    a, b = _losses(packed_run), _losses(padded)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    ea, eb = _losses(packed_run, "eval_loss"), _losses(padded, "eval_loss")
    np.testing.assert_allclose([eb[s] for s in ea], [ea[s] for s in ea], rtol=0, atol=1e-5)


def test_resume_from_a_checkpoint_reproduces_the_run(packed_run, tiny_model_dir, chats, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "resumed"
    shutil.copytree(packed_run, run_dir)
    # As if the run had died after its step-4 checkpoint: later checkpoints and the export are gone.
    shutil.rmtree(run_dir / "checkpoints" / "step-000008")
    shutil.rmtree(run_dir / "final")
    _sft(*_args(tiny_model_dir, chats, run_dir, "packing=true"))
    assert f"resumed from {run_dir / 'checkpoints' / 'step-000004'}" in capsys.readouterr().err.replace("\n", "")
    a, b = _losses(packed_run), _losses(run_dir)
    assert sorted(b) == sorted(a)
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-6)


def test_lora_run_exports_a_merged_model_plain_transformers_loads(tiny_model_dir, chats, tmp_path):
    from transformers import AutoModelForCausalLM

    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm

    run_dir = tmp_path / "lora"
    final = _sft(*_args(tiny_model_dir, chats, run_dir, "model.lora.enabled=true", "model.lora.r=8",
                        "model.lora.alpha=16", "train.lr=1e-2"))
    assert not (final / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(final)
    base = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)), for_training=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert (merged(ids).logits - base(ids).logits).abs().max() > 1e-3  # the adapter was merged in
    losses = _losses(run_dir)
    assert losses[STEPS] < losses[1]


def test_two_gloo_processes_match_one(packed_run, tiny_model_dir, chats, tmp_path):
    run_dir = tmp_path / "ddp"
    args = _args(tiny_model_dir, chats, run_dir, "packing=true", "train.batch_size=3")
    posttrain = str(Path(sys.executable).with_name("posttrain"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               posttrain, "sft", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a, b = _losses(packed_run), _losses(run_dir)
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)


# --- the embedded world -------------------------------------------------------------------

KNOWLEDGE = ("fact_lookup",)
"""Trained families whose answers the base model knows from pretraining: at least 80% after SFT."""
SKILLS = ("arithmetic", "multistep_arithmetic", "reverse", "sorting", "summarization", "chat_rule")
"""Trained families that need a skill applied to the question: at least 50% after SFT."""
WORLD_N = 100
"""Held-out examples per family (the default config's eval_exact_match)."""


@pytest.fixture(scope="module")
def world_scores(world_sft) -> tuple[dict[str, float], dict[str, float], str]:
    """(base zero-shot, SFT zero-shot chat) held-out exact match per family after configs/sft/world.yaml."""
    from posttrain.evaluation.run import evaluate_suite
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.world.tasks import FAMILIES

    results = json.loads((world_sft / "eval" / "results.json").read_text())["results"]
    tuned = {f: results[f]["zero_shot"]["accuracy"] for f in FAMILIES}
    base_cfg = ModelConfig(name_or_path="world")
    report = evaluate_suite(load_causal_lm(base_cfg, for_training=False), load_tokenizer(base_cfg),
                            strategies=["zero_shot"], n=WORLD_N, seed=0)
    base = {f: report.accuracy(f, "zero_shot") for f in FAMILIES}
    table = "\n".join(f"{f:22s} base {100 * base[f]:5.1f}  sft {100 * tuned[f]:5.1f}" for f in FAMILIES)
    return base, tuned, table


def test_world_sft_beats_the_base_model_on_every_trained_family_it_has_not_mastered(world_scores):
    from posttrain.world.tasks import TRAIN_FAMILIES

    base, tuned, table = world_scores
    for f in KNOWLEDGE:
        assert tuned[f] >= 0.8, f"{f}: below 80%\n{table}"
    for f in TRAIN_FAMILIES:
        if base[f] < 0.8:  # the base model answers zero-shot under 80%: SFT must beat it beyond noise
            assert tuned[f] - base[f] > 2 * difference_se(tuned[f], WORLD_N, base[f], WORLD_N), \
                f"{f}: not above the base model's zero-shot\n{table}"
        else:  # facts and simple sums the base already answers (87-98%): SFT must not lose them
            assert tuned[f] >= base[f] - 2 * difference_se(tuned[f], WORLD_N, base[f], WORLD_N), \
                f"{f}: below the base model's zero-shot\n{table}"
    assert tuned["classification"] > base["classification"], f"held-out classification\n{table}"


@pytest.mark.xfail(strict=False, reason=(
    "issue 23 open: on the base model of 2026-12-07 (copying gain +2.6) every skill family but chat_rule "
    "passes (reverse 97-98%, summarization 72-76%, sums 100%), chat_rule stays at 46-50% (the capitals and "
    "lowercase rules), and the held-out families do not transfer: uppercase 0%, classification 5-6% (base 4%)"))
def test_world_sft_reaches_the_skill_bar_and_generalizes_to_every_held_out_family(world_scores):
    from posttrain.world.tasks import HELDOUT_FAMILIES

    base, tuned, table = world_scores
    for f in SKILLS:
        assert tuned[f] >= 0.5, f"{f}: below 50%\n{table}"
    for f in HELDOUT_FAMILIES:
        assert tuned[f] > base[f], f"held-out {f}: not above the base model's zero-shot\n{table}"


def test_prompt_completion_records_train_the_completion_and_eos(tiny_tokenizer, capsys):
    from types import SimpleNamespace

    from posttrain.data.records import PromptCompletion
    from posttrain.recipes.sft import prompt_completion_examples

    cfg = load_config(SFTConfig, None, ["data.max_length=12", "data.overflow=drop"])
    ctx = SimpleNamespace(print=print)
    records = [PromptCompletion("Add 12 and 7.", " The answer is 19."), PromptCompletion("x " * 20, "y")]
    examples = prompt_completion_examples(tiny_tokenizer, records, cfg, ctx, "pc.jsonl")
    assert len(examples) == 1  # the second is longer than max_length and dropped, and that is said
    assert "1 longer than max_length" in capsys.readouterr().out
    ex = examples[0]
    taught = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
    assert taught[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(taught[:-1]) == " The answer is 19."
