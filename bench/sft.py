"""posttrain SFT against TRL's SFTTrainer: same model, conversations, global batch and optimizer.

    python bench/sft.py            # 8 settings x 10 steps x 3 rounds at 1 thread: ~30 minutes
    python bench/sft.py --quick    # a smoke run (under a minute of training)

What is compared
- Model: a randomly initialised Llama of about 20M parameters (hidden 384, 10 layers, vocab 8192),
  fp32 on the CPU, the same initial weights for every trial.
- Data: the same conversations for both, already tokenized (ChatML-shaped: 1-3 user/assistant turns,
  32 to 512 tokens, spread uniformly; loss on the assistant turns), so tokenization is not timed.
  Each trial trains one epoch over ``steps x global batch`` conversations: both see exactly the same
  tokens.
- Optimizer: AdamW (betas 0.9/0.95, no weight decay), warmup then cosine, clipping at 1.0, the same
  global batch (``--batch-size`` x ``--grad-accum``, default 8 x 1), no gradient checkpointing, fp32 (TRL defaults to
  bf16, many times slower on most CPUs, so it is set to fp32).
- Batching settings, the same for both sides, each trained in its own forked process: padded micro-batches;
  the same over the data grouped by length; one row per micro-batch without padding (posttrain packed,
  attention per example; TRL ``padding_free=True``, whose loss is checked equal to its padded loss); and
  micro-batch 1 with the global batch accumulated (``one``). Each side's best is the one with the least
  memory among its settings within 5% of its fastest (``bench.common.best``).
- One order of examples: the data are given in the order they are trained on, and both sides read them
  in that order (TRL ``train_sampling_strategy="sequential"``); the grouped order is computed once and
  given to both. Every timed step holds the same tokens on both sides.
- Cross-checks, before timing: every layout of both sides gives the same loss on the first global batch
  (same weights, fp32, 1e-5); after timing, every trial's first-step loss agrees (1e-4). ``--perturb``
  gives TRL labels on the user turns too, and the bench must then stop with a non-zero exit.
- Rounds alternate the frameworks and reverse the order every other round; medians over >= 3 rounds.
- Measured: non-padding tokens per second from the end of the first optimizer step to the end of the
  last (the first step's one-time allocations excluded), with the rate's relative standard error from
  the spread of the steps; peak memory: the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size just before the trainer is built, in the trial's
  own process; and model FLOP utilisation against this CPU's fp32 matmul peak measured in the same run
  (bench/common.py says which FLOPs count).
- Reported: every setting, the *matched* ratios (same layout and micro-batch) and the *best-vs-best*
  ratio, which is the one in the last line, one JSON object:
  ``{"bench": "sft", "speed_ratio": ..., "memory_ratio": ..., "mfu": ..., "peer_mfu": ...}``.
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
    causal_pairs,
    check,
    grouped_order,
    in_child,
    matmul_peak,
    medians,
    mfu_line,
    peak_mb,
    reset_peak,
    schedule,
    step_clock,
    with_rates,
)

VOCAB = 8192
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n"]
EOS, PAD, IM_START, IM_END, USER, ASSISTANT, NEWLINE = range(len(SPECIALS))
ARCH = dict(hidden_size=384, num_layers=10, num_heads=6, intermediate_size=1024)
SETTINGS = {"posttrain": ["padded", "grouped", "packed", "one"], "trl": ["padded", "grouped", "padding_free", "one"]}
"""Batching settings: padded micro-batches of ``--batch-size``; the same, over the data grouped by length; one
packed row per micro-batch (posttrain) or TRL's padding-free flattened row; and micro-batch 1 with the global
batch accumulated (``one``: no padding for anyone, smaller matrices)."""
# --------------------------------------------------------------------------- data and model


def make_conversations(n: int, seed: int, min_len: int = 32, max_len: int = 512) -> list[tuple[list[int], list[bool]]]:
    """``n`` ChatML-shaped token sequences of ``min_len``..``max_len`` tokens with assistant loss masks."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        total = int(rng.integers(min_len, max_len + 1))
        turns = int(rng.integers(1, 4))
        ids: list[int] = []
        mask: list[bool] = []
        # Split the content tokens (total minus 6 markers per turn) between turns, user ~40%, assistant ~60%.
        content = max(2 * turns, total - 6 * turns)
        cuts = np.sort(rng.choice(np.arange(1, content), size=2 * turns - 1, replace=False)) if content > 2 * turns \
            else np.arange(1, 2 * turns)
        sizes = np.diff(np.concatenate([[0], cuts, [content]]))
        for t in range(turns):
            for role, size, trained in ((USER, sizes[2 * t], False), (ASSISTANT, sizes[2 * t + 1], True)):
                body = rng.integers(len(SPECIALS), VOCAB, size=int(size)).tolist()
                head = [IM_START, role, NEWLINE]
                ids += head + body + [IM_END, NEWLINE]
                mask += [False] * 3 + [trained] * (len(body) + 1) + [False]  # content and <|im_end|> trained
        ids, mask = ids[:max_len], mask[:max_len]
        out.append((ids, mask))
    return out


