"""Preference data as token ids (posttrain.data.preference): response masks from the chat template,
length limits with counted drops, the chosen-then-rejected batch layout, KTO's mismatched KL rows."""

from __future__ import annotations

import pytest
import torch

from posttrain.data.chat import ExampleTooLongError, render_chat
from posttrain.data.preference import (
    collate_preferences, collate_unpaired, preferences_to_unpaired, tokenize_preferences, tokenize_unpaired,
)
from posttrain.data.records import Message, Preference, Unpaired


def pref(i: int, strength: int | None = 2) -> Preference:
    prompt = [Message("system", "Answer briefly."), Message("user", f"What is {i} plus {i}?")]
    return Preference(prompt, [Message("assistant", f"{2 * i}.")],
                      [Message("assistant", f"I think {i} plus {i} is {2 * i + 1}, but I am not sure.")], strength)


def test_pairs_share_the_prompt_and_mask_only_the_response(tiny_tokenizer):
    (ex,), report = tokenize_preferences(tiny_tokenizer, [pref(3)])
    assert report.kept == 1 and report.dropped == 0 and ex.strength == 2
    start = ex.chosen.response_start
    assert ex.chosen.input_ids[:start] == ex.rejected.input_ids[:start]
    # The ids are the chat template's, whole conversation rendered once.
    full = render_chat(tiny_tokenizer, [m.to_dict() for m in pref(3).prompt + pref(3).chosen])
    assert ex.chosen.input_ids == full.input_ids
    for seq, text in ((ex.chosen, "6."), (ex.rejected, "I think 3 plus 3 is 7, but I am not sure.")):
        assert not any(seq.loss_mask[:seq.response_start])
        masked = tiny_tokenizer.decode([t for t, m in zip(seq.input_ids, seq.loss_mask) if m])
        assert masked == text + "<|im_end|>"  # the response and its end-of-turn marker, no role header


def test_length_limits_are_applied_and_counted(tiny_tokenizer):
    records = [pref(i) for i in range(4)]
    (full,), _ = tokenize_preferences(tiny_tokenizer, records[:1])
    short_len = len(full.chosen)
    limit = short_len + 2  # fits the chosen response, not the long rejected one
    kept, report = tokenize_preferences(tiny_tokenizer, records, max_length=limit)
    assert report.kept == 4 and report.truncated == 4 and all(len(e.rejected) == limit for e in kept)
    assert kept[0].chosen.input_ids == full.chosen.input_ids  # untouched side
    dropped, report = tokenize_preferences(tiny_tokenizer, records, max_length=limit, overflow="drop")
    assert dropped == [] and report.dropped_too_long == 4 and "4 longer than max_length" in report.summary()
    every, _ = tokenize_preferences(tiny_tokenizer, records)
    shortest_prompt = min(e.chosen.response_start for e in every)  # no room left for any response
    _, report = tokenize_preferences(tiny_tokenizer, records, max_length=shortest_prompt)
    assert report.kept == 0 and report.dropped_no_response == 4
    with pytest.raises(ExampleTooLongError, match="record 0"):
        tokenize_preferences(tiny_tokenizer, records, max_length=limit, overflow="error")


def test_collate_puts_chosen_rows_first_for_one_forward(tiny_tokenizer):
    examples, _ = tokenize_preferences(tiny_tokenizer, [pref(1), pref(22, strength=4), pref(5)])
    batch = collate_preferences(examples, tiny_tokenizer.pad_token_id, indices=[7, 8, 9])
    assert batch.num_pairs == 3 and batch.input_ids.shape[0] == 6
    assert batch.strength.tolist() == [2, 4, 2] and batch.index.tolist() == [7, 8, 9]
    chosen_ids, rejected_ids = batch.split(batch.input_ids)
    for row, ex in enumerate(examples):
        n, m = len(ex.chosen), len(ex.rejected)
        assert chosen_ids[row, :n].tolist() == ex.chosen.input_ids and rejected_ids[row, :m].tolist() == ex.rejected.input_ids
        assert batch.attention_mask[row].sum() == n and batch.attention_mask[3 + row].sum() == m
    lengths = batch.response_lengths()
    assert lengths.tolist() == [sum(e.chosen.loss_mask) for e in examples] + [sum(e.rejected.loss_mask) for e in examples]
    assert not (batch.response_mask & ~batch.attention_mask).any()
    no_strength, _ = tokenize_preferences(tiny_tokenizer, [pref(1), pref(2, strength=None)])
    assert collate_preferences(no_strength, 0).strength is None
    with pytest.raises(ValueError, match="no examples"):
        collate_preferences([], 0)


def test_unpaired_examples_get_mismatched_kl_rows(tiny_tokenizer):
    records = preferences_to_unpaired([pref(1), pref(2)])
    assert [r.desirable for r in records] == [True, False, True, False]
    records.append(Unpaired([Message("user", "Hi")], [Message("assistant", "Hello!")], True))
    examples, report = tokenize_unpaired(tiny_tokenizer, records)
    assert report.kept == 5
    for i, ex in enumerate(examples):
        other = examples[i - 1].example  # the previous example's completion, cyclically
        start = ex.example.response_start
        assert ex.kl.input_ids[:start] == ex.example.input_ids[:start]
        assert ex.kl.input_ids[start:] == other.input_ids[other.response_start:]
        assert ex.kl.loss_mask == [False] * start + other.loss_mask[other.response_start:]
    batch = collate_unpaired(examples, tiny_tokenizer.pad_token_id)
    assert batch.num_examples == 5 and batch.kl is not None and batch.kl.input_ids.shape[0] == 5
    assert batch.desirable.tolist() == [True, False, True, False, True]
    assert batch.kl.input_ids[0, :len(examples[0].kl)].tolist() == examples[0].kl.input_ids
    plain, _ = tokenize_unpaired(tiny_tokenizer, records, kl_pairs=False)
    assert collate_unpaired(plain, 0).kl is None


def test_packed_layout_holds_the_same_sequences_without_padding(tiny_tokenizer):
    examples, _ = tokenize_preferences(tiny_tokenizer, [pref(1), pref(22), pref(5, strength=None)])
    padded = collate_preferences(examples, tiny_tokenizer.pad_token_id)
    packed = collate_preferences(examples, tiny_tokenizer.pad_token_id, indices=[0, 1, 2], packed=True)
    assert packed.packed and not padded.packed and packed.num_pairs == padded.num_pairs == 3
    assert packed.input_ids.shape == (1, int(padded.attention_mask.sum()))  # every real token, no padding
    assert packed.model_inputs().keys() == {"input_ids", "position_ids", "use_cache"}
    assert packed.strength is None and packed.index.tolist() == [0, 1, 2]
    torch.testing.assert_close(packed.response_lengths(), padded.response_lengths())
    values = torch.rand(padded.input_ids.shape)
    flat = values[padded.attention_mask][None]  # the same token values, in packed order
    torch.testing.assert_close(packed.sum_by_sequence(flat), padded.sum_by_sequence(values * padded.attention_mask))
    starts = (packed.position_ids[0] == 0).nonzero().flatten()
    assert starts.tolist() == [0] + torch.cumsum(padded.attention_mask.sum(-1), 0)[:-1].tolist()
    chosen, rejected = packed.split(torch.arange(6))
    assert chosen.tolist() == [0, 1, 2] and rejected.tolist() == [3, 4, 5]
    moved = packed.to("cpu")
    assert moved.packed and moved.num_sequences == 6
