"""The embedded world's tokenizer: a byte-level BPE trained on the world corpus, digits split.

Every digit is its own token, so numbers are read and written digit by digit (the arithmetic
scratchpads depend on it). The special tokens and ChatML template are those of
:func:`posttrain.models.tiny.train_bpe_tokenizer`: ``<|endoftext|>`` (bos/eos), ``<|pad|>``,
``<|im_start|>``, ``<|im_end|>``.

The shipped tokenizer lives with the shipped base model (``assets/base``); it was trained by
``posttrain pretrain --config configs/pretrain/world.yaml`` with the same settings as
:func:`build_world_tokenizer`.
"""

from __future__ import annotations

from typing import Iterable

WORLD_VOCAB_SIZE = 2048
"""Vocabulary of the world tokenizer, special tokens included. Every word of the world corpus is a
single token well before this size (at 4096 the trainer stops near 3900 merges with the same
tokenization of the corpus), so a larger vocabulary would only add embedding parameters."""


def build_world_tokenizer(corpus: Iterable[str], vocab_size: int = WORLD_VOCAB_SIZE):
    """Train the world tokenizer on ``corpus`` documents: byte-level BPE, single-digit tokens, ChatML."""
    from posttrain.models.tiny import train_bpe_tokenizer  # deferred: torch; importing posttrain.world stays light

    return train_bpe_tokenizer(corpus, vocab_size=vocab_size, split_digits=True)


def world_tokenizer():
    """The shipped world tokenizer (a ``PreTrainedTokenizerFast``), loaded from the base model folder."""
    from transformers import AutoTokenizer  # deferred, as above

    from posttrain.world import base_model_path  # the package imports this module first

    return AutoTokenizer.from_pretrained(base_model_path())
