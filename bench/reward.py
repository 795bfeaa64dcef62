"""posttrain's reward-model training against TRL's RewardTrainer: same model, pairs, batch and optimizer.

    python bench/reward.py            # a few minutes on 2 CPU cores
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
- posttrain: ``posttrain.recipes.reward`` with its defaults: the batch packed in one row, each pair's
  prompt once and both responses continuing from it (``SharedPrefixBatch``: no padding, no repeated
  prompt, attention per response), the head applied at each response's last token only.
  TRL: its collator pads the 2 x batch sequences to the longest, the model scores every position and
  pools at the last non-pad token.
- Threads: ``--threads`` torch threads per trial (default 1: on a shared 2-core machine, 2 threads per
  process mostly spin waiting for a core, which inflates both CPU time and wall time at random).
- Measured, each trial in its own forked process, posttrain and TRL alternating, ``--rounds`` rounds:
  pairs per CPU-second of the process (all its threads; ``time.process_time``) from the end of the
  first optimizer step to the end of the last (one-time allocations excluded), and wall-clock pairs
  per second beside it; peak memory: the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size just before the trainer is built. CPU time is
  the speed measure because on a shared machine wall time swings with other users' load from one
  trial to the next (we saw 3x), while the work a trial needs does not; on a quiet machine the two
  ratios agree. The reported numbers are medians over rounds; the last line is one JSON object:
  ``{"bench": "reward", "speed_ratio": posttrain / TRL pairs per CPU-s, "memory_ratio": posttrain / TRL peak}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft import (ARCH, ASSISTANT, EOS, IM_END, IM_START, NEWLINE, PAD, SPECIALS, USER, VOCAB,  # noqa: E402
                 _status, in_child, make_tokenizer, reset_peak, throughput)


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


def make_model():
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=ARCH["hidden_size"], intermediate_size=ARCH["intermediate_size"],
                         num_hidden_layers=ARCH["num_layers"], num_attention_heads=ARCH["num_heads"],
                         num_key_value_heads=ARCH["num_heads"], max_position_embeddings=1024, num_labels=1,
                         pad_token_id=PAD, eos_token_id=EOS, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).float()


# --------------------------------------------------------------------------- posttrain


def run_posttrain(pairs, opts) -> dict:
    from posttrain.config import load_config
    from posttrain.data.comparisons import Comparison, collate_comparisons
    from posttrain.models.attention import use_shared_prefix_attention
    from posttrain.models.reward import RewardModel
    from posttrain.recipes.config import RewardConfig
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.training.sampler import StepSampler
    from posttrain.training.steps import comparison_loss_fn, count_comparisons

    comparisons = [Comparison([c, r]) for c, r in pairs]
    hf = make_model()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(RewardConfig, None, [
            f"train.run_dir={run_dir}", f"train.batch_size={opts.batch_size}", "train.grad_accum=1",
            f"train.max_steps={opts.steps}", "train.lr=3e-4", "train.warmup_steps=2", "train.weight_decay=0.0",
            "train.tensorboard=false", "train.progress=false", "model.device=cpu", "packing=true"])
        use_shared_prefix_attention(hf)  # as the recipe does when packing
        base = reset_peak()
        ctx = setup_run(cfg)
        tc = cfg.train
        sampler = StepSampler(len(comparisons), tc.batch_size, 1, 1, 0, tc.seed)
        model = RewardModel(hf)
        optimizer = build_optimizer(model, tc)
        scheduler = build_scheduler(optimizer, tc, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)
        loss_fn = comparison_loss_fn(cfg.loss, cfg.margin_table, cfg.center_coef)
        ends, cpu_ends, losses = [], [], []
        start, cpu_start = time.perf_counter(), time.process_time()
        for step, (_, _, micro) in zip(range(opts.steps), sampler.iterate()):
            batches = [collate_comparisons([comparisons[i] for i in ids], PAD, packing=True) for ids in micro]
            result = train_step(ctx, model, optimizer, scheduler, batches, loss_fn, count_comparisons, step + 1)
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            losses.append(result.loss)
        peak = _status("VmHWM") - base
        ctx.metrics.close()
    pairs = [opts.batch_size] * len(ends)
    return {"pairs_per_s": throughput(ends, pairs, start), "pairs_per_cpu_s": throughput(cpu_ends, pairs, cpu_start),
            "peak_mb": peak / 2**20, "mean_loss": sum(losses) / len(losses)}


# --------------------------------------------------------------------------- TRL


def run_trl(pairs, opts) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    model, tokenizer = make_model(), make_tokenizer()
    dataset = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    ends: list[float] = []
    cpu_ends: list[float] = []
    losses: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    with tempfile.TemporaryDirectory() as out_dir:
        args = RewardConfig(
            output_dir=out_dir, per_device_train_batch_size=opts.batch_size, gradient_accumulation_steps=1,
            num_train_epochs=1, learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
            max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
            max_length=None, disable_dropout=True, center_rewards_coefficient=None, logging_steps=10**6,
            save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
            seed=0, dataset_num_proc=None)
        base = reset_peak()
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[StepTimes()])
        start, cpu_start = time.perf_counter(), time.process_time()
        output = trainer.train()
        peak = _status("VmHWM") - base
        losses.append(output.training_loss)  # the mean over the run's steps
    pairs = [opts.batch_size] * len(ends)
    return {"pairs_per_s": throughput(ends, pairs, start), "pairs_per_cpu_s": throughput(cpu_ends, pairs, cpu_start),
            "peak_mb": peak / 2**20, "mean_loss": losses[-1]}


def same_scores(pairs, opts) -> float:
    """Largest |posttrain - TRL| reward of the same pairs with the same weights (both before training)."""
    import torch

    from posttrain.data.comparisons import Comparison, collate_comparisons
    from posttrain.models.attention import use_shared_prefix_attention
    from posttrain.models.reward import RewardModel
    from trl.trainer.reward_trainer import DataCollatorForPreference

    sample = pairs[:opts.batch_size]
    theirs_model, ours_model = make_model(), make_model()
    use_shared_prefix_attention(ours_model)
    with torch.no_grad():
        batch = DataCollatorForPreference(pad_token_id=PAD)([{"chosen_ids": c, "rejected_ids": r} for c, r in sample])
        theirs = theirs_model(**batch).logits.squeeze(-1)  # chosen first, then rejected
        flat = collate_comparisons([Comparison([c, r]) for c, r in sample], PAD, packing=True)
        ours = RewardModel(ours_model)(flat.sequences).reshape(-1, 2).T.reshape(-1)
    return float((ours - theirs).abs().max())


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 pairs, 1 round")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trial (1: on a shared machine more threads mostly wait for cores)")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch
    import trl  # noqa: F401 - imported before forking so children start warm

    torch.set_num_threads(opts.threads)  # inherited by the forked trials

    pairs = make_pairs(opts.steps * opts.batch_size, seed=0)
    lengths = [len(c) + len(r) for c, r in pairs]
    print(f"{len(pairs)} pairs of {min(lengths)}-{max(lengths)} tokens (chosen + rejected, mean {np.mean(lengths):.0f}); "
          f"{opts.batch_size} pairs per step, {opts.steps} steps per trial; model {ARCH} vocab {VOCAB}, fp32, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads", flush=True)
    print(f"same weights, same pairs: largest reward difference posttrain vs TRL {in_child(same_scores, pairs, opts):.2e}",
          flush=True)
    runners = {"posttrain": run_posttrain, "trl": run_trl}
    results: dict[str, list[dict]] = {"posttrain": [], "trl": []}
    for r in range(opts.rounds):
        for who in ("posttrain", "trl") if r % 2 == 0 else ("trl", "posttrain"):
            res = in_child(runners[who], pairs, opts)
            results[who].append(res)
            print(f"round {r + 1} {who:9s} {res['pairs_per_s']:6.3f} pairs/s  {res['pairs_per_cpu_s']:6.3f} pairs/cpu-s  "
                  f"peak +{res['peak_mb']:6.0f} MB  mean loss {res['mean_loss']:.4f}", flush=True)
    report(results)


def report(results: dict[str, list[dict]]) -> None:
    keys = ("pairs_per_s", "pairs_per_cpu_s", "peak_mb")
    med = {who: {k: statistics.median(x[k] for x in runs) for k in keys} for who, runs in results.items()}
    for who, m in med.items():
        print(f"median {who:9s} {m['pairs_per_s']:6.3f} pairs/s  {m['pairs_per_cpu_s']:6.3f} pairs/cpu-s  "
              f"peak +{m['peak_mb']:6.0f} MB")
    # Throughput per CPU-second of the process (all its threads): on a shared machine, wall time swings with
    # other users' load from one trial to the next, while the work a trial needs does not.
    ratio = lambda k: med["posttrain"][k] / med["trl"][k]  # noqa: E731
    print(f"posttrain / TRL: speed {ratio('pairs_per_cpu_s'):.2f}x per CPU-second ({ratio('pairs_per_s'):.2f}x wall "
          f"clock), memory {ratio('peak_mb'):.2f}x")
    print(json.dumps({"bench": "reward", "speed_ratio": round(ratio("pairs_per_cpu_s"), 3),
                      "memory_ratio": round(ratio("peak_mb"), 3)}))


if __name__ == "__main__":
    main()