def make_model():
    import torch

    from posttrain.models.tiny import tiny_llama

    model = tiny_llama(VOCAB, **ARCH, max_positions=1024, seed=0, attn_implementation="sdpa")
    model.config.pad_token_id, model.config.eos_token_id = PAD, EOS
    torch.manual_seed(0)
    return model


def make_tokenizer():
    """A word-level tokenizer over the 8192 ids, for TRL's processing_class (pad and eos lookups)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), VOCAB)})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t7")),
                                  eos_token=SPECIALS[EOS], pad_token=SPECIALS[PAD])
    return tok


def micro_shape(setting: str, opts) -> tuple[int, int]:
    """(micro-batch size, micro-batches per step) of a setting; the global batch is the same for all."""
    global_batch = opts.batch_size * opts.grad_accum
    return (1, global_batch) if setting == "one" else (opts.batch_size, opts.grad_accum)


# --------------------------------------------------------------------------- posttrain


def posttrain_collate(setting: str):
    from posttrain.data.collate import pad_collate
    from posttrain.data.packing import pack_examples

    if setting == "packed":  # as the recipe does: the micro-batch in one row, attention per example
        return lambda batch: pack_examples(batch, PAD, None)
    return lambda batch: pad_collate(batch, PAD)


def run_posttrain(setting: str, data, opts) -> dict:
    """One epoch over ``data`` in its order; the step ends, losses and peak memory."""
    from posttrain.config import load_config
    from posttrain.data.chat import Example
    from posttrain.models.attention import packing_kept
    from posttrain.models.logps import TargetNLL
    from posttrain.recipes.config import SFTConfig
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.training.steps import count_targets, nll_sum

    examples = [Example(ids, mask) for ids, mask in data]
    micro_size, accum = micro_shape(setting, opts)
    lm = make_model()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(SFTConfig, None, [
            f"train.run_dir={run_dir}", f"train.batch_size={micro_size}", f"train.grad_accum={accum}",
            f"train.max_steps={opts.steps}", "train.lr=3e-4", "train.warmup_steps=2", "train.weight_decay=0.0",
            "train.tensorboard=false", "train.progress=false", "model.device=cpu",
            f"packing={str(setting == 'packed').lower()}"])
        if cfg.packing:
            packing_kept(lm, shared_prefix=False)
        base = reset_peak()
        ctx = setup_run(cfg)
        model = TargetNLL(lm)
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)
        collate = posttrain_collate(setting)
        ends, losses = [], []
        for step in range(opts.steps):
            first = step * micro_size * accum
            batches = [collate(examples[first + m * micro_size:first + (m + 1) * micro_size]) for m in range(accum)]
            losses.append(train_step(ctx, model, optimizer, scheduler, batches, nll_sum, count_targets, step + 1).loss)
            ends.append(step_clock())
        peak = peak_mb(base)
        ctx.metrics.close()
    return {"ends": ends, "peak_mb": peak, "first_loss": losses[0], "last_loss": losses[-1]}


def posttrain_first_loss(setting: str, data, opts) -> float:
    """posttrain's loss on the first global batch, before any update (as step 1 computes it)."""
    import torch

    from posttrain.data.chat import Example
    from posttrain.models.attention import packing_kept
    from posttrain.models.logps import TargetNLL

    micro_size, accum = micro_shape(setting, opts)
    lm = make_model()
    if setting == "packed":
        packing_kept(lm, shared_prefix=False)
    collate, model = posttrain_collate(setting), TargetNLL(lm)
    batches = [collate([Example(ids, mask) for ids, mask in data[m * micro_size:(m + 1) * micro_size]])
               for m in range(accum)]
    with torch.no_grad():
        total = sum(float(model(labels=b.labels, **b.model_inputs())) for b in batches)
    return total / sum(b.num_target_tokens for b in batches)


