"""Padding-free packing layouts: several tokenized examples per row, each attending only to itself.

This module holds the layouts and the indexing into them: packed rows (:func:`pack_examples`),
shared-prefix rows (:func:`pack_shared_prefix`), how a row's ``position_ids`` split into segments
(:func:`segment_bounds`, :func:`prefix_segments`) and where each response token's predictor is
(:func:`response_tokens`). The attention that reads these layouts is in
:mod:`posttrain.models.attention`; the length-grouped sampler for padded batching is
:class:`posttrain.training.sampler.LengthGroupedSampler`.

A padded batch spends compute on padding: examples of 32 to 512 tokens padded to the longest
waste about half of every matrix product. A packed batch puts examples side by side in rows of
up to ``row_length`` tokens:

- ``position_ids`` restart at 0 at the start of every example, so rotary positions are those the
  example would have alone;
- no attention crosses an example boundary: neither an ``attention_mask`` nor a KV cache is
  passed (``use_cache=False``: with a cache it silently attends across), and transformers
  (5.x, Llama-style models with sdpa or eager attention) reads the restarts in ``position_ids``
  and builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``); flash
  attention reads the same restarts as variable-length sequences, but only in a single row, so
  for it use ``row_length=None`` (everything in one row);
- labels stay aligned with ``input_ids`` as in ``posttrain.data.collate`` (the loss shifts them),
  and the first token of every example is ``IGNORE_INDEX``: after the shift, the previous
  example's last token would otherwise be trained to predict it. A lone example never predicts
  its first token either, so a packed example carries exactly the targets it has when padded.

Rows are filled first-fit in order of decreasing length; the tail of a short row is filled with
pad tokens that form a segment of their own (positions 0, 1, ...) with no targets, so they never
touch a real token.

**Attention per example.** transformers' sdpa/eager attention applies the block-diagonal mask to
the whole (T, T) product of a row, so a long row pays for attention between examples that is then
masked away. :func:`posttrain.models.attention.segment_attention` (installed with
:func:`posttrain.models.attention.use_segment_attention`) instead attends within each example of
the row, with the model's sliding window and logit soft-capping: a whole micro-batch can then be
one row with no padding at all and attention costs what the examples cost alone
(``row_length=None``, the SFT recipe's default). Masked or cached calls (generation) go to the
model's own attention.

**Shared prefix.** Sequences that begin with the same prompt (a reward model's responses to one
prompt, a DPO pair's chosen and rejected) can share it: :func:`pack_shared_prefix` lays out each
group as [prefix, rest_1, rest_2, ...] in one row, each rest's positions continuing from the
prefix, and :func:`posttrain.models.attention.segment_attention` lets each rest attend to its
prefix and to itself only, so the prompt is computed once per group and every sequence gets the
hidden states it has alone (see the section comments below).

**What a batch is.** Packing changes the *layout* of a micro-batch, not its content: a micro-batch
is the same ``batch_size`` examples that would be padded, packed instead. So a packed run and a
padded run with the same seed train on the same examples at every step, normalized by the same
target-token counts, and give the same loss curve (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from posttrain.data.collate import IGNORE_INDEX, TokenizedExample


def packed_model_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor) -> dict[str, torch.Tensor | bool]:
    """Keyword arguments for a transformers causal LM's forward over packed rows: ids and positions, and
    deliberately neither an attention_mask nor a KV cache: transformers looks for packed sequences in
    ``position_ids`` only when both are absent, and a model left to its config's ``use_cache=True``
    makes a cache (then every example would see the ones before it)."""
    return {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}


@dataclass
class PackedBatch:
    """Examples packed side by side in rows, for a causal LM without an attention mask."""

    input_ids: torch.Tensor
    """(R, T) long token ids; the padding tail of a row holds the pad id."""
    position_ids: torch.Tensor
    """(R, T) long, 0 at the first token of every example (and of every row's padding tail)."""
    labels: torch.Tensor
    """(R, T) long, unshifted: input_ids on loss tokens, IGNORE_INDEX elsewhere and on each example's first token."""
    token_mask: torch.Tensor
    """(R, T) bool, True on example tokens, False on padding."""
    example_spans: list[list[tuple[int, int]]]
    """For each row, the ``[start, end)`` column span of each example, in packing order."""
    example_index: list[list[int]]
    """For each row, the index (in the packed list) of each example of ``example_spans``."""

    @property
    def num_target_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_tokens(self) -> int:
        """Example tokens (padding excluded)."""
        return int(self.token_mask.sum())

    def to(self, device: torch.device | str) -> "PackedBatch":
        moved = (t.to(device) for t in (self.input_ids, self.position_ids, self.labels, self.token_mask))
        return PackedBatch(*moved, self.example_spans, self.example_index)

    def model_inputs(self) -> dict[str, torch.Tensor | bool]:
        """Keyword arguments for a transformers causal LM's forward (:func:`packed_model_inputs`)."""
        return packed_model_inputs(self.input_ids, self.position_ids)


def pack_rows(lengths: Sequence[int], row_length: int | None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``row_length`` tokens, first-fit decreasing.

    Deterministic: ties keep their input order. ``row_length=None`` puts everything in one row.
    """
    if row_length is None:
        return [list(range(len(lengths)))]
    too_long = [(i, n) for i, n in enumerate(lengths) if n > row_length]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"example {i} has {n} tokens, more than a packed row holds ({row_length}); "
                         f"truncate examples to data.max_length first, or raise the row length")
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        # First fit: the earliest row with room. Rows are few (a micro-batch's worth), so a scan is fine.
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(row_length)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pack_examples(examples: Sequence[TokenizedExample], pad_token_id: int,
                  row_length: int | None = None, pad_to_multiple_of: int | None = None) -> PackedBatch:
    """Pack ``examples`` (each with ``input_ids`` and ``loss_mask``) into rows of ``row_length`` tokens.

    The batch is as wide as its fullest row (rounded up to ``pad_to_multiple_of``), at most
    ``row_length``. ``row_length=None`` packs everything into one row (what flash attention's
    variable-length kernels need).
    """
    if not examples:
        raise ValueError("pack_examples: no examples to pack")
    for i, ex in enumerate(examples):
        if len(ex.loss_mask) != len(ex.input_ids) or not ex.input_ids:
            raise ValueError(f"pack_examples: example {i} has {len(ex.input_ids)} input_ids and "
                             f"{len(ex.loss_mask)} loss_mask entries; both must be equal and non-zero")
    rows = pack_rows([len(ex.input_ids) for ex in examples], row_length)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    token_mask = torch.zeros(shape, dtype=torch.bool)
    positions = np.zeros(shape, dtype=np.int64)
    spans: list[list[tuple[int, int]]] = []
    for r, row in enumerate(rows):
        col, row_spans = 0, []
        for i in row:
            ids = torch.tensor(examples[i].input_ids, dtype=torch.long)
            mask = torch.tensor(examples[i].loss_mask, dtype=torch.bool)
            mask[0] = False  # nothing before it in its own example: never a target (see module doc)
            n = len(ids)
            input_ids[r, col:col + n] = ids
            labels[r, col:col + n] = torch.where(mask, ids, IGNORE_INDEX)
            token_mask[r, col:col + n] = True
            positions[r, col:col + n] = np.arange(n)
            row_spans.append((col, col + n))
            col += n
        positions[r, col:] = np.arange(width - col)  # the padding tail is a segment of its own
        spans.append(row_spans)
    return PackedBatch(input_ids, torch.from_numpy(positions), labels, token_mask, spans, rows)


def padding_fraction(lengths: Sequence[int], batch_rows: int, width: int) -> float:
    """Share of a ``(batch_rows, width)`` tensor that is padding, for ``lengths`` laid out in it."""
    return 1.0 - sum(lengths) / max(1, batch_rows * width)


# --------------------------------------------------------------------------- attention per example


def segment_bounds(positions: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` of each example in a row of packed ``positions`` (T,): a new example starts
    wherever the position does not follow the previous one by 1 (transformers' own rule)."""
    starts = [0] + (torch.nonzero(positions[1:] - positions[:-1] != 1).flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [len(positions)]))


# --------------------------------------------------------------------------- shared-prefix packing
#
# Sequences that share a prompt (the responses of one comparison, chosen and rejected of a DPO pair)
# need not compute it more than once. Causal attention makes a prompt token's hidden states
# independent of what follows it, so the prompt (any common prefix) can be computed once and each
# sequence continue from it: [prefix, rest_1, rest_2, ...] in one row, rest_i's positions continuing
# from the prefix, and rest_i attending to the prefix and to itself only. The encoding lives in
# position_ids alone: a segment starts wherever a position does not follow the previous one by 1; a
# segment starting at position 0 is a root, one starting at p > 0 continues the latest root's first
# p tokens. (Roots only is plain packing.) Hidden states, hence scores and token log-probs, equal
# separate forwards of each whole sequence up to float rounding, at the cost of the prefix once
# instead of K times. The token before rest_i's first one is the prefix's last token, not the
# previous column: :func:`previous_token_columns` says where each token's predictor is.


@dataclass
class SharedPrefixBatch:
    """Groups of sequences sharing a prefix, packed in one row (see the section comment)."""

    input_ids: torch.Tensor
    """(1, T) token ids: each group's shared prefix once, then each sequence's remaining tokens."""
    position_ids: torch.Tensor
    """(1, T) positions each token has in its own whole sequence."""
    score_columns: torch.Tensor
    """(N,) long column of each sequence's last token, sequences in input order (group by group)."""
    num_sequence_tokens: int
    """Tokens of the N sequences as if unpacked (prefixes counted once per sequence)."""
    sequence_ids: torch.Tensor | None = None
    """(1, T) long: the sequence (0..N-1, input order) each column belongs to; a shared prefix is
    counted to its group's first sequence."""
    target_mask: torch.Tensor | None = None
    """(1, T) bool: the given masks laid out in the row (never on a shared prefix or on a sequence's
    first token); None when no masks were given."""

    @property
    def num_tokens(self) -> int:
        """Tokens in the row (what the forward costs)."""
        return int(self.input_ids.shape[1])

    def to(self, device) -> "SharedPrefixBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SharedPrefixBatch(move(self.input_ids), move(self.position_ids), move(self.score_columns),
                                 self.num_sequence_tokens, move(self.sequence_ids), move(self.target_mask))

    def model_inputs(self) -> dict[str, Any]:
        # No attention_mask and no cache: the attention reads the layout from position_ids.
        return packed_model_inputs(self.input_ids, self.position_ids)


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token of its own."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences[1:]):
        n += 1
    return n


