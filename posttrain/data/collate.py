"""Collation: tokenized examples -> padded ``(batch, seq)`` tensors with labels for a causal LM.

Labels stay aligned with ``input_ids`` (the model shifts them by one inside its loss), with
``IGNORE_INDEX`` wherever the loss mask is False and on padding. Sequence ends are given by
``attention_mask``; the pad id is only filler and is never searched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import torch

IGNORE_INDEX = -100
"""Label of tokens that carry no loss; ``torch.nn.functional.cross_entropy``'s default ignore_index."""


class TokenizedExample(Protocol):
    input_ids: list[int]
    loss_mask: list[bool]


@dataclass
class Batch:
    """A padded batch for a causal LM."""

    input_ids: torch.Tensor
    """(B, T) long token ids; padding positions hold the pad id."""
    attention_mask: torch.Tensor
    """(B, T) bool, True on real tokens, False on padding."""
    labels: torch.Tensor
    """(B, T) long, equal to input_ids on loss tokens and IGNORE_INDEX elsewhere (unshifted)."""

    @property
    def num_target_tokens(self) -> int:
        """Tokens that carry the loss (the model predicts each from the tokens before it)."""
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a transformers causal LM's forward (labels left out: our losses use them)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def pad_collate(
    examples: Sequence[TokenizedExample],
    pad_token_id: int,
    padding_side: Literal["right", "left"] = "right",
    pad_to_multiple_of: int | None = None,
) -> Batch:
    """Pad ``examples`` (each with ``input_ids`` and ``loss_mask``) to the longest, or up to a
    multiple of ``pad_to_multiple_of`` (tensor-core friendly shapes), on ``padding_side``.

    Right padding suits training; left padding suits generation, where every row's last token is
    at position T - 1. For rotary-position models (Llama, Qwen, Mistral) both give the same loss,
    since attention depends only on relative positions.
    """
    if not examples:
        raise ValueError("pad_collate: no examples to collate")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r}: expected right or left")
    length = max(len(ex.input_ids) for ex in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.bool)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        if len(ex.loss_mask) != len(ex.input_ids):
            raise ValueError(
                f"pad_collate: example {row} has {len(ex.input_ids)} input_ids but {len(ex.loss_mask)} loss_mask entries"
            )
        n = len(ex.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        input_ids[row, cols] = ids
        attention_mask[row, cols] = True
        labels[row, cols] = torch.where(torch.tensor(ex.loss_mask, dtype=torch.bool), ids, IGNORE_INDEX)
    return Batch(input_ids, attention_mask, labels)
