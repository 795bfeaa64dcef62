"""posttrain's reward-model training against TRL's RewardTrainer: same model, pairs, batch and optimizer.

    python bench/reward.py            # 7 settings x 8 steps x 3 rounds at 1 thread: ~15 minutes
    python bench/reward.py --quick    # a smoke run

What is compared
- Model: a randomly initialised ``LlamaForSequenceClassification`` (num_labels=1) of about 20M
  parameters (hidden 384, 10 layers, vocab 8192), fp32 on the CPU, sdpa attention, the same initial
  weights (backbone and head) for every trial.
- Data: the same preference pairs for both, already tokenized (ChatML-shaped: a prompt of 32-256
  tokens, then a chosen and a rejected response of 16-256 tokens each, lengths uniform), so
  tokenization is not timed. A trial is one epoch over ``steps x batch`` pairs: both see the same pairs.
- Training: the pairwise Bradley-Terry loss, AdamW (0.9, 0.95), no weight decay, warmup then cosine,
  clipping at 1.0, ``--batch-size`` pairs per step (chosen and rejected scored in one forward by both),
  fp32 (TRL defaults to bf16, many times slower on most CPUs), no gradient checkpointing, no dropout.
- Settings, the same choice for both, each trial in its own forked process: padded micro-batches of the
  step's pairs (TRL's collator; posttrain ``packing=false``); the same over the pairs grouped by length;
  micro-batch 1 pair with the step accumulated (``one``); and posttrain's default, the micro-batch packed
  in one row with each pair's prompt once and both responses continuing from it (``SharedPrefixBatch``:
  no padding, no repeated prompt, attention per response, the head at each response's last token only).
  TRL's reward trainer has no padding-free mode. Each side's best is the one with the least memory
  among its settings within 5% of its fastest (``bench.common.best``).
- One order: the pairs are given in the order they are trained on and both read them so (TRL
  ``train_sampling_strategy="sequential"``); the grouped order is computed once and given to both.
- Cross-checks: before timing, both give the same rewards for the same pairs and weights (1e-4);
  after, every trial's first-step loss agrees (1e-4). ``--perturb`` drops the last token of TRL's
  chosen responses (a different template): the bench must then stop with a non-zero exit.
- Threads: ``--threads`` torch threads per trial (default 1: on a shared 2-core machine, 2 threads per
  process mostly spin waiting for a core, which inflates both CPU time and wall time at random).
- Measured, alternating the frameworks and reversing the order every other round, ``--rounds`` rounds:
  pairs per CPU-second of the process (all its threads; ``time.process_time``) from the end of the
  first optimizer step to the end of the last (one-time allocations excluded), wall-clock pairs per
  second beside it, the rate's relative standard error from the spread of the steps; peak memory:
  the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident
  size just before the trainer is built; and MFU against this CPU's matmul peak at the same threads
  (bench/common.py). CPU time is the speed measure because on a shared machine wall time swings with
  other users' load, while the work a trial needs does not. Medians over rounds; the last line is
  ``{"bench": "reward", "speed_ratio": ..., "memory_ratio": ..., "mfu": ..., "peer_mfu": ...}``, best vs best.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    Shape,
    best,
    check,
    grouped_order,
    in_child,
    matmul_peak,
    medians,
    mfu_line,
    peak_mb,
    prefix_pairs,
    reset_peak,
    schedule,
    step_clock,
    with_rates,
)
from bench.sft import ARCH, ASSISTANT, EOS, IM_END, IM_START, NEWLINE, PAD, SPECIALS, USER, VOCAB, make_tokenizer  # noqa: E402

SETTINGS = {"posttrain": ["padded", "grouped", "packed", "one"], "trl": ["padded", "grouped", "one"]}


# --------------------------------------------------------------------------- data and model


def make_pairs(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``n`` (chosen ids, rejected ids) sharing a ChatML prompt, lengths uniform as in the module doc."""
    rng = np.random.default_rng(seed)
    body = lambda size: rng.integers(len(SPECIALS), VOCAB, size=int(size)).tolist()  # noqa: E731
    pairs = []
    for _ in range(n):
        prompt = [IM_START, USER, NEWLINE] + body(rng.integers(32, 257)) + [IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE]
        chosen, rejected = (prompt + body(rng.integers(16, 257)) + [IM_END, NEWLINE] for _ in range(2))
        pairs.append((chosen, rejected))
    return pairs


