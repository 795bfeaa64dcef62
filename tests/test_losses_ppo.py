"""Policy-gradient losses against hand-computed numbers (PPO clipped policy and value losses,
entropy, REINFORCE/RLOO, GRPO), and the token log-prob helpers they are built on
(``posttrain.losses.sft``: gathering, shifting, chunking, memory)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.losses.ppo import entropy_loss, grpo_loss, ppo_policy_loss, ppo_value_loss, reinforce_loss, token_entropy
from posttrain.losses.sft import (
    IGNORE_INDEX, linear_token_logps, mean_logps, sft_loss, shift_labels, sum_logps, token_logps,
)

NAN = float("nan")


# --- PPO policy loss ---------------------------------------------------------------------

def test_ppo_policy_loss_by_hand_inside_and_outside_the_clip_range():
    ratios = torch.tensor([[1.1, 1.5, 0.5, 1.0], [0.9, 0.5, 1.5, 1.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, NAN], [-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    old = torch.tensor([[-1.0, -2.0, -0.5, NAN], [-1.5, -0.7, -3.0, -1.0]])
    policy = (old + ratios.log()).requires_grad_()
    loss, metrics = ppo_policy_loss(policy, old, advantages, mask, clip_eps=0.2)
    hand = [
        -1.1,  # A > 0, ratio 1.1 inside [0.8, 1.2]: -A * ratio
        -1.2,  # A > 0, ratio 1.5 above: clipped to 1.2, no gradient
        -0.5,  # A > 0, ratio 0.5 below: the unclipped term is the larger (pessimistic) one
        0.9,   # A < 0, ratio 0.9 inside
        0.8,   # A < 0, ratio 0.5 below: clipped to 0.8, no gradient
        1.5,   # A < 0, ratio 1.5 above: unclipped is the larger
    ]
    assert loss.item() == pytest.approx(sum(hand) / 6)
    assert metrics["policy/clipfrac"].item() == pytest.approx(2 / 6)
    real = [1.1, 1.5, 0.5, 0.9, 0.5, 1.5]
    assert metrics["policy/approx_kl"].item() == pytest.approx(sum((r - 1) - math.log(r) for r in real) / 6, rel=1e-5)
    assert metrics["policy/ratio"].item() == pytest.approx(sum(real) / 6, rel=1e-6)
    loss.backward()
    # d/dlogp of -A * ratio is -A * ratio; zero where clipping binds and on padding
    expected = [[-1.1 / 6, 0.0, -0.5 / 6, 0.0], [0.9 / 6, 0.0, 1.5 / 6, 0.0]]
    assert policy.grad.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_ppo_policy_loss_at_ratio_one_is_minus_mean_advantage():
    advantages = torch.tensor([[0.5, -2.0, 1.0]])
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    loss, metrics = ppo_policy_loss(logps, logps, advantages, torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(-(0.5 - 2.0 + 1.0) / 3)
    assert metrics["policy/approx_kl"].item() == 0.0 and metrics["policy/clipfrac"].item() == 0.0


# --- PPO value loss ----------------------------------------------------------------------

def test_ppo_value_loss_by_hand():
    values = torch.tensor([[1.0, 2.0, 1.2, NAN]], requires_grad=True)
    old_values = torch.tensor([[0.9, 1.5, 0.5, 0.0]])
    returns = torch.tensor([[1.5, 1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, metrics = ppo_value_loss(values, old_values, returns, mask, clip_eps=0.2)
    per_token = [
        max((1.0 - 1.5) ** 2, (1.0 - 1.5) ** 2),  # V inside [0.7, 1.1]: both terms equal, 0.25
        max((2.0 - 1.0) ** 2, (1.7 - 1.0) ** 2),  # V clipped to 1.7: unclipped 1.0 is larger
        max((1.2 - 2.0) ** 2, (0.7 - 2.0) ** 2),  # V clipped to 0.7: clipped 1.69 is larger
    ]
    assert loss.item() == pytest.approx(0.5 * sum(per_token) / 3)
    assert metrics["value/clipfrac"].item() == pytest.approx(1 / 3)
    assert metrics["value/error"].item() == pytest.approx((0.25 + 1.0 + 0.64) / 3)
    loss.backward()
    # 0.5 * d/dV (V - R)^2 / 3 = (V - R) / 3 where the unclipped term counts; 0 where clipping binds
    assert values.grad.tolist()[0] == pytest.approx([(1.0 - 1.5) / 3, (2.0 - 1.0) / 3, 0.0, 0.0])


# --- entropy -----------------------------------------------------------------------------

def test_entropy_by_hand_and_chunked_equals_unchunked():
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]]])  # p = 1/6, 2/6, 3/6; uniform
    hand = -sum(p * math.log(p) for p in (1 / 6, 2 / 6, 3 / 6))
    assert token_entropy(logits).tolist()[0] == pytest.approx([hand, math.log(3)])
    loss, metrics = entropy_loss(logits, torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(-hand) and metrics["policy/entropy"].item() == pytest.approx(hand)

    gen = torch.Generator().manual_seed(0)
    big = torch.randn(3, 5, 17, generator=gen, requires_grad=True)
    mask = torch.rand(3, 5, generator=gen) > 0.3
    full, _ = entropy_loss(big, mask, chunk_size=None)
    (grad_full,) = torch.autograd.grad(full, big)
    chunked, _ = entropy_loss(big, mask, chunk_size=4)
    (grad_chunked,) = torch.autograd.grad(chunked, big)
    assert chunked.item() == pytest.approx(full.item()) and torch.allclose(grad_chunked, grad_full, atol=1e-6)


# --- REINFORCE / RLOO and GRPO -----------------------------------------------------------

def test_reinforce_loss_by_hand():
    logps = torch.tensor([-3.0, -5.0, -4.0], requires_grad=True)
    advantages = torch.tensor([1.5, -0.5, -1.0])
    loss, metrics = reinforce_loss(logps, advantages)
    assert loss.item() == pytest.approx(-(1.5 * -3.0 + -0.5 * -5.0 + -1.0 * -4.0) / 3)
    assert metrics["advantages/mean"].item() == pytest.approx(0.0)
    loss.backward()
    assert logps.grad.tolist() == pytest.approx([-1.5 / 3, 0.5 / 3, 1.0 / 3])


def test_grpo_loss_by_hand_at_ratio_one():
    policy = torch.tensor([[-1.0, -2.0, NAN], [-0.5, -1.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, NAN], [-0.5, -0.5, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -2.0])
    beta = 0.04
    k3_a = math.exp(-0.5) - 1 + 0.5  # log(ref / policy) = -0.5
    k3_b = math.exp(0.5) - 1 - 0.5   # log(ref / policy) = +0.5
    row0 = ((-1.0 + beta * k3_a) + (-1.0 + 0.0)) / 2  # per-token loss -A * 1 + beta * k3, mean over 2 tokens
    row1 = ((2.0 + 0.0) + (2.0 + beta * k3_b) + (2.0 + 0.0)) / 3
    loss, metrics = grpo_loss(policy, policy, ref, advantages, mask, clip_eps=0.2, beta=beta)
    assert loss.item() == pytest.approx((row0 + row1) / 2)
    assert metrics["kl"].item() == pytest.approx((k3_a + k3_b) / 5)


# --- token log-probs (posttrain.losses.sft) ----------------------------------------------

def test_token_logps_by_hand_and_shift_labels():
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]] * 3])  # p = 1/6, 2/6, 3/6 at every position
    labels = torch.tensor([[2, 0, IGNORE_INDEX]])
    assert token_logps(logits, labels).tolist()[0] == pytest.approx([math.log(0.5), math.log(1 / 6), 0.0])
    assert token_logps(logits, labels, temperature=2.0).tolist()[0][0] == pytest.approx(
        math.log(math.sqrt(3) / (1 + math.sqrt(2) + math.sqrt(3))))
    assert shift_labels(torch.tensor([[5, 6, 7], [IGNORE_INDEX, 8, 9]])).tolist() == [
        [6, 7, IGNORE_INDEX], [8, 9, IGNORE_INDEX]]
    logps = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, NAN, -1.5]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert sum_logps(logps, mask).tolist() == [-3.0, -2.0]
    assert mean_logps(logps, mask).tolist() == [-1.5, -1.0]


def _lm_batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 13, generator=gen)
    labels = torch.randint(0, 13, (3, 6), generator=gen)  # unshifted, as collated
    labels[0, :2] = IGNORE_INDEX  # prompt
    labels[2, 4:] = IGNORE_INDEX  # padding
    return logits, labels


def test_sft_loss_matches_torch_cross_entropy_chunked_or_not():
    logits, labels = _lm_batch()
    reference = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    targets = shift_labels(labels)
    for chunk_size in (None, 5):
        leaf = logits.clone().requires_grad_()
        loss, metrics = sft_loss(token_logps(leaf, targets, chunk_size=chunk_size), targets != IGNORE_INDEX)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
        loss.backward()
        (expected_grad,) = torch.autograd.grad(
            F.cross_entropy(leaf[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX), leaf)
        assert torch.allclose(leaf.grad, expected_grad, atol=1e-6)
    assert token_logps(logits.bfloat16(), targets).dtype == torch.float32


def _saved_bytes(fn):
    """(bytes autograd keeps for backward while running fn, fn's result)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return total, out


def test_linear_token_logps_equal_full_logits_and_never_keep_them():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 32, 16, generator=gen, requires_grad=True)
    weight = torch.randn(2000, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 2000, (2, 32), generator=gen)
    labels[1, 20:] = IGNORE_INDEX
    reference = token_logps(hidden @ weight.T, labels, chunk_size=None)
    grads_reference = torch.autograd.grad(reference.sum(), (hidden, weight))
    logits_bytes = 2 * 32 * 2000 * 4
    saved, chunked = _saved_bytes(lambda: linear_token_logps(hidden, weight, labels, chunk_size=16))
    assert torch.allclose(chunked, reference, atol=1e-5)
    for got, want in zip(torch.autograd.grad(chunked.sum(), (hidden, weight)), grads_reference):
        assert torch.allclose(got, want, atol=1e-4)
    assert saved < logits_bytes / 20  # only inputs of each chunk, no (N, V) logits, kept for backward
    saved_full, _ = _saved_bytes(lambda: linear_token_logps(hidden, weight, labels, chunk_size=10**6))
    assert saved_full >= logits_bytes
