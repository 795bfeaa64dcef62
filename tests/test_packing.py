"""Padding-free packing: row layout, the same loss as padded batching, no attention across examples,
and length-grouped sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from posttrain.data.chat import Example
from posttrain.data.collate import IGNORE_INDEX, pad_collate
from posttrain.data.packing import (
    pack_examples, pack_rows, pack_shared_prefix, padding_fraction, previous_token_columns, segment_bounds,
)
from posttrain.models.attention import use_packed_attention, use_shared_prefix_attention
from posttrain.training.sampler import LengthGroupedSampler, StepSampler, length_grouped_order

PAD = 1


def _examples(lengths, seed=0, vocab=60, loss_on_all=False):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(4, vocab, size=n).tolist()
        # A prompt part without loss, then targets, like an assistant-only mask (or all tokens).
        mask = [True] * n if loss_on_all else [i >= n // 3 for i in range(n)]
        out.append(Example(ids, mask))
    return out


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 9, 3, 7, 2], row_length=10)
    # Decreasing: 9 -> row0, 7 -> row1, 5 -> row2, 3 -> row1 (7+3), 2 -> row2 (5+2).
    assert rows == [[1], [3, 2], [0, 4]]
    assert pack_rows([5, 9], None) == [[0, 1]]
    with pytest.raises(ValueError, match="example 1 has 11 tokens"):
        pack_rows([3, 11], row_length=10)


def test_pack_layout():
    examples = _examples([4, 6, 3], loss_on_all=True)
    batch = pack_examples(examples, PAD, row_length=8)
    # 6 -> row0, 4 -> row1, 3 -> row1 (4+3=7); width = fullest row = 7.
    assert batch.input_ids.shape == batch.position_ids.shape == batch.labels.shape == (2, 7)
    assert batch.example_index == [[1], [0, 2]]
    assert batch.example_spans == [[(0, 6)], [(0, 4), (4, 7)]]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 0, 1, 2]
    # Row 0: one example of 6 then a padding segment of its own, restarting at 0.
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 0]
    assert batch.input_ids[0, 6] == PAD and not batch.token_mask[0, 6] and batch.labels[0, 6] == IGNORE_INDEX
    # Every example's first token is no target; the others keep their loss mask.
    for row, (spans, idx) in enumerate(zip(batch.example_spans, batch.example_index)):
        for (start, end), i in zip(spans, idx):
            assert batch.input_ids[row, start:end].tolist() == examples[i].input_ids
            assert batch.labels[row, start] == IGNORE_INDEX
            assert batch.labels[row, start + 1:end].tolist() == examples[i].input_ids[1:]
    assert batch.num_tokens == 13
    assert batch.num_target_tokens == 13 - 3 == pad_collate(examples, PAD).labels[:, 1:].ne(IGNORE_INDEX).sum()
    assert "attention_mask" not in batch.model_inputs()
    assert pack_examples(examples, PAD, row_length=8, pad_to_multiple_of=4).input_ids.shape == (2, 8)


ATTENTIONS = ["sdpa", "eager", "per_example"]
"""transformers' sdpa and eager (block-diagonal mask from position_ids), and posttrain's per-example sdpa."""


def _model(attn: str):
    from posttrain.models.tiny import tiny_llama

    model = tiny_llama(64, hidden_size=32, num_layers=2, num_heads=4, seed=0,
                       attn_implementation="sdpa" if attn == "per_example" else attn)
    if attn == "per_example":
        assert use_packed_attention(model) == "sdpa"
    return model.eval()


def _summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Unshifted labels: position t predicts labels[t + 1].
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("attn", ATTENTIONS)
@pytest.mark.parametrize("loss_on_all", [False, True])
def test_packed_loss_equals_padded_loss(attn, loss_on_all):
    model = _model(attn)
    examples = _examples([5, 17, 9, 30, 2, 12, 23], seed=1, loss_on_all=loss_on_all)
    padded = pad_collate(examples, PAD)
    packed = pack_examples(examples, PAD, row_length=32)
    assert packed.input_ids.shape[0] < len(examples)  # several examples do share rows
    assert packed.num_target_tokens == int(padded.labels[:, 1:].ne(IGNORE_INDEX).sum())
    with torch.no_grad():
        padded_loss = _summed_nll(model(**padded.model_inputs()).logits, padded.labels)
        packed_loss = _summed_nll(model(**packed.model_inputs()).logits, packed.labels)
        one_row = pack_examples(examples, PAD, row_length=None)
        flat_loss = _summed_nll(model(**one_row.model_inputs()).logits, one_row.labels)
    n = packed.num_target_tokens
    torch.testing.assert_close(packed_loss / n, padded_loss / n, rtol=0, atol=1e-5)
    torch.testing.assert_close(flat_loss / n, padded_loss / n, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", ATTENTIONS)
def test_one_example_does_not_change_another_in_the_same_row(attn):
    model = _model(attn)
    a, b, c = _examples([7, 6, 8], seed=2)
    b_changed = Example([(t + 5) % 60 + 4 for t in b.input_ids], b.loss_mask)
    with torch.no_grad():
        first = pack_examples([a, b, c], PAD, row_length=None)
        second = pack_examples([a, b_changed, c], PAD, row_length=None)
        logits1 = model(**first.model_inputs()).logits[0]
        logits2 = model(**second.model_inputs()).logits[0]
        alone = {i: model(input_ids=torch.tensor([ex.input_ids])).logits[0] for i, ex in enumerate([a, b, c])}
    assert first.example_spans == second.example_spans
    spans = dict(zip(first.example_index[0], first.example_spans[0]))
    for i in (0, 2):  # a and c: untouched by the change of b, and equal to their logits alone
        start, end = spans[i]
        torch.testing.assert_close(logits1[start:end], logits2[start:end], rtol=0, atol=1e-6)
        torch.testing.assert_close(logits1[start:end], alone[i], rtol=0, atol=1e-5)
    start, end = spans[1]
    assert (logits1[start:end] - logits2[start:end]).abs().max() > 1e-2  # b itself did change


def test_segment_bounds():
    assert segment_bounds(torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 3])) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    assert segment_bounds(torch.tensor([4, 5, 6])) == [(0, 3)]  # offset positions: still one example


def test_per_example_attention_gradients_and_generation_match_sdpa(tiny_tokenizer):
    from posttrain.generation import generate

    examples = _examples([9, 4, 13, 6], seed=3)
    # transformers' sdpa on rows with its block-diagonal mask, against one row with per-example attention.
    layouts = {"sdpa": pack_examples(examples, PAD, row_length=16),
               "per_example": pack_examples(examples, PAD, row_length=None)}
    models, losses = {}, {}
    for attn, batch in layouts.items():
        models[attn] = _model(attn)
        losses[attn] = _summed_nll(models[attn](**batch.model_inputs()).logits, batch.labels)
        losses[attn].backward()
    torch.testing.assert_close(losses["sdpa"], losses["per_example"], rtol=0, atol=1e-4)
    for (name, a), b in zip(models["sdpa"].named_parameters(), models["per_example"].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Generation (left padding, KV cache) falls back to sdpa with its masks: the same tokens.
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    outputs = {attn: [o.completion_ids for o in generate(m, tiny_tokenizer, prompts, max_new_tokens=6,
                                                          stop_at_eos=False)] for attn, m in models.items()}
    assert outputs["sdpa"] == outputs["per_example"]


def test_shared_prefix_layout_with_target_masks_by_hand():
    F, T = False, True
    batch = pack_shared_prefix([[[7, 8, 9, 4], [7, 8, 5, 6, 2]], [[3, 3], [3, 1]]],
                               [[[F, F, T, T], [F, F, T, T, T]], [[T, T], [F, T]]])
    # Group 0 shares [7, 8]; group 1 shares [3] (a sequence's first token is never a target).
    assert batch.input_ids.tolist() == [[7, 8, 9, 4, 5, 6, 2, 3, 3, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4, 0, 1, 1]]
    assert batch.sequence_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 3]]
    assert batch.target_mask.tolist() == [[F, F, T, T, T, T, T, F, T, T]]
    assert batch.score_columns.tolist() == [3, 6, 8, 9] and batch.num_sequence_tokens == 13
    # Each token's predictor: the previous column, but the prefix's last token for a continuation's first.
    assert previous_token_columns(batch.position_ids).tolist() == [[-1, 0, 1, 2, 1, 4, 5, -1, 7, 7]]
    # Responses that begin alike: the common prefix stops at the first target.
    same_start = [[[1, 2, 3, 4], [1, 2, 3, 5]]]
    assert pack_shared_prefix(same_start).input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert pack_shared_prefix(same_start, [[[F, F, T, T]] * 2]).input_ids.tolist() == [[1, 2, 3, 4, 3, 5]]
    with pytest.raises(ValueError, match="masks do not match"):
        pack_shared_prefix(same_start, [[[F, T], [F, T]]])


def test_shared_prefix_row_gives_each_sequence_its_logits_alone():
    """Every token of every sequence, in the prefix or in its own rest, has the logits it has alone."""
    model = _model("sdpa")
    assert use_shared_prefix_attention(model) == "sdpa"
    rng = np.random.default_rng(4)
    draw = lambda n: rng.integers(4, 60, size=n).tolist()  # noqa: E731
    groups = []
    for prompt, rests in ((9, (5, 11)), (3, (7, 2, 4)), (14, (1, 6))):
        head = draw(prompt)
        groups.append([head + draw(n) for n in rests])
    batch = pack_shared_prefix(groups)
    assert batch.num_tokens == batch.num_sequence_tokens - (9 + 3 * 2 + 14)
    prev = previous_token_columns(batch.position_ids)[0]
    with torch.no_grad():
        row = model(**batch.model_inputs()).logits[0]  # (T, V)
        for i, seq in enumerate(s for g in groups for s in g):
            alone = model(input_ids=torch.tensor([seq])).logits[0]  # (n, V)
            # Walk back from the sequence's last column through its predecessors: its columns, in order.
            cols, c = [], int(batch.score_columns[i])
            while c >= 0:
                cols.append(c)
                c = int(prev[c])
            cols = cols[::-1]
            assert batch.input_ids[0, cols].tolist() == seq
            torch.testing.assert_close(row[cols], alone, rtol=0, atol=1e-5)


def test_length_grouped_sampler_groups_and_covers():
    rng = np.random.default_rng(0)
    lengths = tuple(int(x) for x in rng.integers(32, 513, size=400))
    kwargs = dict(num_examples=400, batch_size=4, grad_accum=2, seed=3)
    grouped = LengthGroupedSampler(**kwargs, lengths=lengths)
    plain = StepSampler(**kwargs)
    for epoch in (0, 1):
        seen = [i for k in range(grouped.steps_per_epoch) for mb in grouped.micro_batches(epoch, k) for i in mb]
        assert sorted(seen) == list(range(400))  # a permutation: every example once per epoch

    def waste(sampler):
        fractions = [padding_fraction([lengths[i] for i in mb], len(mb), max(lengths[i] for i in mb))
                     for k in range(sampler.steps_per_epoch) for mb in sampler.micro_batches(0, k)]
        return float(np.mean(fractions))

    assert waste(grouped) < 0.1 < waste(plain)
    # Epochs differ, and the same seed gives the same order.
    assert grouped.micro_batches(0, 0) != grouped.micro_batches(1, 0)
    assert length_grouped_order(lengths, 3, 0, 8) == length_grouped_order(lengths, 3, 0, 8)


def test_length_grouped_sampler_shards_processes():
    lengths = tuple(range(10, 74))
    ranks = [LengthGroupedSampler(64, 4, 1, world_size=2, rank=r, seed=0, lengths=lengths) for r in range(2)]
    one = LengthGroupedSampler(64, 8, 1, seed=0, lengths=lengths)
    for k in range(one.steps_per_epoch):
        both = ranks[0].micro_batches(0, k)[0] + ranks[1].micro_batches(0, k)[0]
        assert sorted(both) == sorted(one.micro_batches(0, k)[0])
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        LengthGroupedSampler(64, 4, lengths=(1, 2, 3))