def shared_prompt(chosen: list[int], rejected: list[int]) -> int:
    return next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b)


def make_model():
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=ARCH["hidden_size"], intermediate_size=ARCH["intermediate_size"],
                         num_hidden_layers=ARCH["num_layers"], num_attention_heads=ARCH["num_heads"],
                         num_key_value_heads=ARCH["num_heads"], max_position_embeddings=1024, num_labels=1,
                         pad_token_id=PAD, eos_token_id=EOS, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).float()


def micro_shape(setting: str, opts) -> tuple[int, int]:
    """(pairs per micro-batch, micro-batches per step)."""
    return (1, opts.batch_size) if setting == "one" else (opts.batch_size, 1)


# --------------------------------------------------------------------------- posttrain


def run_posttrain(setting: str, pairs, opts) -> dict:
    from posttrain.config import load_config
    from posttrain.data.comparisons import Comparison, collate_comparisons
    from posttrain.models.attention import use_shared_prefix_attention
    from posttrain.models.reward import RewardModel
    from posttrain.recipes.config import RewardConfig
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.training.steps import comparison_loss_fn, count_comparisons

    comparisons = [Comparison([c, r]) for c, r in pairs]
    packing = setting in ("packed", "one")
    micro_size, accum = micro_shape(setting, opts)
    hf = make_model()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(RewardConfig, None, [
            f"train.run_dir={run_dir}", f"train.batch_size={micro_size}", f"train.grad_accum={accum}",
            f"train.max_steps={opts.steps}", "train.lr=3e-4", "train.warmup_steps=2", "train.weight_decay=0.0",
            "train.tensorboard=false", "train.progress=false", "model.device=cpu", f"packing={str(packing).lower()}"])
        if packing:
            use_shared_prefix_attention(hf)  # as the recipe does when packing
        base = reset_peak()
        ctx = setup_run(cfg)
        model = RewardModel(hf)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)
        loss_fn = comparison_loss_fn(cfg.loss, cfg.margin_table, cfg.center_coef)
        ends, losses = [], []
        for step in range(opts.steps):
            first = step * opts.batch_size
            batches = [collate_comparisons(comparisons[first + m * micro_size:first + (m + 1) * micro_size], PAD, packing)
                       for m in range(accum)]
            losses.append(train_step(ctx, model, optimizer, scheduler, batches, loss_fn, count_comparisons, step + 1).loss)
            ends.append(step_clock())
        peak = peak_mb(base)
        ctx.metrics.close()
    return {"ends": ends, "peak_mb": peak, "first_loss": losses[0], "last_loss": losses[-1]}


# --------------------------------------------------------------------------- TRL


def trl_args(setting: str, out_dir: str, opts):
    from trl import RewardConfig

    micro_size, accum = micro_shape(setting, opts)
    return RewardConfig(
        output_dir=out_dir, per_device_train_batch_size=micro_size, gradient_accumulation_steps=accum,
        num_train_epochs=1, learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        max_length=None, disable_dropout=True, center_rewards_coefficient=None, logging_steps=1,
        train_sampling_strategy="sequential", save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True, dataloader_num_workers=0, seed=0, dataset_num_proc=None)


def trl_dataset(pairs):
    from datasets import Dataset

    return Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})


