"""Preference data as token ids: pairs for DPO-family losses and reward models, unpaired examples for KTO.

Records (``posttrain.data.records``) become tokenized examples, and examples become batches:

    tokenize_preferences(tokenizer, records, max_length)  -> [PreferenceExample], PreferenceReport
    collate_preferences(examples, pad_token_id)           -> PreferenceBatch (chosen rows, then rejected rows)
    tokenize_unpaired(tokenizer, records, max_length)     -> [UnpairedExample], PreferenceReport
    collate_unpaired(examples, pad_token_id)              -> UnpairedBatch (completions, then KL rows)
    collate_shared_prompt(examples)                       -> PreferenceBatch in one row, each prompt once

Each response is rendered after its prompt with the tokenizer's chat template by
:func:`posttrain.data.chat.render_prompt_response`, so the ids are those the model sees at
inference and the **response mask** marks the response's tokens (its content and the
end-of-turn marker, never the prompt or the role header). Chosen and rejected are tokenized
separately, each with the same prompt.

A :class:`PreferenceBatch` holds the B chosen sequences as sequences ``0..B-1`` and the B rejected
ones as ``B..2B-1``, so that one forward pass scores both halves (the batch is twice as large and
the weights are read once); :meth:`PreferenceBatch.split` cuts any (2B, ...) per-sequence result
back into its chosen and rejected halves. Two layouts (:class:`SequenceBatch`): padded, one row
per sequence, whose ends come from ``attention_mask`` (a reward model reads its score at the last
attended token of each row); or packed, every sequence in one row with no padding, positions
restarting per sequence. Masks are booleans aligned with ``input_ids`` (``response_mask[b, t]``
says whether token t is a response token; the logit that predicts it is at t - 1).

Length: a sequence longer than ``max_length`` loses tokens from its end (``overflow="truncate"``,
the response's tail), is dropped with its pair (``"drop"``), or stops the run (``"error"``); a
pair whose prompt leaves no room for a response is dropped. Everything cut or dropped is counted
in the :class:`PreferenceReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable, Literal, Sequence

import torch

from posttrain.data.chat import ExampleTooLongError, PromptResponse, render_prompt_response, render_prompt_responses
from posttrain.data.packing import pack_shared_prefix, packed_model_inputs
from posttrain.data.errors import DataError, location_of
from posttrain.data.records import Preference, Unpaired, messages_to_dicts

Overflow = Literal["truncate", "drop", "error"]


# --- examples ------------------------------------------------------------------------------

@dataclass
class PreferenceExample:
    """One tokenized pair: the prompt followed by the chosen response, and followed by the rejected one."""

    chosen: PromptResponse
    """prompt + chosen ids; ``loss_mask`` marks the chosen response's tokens."""
    rejected: PromptResponse
    """prompt + rejected ids; ``loss_mask`` marks the rejected response's tokens."""
    strength: int | None = None
    """How strongly chosen is preferred (1-4, for margin losses), None when not annotated."""

    def __len__(self) -> int:
        """Tokens of the longer sequence (the width the pair needs in a batch)."""
        return max(len(self.chosen), len(self.rejected))


@dataclass
class UnpairedExample:
    """One tokenized response labelled desirable or undesirable, for KTO."""

    example: PromptResponse
    """prompt + completion ids; ``loss_mask`` marks the completion."""
    desirable: bool
    """True for a desirable (good) completion."""
    kl: PromptResponse | None = None
    """This prompt followed by *another* example's completion: KTO's mismatched pair, whose log-ratio
    estimates KL(pi || pi_ref) (Ethayarajh et al. 2024, §4.1). None when not built."""

    def __len__(self) -> int:
        return max(len(self.example), len(self.kl) if self.kl is not None else 0)


