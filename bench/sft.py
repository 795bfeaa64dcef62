"""posttrain SFT against TRL's SFTTrainer: same model, conversations, global batch and optimizer.

    python bench/sft.py            # a few minutes on 2 CPU cores
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
- Batching settings, each trained in its own forked process, alternating posttrain / TRL, in rounds:
  posttrain: padded, padded grouped by length, packed (``posttrain.data.packing``: one row per
  micro-batch, no padding, causal attention computed per example);
  TRL: padded, padded grouped by length (``train_sampling_strategy="group_by_length"``),
  ``padding_free=True`` (all examples of a micro-batch flattened into one row) when it is correct here:
  TRL documents padding-free for flash attention only, so before it is timed the bench checks that
  its loss on the CPU attention equals its padded loss on the same examples; if not, it is left out.
- Measured: non-padding tokens per second from the end of the first optimizer step to the end of the
  last (the first step's one-time allocations excluded), the best of the rounds; and peak memory:
  the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident
  size just before the trainer is built, in the same forked process, so neither pays for the other's
  leftovers. The model's weights and the tokenized data exist before that point for both.
- Reported: every setting, padded vs packed for posttrain alone, the *matched* ratio (same batching:
  padded against padded, and packed against padding-free when TRL's is correct) and the
  *best-vs-best* ratio (each at its fastest correct setting). The last line is one JSON object:
  ``{"bench": "sft", "speed_ratio": ..., "memory_ratio": ...}`` (best-vs-best: posttrain / TRL).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 8192
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n"]
EOS, PAD, IM_START, IM_END, USER, ASSISTANT, NEWLINE = range(len(SPECIALS))
ARCH = dict(hidden_size=384, num_layers=10, num_heads=6, intermediate_size=1024)


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


# --------------------------------------------------------------------------- memory and processes


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak RSS to the current RSS (Linux >= 4.0) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def in_child(fn, *args):
    """Run ``fn(*args)`` in a forked process and return its result (or raise its error)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def target():
        try:
            queue.put(("ok", fn(*args)))
        except BaseException:  # noqa: BLE001 - the parent re-raises it with the traceback
            queue.put(("error", traceback.format_exc()))

    proc = ctx.Process(target=target)
    proc.start()
    status, value = queue.get()
    proc.join()
    if status == "error":
        raise RuntimeError(f"{fn.__name__}{args[:1]} failed in its process:\n{value}")
    return value


def throughput(step_ends: list[float], step_tokens: list[int], start: float) -> float:
    """Tokens per second from the end of step 1 to the end of the last step."""
    if len(step_ends) < 2:
        return sum(step_tokens) / (step_ends[-1] - start)
    return sum(step_tokens[1:]) / (step_ends[-1] - step_ends[0])


# --------------------------------------------------------------------------- posttrain


