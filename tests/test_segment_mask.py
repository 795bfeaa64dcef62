"""The one-call path of packed attention (a dense mask over the row) equals the call-per-segment path."""

import pytest
import torch

from posttrain.data.packing import pack_shared_prefix, prefix_segments
from posttrain.models import attention


def _row(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids, masks = [], []
    for _ in range(5):
        prompt = torch.randint(0, 50, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        pair = [prompt + torch.randint(50, 99, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
                for _ in range(2)]
        ids.append(pair)
        masks.append([[False] * len(prompt) + [True] * (len(s) - len(prompt)) for s in pair])
    return pack_shared_prefix(ids, masks).position_ids


@pytest.mark.parametrize("window,softcap", [(None, None), (3, None), (None, 5.0)])
def test_dense_row_equals_segment_by_segment(window, softcap):
    positions = _row(0)
    segments = prefix_segments(positions[0])
    t = positions.shape[1]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, t, 8, generator=g, requires_grad=True) for _ in range(3))
    module = torch.nn.Module()
    dense = attention.attend(module, q, k, v, attention.segment_mask(segments, positions[0], window), 0.0, None,
                             softcap)
    split = attention._attend_by_segment(module, q, k, v, segments, 0.0, None, window, softcap)
    torch.testing.assert_close(dense, split, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad(split.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_long_sequences_keep_the_call_per_segment():
    few_long = [(i * 1000, i * 1000 + 1000, i * 1000, 0) for i in range(4)] + [(4000, 4010, 4000, 0)]
    many_short = [(i * 4, i * 4 + 4, i * 4, 0) for i in range(200)]
    assert not attention._grouped_is_cheaper(few_long, attention._groups_of(few_long))
    assert attention._grouped_is_cheaper(many_short, attention._groups_of(many_short))


@pytest.mark.parametrize("window,softcap", [(None, None), (3, None), (None, 5.0)])
def test_grouped_row_equals_segment_by_segment(window, softcap):
    positions = _row(2)
    segments = prefix_segments(positions[0])
    groups = attention._groups_of(segments)
    assert len(groups) == 5
    t = positions.shape[1]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, t, 8, generator=g, requires_grad=True) for _ in range(3))
    module = torch.nn.Module()
    grouped = attention._attend_grouped(module, q, k, v, segments, groups, positions[0], 0.0, None, window, softcap)
    split = attention._attend_by_segment(module, q, k, v, segments, 0.0, None, window, softcap)
    torch.testing.assert_close(grouped, split, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(grouped.square().sum(), (q, k, v)),
                    torch.autograd.grad(split.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