@dataclass
class PreferenceReport:
    """What tokenization kept, cut and dropped."""

    max_length: int
    """The length limit the counts refer to."""
    seen: int = 0
    """Records read."""
    kept: int = 0
    """Examples returned."""
    truncated: int = 0
    """Kept examples with a sequence cut to max_length."""
    dropped_too_long: int = 0
    """Dropped because a sequence was longer than max_length (overflow=drop)."""
    dropped_no_response: int = 0
    """Dropped because a response had no token left (empty, or the prompt fills max_length)."""

    @property
    def dropped(self) -> int:
        return self.dropped_too_long + self.dropped_no_response

    def summary(self) -> str:
        return (f"tokenized {self.seen} records into {self.kept} examples; {self.truncated} truncated to "
                f"max_length={self.max_length}; dropped {self.dropped}: {self.dropped_too_long} longer than "
                f"max_length, {self.dropped_no_response} with no response token left")


def _fit(seq: PromptResponse, index: int | str, max_length: int, overflow: Overflow) -> PromptResponse | str:
    """The sequence within max_length, or the reason it is dropped ("too_long", "no_response")."""
    if len(seq) > max_length:
        if overflow == "error":
            raise ExampleTooLongError(
                f"{index if isinstance(index, str) else f'record {index} (0-based)'}: a sequence of {len(seq)} "
                f"tokens, longer than data.max_length="
                f"{max_length}. Raise data.max_length, or set data.overflow=truncate or data.overflow=drop.")
        if overflow == "drop":
            return "too_long"
        if overflow != "truncate":
            raise ValueError(f"data.overflow={overflow!r}: expected truncate, drop or error")
        seq = PromptResponse(seq.input_ids[:max_length], seq.loss_mask[:max_length], min(seq.response_start, max_length))
    return seq if any(seq.loss_mask) else "no_response"


def _count(report: PreferenceReport, reason: str) -> None:
    if reason == "too_long":
        report.dropped_too_long += 1
    else:
        report.dropped_no_response += 1


def tokenize_preference(tokenizer, record: Preference) -> PreferenceExample:
    """One preference record rendered with the tokenizer's chat template (no length limit)."""
    prompt = messages_to_dicts(record.prompt)
    return PreferenceExample(render_prompt_response(tokenizer, prompt, messages_to_dicts(record.chosen)),
                             render_prompt_response(tokenizer, prompt, messages_to_dicts(record.rejected)),
                             record.strength)


def tokenize_preferences(tokenizer, records: Iterable[Preference], max_length: int = 1024,
                         overflow: Overflow = "truncate") -> tuple[list[PreferenceExample], PreferenceReport]:
    """Tokenize preference records; apply ``max_length`` / ``overflow`` to each sequence of a pair.

    A pair is dropped whole when either of its sequences is (the other alone carries no preference).
    """
    report, out, records = PreferenceReport(max_length), [], list(records)
    items = []
    for record in records:
        prompt = messages_to_dicts(record.prompt)
        items += [(prompt, messages_to_dicts(record.chosen)), (prompt, messages_to_dicts(record.rejected))]
    rendered = render_prompt_responses(tokenizer, items)  # every distinct text rendered once, tokenized in one call
    for index, record in enumerate(records):
        report.seen += 1
        pair = PreferenceExample(rendered[2 * index], rendered[2 * index + 1], record.strength)
        where = location_of(record, index)
        chosen, rejected = (_fit(s, where, max_length, overflow) for s in (pair.chosen, pair.rejected))
        reason = next((r for r in (chosen, rejected) if isinstance(r, str)), None)
        if reason is not None:
            _count(report, reason)
            continue
        report.truncated += int(chosen is not pair.chosen or rejected is not pair.rejected)
        out.append(PreferenceExample(chosen, rejected, pair.strength))
        report.kept += 1
    return out, report


def preferences_to_unpaired(records: Iterable[Preference]) -> list[Unpaired]:
    """Each pair as two unpaired records, chosen desirable and rejected undesirable (KTO from pair data)."""
    out = []
    for r in records:
        out.append(Unpaired(r.prompt, r.chosen, True, dict(r.meta)))
        out.append(Unpaired(r.prompt, r.rejected, False, dict(r.meta)))
    return out