def pack_shared_prefix(groups: Sequence[Sequence[Sequence[int]]],
                       masks: Sequence[Sequence[Sequence[bool]]] | None = None) -> SharedPrefixBatch:
    """One row holding every group: its shared prefix once, then the rest of each of its sequences.

    ``masks`` (optional, shaped like ``groups``): a target mask per sequence (e.g. a response mask).
    The shared prefix then stops before the first target of any sequence of the group, so that every
    target belongs to one sequence's own tokens; the masks come back laid out as ``target_mask``.
    """
    ids: list[int] = []
    positions: list[int] = []
    owner: list[int] = []
    targets: list[bool] = []
    ends: list[int] = []
    for g, group in enumerate(groups):
        if not group or any(len(s) == 0 for s in group):
            raise ValueError("pack_shared_prefix: every group needs at least one non-empty sequence")
        group_masks = None if masks is None else [[bool(m) and t > 0 for t, m in enumerate(mask)]
                                                  for mask in masks[g]]
        if group_masks is not None and [len(m) for m in group_masks] != [len(s) for s in group]:
            raise ValueError(f"pack_shared_prefix: group {g}'s masks do not match its sequences' lengths")
        p = shared_prefix_length(group) if len(group) > 1 else 0
        if group_masks is not None:  # a token that is some sequence's target stays that sequence's own
            p = min([p] + [m.index(True) for m in group_masks if True in m])
        first = len(ends)
        ids += list(group[0][:p])
        positions += list(range(p))
        owner += [first] * p
        targets += [False] * p
        for k, seq in enumerate(group):
            ids += list(seq[p:])
            positions += list(range(p, len(seq)))
            owner += [first + k] * (len(seq) - p)
            targets += group_masks[k][p:] if group_masks is not None else [False] * (len(seq) - p)
            ends.append(len(ids) - 1)
    return SharedPrefixBatch(torch.tensor([ids]), torch.tensor([positions]), torch.tensor(ends),
                             sum(len(s) for g in groups for s in g), torch.tensor([owner]),
                             None if masks is None else torch.tensor([targets]))


