"""Pretraining: next-token prediction on plain text, from scratch or continuing a checkpoint.

    posttrain pretrain --config configs/pretrain/world-tiny.yaml

Data: text documents from ``data.train`` (JSONL/Parquet with a "text" field, .txt files), or
the embedded world's corpus when ``data.train`` is empty. Every document is tokenized, followed
by eos, and the stream is cut into chunks of ``seq_len`` tokens, GPT-2/3 style: a chunk may hold
the end of one document and the start of the next, and attention crosses the eos between them
(no padding, every token is a target; the model learns that eos starts something new). The tail
of the stream shorter than ``seq_len`` is dropped and reported. ``data.max_length``,
``data.overflow`` and ``data.loss_on`` (for chat data) play no part here.

Model: a new Llama-style model of size ``arch`` (``from_scratch: true``) over a byte-level BPE
trained on the training documents (``tokenizer: train``) or an existing tokenizer; or
``model.name_or_path`` loaded to continue pretraining.

Loss: cross-entropy summed over the target tokens of each micro-batch and divided by the target
tokens of the whole step (see ``posttrain.training.loop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from posttrain.data.readers import read_many
from posttrain.evaluation.copying import copying_gain
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.tiny import tiny_llama, train_bpe_tokenizer
from posttrain.recipes.config import PretrainConfig
from posttrain.training.loop import (
    RunContext, TrainingError, epoch_sampler, evaluate, finish_run, fit, prepare_training, setup_run, shard,
    units_per_s,
)
from posttrain.training.sharding import gathered_root
from posttrain.training.steps import count_chunk_targets, lm_loss_sum
from posttrain.world.source import reads_world


# --- data --------------------------------------------------------------------------------

@dataclass
class PackReport:
    documents: int
    tokens: int
    """Tokens of the documents plus one eos each."""
    chunks: int
    dropped_tokens: int
    """Tokens at the end of the stream that did not fill a chunk."""

    def summary(self) -> str:
        return (f"{self.documents} documents, {self.tokens} tokens -> {self.chunks} sequences; "
                f"{self.dropped_tokens} tokens at the end did not fill a sequence and were dropped")


def pack_documents(token_lists: list[list[int]], seq_len: int, eos_id: int) -> tuple[torch.Tensor, PackReport]:
    """Join documents, each followed by ``eos_id``, and cut the stream into rows of ``seq_len``.

    Returns (chunks (N, seq_len) int64, report); the last ``tokens % seq_len`` tokens are dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one input and one target), got {seq_len}")
    stream = np.fromiter((t for ids in token_lists for t in (*ids, eos_id)), dtype=np.int64)
    n_chunks = len(stream) // seq_len
    chunks = torch.from_numpy(stream[: n_chunks * seq_len].reshape(n_chunks, seq_len).copy())
    report = PackReport(len(token_lists), len(stream), n_chunks, len(stream) - n_chunks * seq_len)
    return chunks, report


def read_documents(paths: list[str], cfg: PretrainConfig, ctx: RunContext, world_split: str) -> list[str]:
    fmt = "text" if cfg.data.layout == "auto" else cfg.data.layout
    result = read_many(paths, fmt, cfg.data.split, cfg.data.skip_invalid, cfg.world, world_split)
    ctx.print(result.report.summary())  # says what was skipped (data.skip_invalid), and why
    return [record.text for record in result.expect("text")]


def load_documents(cfg: PretrainConfig, ctx: RunContext) -> tuple[list[str], list[str]]:
    """(train, eval) documents: data.train / data.eval; data.train empty is the world's corpus ("train" stream),
    held out against its "heldout" stream."""
    train_sources = cfg.data.train or ["world:corpus"]
    eval_sources = cfg.data.eval or (["world:corpus"] if reads_world(train_sources) and cfg.world.eval_corpus_mb > 0
                                     else [])
    train = read_documents(train_sources, cfg, ctx, "train")
    return train, read_documents(eval_sources, cfg, ctx, "heldout") if eval_sources else []


def tokenize(tokenizer, docs: list[str]) -> list[list[int]]:
    return tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []


# --- tokenizer and model -------------------------------------------------------------------

def prepare_tokenizer(cfg: PretrainConfig, ctx: RunContext, train_docs: list[str]):
    """The tokenizer of ``cfg.model``, or a BPE trained on ``train_docs`` and kept in run_dir/tokenizer.

    The trained one is written by the main process and read back by all, so every process (and
    a resumed run, which reads the saved one instead of training again) has the same vocabulary.
    """
    if cfg.tokenizer == "model":
        return load_tokenizer(cfg.model)
    folder = ctx.run_dir / "tokenizer"
    if ctx.is_main and not (ctx.resume_from and folder.exists()):
        train_bpe_tokenizer(train_docs, cfg.vocab_size, split_digits=cfg.split_digits).save_pretrained(folder)
    ctx.accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


def build_model(cfg: PretrainConfig, tokenizer) -> torch.nn.Module:
    if not cfg.from_scratch:
        if cfg.tokenizer != "model":
            raise TrainingError("from_scratch is false but tokenizer is 'train': a loaded model needs its "
                                "own tokenizer; set tokenizer=model")
        return load_causal_lm(cfg.model)
    arch = cfg.arch
    model = tiny_llama(len(tokenizer), hidden_size=arch.hidden_size, num_layers=arch.num_layers,
                       num_heads=arch.num_heads, intermediate_size=arch.intermediate_size or None,
                       max_positions=max(arch.max_positions, cfg.seq_len), seed=cfg.train.seed,
                       tie_word_embeddings=arch.tie_word_embeddings)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    # LlamaConfig's defaults (bos 1, eos 2) also sit in generation_config; generation reads those.
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(model.config, key))
    return model


# --- the run -------------------------------------------------------------------------------

def pretrain(cfg: PretrainConfig) -> Path:
    """Train, checkpoint, export ``run_dir/final``; return its path."""
    ctx = setup_run(cfg)
    train_docs, eval_docs = load_documents(cfg, ctx)
    tokenizer = prepare_tokenizer(cfg, ctx, train_docs)
    chunks, report = pack_documents(tokenize(tokenizer, train_docs), cfg.seq_len, tokenizer.eos_token_id)
    eval_chunks, _ = pack_documents(tokenize(tokenizer, eval_docs), cfg.seq_len, tokenizer.eos_token_id)
    ctx.print(f"train data: {report.summary()}")
    if eval_docs:
        ctx.print(f"eval data: {len(eval_docs)} documents -> {len(eval_chunks)} sequences")

    tc = cfg.train
    sampler, total = epoch_sampler(ctx, len(chunks), "sequences")

    model = build_model(cfg, tokenizer)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model, optimizer, scheduler = prepare_training(ctx, model, total)

    def evaluate_at(step: int) -> dict:
        if not len(eval_chunks):
            return {}
        rows = shard(list(range(len(eval_chunks))), ctx)
        batches = (eval_chunks[rows[i:i + tc.batch_size]].to(ctx.device) for i in range(0, len(rows), tc.batch_size))
        scores = evaluate(ctx, model, batches, lm_loss_sum, count_chunk_targets)
        logged = {"eval_loss": scores["loss"], "eval_ppl": float(np.exp(scores["loss"]))}
        if cfg.copying_probe and ctx.runs_model_work:  # induction: does the model copy from its context yet?
            with gathered_root(model):
                copy = copying_gain(ctx.accelerator.unwrap_model(model), tokenizer)
            logged["eval_copying_gain"] = copy.gain
            ctx.print(f"step {step}: eval loss {scores['loss']:.4f}, copying gain {copy.gain:+.2f} nats/token")
        ctx.metrics.log(step, logged)
        return scores

    fit(ctx, model, optimizer, scheduler, sampler, total, lambda ids: chunks[ids].to(ctx.device), lm_loss_sum,
        count_chunk_targets, description="pretrain", throughput=units_per_s("tokens_per_s"),
        logged=lambda result: {"tokens": result.units}, evaluate_at=evaluate_at)
    return finish_run(ctx, model, tokenizer)