def mismatched(prompt_of: PromptResponse, response_of: PromptResponse) -> PromptResponse:
    """The prompt of one example followed by the response of another (ids and mask spliced at
    ``response_start``)."""
    head = prompt_of.response_start
    tail = response_of.response_start
    return PromptResponse(prompt_of.input_ids[:head] + response_of.input_ids[tail:],
                          [False] * head + response_of.loss_mask[tail:], head)


def tokenize_unpaired(tokenizer, records: Sequence[Unpaired], max_length: int = 1024, overflow: Overflow = "truncate",
                      kl_pairs: bool = True) -> tuple[list[UnpairedExample], PreferenceReport]:
    """Tokenize unpaired records; with ``kl_pairs`` each example also gets the KL row of KTO: its
    prompt with the completion of the previous kept example (cyclically), fixed once here so that
    reference log-probs can be computed ahead of training. KL rows longer than max_length are cut."""
    report, kept = PreferenceReport(max_length), []
    for index, record in enumerate(records):
        report.seen += 1
        seq = render_prompt_response(tokenizer, messages_to_dicts(record.prompt), messages_to_dicts(record.completion))
        fitted = _fit(seq, location_of(record, index), max_length, overflow)
        if isinstance(fitted, str):
            _count(report, fitted)
            continue
        report.truncated += int(fitted is not seq)
        kept.append(UnpairedExample(fitted, record.desirable))
        report.kept += 1
    if kl_pairs and len(kept) > 1:
        for i, ex in enumerate(kept):
            kl = mismatched(ex.example, kept[i - 1].example)
            ex.kl = PromptResponse(kl.input_ids[:max_length], kl.loss_mask[:max_length], kl.response_start)
    return kept, report


# --- batches ---------------------------------------------------------------------------------

@dataclass
class SequenceBatch:
    """R prompt + response sequences in one of two layouts.

    - **padded** (default): row r is sequence r, right-padded to the longest, (R, T);
      ``attention_mask`` marks real tokens.
    - **packed**: every sequence side by side in one row, (1, N), no padding at all;
      ``position_ids`` restart at 0 for each sequence (so a transformers model attends within
      each, see ``posttrain.data.packing``) and ``sequence_ids`` name each token's sequence.

    Either way ``response_mask`` is aligned with ``input_ids`` and :meth:`sum_by_sequence` turns
    per-token values into one value per sequence, in sequence order.
    """

    input_ids: torch.Tensor
    """(R, T) long when padded (padding holds the pad id); (1, N) when packed."""
    response_mask: torch.Tensor
    """Same shape, bool: True on response tokens (the targets), unshifted."""
    num_sequences: int
    """R, the number of sequences."""
    attention_mask: torch.Tensor | None = None
    """Padded: (R, T) bool, True on real tokens. Packed: None."""
    position_ids: torch.Tensor | None = None
    """Packed: (1, N) long, 0 at the first token of every sequence. Padded: None."""
    sequence_ids: torch.Tensor | None = None
    """Packed: (1, N) long, the sequence (0..R-1) each token belongs to. Padded: None."""

    @property
    def packed(self) -> bool:
        return self.sequence_ids is not None

    def sum_by_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """(R,) sums of per-token ``values`` (shaped like ``input_ids``) over each sequence's tokens."""
        if not self.packed:
            return values.sum(-1)
        out = torch.zeros(self.num_sequences, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.sequence_ids.flatten(), values.flatten())

    def response_lengths(self) -> torch.Tensor:
        """(R,) response tokens per sequence."""
        return self.sum_by_sequence(self.response_mask.long())

    def model_inputs(self) -> dict[str, torch.Tensor | bool]:
        """Keyword arguments for a transformers causal LM's forward (packed: positions, no mask, no cache)."""
        if self.packed:
            return packed_model_inputs(self.input_ids, self.position_ids)
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device: torch.device | str):
        """A copy on ``device`` (every tensor field, any subclass)."""
        moved = {f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                 else getattr(self, f.name) for f in fields(self)}
        return replace(self, **moved)


