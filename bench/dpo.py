"""posttrain DPO against TRL's DPOTrainer: same model, pairs, global batch, optimizer and reference mode.

    python bench/dpo.py            # 7 settings (+2 reference modes) x 6 steps x 3 rounds at 1 thread: ~35 minutes
    python bench/dpo.py --quick    # a smoke run

What is compared
- Model: a randomly initialised Llama of about 20M parameters (hidden 384, 10 layers, vocab 8192),
  fp32 on the CPU, sdpa attention, the same initial weights for every trial (saved once as a plain
  HF folder that both load).
- Pairs: the same random token pairs for both: a prompt of 32-256 tokens, chosen and rejected
  responses of 16-256 tokens each, ending in eos (TRL appends it to plain-text responses; posttrain
  gets it in its ids). TRL tokenizes the text form; the bench checks that its ids are exactly
  posttrain's before timing. A trial is one epoch over ``steps x batch`` pairs.
- Training: sigmoid DPO loss, beta 0.1, AdamW (0.9, 0.95; torch's fused kernel on both), no weight
  decay, a constant learning rate (so both sides' loss curves can be compared step by step), clipping
  1.0, ``--batch-size`` pairs per step (default 8), fp32 for both (TRL's default bf16 is many times
  slower on most CPUs), no gradient checkpointing.
- Reference: precomputed before training by both (TRL ``precompute_ref_log_probs=True`` in a fresh
  ``datasets`` cache; posttrain's ``reference=precompute`` with its on-disk cache in a fresh folder).
- Settings, the same choice for both, each trial in its own forked process: padded (2B rows, the
  prompt in each; TRL 1.16's DPO trainer has ``padding_free`` switched off); the same over the pairs
  grouped by length; micro-batch 1 pair with the step accumulated (``one``); and posttrain's default,
  packed (the B pairs of a micro-batch in one row with no padding, each pair as [prompt, chosen,
  rejected], the prompt computed once and each response continuing from it, attending to the prompt
  and to itself only). Each side's best is the one with the least memory among its settings within
  5% of its fastest (``bench.common.best``). In the first round posttrain alone also runs packed with a
  live reference (a second copy of the model) and with the LoRA-disabled reference (a LoRA r=16
  adapter on every linear layer, the reference the same weights with the adapter switched off).
- One order: the pairs are given in the order they are trained on and both read them so (TRL
  ``train_sampling_strategy="sequential"``); the grouped order is computed once and given to both.
- Cross-checks: before timing, TRL's tokenization of the text gives exactly posttrain's ids, and both
  sides' reference log-prob tables agree per pair (1e-4); after timing, the loss of every step agrees
  across all trials (1e-4; the policy equals the reference at step 1, so it is the later steps that
  would show a different beta). ``--perturb`` gives TRL chosen responses without their last token (a
  different template): the bench must then stop with a non-zero exit.
- Measured, alternating the frameworks and reversing the order every other round: pairs per second
  from the end of the first optimizer step to the end of the last, with the rate's relative standard
  error; the reference pass apart (``ref s``); peak memory: peak resident set size (``VmHWM``, reset
  through ``/proc/self/clear_refs``) minus the resident size just before the trainer is built, so it
  includes the reference pass and training; MFU against the matmul peak measured in the same run.
- Reported: medians over ``--rounds`` (default 3), the *matched* ratios and *best-vs-best*, which is
  the last line: ``{"bench": "dpo", "speed_ratio": ..., "memory_ratio": ..., "mfu": ..., "peer_mfu": ...}``.
  With ``--small`` a second JSON line comes from the small-model case (bench/dpo_small.py): wall time,
  start to exported model, of ``posttrain dpo`` and a TRL script on a tiny enumerable problem.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from bench.sft import ARCH, EOS, PAD, SPECIALS, VOCAB, make_model  # noqa: E402

SETTINGS = {"posttrain": ["padded", "grouped", "packed", "one"], "trl": ["padded", "grouped", "one"]}
LR = 5e-6

# --------------------------------------------------------------------------- data and model


def make_pairs(n: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
    """``n`` (prompt, chosen, rejected) id lists; responses end with eos."""
    rng = np.random.default_rng(seed)
    draw = lambda lo, hi: rng.integers(len(SPECIALS), VOCAB, size=int(rng.integers(lo, hi + 1))).tolist()  # noqa: E731
    return [(draw(32, 256), draw(16, 256) + [EOS], draw(16, 256) + [EOS]) for _ in range(n)]


def make_tokenizer():
    """A word-level tokenizer over the 8192 ids ("t17" is id 17), splitting on spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t7"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[EOS], pad_token=SPECIALS[PAD])


