"""Supervised fine-tuning (instruction tuning): next-token loss on the assistant's turns of conversations.

    posttrain sft --config configs/sft/world.yaml

As in FLAN (Wei et al. 2022), InstructGPT's SFT stage (Ouyang et al. 2022, §3.5) and Llama-2-chat
(Touvron et al. 2023, §3.1): conversations are rendered with the tokenizer's chat template and
the loss is the cross-entropy of the tokens chosen by ``data.loss_on`` (every assistant turn
with its end-of-turn marker, by default), summed per micro-batch and divided by the target
tokens of the whole step (``posttrain.training.loop``).

Data: each ``data.train`` entry is a source; with ``data.train`` empty, each trained family of
the embedded world's tasks is one (its train split, rendered zero-shot / few-shot / CoT by
``renderings``). Sources are mixed by ``source_weights`` / ``source_epochs``, and ``rehearsal``
mixes in pretraining text (``posttrain.data.mixing``).

Batches: a micro-batch is ``train.batch_size`` examples, packed padding-free (``packing``, see
``posttrain.data.packing``: one row, positions restarting per example; ``posttrain.models.attention``:
attention per example) or padded to its longest (grouped by length); both layouts give the same loss
for the same examples, so the choice only changes speed and memory.

Model: full fine-tuning, or a LoRA adapter (``model.lora.enabled``) merged on export. Only the
positions that have a target go through the LM head (:class:`TargetNLL`).

Output: ``run_dir/final`` (a plain HF folder whose generation config stops at the chat template's
end-of-turn token too), held-out eval loss and a few greedy samples at each evaluation, and for
the world, exact match per task family (``eval_exact_match``).
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

from posttrain.data.chat import Example, TokenizeReport, fit_to_length, tokenize_conversations
from posttrain.data.collate import Batch, pad_collate
from posttrain.data.mixing import Source, mix_sources, rehearsal_source, render_items, render_zero_shot, text_chunks
from posttrain.data.packing import PackedBatch, pack_examples
from posttrain.data.readers import read_from_config, read_many
from posttrain.evaluation.run import evaluate_suite, write_report
from posttrain.generation import generate_chat, stop_at_end_of_turn
from posttrain.models.attention import packing_kept
from posttrain.models.card import DataSource, record_sources, world_data_sources, write_model_card
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.logps import TargetNLL
from posttrain.recipes.config import SFTConfig
from posttrain.training.loop import (
    RunContext, Throughput, TrainingError, epoch_sampler, evaluate, finish_run, fit, prepare_training, setup_run,
    shard,
)
from posttrain.training.steps import count_targets, nll_sum, packed_row_length, real_tokens
from posttrain.training.sampler import require_one_step
from posttrain.training.sharding import gathered_root
from posttrain.world.corpus import generate_corpus
from posttrain.world.demonstrators import demonstrations
from posttrain.world.entities import make_world
from posttrain.world.source import is_world_source, reads_world
from posttrain.world.tasks import FAMILIES, HELDOUT_FAMILIES, TRAIN_FAMILIES, check_families, make_tasks, task_examples

# --- data --------------------------------------------------------------------------------

def tokenize(tokenizer, conversations: list, cfg: SFTConfig, ctx: RunContext, what: str,
             loss_on: str | None = None) -> list[Example]:
    data_cfg = dataclasses.replace(cfg.data, loss_on=loss_on) if loss_on else cfg.data
    examples, report = tokenize_conversations(tokenizer, conversations, data_cfg)
    if report.dropped or report.truncated:
        ctx.print(f"{what}: {report.summary()}")
    return examples


def prompt_completion_examples(tokenizer, records: list, cfg: SFTConfig, ctx: RunContext, what: str) -> list[Example]:
    """Plain-text prompt + completion records (no chat template): loss on the completion and a
    closing eos; data.max_length / data.overflow apply, and what they cut or drop is reported."""
    report, examples = TokenizeReport(max_length=cfg.data.max_length), []
    for index, record in enumerate(records):
        p = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(record.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        report.seen += 1
        example = fit_to_length(Example(p + c, [False] * len(p) + [True] * len(c)), index, cfg.data.max_length,
                                cfg.data.overflow, report)
        if example is not None:
            examples.append(example)
            report.kept += 1
    if report.dropped or report.truncated:
        ctx.print(f"{what}: {report.summary()}")
    return examples


def file_source(path: str, tokenizer, cfg: SFTConfig, ctx: RunContext, card: list | None = None) -> list[Example]:
    result = read_from_config(cfg.data, [path], tokenizer)
    ctx.print(result.report.summary())
    records = result.expect("conversation", "prompt_completion")
    if card is not None:  # each file's licenses and provenance, for the model card
        card += record_sources(path, records)
    chats = [r for r in records if r.kind == "conversation"]
    plain = [r for r in records if r.kind == "prompt_completion"]
    return tokenize(tokenizer, chats, cfg, ctx, path) + prompt_completion_examples(tokenizer, plain, cfg, ctx, path)


def world_families(cfg: SFTConfig) -> list[str]:
    families = list(cfg.world.families) or list(TRAIN_FAMILIES)
    check_families(sorted(cfg.family_renderings), "family_renderings", TrainingError)
    bad = [f for f in families if f not in FAMILIES or f in HELDOUT_FAMILIES]
    if bad:
        raise TrainingError(f"world.families: {bad} cannot be trained on: known families are {', '.join(FAMILIES)}, "
                            f"and {', '.join(HELDOUT_FAMILIES)} are held out to measure unseen tasks")
    return families


def world_source(family: str, tokenizer, cfg: SFTConfig, ctx: RunContext, world) -> list[Example]:
    """One family's train split, each example rendered once (zero-shot, few-shot, CoT, ...)."""
    items = make_tasks(world, cfg.world.seed, family, "train", cfg.world.examples)
    items, flawed = demonstrations(items, cfg.world.flawed, cfg.world.flaws, cfg.world.seed)
    if flawed:
        ctx.print(f"{family}: {sum(flawed.values())} of {len(items)} demonstrations flawed ("
                  + ", ".join(f"{n} {flaw}" for flaw, n in sorted(flawed.items())) + ")")
    # A seed per family, so families do not share one pattern of renderings.
    seed = cfg.train.seed * 1_000_003 + zlib.crc32(family.encode())
    rendered = render_items(items, cfg.family_renderings.get(family, cfg.renderings), seed=seed, shots=cfg.few_shot_k)
    few = [r.messages for r in rendered if r.rendering == "few_shot"]
    rest = [r.messages for r in rendered if r.rendering != "few_shot"]
    # The shots are demonstrations: only the last answer of a few-shot conversation is taught.
    shots_loss = "last_assistant" if cfg.data.loss_on == "assistant" else None
    return tokenize(tokenizer, rest, cfg, ctx, family) + tokenize(tokenizer, few, cfg, ctx, family, shots_loss)