def run_trl(setting: str, pairs, opts) -> dict:
    from transformers import PrinterCallback, TrainerCallback
    from trl import RewardTrainer

    model, tokenizer = make_model(), make_tokenizer()
    ends, losses = [], []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(step_clock())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out_dir:
        base = reset_peak()
        trainer = RewardTrainer(model=model, args=trl_args(setting, out_dir, opts), train_dataset=trl_dataset(pairs),
                                processing_class=tokenizer, callbacks=[StepTimes()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        peak = peak_mb(base)
    return {"ends": ends, "peak_mb": peak, "first_loss": losses[0], "last_loss": losses[-1]}


def largest_reward_difference(pairs, opts) -> float:
    """Largest |posttrain - TRL| reward of the same pairs with the same weights (both before training),
    posttrain packed with shared prompts and padded, TRL through its own collator."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from posttrain.data.comparisons import Comparison, collate_comparisons
    from posttrain.models.attention import use_shared_prefix_attention
    from posttrain.models.reward import RewardModel

    sample = pairs[:opts.batch_size]
    theirs_pairs = [(c[:-1], r) for c, r in sample] if opts.perturb else sample
    with torch.no_grad():
        batch = DataCollatorForPreference(pad_token_id=PAD)([{"chosen_ids": c, "rejected_ids": r} for c, r in theirs_pairs])
        theirs = make_model()(**batch).logits.squeeze(-1)  # chosen first, then rejected
        comparisons = [Comparison([c, r]) for c, r in sample]
        ours = []
        for packing in (True, False):
            hf = make_model()
            if packing:
                use_shared_prefix_attention(hf)
            rewards = RewardModel(hf)(collate_comparisons(comparisons, PAD, packing).sequences)
            ours.append(rewards.reshape(-1, 2).T.reshape(-1))
    return max(float((o - theirs).abs().max()) for o in ours)


# --------------------------------------------------------------------------- main


def step_work(pairs, opts) -> tuple[list[int], list[float]]:
    """Pairs and model FLOPs of each step over ``pairs`` in their order (each prompt counted once)."""
    shape = in_child(lambda: Shape.of(make_model()))
    flops = []
    for step in range(opts.steps):
        total = 0.0
        for c, r in pairs[step * opts.batch_size:(step + 1) * opts.batch_size]:
            p = shared_prompt(c, r)
            total += shape.train_flops(p + len(c) - p + len(r) - p, 0, prefix_pairs(p, [len(c) - p, len(r) - p]))
        flops.append(total)
    return [opts.batch_size] * opts.steps, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 pairs, 1 round")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trial (1: on a shared machine more threads mostly wait for cores)")
    parser.add_argument("--check-only", action="store_true", help="run the cross-check and stop")
    parser.add_argument("--perturb", action="store_true", help="change TRL's template: the cross-check must fail")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch
    import trl  # noqa: F401 - imported before forking so children start warm

    torch.set_num_threads(opts.threads)  # inherited by the forked trials

    pairs = make_pairs(opts.steps * opts.batch_size, seed=0)
    orders = {"in order": pairs, "grouped": [pairs[i] for i in grouped_order([len(c) + len(r) for c, r in pairs], opts.batch_size)]}
    lengths = [len(c) + len(r) for c, r in pairs]
    print(f"{len(pairs)} pairs of {min(lengths)}-{max(lengths)} tokens (chosen + rejected, mean {np.mean(lengths):.0f}); "
          f"{opts.batch_size} pairs per step, {opts.steps} steps per trial, {opts.rounds} rounds; model {ARCH} vocab "
          f"{VOCAB}, fp32, {os.cpu_count()} CPUs, {opts.threads} torch threads, load {os.getloadavg()[0]:.1f}", flush=True)
    difference = in_child(largest_reward_difference, pairs, opts)
    check(difference < 1e-4, f"rewards of the same pairs and weights before training, posttrain packed and padded vs "
          f"TRL: largest difference {difference:.1e} (1e-4 allowed)")
    if opts.check_only:
        return
    peak = matmul_peak(opts.threads)["per_cpu_s"]
    print(f"fp32 matmul peak at {opts.threads} threads: {peak / 1e9:.0f} GFLOP per CPU-s", flush=True)
    work = {order: step_work(p, opts) for order, p in orders.items()}
    trials = [(who, s) for i in range(4) for who in SETTINGS if i < len(SETTINGS[who]) for s in [SETTINGS[who][i]]]
    runners = {"posttrain": run_posttrain, "trl": run_trl}
    results: dict[tuple[str, str], list[dict]] = {}
    for r, (who, setting) in schedule(trials, opts.rounds):
        order = "grouped" if setting == "grouped" else "in order"
        res = in_child(runners[who], setting, orders[order], opts)
        res = with_rates(res, "pairs", *work[order])
        results.setdefault((who, setting), []).append(res)
        print(f"round {r + 1} {who:9s} {setting:7s} {res['pairs_per_cpu_s']:6.3f} pairs/cpu-s ({res['pairs_per_s']:6.3f} wall, "
              f"noise {res['pairs_noise']:.1%})  peak +{res['peak_mb']:5.0f} MB  loss {res['first_loss']:.5f} -> "
              f"{res['last_loss']:.5f}  load {os.getloadavg()[0]:.1f}", flush=True)
    report({k: medians(v) for k, v in results.items()}, peak)


def report(results: dict, peak: float) -> None:
    print("\nmedians over the rounds: pairs per CPU-s (per wall-s), peak memory over the start of training, MFU")
    for (who, setting), res in results.items():
        print(f"  {who:9s} {setting:7s} {res['pairs_per_cpu_s']:6.3f} ({res['pairs_per_s']:6.3f})  {res['peak_mb']:5.0f} MB  "
              f"MFU {res['flops_per_cpu_s'] / peak:5.1%}")
    for grouped in (False, True):
        firsts = [res["first_loss"] for (_, s), res in results.items() if (s == "grouped") == grouped]
        check(max(firsts) - min(firsts) < 1e-4, f"the first step's loss of every trial {'over the grouped order' if grouped else 'in order'}"
              f" (spread {max(firsts) - min(firsts):.1e})")
    pt = {s: results[("posttrain", s)] for s in SETTINGS["posttrain"]}
    tr = {s: results[("trl", s)] for s in SETTINGS["trl"]}
    ratio = lambda a, b, k: a[k] / b[k]  # noqa: E731
    for s in SETTINGS["trl"]:
        print(f"matched {s}/{s}: speed {ratio(pt[s], tr[s], 'pairs_per_cpu_s'):.2f}x per CPU-s "
              f"({ratio(pt[s], tr[s], 'pairs_per_s'):.2f}x wall), memory {ratio(pt[s], tr[s], 'peak_mb'):.2f}x")
    best_ours, best_theirs = best(pt, "pairs_per_cpu_s"), best(tr, "pairs_per_cpu_s")
    speed = ratio(pt[best_ours], tr[best_theirs], "pairs_per_cpu_s")
    memory = ratio(pt[best_ours], tr[best_theirs], "peak_mb")
    print(f"best vs best: posttrain {best_ours} / TRL {best_theirs}: speed {speed:.2f}x per CPU-s "
          f"({ratio(pt[best_ours], tr[best_theirs], 'pairs_per_s'):.2f}x wall), memory {memory:.2f}x")
    print(mfu_line(f"posttrain {best_ours}", pt[best_ours]["flops_per_cpu_s"], peak))
    print(mfu_line(f"TRL {best_theirs}", tr[best_theirs]["flops_per_cpu_s"], peak))
    print(json.dumps({"bench": "reward", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3),
                      "mfu": round(pt[best_ours]["flops_per_cpu_s"] / peak, 3),
                      "peer_mfu": round(tr[best_theirs]["flops_per_cpu_s"] / peak, 3)}))


if __name__ == "__main__":
    main()
