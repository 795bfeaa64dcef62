"""RL math against hand-worked numbers: masked statistics, GAE, KL estimators, KL-penalty rewards,
RLOO/GRPO advantages, KL controllers."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.kl import AdaptiveKLController, FixedKLController
from posttrain.rl.math import (
    KL_ESTIMATORS, gae, grpo_advantages, kl_k1, kl_k2, kl_k3, last_token_index, masked_mean, masked_sum,
    masked_var, masked_whiten, per_token_kl_penalty_rewards, rloo_advantages,
)

NAN = float("nan")


# --- masked statistics -------------------------------------------------------------------

def test_masked_mean_sum_var_by_hand_ignore_padding_even_nan():
    values = torch.tensor([[1.0, 2.0, NAN], [3.0, math.inf, 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_sum(values, mask).item() == 1 + 2 + 3 + 5
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])
    # mean 2.75; squared deviations 3.0625, 0.5625, 0.0625, 5.0625 -> sum 8.75
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(8.75 / 4)
    assert masked_var(values, mask).item() == pytest.approx(8.75 / 3)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0  # empty mask: 0, not NaN
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(values, torch.tensor([[True, False, False], [False, False, False]]))


def test_masked_whiten_mean_zero_var_one_and_padding_ignored():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(4, 7, generator=gen) * 3 + 5
    mask = torch.rand(4, 7, generator=gen) > 0.3
    white = masked_whiten(values, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (white[~mask] == 0).all()
    poisoned = torch.where(mask, values, torch.full_like(values, 1e6))
    assert torch.allclose(masked_whiten(poisoned, mask), white)
    kept = masked_whiten(values, mask, shift_mean=False)
    assert masked_mean(kept, mask).item() == pytest.approx(masked_mean(values, mask).item(), rel=1e-5)
    assert masked_var(kept, mask).item() == pytest.approx(1.0, abs=1e-5)


# --- GAE ---------------------------------------------------------------------------------

GAMMA, LAM = 0.9, 0.8


def _hand_gae():
    """Row 0: 3 response tokens. Row 1: 2 tokens then padding (whose reward/value must be ignored)."""
    g, gl = GAMMA, GAMMA * LAM
    a02 = 1.0 + g * 0 - 0.6              # last token: nothing bootstrapped after it
    a01 = (0.0 + g * 0.6 - 0.4) + gl * a02
    a00 = (0.0 + g * 0.4 - 0.5) + gl * a01
    a11 = -1.0 + g * 0 - 0.3
    a10 = (0.2 + g * 0.3 - 0.1) + gl * a11
    advantages = [[a00, a01, a02], [a10, a11, 0.0]]
    returns = [[a00 + 0.5, a01 + 0.4, a02 + 0.6], [a10 + 0.1, a11 + 0.3, 0.0]]
    return advantages, returns


def test_gae_by_hand_with_padded_row():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, -1.0, 99.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [0.1, 0.3, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, GAMMA, LAM)
    hand_adv, hand_ret = _hand_gae()
    assert advantages.tolist() == [pytest.approx(r) for r in hand_adv]
    assert returns.tolist() == [pytest.approx(r) for r in hand_ret]
    assert hand_adv[0][0] == pytest.approx(0.16816)  # the arithmetic above, once more by hand


def test_gae_same_answer_left_padded_and_with_a_masked_hole():
    rewards = torch.tensor([[NAN, 0.2, -1.0], [0.2, NAN, -1.0]])
    values = torch.tensor([[NAN, 0.1, 0.3], [0.1, NAN, 0.3]])
    mask = torch.tensor([[False, True, True], [True, False, True]])
    advantages, returns = gae(rewards, values, mask, GAMMA, LAM)
    hand_adv, hand_ret = _hand_gae()
    a10, a11, _ = hand_adv[1]
    assert advantages.tolist() == [pytest.approx([0.0, a10, a11]), pytest.approx([a10, 0.0, a11])]
    assert returns[0, 1:].tolist() == pytest.approx(hand_ret[1][:2])


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    values = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    advantages, returns = gae(rewards, values, torch.ones(1, 4, dtype=torch.bool), 1.0, 1.0)
    assert returns.tolist()[0] == pytest.approx([10.0, 9.0, 7.0, 4.0])
    assert advantages.tolist()[0] == pytest.approx([9.5, 10.0, 5.0, 4.0])


# --- KL estimators -----------------------------------------------------------------------

def test_kl_estimators_by_hand():
    logq, logp = torch.tensor([-1.0]), torch.tensor([-2.0])  # policy q, reference p; log r = -1
    assert kl_k1(logq, logp).item() == pytest.approx(1.0)
    assert kl_k2(logq, logp).item() == pytest.approx(0.5)
    assert kl_k3(logq, logp).item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k1_k3_unbiased_on_samples_from_known_categoricals():
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])  # policy: the samples come from here
    p = torch.tensor([0.25, 0.25, 0.25, 0.25])  # reference
    exact = float((q * (q / p).log()).sum())  # KL(q || p) = 0.10644...
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(q, 200_000, replacement=True, generator=gen)
    logq, logp = q.log()[x], p.log()[x]
    for estimator in (kl_k1, kl_k3):
        samples = estimator(logq, logp)
        standard_error = float(samples.std()) / math.sqrt(len(samples))
        assert abs(float(samples.mean()) - exact) < 4 * standard_error
    assert (kl_k3(logq, logp) >= 0).all() and (kl_k1(logq, logp) < 0).any()
    assert (kl_k3(logq, logp).std() < kl_k1(logq, logp).std())  # the point of k3: lower variance


# --- KL-penalty rewards ------------------------------------------------------------------

def test_per_token_kl_penalty_rewards_by_hand():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, NAN]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.4, -1.0, NAN]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    score = torch.tensor([2.0, -3.0])
    rewards, kl = per_token_kl_penalty_rewards(score, policy, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [pytest.approx([0.5, -1.0, 0.0]), pytest.approx([0.1, -0.2, 0.0])]
    assert rewards.tolist() == [pytest.approx([-0.05, 0.1, 0.0 + 2.0]),
                                pytest.approx([-0.01, 0.02 - 3.0, 0.0])]
    clipped, _ = per_token_kl_penalty_rewards(score, policy, ref, mask, kl_coef=0.1, score_clip=1.0)
    assert clipped[0, 2].item() == pytest.approx(1.0) and clipped[1, 1].item() == pytest.approx(0.02 - 1.0)
    k3, _ = per_token_kl_penalty_rewards(score, policy, ref, mask, kl_coef=0.1, estimator="k3")
    assert k3[0, 0].item() == pytest.approx(-0.1 * (math.exp(-0.5) - 1 + 0.5))


def test_score_goes_on_last_real_token_whatever_the_padding():
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert last_token_index(mask).tolist() == [2, 0]
    zeros = torch.zeros(2, 4)
    rewards, _ = per_token_kl_penalty_rewards(torch.tensor([1.0, 2.0]), zeros, zeros, mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        last_token_index(torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="k1"):
        per_token_kl_penalty_rewards(torch.ones(2), zeros, zeros, mask, 0.1, estimator="k4")


# --- critic-free advantages --------------------------------------------------------------

def test_rloo_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])  # 2 prompts x k=3, contiguous
    expected = [1 - (2 + 3) / 2, 2 - (1 + 3) / 2, 3 - (1 + 2) / 2, 0 - (0 + 4) / 2, 0 - (0 + 4) / 2, 4 - 0]
    assert rloo_advantages(rewards, k=3).tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="k=4"):
        rloo_advantages(rewards, k=4)
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(rewards, k=1)


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 5.0, 5.0, 5.0])
    std1 = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 2)  # unbiased: 1
    mean2 = 4 / 3
    std2 = math.sqrt((2 * mean2 ** 2 + (4 - mean2) ** 2) / 2)
    expected = [(r - 2) / (std1 + 1e-4) for r in (1, 2, 3)] + [(r - mean2) / (std2 + 1e-4) for r in (0, 0, 4)] + [0, 0, 0]
    assert grpo_advantages(rewards, k=3).tolist() == pytest.approx(expected, rel=1e-5)
    assert grpo_advantages(rewards, k=3, scale=False).tolist() == pytest.approx(
        [-1, 0, 1, -mean2, -mean2, 4 - mean2, 0, 0, 0])


# --- KL controllers ----------------------------------------------------------------------

def test_fixed_controller_never_moves():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=512)
    assert controller.kl_coef == 0.05


def test_adaptive_controller_follows_ziegler_eq2():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    controller.update(current_kl=7.0, n_steps=256)  # error 1/6, inside the clip
    expected = 0.2 * (1 + (7 / 6 - 1) * 256 / 10_000)
    assert controller.kl_coef == pytest.approx(expected) and controller.kl_coef > 0.2
    controller.update(current_kl=60.0, n_steps=256)  # error 9 -> clipped to 0.2
    expected *= 1 + 0.2 * 256 / 10_000
    assert controller.kl_coef == pytest.approx(expected)
    before = controller.kl_coef
    controller.update(current_kl=5.0, n_steps=100)  # below target: error -1/6, beta goes down
    assert controller.kl_coef == pytest.approx(before * (1 + (5 / 6 - 1) * 100 / 10_000)) and controller.kl_coef < before
    controller.update(current_kl=0.0, n_steps=100)  # error -1 -> clipped to -0.2
    assert controller.kl_coef == pytest.approx(before * (1 - 1 / 6 * 0.01) * (1 - 0.2 * 0.01))
    resumed = AdaptiveKLController(0.2, 6.0, 10_000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.kl_coef == controller.kl_coef
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKLController(0.2, target=0.0, horizon=10_000)


def test_losses_and_rl_import_light():
    """STYLE rule 11: losses/ and rl/ need torch only (no transformers, accelerate, tensorboard...)."""
    import subprocess
    import sys

    code = ("import sys, posttrain.losses.sft, posttrain.losses.reward, posttrain.losses.dpo, posttrain.losses.ppo, "
            "posttrain.rl.math, posttrain.rl.kl; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'accelerate', 'tensorboard', "
            "'datasets', 'peft', 'rich', 'typer'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