def run_posttrain(setting: str, data, opts) -> dict:
    from posttrain.config import load_config
    from posttrain.data.chat import Example
    from posttrain.data.collate import pad_collate
    from posttrain.data.packing import pack_examples
    from posttrain.models.logps import TargetNLL
    from posttrain.recipes.config import SFTConfig
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.models.attention import packing_kept
    from posttrain.training.sampler import LengthGroupedSampler, StepSampler
    from posttrain.training.steps import count_targets, nll_sum, packed_row_length, real_tokens

    examples = [Example(ids, mask) for ids, mask in data]
    lm = make_model()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(SFTConfig, None, [
            f"train.run_dir={run_dir}", f"train.batch_size={opts.batch_size}", f"train.grad_accum={opts.grad_accum}",
            f"train.max_steps={opts.steps}", "train.lr=3e-4", "train.warmup_steps=2", "train.weight_decay=0.0",
            "train.tensorboard=false", "train.progress=false", "model.device=cpu",
            f"packing={str(setting == 'packed').lower()}", f"group_by_length={str(setting == 'grouped').lower()}"])
        if cfg.packing and not cfg.pack_length:  # as the recipe does: per-example attention when packing
            packing_kept(lm, shared_prefix=False)
        base = reset_peak()
        ctx = setup_run(cfg)
        tc = cfg.train
        args = (len(examples), tc.batch_size, tc.grad_accum, 1, 0, tc.seed)
        sampler = LengthGroupedSampler(*args, lengths=tuple(len(e) for e in examples)) if setting == "grouped" \
            else StepSampler(*args)
        model = TargetNLL(lm)
        optimizer = build_optimizer(model, tc)
        scheduler = build_scheduler(optimizer, tc, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)

        def collate(batch):
            if setting == "packed":
                return pack_examples(batch, PAD, packed_row_length(cfg.pack_length, batch))  # as the recipe does
            return pad_collate(batch, PAD)

        ends, tokens, losses = [], [], []
        start = time.perf_counter()
        for step, (_, _, micro) in zip(range(opts.steps), sampler.iterate()):
            batches = [collate([examples[i] for i in ids]) for ids in micro]
            result = train_step(ctx, model, optimizer, scheduler, batches, nll_sum, count_targets, step + 1)
            ends.append(time.perf_counter())
            tokens.append(sum(real_tokens(b) for b in batches))
            losses.append(result.loss)
        peak = _status("VmHWM") - base
        ctx.metrics.close()
    return {"tokens_per_s": throughput(ends, tokens, start), "peak_mb": peak / 2**20, "tokens": sum(tokens),
            "first_loss": losses[0], "last_loss": losses[-1]}


# --------------------------------------------------------------------------- TRL


def trl_config(setting: str, out_dir: str, opts):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=opts.batch_size, gradient_accumulation_steps=opts.grad_accum,
        num_train_epochs=1, learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        padding_free=setting == "padding_free", max_length=None, packing=False,
        train_sampling_strategy="group_by_length" if setting == "grouped" else "random",
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, seed=0, dataset_num_proc=None,
    )


def trl_dataset(data):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ids for ids, _ in data],
                              "labels": [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in data]})


def run_trl(setting: str, data, opts) -> dict:
    from transformers import TrainerCallback
    from trl import SFTTrainer

    model, tokenizer, dataset = make_model(), make_tokenizer(), trl_dataset(data)
    ends: list[float] = []
    tokens: list[int] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out_dir:
        base = reset_peak()
        trainer = SFTTrainer(model=model, args=trl_config(setting, out_dir, opts), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[StepTimes()])
        collator = trainer.data_collator

        def counting(features):
            batch = collator(features)
            # Non-padding tokens: the attention mask when padded, the single row when padding-free.
            tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch
                          else int(batch["input_ids"].numel()))
            return batch

        trainer.data_collator = counting
        start = time.perf_counter()
        output = trainer.train()
        peak = _status("VmHWM") - base
    per_step = [sum(tokens[i:i + opts.grad_accum]) for i in range(0, len(tokens), opts.grad_accum)]
    return {"tokens_per_s": throughput(ends, per_step, start), "peak_mb": peak / 2**20, "tokens": sum(tokens),
            "first_loss": None, "last_loss": output.training_loss}