def as_text(ids: list[int]) -> str:
    return " ".join(f"t{i}" for i in ids if i != EOS)


def model_folder(root: str) -> str:
    path = Path(root) / "model"
    if not path.exists():
        make_model().save_pretrained(path, safe_serialization=True)
        make_tokenizer().save_pretrained(path)
    return str(path)


def micro_shape(setting: str, opts) -> tuple[int, int]:
    """(pairs per micro-batch, micro-batches per step)."""
    return (1, opts.batch_size) if setting == "one" else (opts.batch_size, 1)


# --------------------------------------------------------------------------- posttrain


def posttrain_setup(setting: str, opts, folder: str, run_dir: str):
    """(config, the policy prepared as the recipe prepares it, a loader of the plain reference model)."""
    from posttrain.config import load_config
    from posttrain.models.attention import packing_kept
    from posttrain.models.loading import load_causal_lm
    from posttrain.recipes.config import DPOConfig

    micro_size, accum = micro_shape(setting, opts)
    cfg = load_config(DPOConfig, None, [
        f"model.name_or_path={folder}", "model.device=cpu", f"train.run_dir={run_dir}",
        f"train.batch_size={micro_size}", f"train.grad_accum={accum}", f"train.max_steps={opts.steps}",
        f"train.lr={LR}", "train.warmup_steps=0", "train.min_lr_ratio=1.0", "train.weight_decay=0.0",
        "train.tensorboard=false", "train.progress=false", "loss.beta=0.1",
        f"packing={str(setting not in ('padded', 'grouped')).lower()}",
        f"reference={'live' if setting in ('live', 'lora') else 'precompute'}",
        f"model.lora.enabled={str(setting == 'lora').lower()}", "model.lora.r=16", "model.lora.alpha=32"])

    def prepared(model):  # as the recipe does: packed pairs attend within their segments
        if cfg.packing:
            packing_kept(model, shared_prefix=True)
        return model

    plain = dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora, enabled=False))
    return cfg, prepared(load_causal_lm(cfg.model)), lambda: prepared(load_causal_lm(plain, for_training=False))


def posttrain_examples(pairs):
    from posttrain.data.chat import PromptResponse
    from posttrain.data.preference import PreferenceExample

    def seq(prompt, response):
        return PromptResponse(prompt + response, [False] * len(prompt) + [True] * len(response), len(prompt))

    return [PreferenceExample(seq(p, c), seq(p, r)) for p, c, r in pairs]