@dataclass(kw_only=True)
class PreferenceBatch(SequenceBatch):
    """B pairs as 2B sequences: the chosen ones (sequences 0..B-1), then the rejected ones (B..2B-1)."""

    strength: torch.Tensor | None = None
    """(B,) long preference strength 1-4, or None when any pair lacks one."""
    index: torch.Tensor | None = None
    """(B,) long: each pair's position in its dataset (to look up cached reference log-probs), if given."""

    @property
    def num_pairs(self) -> int:
        return self.num_sequences // 2

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) halves of a (2B, ...) per-sequence tensor."""
        return values[:self.num_pairs], values[self.num_pairs:]


@dataclass(kw_only=True)
class UnpairedBatch(SequenceBatch):
    """B unpaired examples (their prompt + completion sequences), with KTO's KL rows alongside."""

    desirable: torch.Tensor
    """(B,) bool."""
    kl: SequenceBatch | None = None
    """Each example's prompt followed by another example's completion (same layout), when every example has one."""
    index: torch.Tensor | None = None
    """(B,) long positions in the dataset, if given."""

    @property
    def num_examples(self) -> int:
        return self.num_sequences

    def to(self, device: torch.device | str) -> "UnpairedBatch":
        moved = super().to(device)
        return replace(moved, kl=None if self.kl is None else self.kl.to(device))


def collate_sequences(rows: Sequence[PromptResponse], pad_token_id: int, packed: bool = False,
                      pad_to_multiple_of: int | None = None) -> SequenceBatch:
    """Lay ``rows`` out padded (R, T) or packed (1, N) (see :class:`SequenceBatch`)."""
    if not rows:
        raise ValueError("no sequences to collate")
    for i, r in enumerate(rows):
        if len(r.loss_mask) != len(r.input_ids) or not r.input_ids:
            raise ValueError(f"row {i} has {len(r.input_ids)} input_ids and {len(r.loss_mask)} loss_mask entries; "
                             "both must be equal and non-zero")
    if packed:
        ids = torch.tensor([t for r in rows for t in r.input_ids], dtype=torch.long)[None]
        # A sequence's first token is never a target (nothing before it predicts it), as when padded.
        mask = torch.tensor([m and t > 0 for r in rows for t, m in enumerate(r.loss_mask)], dtype=torch.bool)[None]
        positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
        sequence = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(r) for r in rows]))[None]
        return SequenceBatch(ids, mask, len(rows), position_ids=positions, sequence_ids=sequence)
    width = max(len(r) for r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r.input_ids, dtype=torch.long)
        attention_mask[i, :len(r)] = True
        response_mask[i, :len(r)] = torch.tensor(r.loss_mask, dtype=torch.bool)
    return SequenceBatch(input_ids, response_mask, len(rows), attention_mask=attention_mask)


def _fields(batch: SequenceBatch) -> dict:
    return {f.name: getattr(batch, f.name) for f in fields(SequenceBatch)}


def collate_preferences(examples: Sequence[PreferenceExample], pad_token_id: int,
                        indices: Sequence[int] | None = None, packed: bool = False,
                        pad_to_multiple_of: int | None = None) -> PreferenceBatch:
    """B pairs as one batch of 2B sequences, chosen first (see :class:`PreferenceBatch`), so that one
    forward pass scores both halves. ``indices``: the pairs' positions in their dataset (``batch.index``).
    ``packed``: one row, no padding (see :class:`SequenceBatch`)."""
    if not examples:
        raise ValueError("collate_preferences: no examples to collate")
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    strengths = [e.strength for e in examples]
    strength = None if any(s is None for s in strengths) else torch.tensor(strengths, dtype=torch.long)
    index = None if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    return PreferenceBatch(**_fields(collate_sequences(rows, pad_token_id, packed, pad_to_multiple_of)),
                           strength=strength, index=index)