def prefix_segments(positions: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(start, end, root_start, prefix_length) of each segment of a row of positions (T,); a root has
    prefix_length 0, a continuation attends to ``[root_start, root_start + prefix_length)`` first."""
    breaks = (torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1).tolist()
    starts, firsts = [0] + breaks, positions[[0] + breaks].tolist()
    out, root, root_end = [], 0, 0
    for start, end, first in zip(starts, starts[1:] + [len(positions)], firsts):
        if first == 0:
            root, root_end = start, end
            out.append((start, end, start, 0))
        elif first <= root_end - root:
            out.append((start, end, root, first))
        else:
            raise ValueError(f"positions {start}..{end} continue a prefix of {first} tokens, but the root "
                             f"segment before them has {root_end - root}; build rows with pack_shared_prefix")
    return out


def previous_token_columns(position_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) positions of packed or shared-prefix rows -> (R, T) long: the column of the token that
    precedes each token in its own sequence (the column whose logits predict it), -1 at the first
    token of a sequence. Plain columns - 1, except at the start of a continuation segment, whose
    predecessor is the last token of the prefix it continues."""
    out = torch.arange(position_ids.shape[1], device=position_ids.device).expand_as(position_ids) - 1
    out = out.clone()
    for r in range(position_ids.shape[0]):
        for start, _, root, prefix in prefix_segments(position_ids[r]):
            out[r, start] = root + prefix - 1 if prefix else -1  # a continuation: the prefix's last token
    return out


class ResponseTokens(NamedTuple):
    """Every response token that some earlier token predicts, as parallel (N,) long index tensors."""

    rows: torch.Tensor
    cols: torch.Tensor
    """Column of the token."""
    before: torch.Tensor
    """Column of its predictor: the token before it in its own sequence."""
    owner: torch.Tensor
    """Sequence the token belongs to (its row when rows hold one sequence each)."""


def response_tokens(response_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                    sequence_ids: torch.Tensor | None = None) -> ResponseTokens:
    """The response tokens of padded (``position_ids`` None), packed or shared-prefix rows (R, T),
    each with the column whose hidden state predicts it (:func:`previous_token_columns`); a
    sequence's first token, which nothing predicts, is left out."""
    rows, cols = response_mask.nonzero(as_tuple=True)
    before = cols - 1 if position_ids is None else previous_token_columns(position_ids)[rows, cols]
    kept = before >= 0
    rows, cols, before = rows[kept], cols[kept], before[kept]
    owner = rows if sequence_ids is None else sequence_ids[rows, cols]
    return ResponseTokens(rows, cols, before, owner)