def run_posttrain(setting: str, pairs, opts, folder: str) -> dict:
    """setting: packed | padded | grouped | one (reference precomputed), live (second model), lora (disabled adapter)."""
    from posttrain.data.preference import collate_examples
    from posttrain.losses.dpo import resolve_loss
    from posttrain.models.logps import SequenceLogps
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.training.reference import ReferencePolicy, column_logps, score_examples
    from posttrain.training.steps import Micro, count_units, preference_loss_fn

    examples = posttrain_examples(pairs)
    micro_size, accum = micro_shape(setting, opts)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg, lm, load_reference = posttrain_setup(setting, opts, folder, run_dir)
        base = reset_peak()
        ctx = setup_run(cfg)
        model = SequenceLogps(lm)
        ref = ReferencePolicy(model, load_reference, live=cfg.reference == "live")  # live, no LoRA: the second copy
        start = step_clock()
        table = None
        if cfg.reference == "precompute":
            model.eval()
            table = score_examples(ctx, model, examples, PAD, 2 * opts.batch_size, cfg.packing)
            model.train()
        ref_seconds = step_clock()[0] - start[0]
        loss_fn = preference_loss_fn(*resolve_loss(cfg.loss), lambda micro: micro.reference
                                     if micro.reference is not None else column_logps(micro.batch, ref))
        optimizer = build_optimizer(model, cfg.train)
        scheduler = build_scheduler(optimizer, cfg.train, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)
        ends, losses = [], []
        for step in range(opts.steps):
            batches = []
            for m in range(accum):
                ids = list(range(step * opts.batch_size + m * micro_size, step * opts.batch_size + (m + 1) * micro_size))
                batch = collate_examples([examples[i] for i in ids], PAD, ids, cfg.packing)
                batches.append(Micro(batch, None if table is None else table[ids]))
            losses.append(train_step(ctx, model, optimizer, scheduler, batches, loss_fn, count_units, step + 1).loss)
            ends.append(step_clock())
        peak = peak_mb(base)
        ctx.metrics.close()
    return {"ends": ends, "peak_mb": peak, "ref_s": ref_seconds, "losses": losses}


def posttrain_table(pairs, opts, folder: str):
    """posttrain's reference log-prob table of ``pairs`` (packed and padded), (N, 2) each."""
    from posttrain.models.logps import SequenceLogps
    from posttrain.training.loop import setup_run
    from posttrain.training.reference import score_examples

    tables = []
    for setting in ("packed", "padded"):
        with tempfile.TemporaryDirectory() as run_dir:
            cfg, lm, _ = posttrain_setup(setting, opts, folder, run_dir)
            ctx = setup_run(cfg)
            model = SequenceLogps(lm).eval()
            tables.append(score_examples(ctx, model, posttrain_examples(pairs), PAD, 2 * opts.batch_size,
                                         cfg.packing).numpy())  # a tensor would not survive the trip
            ctx.metrics.close()
    return tables


# --------------------------------------------------------------------------- TRL


def trl_dataset(pairs, perturb: bool = False):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [as_text(p) for p, _, _ in pairs],
                              "chosen": [" " + as_text(c[:-2] if perturb else c) for _, c, _ in pairs],
                              "rejected": [" " + as_text(r) for _, _, r in pairs]})


def trl_args(setting: str, out_dir: str, opts):
    from trl import DPOConfig

    micro_size, accum = micro_shape(setting, opts)
    return DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=micro_size, gradient_accumulation_steps=accum,
        num_train_epochs=1, learning_rate=LR, warmup_steps=0, lr_scheduler_type="constant",
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, beta=0.1,
        loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=True,
        precompute_ref_batch_size=2 * opts.batch_size, logging_steps=1, save_strategy="no", eval_strategy="no",
        train_sampling_strategy="sequential", report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0,
        dataset_num_proc=None,
    )


def run_trl(setting: str, pairs, opts, folder: str) -> dict:
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    tokenizer, dataset = make_tokenizer(), trl_dataset(pairs)
    ends, losses = [], []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(step_clock())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["HF_DATASETS_CACHE"] = out_dir  # a fresh cache: the reference pass really runs
        base = reset_peak()
        start = step_clock()
        trainer = DPOTrainer(model=model, args=trl_args(setting, out_dir, opts), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[StepTimes()])
        trainer.remove_callback(PrinterCallback)
        ref_seconds = step_clock()[0] - start[0]
        trainer.train()
        peak = peak_mb(base)
    return {"ends": ends, "peak_mb": peak, "ref_s": ref_seconds, "losses": losses}


