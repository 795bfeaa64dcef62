"""Reward-model losses against hand-computed numbers: Bradley-Terry, Llama 2 margins, K-wise
all-pairs (K = 3 and 4), Plackett-Luce, centering."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses.reward import (
    LLAMA2_MARGIN_LARGE, LLAMA2_MARGIN_SMALL, PAIRWISE_LOSSES, RANKING_LOSSES, bradley_terry_loss, margin_loss,
    plackett_luce_loss, preference_margin, ranking_all_pairs_loss,
)

NAN = float("nan")


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log(1 + math.exp(-x))


def test_bradley_terry_by_hand_with_metrics():
    chosen = torch.tensor([1.0, 0.5], requires_grad=True)
    rejected = torch.tensor([0.0, 1.5], requires_grad=True)
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx((nls(1.0) + nls(-1.0)) / 2)
    assert metrics["accuracy"].item() == 0.5
    assert metrics["margin"].item() == pytest.approx(0.0)
    assert metrics["rewards/chosen"].item() == pytest.approx(0.75)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.75)
    assert not any(v.requires_grad for v in metrics.values())
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected


def test_center_penalty_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.5])
    loss, metrics = bradley_terry_loss(chosen, rejected, center_coef=0.01)
    penalty = ((1.0 + 0.0) ** 2 + (0.5 + 1.5) ** 2) / 2
    assert metrics["center_penalty"].item() == pytest.approx(penalty)
    assert loss.item() == pytest.approx((nls(1.0) + nls(-1.0)) / 2 + 0.01 * penalty)
    shifted, _ = bradley_terry_loss(chosen + 10, rejected + 10)
    assert shifted.item() == pytest.approx(loss.item() - 0.01 * penalty)  # BT alone ignores the offset


def test_margin_loss_by_strength_levels_by_hand():
    chosen = torch.tensor([2.0, 1.0, 0.3, 0.8])
    rejected = torch.tensor([0.5, 0.5, 0.5, 0.0])
    strength = torch.tensor([4, 2, 1, 3])  # significantly better, slightly better, unsure, better
    loss, metrics = margin_loss(chosen, rejected, strength)
    hand = [nls(1.5 - 1.0), nls(0.5 - 1 / 3), nls(-0.2 - 0.0), nls(0.8 - 2 / 3)]
    assert loss.item() == pytest.approx(sum(hand) / 4)
    assert metrics["accuracy"].item() == 0.75  # the margin does not change what counts as correct
    large, _ = margin_loss(chosen, rejected, strength, margin_table=LLAMA2_MARGIN_LARGE)
    assert large.item() == pytest.approx((nls(1.5 - 3) + nls(0.5 - 1) + nls(-0.2) + nls(0.8 - 2)) / 4)
    assert large.item() > loss.item()
    unsure = torch.ones(4, dtype=torch.long)  # margin 0 everywhere: plain Bradley-Terry
    assert margin_loss(chosen, rejected, unsure)[0].item() == pytest.approx(bradley_terry_loss(chosen, rejected)[0].item())


def test_margin_tables_and_bad_strengths():
    assert preference_margin(torch.tensor([1, 2, 3, 4])).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert LLAMA2_MARGIN_SMALL[-1] == 1.0 and LLAMA2_MARGIN_LARGE == (0.0, 1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match=r"1\.\.4.*\[0, 2\]"):
        preference_margin(torch.tensor([0, 2]))


def test_all_pairs_k3_by_hand():
    rewards = torch.tensor([[2.0, 1.0, 1.5]])  # best first; the model misorders the last two
    loss, metrics = ranking_all_pairs_loss(rewards)
    pairs = [2.0 - 1.0, 2.0 - 1.5, 1.0 - 1.5]  # (1,2), (1,3), (2,3): 3 choose 2
    assert loss.item() == pytest.approx(sum(nls(d) for d in pairs) / 3)
    assert metrics["accuracy"].item() == pytest.approx(2 / 3)
    assert metrics["margin"].item() == pytest.approx(sum(pairs) / 3)
    assert metrics["top1_accuracy"].item() == 1.0
    assert metrics["rewards/best"].item() == 2.0 and metrics["rewards/worst"].item() == 1.5


def test_all_pairs_k4_and_unequal_k_with_padding():
    k4 = [3.0, 1.0, 2.0, 0.0]
    pairs4 = [3 - 1, 3 - 2, 3 - 0, 1 - 2, 1 - 0, 2 - 0]  # 4 choose 2 = 6 pairs
    loss4 = sum(nls(d) for d in pairs4) / 6
    assert ranking_all_pairs_loss(torch.tensor([k4]))[0].item() == pytest.approx(loss4)
    loss3 = (nls(1.0) + nls(0.5) + nls(-0.5)) / 3
    rewards = torch.tensor([k4, [2.0, 1.0, 1.5, NAN]], requires_grad=True)  # second ranking has K = 3
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    loss, metrics = ranking_all_pairs_loss(rewards, mask)
    assert loss.item() == pytest.approx((loss4 + loss3) / 2)  # each ranking weighs the same
    assert metrics["accuracy"].item() == pytest.approx((5 + 2) / (6 + 3))
    assert metrics["rewards/worst"].item() == pytest.approx((0.0 + 1.5) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[1, 3] == 0
    assert rewards.grad[0, 0] < 0 and rewards.grad[0, 3] > 0  # best pushed up, worst down


def test_plackett_luce_k3_by_hand_and_padding():
    r1, r2, r3 = 2.0, 1.0, 1.5
    hand = -((r1 - math.log(math.exp(r1) + math.exp(r2) + math.exp(r3)))
             + (r2 - math.log(math.exp(r2) + math.exp(r3)))
             + 0.0)  # the last choice is forced: log 1
    loss, metrics = plackett_luce_loss(torch.tensor([[r1, r2, r3]]))
    assert loss.item() == pytest.approx(hand)
    assert metrics["accuracy"].item() == pytest.approx(2 / 3)
    rewards = torch.tensor([[r1, r2, r3, NAN], [r1, r2, r3, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    padded, _ = plackett_luce_loss(rewards, mask)
    e = math.exp
    hand4 = -((r1 - math.log(e(r1) + e(r2) + e(r3) + e(0.0)))
              + (r2 - math.log(e(r2) + e(r3) + e(0.0)))
              + (r3 - math.log(e(r3) + e(0.0))))
    assert padded.item() == pytest.approx((hand + hand4) / 2)
    padded.backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[0, 3] == 0


def test_plackett_luce_with_two_responses_is_bradley_terry():
    chosen, rejected = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.1, 0.5, 2.5])
    pl, _ = plackett_luce_loss(torch.stack([chosen, rejected], dim=1))
    bt, _ = bradley_terry_loss(chosen, rejected)
    pairs, _ = ranking_all_pairs_loss(torch.stack([chosen, rejected], dim=1))
    assert pl.item() == pytest.approx(bt.item()) and pairs.item() == pytest.approx(bt.item())


def test_ranking_errors_and_config_mappings():
    with pytest.raises(ValueError, match="at least 2"):
        ranking_all_pairs_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]]))
    assert PAIRWISE_LOSSES["margin"] is margin_loss and PAIRWISE_LOSSES["bradley_terry"] is bradley_terry_loss
    for fn in RANKING_LOSSES.values():
        loss, metrics = fn(torch.tensor([[1.0, 0.0, -1.0]]), None)
        assert loss.item() > 0 and metrics["accuracy"].item() == 1.0


def test_soft_bradley_terry_by_hand():
    from posttrain.losses.reward import soft_bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])
    p = torch.tensor([0.9, 0.5, 1.0])
    loss, metrics = soft_bradley_terry_loss(chosen, rejected, p)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(0.9 * math.log(sig(1)) + 0.1 * math.log(sig(-1)) + 0.5 * math.log(sig(-1)) + 0.5 * math.log(sig(1))
                 + math.log(sig(0))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(1 / 3)
    hard, _ = bradley_terry_loss(chosen, rejected)
    assert soft_bradley_terry_loss(chosen, rejected, torch.ones(3))[0].item() == pytest.approx(hard.item(), rel=1e-6)
    d = torch.tensor([0.7], requires_grad=True)  # p = 0.5 pulls the rewards together
    soft_bradley_terry_loss(d, torch.zeros(1), torch.tensor([0.5]))[0].backward()
    assert d.grad.item() > 0
