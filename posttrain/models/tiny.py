"""Tiny tokenizers and Llama-style models built from scratch, for tests, benchmarks and the world.

Everything here is a plain `tokenizers`/`transformers` object: a byte-level BPE wrapped as a
`PreTrainedTokenizerFast`, and a `LlamaForCausalLM` with random weights.
"""

from __future__ import annotations

from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from posttrain.data.templates import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    special_tokens: list[str] | None = None,
    chat_template: str | None = CHATML_TEMPLATE,
    split_digits: bool = False,
):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    The first special token is bos/eos, the second is pad, as in GPT-2 style tokenizers; ChatML
    markers are added so the default template renders as single tokens. ``split_digits`` puts
    every digit in its own token (numbers are then learned digit by digit).
    """
    special_tokens = list(special_tokens or SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE())
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if split_digits:
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special_tokens[0],
        eos_token=special_tokens[0],
        pad_token=special_tokens[1],
        additional_special_tokens=special_tokens[2:],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               intermediate_size: int | None = None, max_positions: int = 1024, seed: int = 0,
               tie_word_embeddings: bool = True, **overrides):
    """A randomly initialised ``LlamaForCausalLM`` (RMSNorm, RoPE, SwiGLU) in fp32."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()