def trl_rows(pairs, opts, folder: str) -> list[dict]:
    """TRL's processed rows of ``pairs``: its ids and its precomputed reference log-probs."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["HF_DATASETS_CACHE"] = out_dir
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa"),
                             args=trl_args("padded", out_dir, opts), train_dataset=trl_dataset(pairs, opts.perturb),
                             processing_class=make_tokenizer())
        return [trainer.train_dataset[i] for i in range(len(pairs))]


# --------------------------------------------------------------------------- main


def step_work(pairs, opts) -> tuple[list[int], list[float]]:
    """Pairs and model FLOPs of each step (each prompt counted once; the LM head at response tokens)."""
    shape = in_child(lambda: Shape.of(make_model()))
    flops = []
    for step in range(opts.steps):
        flops.append(sum(shape.train_flops(len(p) + len(c) + len(r), len(c) + len(r), prefix_pairs(len(p), [len(c), len(r)]))
                         for p, c, r in pairs[step * opts.batch_size:(step + 1) * opts.batch_size]))
    return [opts.batch_size] * opts.steps, flops


def cross_check(pairs, opts, folder: str) -> None:
    sample = pairs[:2 * opts.batch_size]
    rows = in_child(trl_rows, sample, opts, folder)
    same_ids = all(r["prompt_ids"] == p and r["chosen_ids"] == c and r["rejected_ids"] == rj
                   for r, (p, c, rj) in zip(rows, sample))
    check(same_ids, "TRL tokenizes the pairs' text into exactly posttrain's ids")
    theirs = np.array([[r["ref_chosen_logps"], r["ref_rejected_logps"]] for r in rows])
    # A sequence's log-prob sums hundreds of terms of ~9 nats: past 2048 one float32 step is 2.4e-4.
    allowed = 1e-4 + 2 * np.spacing(np.abs(theirs).astype(np.float32))
    tables = in_child(posttrain_table, sample, opts, folder)
    ok = all((np.abs(t - theirs) <= allowed).all() for t in tables)
    check(ok, f"reference log-probs of {len(sample)} pairs, posttrain packed / padded vs TRL: largest difference "
          f"{np.abs(tables[0] - theirs).max():.1e} / {np.abs(tables[1] - theirs).max():.1e} (1e-4 + 2 float32 steps allowed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 pairs, one round")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per trial (1: on a shared machine more threads mostly wait for cores)")
    parser.add_argument("--check-only", action="store_true", help="run the cross-checks and stop")
    parser.add_argument("--perturb", action="store_true", help="change TRL's template: the cross-check must fail")
    parser.add_argument("--small", action="store_true", help="also run the small-model case (bench/dpo_small.py)")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch
    import trl  # noqa: F401 - imported before forking so children start warm

    threads = opts.threads
    torch.set_num_threads(threads)  # inherited by the forked trials
    pairs = make_pairs(opts.steps * opts.batch_size, seed=0)
    orders = {"in order": pairs, "grouped": [pairs[i] for i in grouped_order([len(p) + max(len(c), len(r)) for p, c, r in pairs], opts.batch_size)]}
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in pairs]
    with tempfile.TemporaryDirectory() as root:
        folder = in_child(model_folder, root)
        print(f"{len(pairs)} pairs, sequences of {min(lengths)}-{max(lengths)} tokens (prompt 32-256, responses "
              f"16-256); batch {opts.batch_size} pairs; {opts.steps} steps per trial, {opts.rounds} rounds; model {ARCH} "
              f"vocab {VOCAB}, fp32, {os.cpu_count()} CPUs, {threads} torch threads, load {os.getloadavg()[0]:.1f}",
              flush=True)
        cross_check(pairs, opts, folder)
        if opts.check_only:
            return
        peak = matmul_peak(threads)["per_cpu_s"]
        print(f"fp32 matmul peak at {threads} threads: {peak / 1e9:.0f} GFLOP per CPU-s", flush=True)
        work = {order: step_work(p, opts) for order, p in orders.items()}
        trials = [(who, s) for i in range(4) for who in SETTINGS if i < len(SETTINGS[who]) for s in [SETTINGS[who][i]]]
        runners = {"posttrain": run_posttrain, "trl": run_trl}
        results: dict[tuple[str, str], list[dict]] = {}
        runs = list(schedule(trials, opts.rounds))
        runs[len(trials):len(trials)] = [(0, ("posttrain", "live")), (0, ("posttrain", "lora"))]
        for r, (who, setting) in runs:
            order = "grouped" if setting == "grouped" else "in order"
            res = in_child(runners[who], setting, orders[order], opts, folder)
            res = with_rates(res, "pairs", *work[order]) | {"order": order}
            results.setdefault((who, setting), []).append(res)
            print(f"round {r + 1} {who:9s} {setting:7s} {res['pairs_per_cpu_s']:6.2f} pairs/cpu-s ({res['pairs_per_s']:5.2f} wall, "
                  f"noise {res['pairs_noise']:.1%})  "
                  f"peak +{res['peak_mb']:5.0f} MB  ref {res['ref_s']:5.1f} s  loss {res['losses'][0]:.5f} -> "
                  f"{res['losses'][-1]:.5f}  load {os.getloadavg()[0]:.1f}", flush=True)
    report(results, peak)
    if opts.small:
        from bench.dpo_small import run_small

        small = run_small()
        print(json.dumps({k: round(small[k], 3) for k in ("wall_ratio", "posttrain_s", "trl_s")} | {"bench": "dpo_small"}))


def report(results: dict, peak: float) -> None:
    for order in ("in order", "grouped"):
        curves = np.array([run["losses"] for (_, s), runs in results.items() for run in runs
                           if run["order"] == order and s != "lora"])  # LoRA trains other weights
        spread = float((curves.max(0) - curves.min(0)).max())
        check(spread < 1e-4, f"every step's loss equal across the trials {order} (largest spread {spread:.1e})")
    results = {k: medians(v) for k, v in results.items()}
    print("\nmedians over the rounds: pairs per CPU-s (per wall-s; training, after step 1), peak memory over the "
          "start of training, MFU")
    for (who, setting), res in results.items():
        print(f"  {who:9s} {setting:7s} {res['pairs_per_cpu_s']:6.2f} pairs/cpu-s ({res['pairs_per_s']:5.2f} wall)  {res['peak_mb']:5.0f} MB  ref "
              f"{res['ref_s']:5.1f} s  MFU {res['flops_per_cpu_s'] / peak:5.1%}")
    pt = {s: results[("posttrain", s)] for s in SETTINGS["posttrain"]}
    tr = {s: results[("trl", s)] for s in SETTINGS["trl"]}
    ratio = lambda a, b, k: a[k] / b[k]  # noqa: E731
    print("posttrain alone, reference: " + ", ".join(
        f"{name} {results[('posttrain', s)]['pairs_per_cpu_s']:.2f} pairs/cpu-s {results[('posttrain', s)]['peak_mb']:.0f} MB"
        for name, s in (("precomputed", "packed"), ("live copy", "live"), ("LoRA-disabled", "lora"))))
    for s in SETTINGS["trl"]:
        print(f"matched {s}/{s}: speed {ratio(pt[s], tr[s], 'pairs_per_cpu_s'):.2f}x, memory {ratio(pt[s], tr[s], 'peak_mb'):.2f}x")
    best_ours, best_theirs = best(pt, "pairs_per_cpu_s"), best(tr, "pairs_per_cpu_s")
    speed, memory = ratio(pt[best_ours], tr[best_theirs], "pairs_per_cpu_s"), ratio(pt[best_ours], tr[best_theirs], "peak_mb")
    print(f"best vs best: posttrain {best_ours} / TRL {best_theirs}: speed {speed:.2f}x, memory {memory:.2f}x")
    print(mfu_line(f"posttrain {best_ours}", pt[best_ours]["flops_per_cpu_s"], peak))
    print(mfu_line(f"TRL {best_theirs}", tr[best_theirs]["flops_per_cpu_s"], peak))
    print(json.dumps({"bench": "dpo", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3),
                      "mfu": round(pt[best_ours]["flops_per_cpu_s"] / peak, 3),
                      "peer_mfu": round(tr[best_theirs]["flops_per_cpu_s"] / peak, 3)}))


if __name__ == "__main__":
    main()