def rehearsal_text(cfg: SFTConfig) -> list[str]:
    if cfg.rehearsal_data:
        return [r.text for r in read_many(cfg.rehearsal_data, "auto", cfg.data.split, cfg.data.skip_invalid).expect("text")]
    return generate_corpus(cfg.world.seed, cfg.world.corpus_mb, split="train", weights=cfg.world.corpus_weights or None)


def train_sources(cfg: SFTConfig) -> list[str]:
    """data.train, or the world's task examples when it is empty."""
    return cfg.data.train or ["world:sft"]


def build_mixture(cfg: SFTConfig, tokenizer, ctx: RunContext, card: list | None = None) -> list[Example]:
    """The training examples: every source, weighted or repeated, plus rehearsal chunks. Given a list
    ``card``, the data's sources with their licenses are added to it (for the model card)."""
    sources = []
    card = [] if card is None else card
    for name in train_sources(cfg):
        if name == "world:sft":  # one source per family, each rendered in its own forms
            world = make_world(cfg.world.seed)
            sources += [Source(f, world_source(f, tokenizer, cfg, ctx, world)) for f in world_families(cfg)]
            card += world_data_sources(cfg.world.seed, ["tasks"])
        elif is_world_source(name):
            raise TrainingError(f"data.train: sft trains on world:sft (the world's task examples), not {name}")
        else:
            sources.append(Source(name, file_source(name, tokenizer, cfg, ctx, card)))
    names = [s.name for s in sources]
    for key in [*cfg.source_weights, *cfg.source_epochs]:
        if key not in names:
            raise TrainingError(f"source_weights / source_epochs name {key!r}, which is not a source; sources: {names}")
    for s in sources:
        s.weight, s.epochs = cfg.source_weights.get(s.name), cfg.source_epochs.get(s.name)
    if cfg.rehearsal > 0:
        card += ([DataSource(p, "unknown", p, "rehearsal text") for p in cfg.rehearsal_data] if cfg.rehearsal_data
                 else world_data_sources(cfg.world.seed, ["corpus"]))
        docs = tokenizer(rehearsal_text(cfg), add_special_tokens=False)["input_ids"]
        chunks = text_chunks(docs, min(cfg.rehearsal_length, cfg.data.max_length), tokenizer.eos_token_id)
        instruction = mix_sources(sources, cfg.train.seed)[2].loss_tokens
        sources.append(rehearsal_source(chunks, cfg.rehearsal, instruction))
    examples, _, report = mix_sources(sources, cfg.train.seed)
    ctx.print(report.summary())
    return examples