# --------------------------------------------------------------------------- TRL


def trl_config(setting: str, out_dir: str, opts):
    from trl import SFTConfig

    micro_size, accum = micro_shape(setting, opts)
    return SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=micro_size, gradient_accumulation_steps=accum,
        num_train_epochs=1, learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        padding_free=setting == "padding_free", max_length=None, packing=False,
        train_sampling_strategy="sequential",  # the order of ``data``, the same as posttrain's
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, seed=0, dataset_num_proc=None,
    )


def trl_dataset(data, perturb: bool = False):
    """TRL's tokenized layout; ``perturb`` (for showing the cross-check fails) also trains on the user turns."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ids for ids, _ in data],
                              "labels": [[t if m or perturb else -100 for t, m in zip(ids, mask)] for ids, mask in data]})


def run_trl(setting: str, data, opts) -> dict:
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    model, tokenizer, dataset = make_model(), make_tokenizer(), trl_dataset(data)
    ends, losses = [], []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(step_clock())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out_dir:
        base = reset_peak()
        trainer = SFTTrainer(model=model, args=trl_config(setting, out_dir, opts), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[StepTimes()])
        trainer.remove_callback(PrinterCallback)  # logging_steps=1 is for the losses, not for printing
        trainer.train()
        peak = peak_mb(base)
    return {"ends": ends, "peak_mb": peak, "first_loss": losses[0], "last_loss": losses[-1]}


def trl_first_loss(setting: str, data, opts) -> float:
    """TRL's loss on the first global batch before any update: its collator, its loss, its normalisation."""
    import torch
    from trl import SFTTrainer

    micro_size, accum = micro_shape(setting, opts)
    sample = data[:micro_size * accum]
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = SFTTrainer(model=make_model(), args=trl_config(setting, out_dir, opts),
                             train_dataset=trl_dataset(sample, opts.perturb), processing_class=make_tokenizer())
        rows = [trainer.train_dataset[i] for i in range(len(sample))]
        batches = [trainer.data_collator(rows[m * micro_size:(m + 1) * micro_size]) for m in range(accum)]
        items = sum(int((b["labels"][..., 1:] != -100).sum()) for b in batches)
        with torch.no_grad():
            return sum(float(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=torch.tensor(items)))
                       for b in batches)


# --------------------------------------------------------------------------- main


