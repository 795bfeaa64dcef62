"""Comparisons for reward modeling as token ids: a prompt's K responses, best first, and their batches.

A preference is a comparison of two responses, a ranking one of K (InstructGPT's K-wise
comparisons, Ouyang et al. 2022 §3.5). Every response of a micro-batch goes through the model in
one forward, laid out by :func:`collate_comparisons` padded (N, T) or packed in one row with each
comparison's prompt once (``posttrain.data.packing.pack_shared_prefix``); :class:`ComparisonBatch`
keeps which of the (B, K) slots are real responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.data.chat import Example
from posttrain.data.collate import Batch, pad_collate
from posttrain.data.packing import SharedPrefixBatch, pack_shared_prefix


@dataclass
class Comparison:
    """One training unit: a prompt's responses rendered with it, best first (a pair is K = 2)."""

    sequences: list[list[int]]
    """K token-id sequences (prompt + response, chat-rendered)."""
    strength: int | None = None
    """The annotator's 1-4 preference strength of a pair, if given."""
    response_masks: list[list[bool]] | None = None
    """Per sequence, True on its response's tokens (read by the likelihood feature)."""
    p_chosen: float | None = None
    """A soft label of a pair: the labeller's probability that the first response is better (``posttrain label``'s share of verdicts), if given."""


@dataclass
class ComparisonBatch:
    """B comparisons: their N = sum(K_b) responses flattened (comparison by comparison, best first)."""

    sequences: Batch | SharedPrefixBatch
    """The N sequences, padded (N, T), or packed in one row with each comparison's prompt once."""
    mask: torch.Tensor
    """(B, K) bool: True on the K_b real responses of comparison b (row-major order = sequence order)."""
    strength: torch.Tensor
    """(B,) long strengths 1-4, 0 where unknown."""
    p_chosen: torch.Tensor | None = None
    """(B,) soft labels, 1 where unknown (None when no comparison has one)."""

    def to(self, device) -> "ComparisonBatch":
        p = None if self.p_chosen is None else self.p_chosen.to(device)
        return ComparisonBatch(self.sequences.to(device), self.mask.to(device), self.strength.to(device), p)


def collate_comparisons(comparisons: list[Comparison], pad_id: int, packing: bool,
                        responses: bool = False) -> ComparisonBatch:
    """``responses``: lay out the response masks too (a target mask, or padded labels), for the likelihood feature."""
    k = max(len(c.sequences) for c in comparisons)
    mask = torch.tensor([[i < len(c.sequences) for i in range(k)] for c in comparisons])
    strength = torch.tensor([c.strength or 0 for c in comparisons], dtype=torch.long)
    p_chosen = None
    if any(c.p_chosen is not None for c in comparisons):
        p_chosen = torch.tensor([1.0 if c.p_chosen is None else c.p_chosen for c in comparisons])
    if packing:  # one row, no padding, each prompt once: the batch costs its distinct tokens
        masks = [c.response_masks for c in comparisons] if responses else None
        return ComparisonBatch(pack_shared_prefix([c.sequences for c in comparisons], masks), mask, strength, p_chosen)
    examples = [Example(ids, c.response_masks[k] if responses else [True] * len(ids))
                for c in comparisons for k, ids in enumerate(c.sequences)]
    return ComparisonBatch(pad_collate(examples, pad_id), mask, strength, p_chosen)


def comparison_records(records: list, ranking: bool) -> list:
    """Records in the shape the loss wants: rankings stay whole for ranking losses and are expanded
    into their K(K-1)/2 pairs for pairwise ones; a preference is a ranking of two."""
    if ranking:
        return records
    return [p for r in records for p in (r.to_pairs() if r.kind == "ranking" else [r])]


def responses_of(record) -> list:
    """A preference's or a ranking's responses, best first."""
    return [record.chosen, record.rejected] if record.kind == "preference" else record.responses
