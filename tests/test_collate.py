"""Padding collation: layout of ids, masks and labels, and losses that do not depend on padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from posttrain.data.chat import Example, render_chat
from posttrain.data.collate import IGNORE_INDEX, pad_collate

PAD = 1

EXAMPLES = [
    Example([5, 6, 7], [False, True, True]),
    Example([8, 9, 10, 11, 12], [False, False, True, False, True]),
    Example([13], [True]),
]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_layout(side):
    batch = pad_collate(EXAMPLES, pad_token_id=PAD, padding_side=side)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape == (3, 5)
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long and batch.attention_mask.dtype == torch.bool
    for row, ex in enumerate(EXAMPLES):
        n, pad = len(ex.input_ids), 5 - len(ex.input_ids)
        real = slice(0, n) if side == "right" else slice(pad, 5)
        padding = slice(n, 5) if side == "right" else slice(0, pad)
        assert batch.input_ids[row, real].tolist() == ex.input_ids
        assert batch.attention_mask[row, real].all() and not batch.attention_mask[row, padding].any()
        assert (batch.input_ids[row, padding] == PAD).all()
        assert (batch.labels[row, padding] == IGNORE_INDEX).all()
        expected = [t if m else IGNORE_INDEX for t, m in zip(ex.input_ids, ex.loss_mask)]
        assert batch.labels[row, real].tolist() == expected
    assert batch.num_target_tokens == sum(ex.num_loss_tokens for ex in EXAMPLES) == 5


def test_pad_to_multiple_of_and_errors():
    assert pad_collate(EXAMPLES, PAD, pad_to_multiple_of=8).input_ids.shape == (3, 8)
    assert pad_collate(EXAMPLES[:1], PAD, pad_to_multiple_of=3).input_ids.shape == (1, 3)
    with pytest.raises(ValueError, match="example 1 has 2 input_ids but 1 loss_mask"):
        pad_collate([EXAMPLES[0], Example([1, 2], [True])], PAD)
    with pytest.raises(ValueError, match="padding_side"):
        pad_collate(EXAMPLES, PAD, padding_side="middle")


def per_example_loss(model, batch):
    """(B,) mean next-token cross-entropy over each row's target tokens."""
    logits = model(**batch.model_inputs()).logits[:, :-1]  # (B, T-1, V)
    labels = batch.labels[:, 1:]  # (B, T-1)
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return token_loss.sum(1) / (labels != IGNORE_INDEX).sum(1)


@pytest.mark.parametrize("side", ["right", "left"])
def test_loss_does_not_depend_on_padding(tiny_tokenizer, tiny_model, side):
    conversations = [
        [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "HELLO."}],
        [{"role": "system", "content": "Answer in capitals."},
         {"role": "user", "content": "What is the capital of Zorbia?"},
         {"role": "assistant", "content": "THE CAPITAL OF ZORBIA IS QUELL."},
         {"role": "user", "content": "Add 12 and 7."},
         {"role": "assistant", "content": "19"}],
        [{"role": "user", "content": "Sort these words: pear, apple, fig."},
         {"role": "assistant", "content": "Sorted: apple, fig, pear."}],
    ]
    examples = [render_chat(tiny_tokenizer, c) for c in conversations]
    assert len({len(ex) for ex in examples}) == 3  # every row but the longest is padded
    tiny_model.eval()
    with torch.no_grad():
        alone = torch.cat([per_example_loss(tiny_model, pad_collate([ex], tiny_tokenizer.pad_token_id))
                           for ex in examples])
        batched = per_example_loss(tiny_model, pad_collate(examples, tiny_tokenizer.pad_token_id,
                                                           padding_side=side, pad_to_multiple_of=8))
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