def step_work(data, opts) -> tuple[list[int], list[float]]:
    """Non-padding tokens and model FLOPs of each step over ``data`` in its order."""
    shape = in_child(lambda: Shape.of(make_model()))  # torch ops stay out of the parent (see bench.common)
    per = opts.batch_size * opts.grad_accum
    tokens, flops = [], []
    for step in range(opts.steps):
        batch = data[step * per:(step + 1) * per]
        tokens.append(sum(len(ids) for ids, _ in batch))
        # A target is predicted from the position before it: the first token is never one.
        flops.append(sum(shape.train_flops(len(ids), sum(mask[1:]), causal_pairs(len(ids))) for ids, mask in batch))
    return tokens, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 conversations, 1 round")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--max-len", type=int, default=512, help="longest conversation, in tokens")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trial (1: on a shared machine more threads mostly wait for cores)")
    parser.add_argument("--check-only", action="store_true", help="run the cross-checks and stop")
    parser.add_argument("--perturb", action="store_true",
                        help="give TRL labels on the user turns too: the cross-check must then fail")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch
    import trl  # noqa: F401 - imported before forking so children start warm

    threads = opts.threads
    torch.set_num_threads(threads)  # inherited by the forked trials
    n = opts.steps * opts.batch_size * opts.grad_accum
    data = make_conversations(n, seed=0, max_len=opts.max_len)
    order = grouped_order([len(ids) for ids, _ in data], opts.batch_size, opts.grad_accum)
    orders = {"in order": data, "grouped": [data[i] for i in order]}
    lengths = [len(ids) for ids, _ in data]
    print(f"{n} conversations of {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}); "
          f"global batch {opts.batch_size * opts.grad_accum}; {opts.steps} steps per trial, {opts.rounds} rounds; "
          f"model {ARCH} vocab {VOCAB}, fp32, {os.cpu_count()} CPUs, {threads} torch threads, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)

    # Cross-check: every setting of both sides gives the same loss on the first global batch.
    first = {(who, s): in_child(posttrain_first_loss if who == "posttrain" else trl_first_loss, s, data, opts)
             for who in SETTINGS for s in SETTINGS[who] if s != "grouped"}
    spread = max(first.values()) - min(first.values())
    check(spread < 1e-5, "loss on the first global batch, same weights, every layout of both sides: "
          + ", ".join(f"{who} {s} {v:.7f}" for (who, s), v in first.items()) + f" (spread {spread:.1e}, 1e-5 allowed)")
    if opts.check_only:
        return

    peak = matmul_peak(threads)["per_cpu_s"]
    print(f"fp32 matmul peak at {threads} threads: {peak / 1e9:.0f} GFLOP per CPU-s", flush=True)
    work = {order: step_work(d, opts) for order, d in orders.items()}
    trials = [(who, SETTINGS[who][i]) for i in range(4) for who in SETTINGS]
    runners = {"posttrain": run_posttrain, "trl": run_trl}
    results: dict[tuple[str, str], list[dict]] = {}
    for r, (who, setting) in schedule(trials, opts.rounds):
        order = "grouped" if setting == "grouped" else "in order"
        res = in_child(runners[who], setting, orders[order], opts)
        res = with_rates(res, "tokens", *work[order])
        results.setdefault((who, setting), []).append(res)
        print(f"round {r + 1} {who:9s} {setting:12s} {res['tokens_per_cpu_s']:7.0f} tok/cpu-s ({res['tokens_per_s']:5.0f} wall, noise "
              f"{res['tokens_noise']:.1%})  "
              f"peak +{res['peak_mb']:5.0f} MB  loss {res['first_loss']:.5f} -> {res['last_loss']:.5f}  "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    report({k: medians(v) for k, v in results.items()}, peak)


def report(results: dict, peak: float) -> None:
    print("\nmedians over the rounds: non-padding tokens per CPU-s (per wall-s), peak memory over the start of "
          "training, MFU")
    for (who, setting), res in results.items():
        print(f"  {who:9s} {setting:12s} {res['tokens_per_cpu_s']:7.0f} tok/cpu-s ({res['tokens_per_s']:5.0f} wall)  {res['peak_mb']:5.0f} MB  "
              f"MFU {res['flops_per_cpu_s'] / peak:5.1%}")
    for grouped in (False, True):  # the grouped order starts with another batch
        firsts = [res["first_loss"] for (_, s), res in results.items() if (s == "grouped") == grouped]
        check(max(firsts) - min(firsts) < 1e-4, f"the first step's loss of every trial {'over the grouped order' if grouped else 'in order'}"
              f" (spread {max(firsts) - min(firsts):.1e})")
    pt = {s: results[("posttrain", s)] for s in SETTINGS["posttrain"]}
    tr = {s: results[("trl", s)] for s in SETTINGS["trl"]}
    ratio = lambda a, b, k: a[k] / b[k]  # noqa: E731
    for ours, theirs in zip(SETTINGS["posttrain"], SETTINGS["trl"]):
        print(f"matched {ours}/{theirs}: speed {ratio(pt[ours], tr[theirs], 'tokens_per_cpu_s'):.2f}x, "
              f"memory {ratio(pt[ours], tr[theirs], 'peak_mb'):.2f}x")
    best_ours, best_theirs = best(pt, "tokens_per_cpu_s"), best(tr, "tokens_per_cpu_s")
    speed = ratio(pt[best_ours], tr[best_theirs], "tokens_per_cpu_s")
    memory = ratio(pt[best_ours], tr[best_theirs], "peak_mb")
    print(f"best vs best: posttrain {best_ours} / TRL {best_theirs}: speed {speed:.2f}x, memory {memory:.2f}x")
    print(mfu_line(f"posttrain {best_ours}", pt[best_ours]["flops_per_cpu_s"], peak))
    print(mfu_line(f"TRL {best_theirs}", tr[best_theirs]["flops_per_cpu_s"], peak))
    print(json.dumps({"bench": "sft", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3),
                      "mfu": round(pt[best_ours]["flops_per_cpu_s"] / peak, 3),
                      "peer_mfu": round(tr[best_theirs]["flops_per_cpu_s"] / peak, 3)}))


if __name__ == "__main__":
    main()