def eval_conversations(cfg: SFTConfig, tokenizer) -> list:
    """Held-out conversations: data.eval, or every world family's held-out split, rendered zero-shot."""
    if cfg.data.eval:
        return [r.as_dicts() for r in read_from_config(cfg.data, "eval", tokenizer).expect("conversation")]
    if not reads_world(train_sources(cfg)) or cfg.world.eval_examples <= 0:
        return []
    w = cfg.world
    return [render_zero_shot(t) for t in task_examples(w.seed, FAMILIES, "heldout", w.eval_examples)]


# --- model -------------------------------------------------------------------------------

def prepare_attention(cfg: SFTConfig, lm, ctx: RunContext | None = None) -> SFTConfig:
    """One packed row per micro-batch needs attention that sees the examples in it: flash
    attention's variable-length kernels do; sdpa and eager would build a (T, T) mask and attend
    over all of it, so they are swapped for posttrain's per-example attention (same results, the
    model's sliding window and soft-capping included). A model whose attention cannot be read that
    way gets padded batches instead (the returned config), and the log says why."""
    if not cfg.packing or cfg.pack_length or packing_kept(lm, shared_prefix=False, say=ctx.print if ctx else print):
        return cfg
    return dataclasses.replace(cfg, packing=False)


# --- evaluation ---------------------------------------------------------------------------

def log_samples(ctx: RunContext, lm, tokenizer, prompts: list, step: int, max_tokens: int) -> None:
    if not prompts or not ctx.runs_model_work:
        return
    outputs = generate_chat(lm, tokenizer, prompts, max_new_tokens=max_tokens, temperature=0.0)
    samples = [{"prompt": p[-1]["content"], "completion": o.text} for p, o in zip(prompts, outputs)]
    ctx.metrics.log(step, {"samples": samples})
    for s in samples:
        ctx.print(f"[dim]sample[/dim] {s['prompt'][:80]!r} -> {s['completion'][:120]!r}")


def world_exact_match(ctx: RunContext, lm, tokenizer, cfg: SFTConfig, step: int) -> dict[str, float]:
    """Held-out exact match per world family (chat template, zero-shot), written to run_dir/eval."""
    families = check_families(cfg.eval_families, "eval_families", TrainingError) or FAMILIES
    report = evaluate_suite(lm, tokenizer, families=families, strategies=["zero_shot"], n=cfg.eval_exact_match, seed=cfg.world.seed,
                            chat=True, max_prompt_tokens=cfg.data.max_length, max_new_tokens=cfg.eval_max_new_tokens)
    if ctx.is_main:
        write_report(report, ctx.run_dir / "eval")
    scores = {f"em/{f}": report.accuracy(f, "zero_shot") for f in report.cells}
    ctx.metrics.log(step, scores)
    ctx.print("held-out exact match: " + ", ".join(f"{k[3:]} {100 * v:.0f}%" for k, v in scores.items()))
    return scores