def collate_unpaired(examples: Sequence[UnpairedExample], pad_token_id: int, indices: Sequence[int] | None = None,
                     packed: bool = False, pad_to_multiple_of: int | None = None) -> UnpairedBatch:
    """B unpaired examples as one batch, and their KL rows as ``batch.kl`` when every example has one."""
    if not examples:
        raise ValueError("collate_unpaired: no examples to collate")
    main = collate_sequences([e.example for e in examples], pad_token_id, packed, pad_to_multiple_of)
    kl = (collate_sequences([e.kl for e in examples], pad_token_id, packed, pad_to_multiple_of)
          if all(e.kl is not None for e in examples) else None)
    desirable = torch.tensor([e.desirable for e in examples], dtype=torch.bool)
    index = None if indices is None else torch.as_tensor(list(indices), dtype=torch.long)
    return UnpairedBatch(**_fields(main), desirable=desirable, kl=kl, index=index)


def collate_shared_prompt(examples: Sequence[PreferenceExample],
                          indices: Sequence[int] | None = None) -> PreferenceBatch:
    """B pairs in one row with no padding, each pair as [prompt, chosen response, rejected response]:
    the prompt computed once, each response continuing from it and attending to it and to itself
    only (``posttrain.data.packing.pack_shared_prefix``; the model needs
    ``posttrain.models.attention.use_shared_prefix_attention``). The shared part is the pair's common
    prefix up to its first response token. Sequences are numbered as in every PreferenceBatch, chosen
    0..B-1 then rejected B..2B-1, so results (and the cached reference log-probs) do not depend on the
    layout."""
    row = pack_shared_prefix([[e.chosen.input_ids, e.rejected.input_ids] for e in examples],
                             [[e.chosen.loss_mask, e.rejected.loss_mask] for e in examples])
    b = len(examples)
    number = torch.tensor([k * b + i for i in range(b) for k in (0, 1)])  # pair-major packing -> chosen first
    strengths = [e.strength for e in examples]
    return PreferenceBatch(
        input_ids=row.input_ids, response_mask=row.target_mask, num_sequences=2 * b, position_ids=row.position_ids,
        sequence_ids=number[row.sequence_ids],
        strength=None if None in strengths else torch.tensor(strengths, dtype=torch.long),
        index=None if indices is None else torch.as_tensor(list(indices), dtype=torch.long))


def collate_examples(examples: Sequence[PreferenceExample | UnpairedExample], pad_id: int,
                     indices: Sequence[int] | None = None, packed: bool = False) -> PreferenceBatch | UnpairedBatch:
    """A micro-batch: padded, or (``packed``) in one row: pairs with their prompt once, unpaired
    examples side by side."""
    if examples and isinstance(examples[0], UnpairedExample):
        return collate_unpaired(examples, pad_id, indices, packed)
    if packed:
        return collate_shared_prompt(examples, indices)
    return collate_preferences(examples, pad_id, indices)


__all__ = [
    "PreferenceExample", "UnpairedExample", "PreferenceReport", "SequenceBatch", "PreferenceBatch", "UnpairedBatch",
    "tokenize_preference", "tokenize_preferences", "tokenize_unpaired", "preferences_to_unpaired", "mismatched",
    "collate_sequences", "collate_preferences", "collate_unpaired", "collate_shared_prompt", "collate_examples",
]


def tokenize_for_loss(tokenizer, records: Sequence, unpaired: bool, max_length: int = 1024,
                      overflow: Overflow = "truncate", loss_name: str = "sigmoid"):
    """(examples, report) for a pairwise loss (preference records) or an unpaired one (unpaired records,
    and preferences split into a desirable chosen and an undesirable rejected)."""
    kinds = {r.kind for r in records}
    if unpaired:
        examples = [r for r in records if r.kind == "unpaired"]
        examples += preferences_to_unpaired([r for r in records if r.kind == "preference"])
        return tokenize_unpaired(tokenizer, examples, max_length, overflow)
    if kinds - {"preference"}:
        raise DataError(f"loss {loss_name} trains on preference records (prompt, chosen, rejected), but the data "
                        f"holds {sorted(kinds - {'preference'})} records; use loss.name=kto for unpaired data")
    return tokenize_preferences(tokenizer, records, max_length, overflow)
