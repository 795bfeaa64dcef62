"""Two processes train like one with the same global batch: reward, DPO (precomputed and live
reference), PPO and RLOO (rollouts split across the processes), and FSDP-sharded SFT and DPO;
and the per-row seeded sampling that lets PPO's processes split a step's prompts.

One ``torchrun --nproc_per_node 2`` launch runs every two-process job in sequence
(``tests/distributed_driver.py``: the processes start and import transformers once); while it
runs, this process trains the one-process references with twice the per-process batch
(``train.batch_size``, and ``prompts_per_step`` for PPO). Then each metrics.jsonl curve (losses,
rewards, accuracies, KL, entropies, held-out scores...) must agree step by step.

Tolerance: the processes compute the same sums in another order (gradients reduced across
processes, micro-batches of other shapes, so float32 reductions in another order), which moves
float32 results by ~1e-7 relative: measured, at most ~1e-6 on losses, rewards and KL after the
Adam steps, and ~6e-6 on summed sequence log-probs of magnitude ~80 (float32 rounding relative to
their size). A value passes within ``ATOL`` = 1e-5 or ``RTOL`` = 1e-6 of its size, a margin of 10
over both, while any real difference (an example seen twice, a per-process mean, another sample)
shows up as 1e-3 or more.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.data.writers import write_jsonl
from posttrain.training.metrics import read_metrics
from test_dpo import records

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL, RTOL = 1e-5, 1e-6
"""Difference allowed between a one-process and a two-process value: absolute, or relative to its size."""
DRIVER = Path(__file__).with_name("distributed_driver.py")
IGNORED = ("per_s", "time/", "epoch")
"""Metric keys that measure speed (they differ between runs) or bookkeeping."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def write_data(folder: Path) -> Path:
    """Preference pairs (train, and 5 held out), PPO prompts and SFT chats in ``folder``."""
    write_jsonl(records(40), folder / "pairs.jsonl")
    write_jsonl(records(5, offset=100), folder / "eval_pairs.jsonl")  # 3 + 2 per process: uneven shards
    with (folder / "prompts.jsonl").open("w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"Say {i} plus {i % 5}."}]}) + "\n")
    with (folder / "chats.jsonl").open("w") as f:
        for i in range(40):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i % 7}?"},
                                             {"role": "assistant", "content": f"It is {i + i % 7}."}]}) + "\n")
    return folder


def _common(model: Path, run_dir: Path, batch: int) -> list[str]:
    return [f"model.name_or_path={model}", f"train.run_dir={run_dir}", f"train.batch_size={batch}",
            "train.save_every=0", "train.tensorboard=false", "train.progress=false", "train.warmup_steps=1"]


def _jobs(model: Path, data: Path, root: Path, processes: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (recipe, overrides) at one or two processes; the global batch is the same."""
    b = 4 // processes  # examples per micro-batch on each process: 4 in one, 2 x 2 in two
    reward = ["train.max_steps=3", "train.grad_accum=2", "train.lr=3e-3", "train.eval_every=3", "eval_fraction=0.2",
              "normalize=data", "norm_prompts=8", "packing=true", f"data.train=[{data / 'pairs.jsonl'}]"]
    dpo = ["train.max_steps=3", "train.grad_accum=2", "train.lr=2e-3", "train.eval_every=3", "loss.beta=0.5",
           "data.max_length=96", f"data.train=[{data / 'pairs.jsonl'}]", f"data.eval=[{data / 'eval_pairs.jsonl'}]",
           "kl_prompts=3", "kl_max_tokens=5"]
    ppo = ["train.max_steps=3", "train.lr=2e-3", f"prompts_per_step={4 // processes}", "samples_per_prompt=2",
           "max_new_tokens=6", "ppo_epochs=2", "eval_examples=0", f"data.train=[{data / 'prompts.jsonl'}]",
           "rewards=[distributed_driver:short_answers, distributed_driver:letter_count]", "reward_weights=[1.0, 0.1]",
           "kl_coef=0.1", "kl_target=1.0", "kl_horizon=100", "whiten_rewards=true"]
    sft = ["train.max_steps=3", "train.grad_accum=2", "train.lr=3e-3", "train.eval_every=3", "samples=2",
           "sample_max_tokens=5", f"data.train=[{data / 'chats.jsonl'}]", f"data.eval=[{data / 'chats.jsonl'}]"]
    fsdp = ["train.fsdp=true"] if processes > 1 else []
    jobs = {
        "reward": ("reward", reward),
        "dpo_precomputed": ("dpo", dpo + ["reference=precompute", "packing=true"]),
        "dpo_live": ("dpo", dpo + ["reference=live"]),
        "ppo": ("ppo", ppo + [f"train.batch_size={b}", "algorithm=ppo"]),
        "rloo": ("ppo", ppo + [f"train.batch_size={b}", "algorithm=rloo"]),
        "sft_fsdp": ("sft", sft + fsdp),
        "dpo_fsdp": ("dpo", dpo + ["reference=precompute"] + fsdp),
    }
    return {name: (recipe, _common(model, root / name, b) + args) for name, (recipe, args) in jobs.items()}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, data, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (one-process run_dir, two-process run_dir)."""
    from distributed_driver import run_job

    root = tmp_path_factory.mktemp("distributed")
    one, two = _jobs(tiny_model_dir, data, root / "one", 1), _jobs(tiny_model_dir, data, root / "two", 2)
    # One process has nothing to shard: sharded DPO's reference is the precomputed-reference run.
    one.pop("dpo_fsdp")
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps([{"recipe": r, "args": a} for r, a in two.values()]), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(DRIVER), str(jobs_file)]
    log = root / "torchrun.log"
    with log.open("w") as out:
        launch = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=DRIVER.parent)
        try:
            for recipe, args in one.values():  # the references, while the two processes run
                run_job(recipe, args)
            code = launch.wait(timeout=300)
        finally:
            if launch.poll() is None:
                launch.kill()
    assert code == 0, log.read_text()[-6000:]
    pairs = {name: (root / "one" / name, root / "two" / name) for name in two}
    pairs["dpo_fsdp"] = (root / "one" / "dpo_precomputed", root / "two" / "dpo_fsdp")
    return pairs