# --- the run -------------------------------------------------------------------------------

def sft(cfg: SFTConfig) -> Path:
    """Fine-tune, checkpoint, export ``run_dir/final``; return its path."""
    ctx = setup_run(cfg)
    tc = cfg.train
    check_families(cfg.eval_families, "eval_families", TrainingError)  # before any work
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    card_data: list[DataSource] = []
    train_examples = build_mixture(cfg, tokenizer, ctx, card_data)
    require_one_step(len(train_examples), tc.batch_size, tc.grad_accum, ctx.world_size)  # before loading a model
    held_out = eval_conversations(cfg, tokenizer)
    eval_examples = tokenize(tokenizer, held_out, cfg, ctx, "eval") if held_out else []
    sample_prompts = [c[:-1] for c in held_out[:: max(1, len(held_out) // max(1, cfg.samples))][: cfg.samples]]

    lm = load_causal_lm(cfg.model, tokenizer=tokenizer)
    stop_at_end_of_turn(lm, tokenizer)  # for the samples, the evaluation and the exported generation_config
    cfg = prepare_attention(cfg, lm, ctx)
    if tc.gradient_checkpointing:
        lm.gradient_checkpointing_enable()

    def collate(examples: list[Example]) -> Batch | PackedBatch:
        if cfg.packing:
            return pack_examples(examples, tokenizer.pad_token_id, packed_row_length(cfg.pack_length, examples)).to(ctx.device)
        return pad_collate(examples, tokenizer.pad_token_id).to(ctx.device)

    grouped = cfg.group_by_length and not cfg.packing
    sampler, total = epoch_sampler(ctx, len(train_examples), lengths=tuple(map(len, train_examples)) if grouped else None)

    model = TargetNLL(lm, cfg.lm_head_chunk)
    model, optimizer, scheduler = prepare_training(ctx, model, total)

    def evaluate_at(step: int) -> dict:
        scores = {}
        if eval_examples:
            mine = shard(eval_examples, ctx)
            batches = (collate(mine[i:i + tc.batch_size]) for i in range(0, len(mine), tc.batch_size))
            scores = evaluate(ctx, model, batches, nll_sum, count_targets)
            ctx.metrics.log(step, {"eval_loss": scores["loss"]})
        with gathered_root(model):
            log_samples(ctx, ctx.accelerator.unwrap_model(model).lm, tokenizer, sample_prompts, step,
                        cfg.sample_max_tokens)
        return scores

    # Throughput in real (non-padding) tokens, every process's.
    tokens = Throughput("tokens_per_s", lambda result, batches: sum(map(real_tokens, batches)) * ctx.world_size)
    state = fit(ctx, model, optimizer, scheduler, sampler, total, lambda ids: collate([train_examples[i] for i in ids]),
                nll_sum, count_targets, description="sft", throughput=tokens,
                logged=lambda result: {"target_tokens": result.units}, evaluate_at=evaluate_at)
    lm = ctx.accelerator.unwrap_model(model).lm
    scores: dict[str, float] = {}
    if cfg.eval_exact_match > 0 and ctx.runs_model_work:
        with gathered_root(model):
            scores = {f"held-out exact match, {k[3:]}": v for k, v in world_exact_match(ctx, lm, tokenizer, cfg, state.step).items()}
    final = finish_run(ctx, lm, tokenizer)
    if ctx.is_main:
        write_model_card(final, base_model=cfg.model.name_or_path, data=card_data, stage="sft", scores=scores,
                         training_config=ctx.run_dir / "config.yaml")
    return final