def trl_padding_free_is_correct(data, opts) -> tuple[bool, float, float]:
    """TRL's loss on the same examples, padding-free against padded (its fused head, its collators)."""
    import torch
    from trl import SFTTrainer

    sample = data[: opts.batch_size]
    losses = []
    with tempfile.TemporaryDirectory() as out_dir:
        for setting in ("padded", "padding_free"):
            trainer = SFTTrainer(model=make_model(), args=trl_config(setting, out_dir, opts),
                                 train_dataset=trl_dataset(sample), processing_class=make_tokenizer())
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(sample))])
            with torch.no_grad():
                losses.append(float(trainer.compute_loss(trainer.model, dict(batch))))
    return abs(losses[0] - losses[1]) < 1e-4, losses[0], losses[1]


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 conversations, 1 round")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="conversations per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them is kept")
    parser.add_argument("--max-len", type=int, default=512, help="longest conversation and packed row, in tokens")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch  # noqa: F401 - imported before forking so children start warm
    import trl  # noqa: F401

    n = opts.steps * opts.batch_size * opts.grad_accum
    data = make_conversations(n, seed=0, max_len=opts.max_len)
    lengths = [len(ids) for ids, _ in data]
    print(f"{n} conversations of {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}); "
          f"global batch {opts.batch_size} x {opts.grad_accum}; {opts.steps} steps per trial; "
          f"model {ARCH} vocab {VOCAB}, fp32, {os.cpu_count()} CPUs", flush=True)
    correct, padded_loss, free_loss = in_child(trl_padding_free_is_correct, data, opts)
    print(f"TRL padding_free loss {free_loss:.6f} vs padded {padded_loss:.6f}: "
          f"{'correct' if correct else 'WRONG (attention crosses examples); left out'}", flush=True)
    settings = {"posttrain": ["padded", "grouped", "packed"],
                "trl": ["padded", "grouped"] + (["padding_free"] if correct else [])}
    runners = {"posttrain": run_posttrain, "trl": run_trl}
    results: dict[tuple[str, str], dict] = {}
    for r in range(opts.rounds):
        for i in range(max(len(s) for s in settings.values())):
            for who in ("posttrain", "trl") if r % 2 == 0 else ("trl", "posttrain"):
                if i >= len(settings[who]):
                    continue
                setting = settings[who][i]
                res = in_child(runners[who], setting, data, opts)
                print(f"round {r + 1} {who:9s} {setting:12s} {res['tokens_per_s']:8.0f} tok/s  "
                      f"peak +{res['peak_mb']:6.0f} MB  loss {res['last_loss']:.4f}", flush=True)
                best = results.get((who, setting))
                results[(who, setting)] = {**res, "tokens_per_s": max(res["tokens_per_s"], best["tokens_per_s"]),
                                           "peak_mb": min(res["peak_mb"], best["peak_mb"])} if best else res
    report(results, settings)


def report(results: dict, settings: dict) -> None:
    print("\nbest of rounds: non-padding tokens/s, peak memory over the start of training")
    for (who, setting), res in results.items():
        print(f"  {who:9s} {setting:12s} {res['tokens_per_s']:8.0f} tok/s  {res['peak_mb']:6.0f} MB")
    pt = {s: results[("posttrain", s)] for s in settings["posttrain"]}
    tr = {s: results[("trl", s)] for s in settings["trl"]}
    print(f"posttrain packed vs padded: {pt['packed']['tokens_per_s'] / pt['padded']['tokens_per_s']:.2f}x "
          f"tokens/s, {pt['packed']['peak_mb'] / pt['padded']['peak_mb']:.2f}x memory")
    pairs = [("padded", "padded"), ("grouped", "grouped")] + ([("packed", "padding_free")] if "padding_free" in tr else [])
    for ours, theirs in pairs:
        print(f"matched {ours}/{theirs}: speed {pt[ours]['tokens_per_s'] / tr[theirs]['tokens_per_s']:.2f}x, "
              f"memory {pt[ours]['peak_mb'] / tr[theirs]['peak_mb']:.2f}x")
    best_ours = max(pt, key=lambda s: pt[s]["tokens_per_s"])
    best_theirs = max(tr, key=lambda s: tr[s]["tokens_per_s"])
    speed = pt[best_ours]["tokens_per_s"] / tr[best_theirs]["tokens_per_s"]
    memory = pt[best_ours]["peak_mb"] / tr[best_theirs]["peak_mb"]
    print(f"best vs best: posttrain {best_ours} / TRL {best_theirs}: speed {speed:.2f}x, memory {memory:.2f}x")
    print(json.dumps({"bench": "sft", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3)}))


if __name__ == "__main__":
    main()
