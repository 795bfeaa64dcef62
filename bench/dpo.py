"""posttrain DPO against TRL's DPOTrainer: same model, pairs, global batch, optimizer and reference mode.

    python bench/dpo.py            # a few minutes on 2 CPU cores
    python bench/dpo.py --quick    # a smoke run

What is compared
- Model: a randomly initialised Llama of about 20M parameters (hidden 384, 10 layers, vocab 8192),
  fp32 on the CPU, sdpa attention, the same initial weights for every trial (saved once as a plain
  HF folder that both load).
- Pairs: the same random token pairs for both: a prompt of 32-256 tokens, chosen and rejected
  responses of 16-256 tokens each, ending in eos (TRL appends it to plain-text responses; posttrain
  gets it in its ids). TRL tokenizes the text form; the bench checks that its ids are exactly
  posttrain's before timing. A trial is one epoch over ``steps x batch`` pairs.
- Training: sigmoid DPO loss, beta 0.1, AdamW (0.9, 0.95), no weight decay, warmup then cosine,
  clipping 1.0, batch ``--batch-size`` pairs (default 8), fp32 for both (TRL's default bf16 is
  many times slower on most CPUs), no gradient checkpointing.
- Reference: precomputed before training by both (TRL ``precompute_ref_log_probs=True``;
  posttrain's ``reference=precompute`` with its on-disk cache in a fresh folder, so it computes).
- Settings, each in its own forked process, posttrain and TRL alternating, in rounds:
  posttrain packed (its default, ``packing=true``: the B pairs of a step in one row with no
  padding, each pair as [prompt, chosen, rejected], the prompt computed once and each response
  continuing from it, attending to the prompt and to itself only), posttrain padded (2B rows, the
  prompt in each), TRL padded (TRL 1.16's ``padding_free`` is disabled in its DPO trainer; it
  runs each prompt twice, in the chosen and in the rejected row).
  Then posttrain alone: precomputed vs live reference (a second copy of the model in memory) vs
  the LoRA-disabled reference (a LoRA r=16 adapter on every linear layer, reference live through
  the same weights with the adapter switched off).
- Measured: pairs per second from the end of the first optimizer step to the end of the last
  (best of the rounds); the reference pass and the first step are excluded, and reported apart
  (``ref s``: time to precompute). Peak memory: peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size just before the trainer is built, so it
  includes the reference pass and training; the weights and the pairs exist before that point.
- Reported: every setting, the *matched* ratio (padded vs padded) and the *best-vs-best* ratio;
  the last line is one JSON object: ``{"bench": "dpo", "speed_ratio": ..., "memory_ratio": ...}``
  (best vs best, posttrain / TRL).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sft import ARCH, EOS, PAD, SPECIALS, VOCAB, _status, in_child, make_model, reset_peak  # noqa: E402

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


def throughput(step_ends: list[float], per_step: int, start: float) -> float:
    """Pairs per second from the end of step 1 to the end of the last step."""
    if len(step_ends) < 2:
        return per_step / (step_ends[-1] - start)
    return per_step * (len(step_ends) - 1) / (step_ends[-1] - step_ends[0])


# --------------------------------------------------------------------------- posttrain


def run_posttrain(setting: str, pairs, opts, folder: str) -> dict:
    """setting: packed | padded (reference precomputed), live (second model), lora (disabled adapter)."""
    import torch

    from posttrain.config import load_config
    from posttrain.data.chat import PromptResponse
    from posttrain.data.preference import PreferenceExample, collate_examples
    from posttrain.losses.dpo import resolve_loss
    from posttrain.models.attention import packing_kept
    from posttrain.models.loading import load_causal_lm
    from posttrain.models.logps import SequenceLogps
    from posttrain.recipes.config import DPOConfig
    from posttrain.training.loop import setup_run, train_step
    from posttrain.training.optim import build_optimizer, build_scheduler
    from posttrain.training.reference import ReferencePolicy, column_logps, score_examples
    from posttrain.training.sampler import StepSampler
    from posttrain.training.steps import Micro, count_units, preference_loss_fn

    def seq(prompt, response):
        return PromptResponse(prompt + response, [False] * len(prompt) + [True] * len(response), len(prompt))

    examples = [PreferenceExample(seq(p, c), seq(p, r)) for p, c, r in pairs]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(DPOConfig, None, [
            f"model.name_or_path={folder}", "model.device=cpu", f"train.run_dir={run_dir}",
            f"train.batch_size={opts.batch_size}", f"train.max_steps={opts.steps}", "train.lr=5e-6",
            "train.warmup_steps=2", "train.tensorboard=false", "train.progress=false", "loss.beta=0.1",
            f"packing={str(setting != 'padded').lower()}",
            f"reference={'live' if setting in ('live', 'lora') else 'precompute'}",
            f"model.lora.enabled={str(setting == 'lora').lower()}", "model.lora.r=16", "model.lora.alpha=32"])
        lm = load_causal_lm(cfg.model)

        def prepared(model):  # as the recipe does: packed pairs attend within their segments
            if cfg.packing:
                packing_kept(model, shared_prefix=True)
            return model

        prepared(lm)
        base = reset_peak()
        ctx = setup_run(cfg)
        tc = cfg.train
        model = SequenceLogps(lm)
        plain = dataclasses.replace(cfg.model, lora=dataclasses.replace(cfg.model.lora, enabled=False))
        ref = ReferencePolicy(model, lambda: prepared(load_causal_lm(plain, for_training=False)),
                              live=cfg.reference == "live")  # live, no LoRA: loads the second copy here
        start = time.perf_counter()
        table = None
        if cfg.reference == "precompute":
            model.eval()
            table = score_examples(ctx, model, examples, PAD, 2 * tc.batch_size, cfg.packing)
            model.train()
        ref_seconds = time.perf_counter() - start
        loss_fn = preference_loss_fn(*resolve_loss(cfg.loss), lambda micro: micro.reference
                                     if micro.reference is not None else column_logps(micro.batch, ref))
        sampler = StepSampler(len(examples), tc.batch_size, 1, 1, 0, tc.seed)
        optimizer = build_optimizer(model, tc)
        scheduler = build_scheduler(optimizer, tc, opts.steps)
        model, optimizer = ctx.accelerator.prepare(model, optimizer)
        ends, losses = [], []
        start = time.perf_counter()
        for step, (_, _, micro) in zip(range(opts.steps), sampler.iterate()):
            batches = []
            for ids in micro:
                batch = collate_examples([examples[i] for i in ids], PAD, ids, cfg.packing)
                batches.append(Micro(batch, None if table is None else table[ids]))
            result = train_step(ctx, model, optimizer, scheduler, batches, loss_fn, count_units, step + 1)
            ends.append(time.perf_counter())
            losses.append(result.loss)
        peak = _status("VmHWM") - base
        ctx.metrics.close()
        del torch
    return {"pairs_per_s": throughput(ends, opts.batch_size, start), "peak_mb": peak / 2**20,
            "ref_s": ref_seconds, "first_loss": losses[0], "last_loss": losses[-1]}


# --------------------------------------------------------------------------- TRL


def trl_dataset(pairs):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [as_text(p) for p, _, _ in pairs],
                              "chosen": [" " + as_text(c) for _, c, _ in pairs],
                              "rejected": [" " + as_text(r) for _, _, r in pairs]})


def trl_args(out_dir: str, opts):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=opts.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=5e-6, warmup_steps=2, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, beta=0.1,
        loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=True,
        precompute_ref_batch_size=2 * opts.batch_size, logging_steps=10**6, save_strategy="no", eval_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0, dataset_num_proc=None,
    )


def run_trl(setting: str, pairs, opts, folder: str) -> dict:
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    tokenizer, dataset = make_tokenizer(), trl_dataset(pairs)
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["HF_DATASETS_CACHE"] = out_dir  # a fresh cache: the reference pass really runs
        base = reset_peak()
        start = time.perf_counter()
        trainer = DPOTrainer(model=model, args=trl_args(out_dir, opts), train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[StepTimes()])
        ref_seconds = time.perf_counter() - start
        start = time.perf_counter()
        output = trainer.train()
        peak = _status("VmHWM") - base
    return {"pairs_per_s": throughput(ends, opts.batch_size, start), "peak_mb": peak / 2**20,
            "ref_s": ref_seconds, "first_loss": None, "last_loss": output.training_loss}


def trl_ids_match(pairs, folder: str) -> bool:
    """TRL's tokenization of the text form gives exactly posttrain's ids."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["HF_DATASETS_CACHE"] = out_dir
        args = trl_args(out_dir, argparse.Namespace(batch_size=2))
        args.precompute_ref_log_probs = False
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder), args=args,
                             train_dataset=trl_dataset(pairs[:4]), processing_class=make_tokenizer())
        rows = [trainer.train_dataset[i] for i in range(4)]
    return all(r["prompt_ids"] == p and r["chosen_ids"] == c and r["rejected_ids"] == rj
               for r, (p, c, rj) in zip(rows, pairs))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps of 4 pairs, one round")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per trial (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of them is kept")
    opts = parser.parse_args()
    if opts.quick:
        opts.steps, opts.rounds, opts.batch_size = 3, 1, 4

    import torch  # noqa: F401 - imported before forking so children start warm
    import trl  # noqa: F401

    pairs = make_pairs(opts.steps * opts.batch_size, seed=0)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in pairs]
    with tempfile.TemporaryDirectory() as root:
        folder = in_child(model_folder, root)
        print(f"{len(pairs)} pairs, sequences of {min(lengths)}-{max(lengths)} tokens (prompt 32-256, responses "
              f"16-256); batch {opts.batch_size} pairs; {opts.steps} steps per trial; model {ARCH} vocab {VOCAB}, "
              f"fp32, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        if not in_child(trl_ids_match, pairs, folder):
            raise SystemExit("TRL tokenizes the pairs' text into other ids than posttrain's: not comparable")
        settings = [("posttrain", "packed"), ("trl", "padded"), ("posttrain", "padded")]
        alone = [("posttrain", "live"), ("posttrain", "lora")]
        runners = {"posttrain": run_posttrain, "trl": run_trl}
        results: dict[tuple[str, str], dict] = {}
        for r in range(opts.rounds):
            order = settings if r % 2 == 0 else settings[::-1]
            for who, setting in order + alone:
                res = in_child(runners[who], setting, pairs, opts, folder)
                print(f"round {r + 1} {who:9s} {setting:7s} {res['pairs_per_s']:7.2f} pairs/s  peak +{res['peak_mb']:6.0f} MB"
                      f"  ref {res['ref_s']:5.1f} s  loss {res['last_loss']:.4f}  load {os.getloadavg()[0]:.1f}",
                      flush=True)
                best = results.get((who, setting))
                results[(who, setting)] = {**res, "pairs_per_s": max(res["pairs_per_s"], best["pairs_per_s"]),
                                           "peak_mb": min(res["peak_mb"], best["peak_mb"])} if best else res
    report(results)


def report(results: dict) -> None:
    print("\nbest of rounds: pairs/s (training, after step 1), peak memory over the start of training")
    for (who, setting), res in results.items():
        print(f"  {who:9s} {setting:7s} {res['pairs_per_s']:7.2f} pairs/s  {res['peak_mb']:6.0f} MB  ref {res['ref_s']:.1f} s")
    pt = {s: results[("posttrain", s)] for s in ("packed", "padded", "live", "lora")}
    trl = results[("trl", "padded")]
    print("posttrain alone, reference: "
          + ", ".join(f"{name} {pt[s]['pairs_per_s']:.2f} pairs/s {pt[s]['peak_mb']:.0f} MB"
                      for name, s in (("precomputed", "packed"), ("live copy", "live"), ("LoRA-disabled", "lora"))))
    print(f"matched padded/padded: speed {pt['padded']['pairs_per_s'] / trl['pairs_per_s']:.2f}x, "
          f"memory {pt['padded']['peak_mb'] / trl['peak_mb']:.2f}x")
    best = max(("packed", "padded"), key=lambda s: pt[s]["pairs_per_s"])
    speed = pt[best]["pairs_per_s"] / trl["pairs_per_s"]
    memory = pt[best]["peak_mb"] / trl["peak_mb"]
    print(f"best vs best: posttrain {best} / TRL padded: speed {speed:.2f}x, memory {memory:.2f}x")
    print(json.dumps({"bench": "dpo", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3)}))


if __name__ == "__main__":
    main()