def _curves(run_dir: Path) -> dict[tuple[int, str], float]:
    out = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not any(k in key for k in IGNORED):
                out[record["step"], key] = float(value)
    return out


def _world_size(run_dir: Path) -> int:
    states = sorted((run_dir / "checkpoints").glob("step-*/state.json"))
    return json.loads(states[-1].read_text())["world_size"]


def _compare(runs, name: str, must_have: tuple[str, ...]) -> float:
    """Max |one - two| over every logged value; both runs log the same values at the same steps."""
    one, two = runs[name]
    assert _world_size(one) == 1 and _world_size(two) == 2
    a, b = _curves(one), _curves(two)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    keys = {k for _, k in a}
    assert set(must_have) <= keys, sorted(set(must_have) - keys)
    diffs = {k: abs(a[k] - b[k]) for k in a}
    worst = max(diffs, key=diffs.get)
    print(f"{name}: {len(a)} values, max |1 - 2 processes| {diffs[worst]:.2e} at step {worst[0]} {worst[1]}")
    bad = {k: (a[k], b[k]) for k in a if not math.isclose(a[k], b[k], rel_tol=RTOL, abs_tol=ATOL)}
    assert not bad, f"{name}: one vs two processes differ: {bad}"
    return diffs[worst]


def test_reward_model(runs):
    _compare(runs, "reward", ("loss", "accuracy", "eval_loss", "eval_accuracy", "grad_norm"))


def test_dpo_with_precomputed_reference(runs):
    _compare(runs, "dpo_precomputed", ("loss", "rewards/chosen", "rewards/accuracies", "eval_loss", "kl_k1"))


def test_dpo_with_live_reference(runs):
    _compare(runs, "dpo_live", ("loss", "rewards/margins", "eval_rewards/chosen", "kl_k3"))


def test_ppo_with_rollouts_split_across_processes(runs):
    _compare(runs, "ppo", ("loss", "reward/score", "kl", "kl_coef", "policy/entropy", "value/explained_variance",
                           "response/length", "policy/clipfrac"))


def test_rloo_with_rollouts_split_across_processes(runs):
    _compare(runs, "rloo", ("loss", "reward/score", "kl", "kl_coef", "policy/entropy", "response/length"))


def test_fsdp_sft(runs):
    _compare(runs, "sft_fsdp", ("loss", "eval_loss", "grad_norm"))
    one, two = runs["sft_fsdp"]
    samples = [[r["samples"] for r in read_metrics(d / "metrics.jsonl") if "samples" in r] for d in (one, two)]
    assert samples[0] == samples[1] and samples[0]  # greedy samples of the sharded model, as one process makes them
    _same_weights(one / "final", two / "final")


def test_fsdp_dpo(runs):
    _compare(runs, "dpo_fsdp", ("loss", "rewards/margins", "eval_loss", "kl_k1"))
    _same_weights(runs["dpo_fsdp"][0] / "final", runs["dpo_fsdp"][1] / "final")


def _same_weights(a: Path, b: Path) -> None:
    """The exported folders hold the same (whole, unsharded) weights."""
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=ATOL, msg=key)


def test_row_seeded_sampling_does_not_depend_on_the_batch(tiny_model, tiny_tokenizer):
    """What lets processes split a step's prompts: a row's sample depends on its seed, not on the
    batch size or on the other prompts of the call."""
    from posttrain.generation.hf import generate

    prompts = [tiny_tokenizer(t)["input_ids"] for t in ("The quick brown", "Add 12", "Sort these words", "Hello")]
    seeds = [11, 12, 13, 14]

    def texts(rows, batch_size):
        out = generate(tiny_model, tiny_tokenizer, [prompts[i] for i in rows], max_new_tokens=8, temperature=1.0,
                       batch_size=batch_size, row_seeds=[seeds[i] for i in rows], return_logps=True)
        return {i: (o.completion_ids, o.completion_token_logps) for i, o in zip(rows, out)}

    whole = texts(range(4), 4)
    for rows, batch_size in (([0, 1], 2), ([2, 3], 1), ([3, 1], 2)):
        part = texts(rows, batch_size)
        for i in rows:
            assert part[i][0] == whole[i][0]
            np.testing.assert_allclose(part[i][1], whole[i][1], rtol=0, atol=1e-5)
    assert len({tuple(c) for c, _ in whole.values()}) > 1
