"""DPO-family losses against hand-computed numbers and closed-form optima: DPO, cDPO, IPO,
SimPO, ORPO, KTO."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses.dpo import (
    PREFERENCE_LOSSES, PairLogps, UnpairedLogps, cdpo_loss, dpo_loss, ipo_loss, kto_loss, kto_reference_point,
    log1mexp, orpo_loss, simpo_loss,
)


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log(1 + math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pair_logps(requires_grad: bool = False):
    """Two pairs. Log-ratios: chosen [1, 0], rejected [-1, 0] -> h = [2, 0]."""
    policy_chosen = torch.tensor([-10.0, -12.0], requires_grad=requires_grad)
    policy_rejected = torch.tensor([-12.0, -11.0], requires_grad=requires_grad)
    ref_chosen = torch.tensor([-11.0, -12.0], requires_grad=requires_grad)
    ref_rejected = torch.tensor([-11.0, -11.0], requires_grad=requires_grad)
    return policy_chosen, policy_rejected, ref_chosen, ref_rejected


def test_dpo_by_hand_with_trl_metrics():
    loss, metrics = dpo_loss(PairLogps(*pair_logps()), beta=0.1)
    assert loss.item() == pytest.approx((nls(0.1 * 2) + nls(0.0)) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx((0.1 * 1 + 0.1 * 0) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx((0.1 * -1 + 0.1 * 0) / 2)
    assert metrics["rewards/accuracies"].item() == 0.5  # the tie (0 > 0) is not a win
    assert metrics["rewards/margins"].item() == pytest.approx((0.2 + 0.0) / 2)
    assert metrics["logps/chosen"].item() == pytest.approx(-11.0)
    assert metrics["logps/rejected"].item() == pytest.approx(-11.5)


def test_dpo_gradients_point_the_right_way_and_skip_the_reference():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = pair_logps(requires_grad=True)
    loss, _ = dpo_loss(PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected), beta=0.1)
    loss.backward()
    assert (policy_chosen.grad < 0).all() and (policy_rejected.grad > 0).all()
    # d/dh -log sigmoid(beta h) = -beta * sigmoid(-beta h); mean over 2 pairs
    assert policy_chosen.grad.tolist() == pytest.approx([-0.1 * sigmoid(-0.2) / 2, -0.1 * 0.5 / 2])
    assert ref_chosen.grad is None and ref_rejected.grad is None


def test_cdpo_by_hand_equals_dpo_at_zero_and_has_a_finite_optimum():
    eps = 0.1
    loss, _ = cdpo_loss(PairLogps(*pair_logps()), beta=0.1, label_smoothing=eps)
    hand = [(1 - eps) * nls(0.2) + eps * nls(-0.2), (1 - eps) * nls(0.0) + eps * nls(0.0)]
    assert loss.item() == pytest.approx(sum(hand) / 2)
    gen = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=gen) * 3 - 20 for _ in range(4)]
    assert cdpo_loss(PairLogps(*logps), beta=0.3, label_smoothing=0.0)[0].item() == pytest.approx(dpo_loss(PairLogps(*logps), beta=0.3)[0].item())
    # Optimum where sigmoid(beta h) = 1 - eps: h* = log((1 - eps) / eps) / beta.
    beta = 0.5
    h_star = math.log((1 - eps) / eps) / beta
    h = torch.tensor([h_star], requires_grad=True)
    zero = torch.zeros(1)
    cdpo_loss(PairLogps(h, zero, zero, zero), beta=beta, label_smoothing=eps)[0].backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="0.5"):
        cdpo_loss(PairLogps(*logps), label_smoothing=0.5)


def test_ipo_by_hand_and_minimum_at_half_inverse_beta():
    loss, _ = ipo_loss(PairLogps(*pair_logps()), beta=0.1)
    assert loss.item() == pytest.approx(((2 - 5) ** 2 + (0 - 5) ** 2) / 2)  # 1 / (2 * 0.1) = 5
    zero = torch.zeros(1)
    h = torch.tensor([5.0], requires_grad=True)
    at_min, _ = ipo_loss(PairLogps(h, zero, zero, zero), beta=0.1)
    at_min.backward()
    assert at_min.item() == 0.0 and h.grad.item() == 0.0
    for off in (4.9, 5.1):
        assert ipo_loss(PairLogps(torch.tensor([off]), zero, zero, zero), beta=0.1)[0].item() == pytest.approx(0.01, rel=1e-5)


def test_simpo_by_hand():
    policy_chosen, chosen_lengths = torch.tensor([-6.0, -8.0]), torch.tensor([3, 4])
    policy_rejected, rejected_lengths = torch.tensor([-10.0, -6.0]), torch.tensor([2, 3])
    loss, metrics = simpo_loss(PairLogps(policy_chosen, policy_rejected, chosen_lengths=chosen_lengths,
                                             rejected_lengths=rejected_lengths), beta=2.0, gamma=0.5)
    # rewards: chosen 2 * -6/3 = -4, 2 * -8/4 = -4; rejected 2 * -10/2 = -10, 2 * -6/3 = -4
    assert loss.item() == pytest.approx((nls(-4 + 10 - 0.5) + nls(-4 + 4 - 0.5)) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx(-4.0)
    assert metrics["rewards/rejected"].item() == pytest.approx(-7.0)
    with pytest.raises(ValueError, match="positive"):
        simpo_loss(PairLogps(policy_chosen, policy_rejected, chosen_lengths=torch.tensor([3, 0]),
                             rejected_lengths=rejected_lengths))


def test_log1mexp_accurate_and_finite_gradient():
    x = torch.tensor([-1e-7, -1e-3, -0.5, -0.7, -1.0, -30.0], dtype=torch.float32, requires_grad=True)
    exact = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(exact, rel=1e-5)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_orpo_by_hand():
    policy_chosen, chosen_lengths = torch.tensor([-3.0, -2.0]), torch.tensor([3, 1])
    policy_rejected, rejected_lengths = torch.tensor([-4.0, -1.0]), torch.tensor([2, 2])
    lam = 0.1

    def log_odds(mean_logp: float) -> float:
        return mean_logp - math.log(1 - math.exp(mean_logp))

    ratios = [log_odds(-1.0) - log_odds(-2.0), log_odds(-2.0) - log_odds(-0.5)]
    nll = (3.0 + 2.0) / (3 + 1)  # token-level mean over the chosen responses
    loss, metrics = orpo_loss(PairLogps(policy_chosen, policy_rejected, chosen_lengths=chosen_lengths,
                                           rejected_lengths=rejected_lengths), lam=lam)
    assert loss.item() == pytest.approx(nll + lam * (nls(ratios[0]) + nls(ratios[1])) / 2)
    assert metrics["nll"].item() == pytest.approx(nll)
    assert metrics["log_odds_ratio"].item() == pytest.approx(sum(ratios) / 2)
    assert metrics["rewards/chosen"].item() == pytest.approx(lam * (-1.0 - 2.0) / 2)


def test_orpo_gradient_direction_and_certain_model_stays_finite():
    chosen = torch.tensor([-3.0, 0.0], requires_grad=True)  # second: probability 1, odds infinite
    rejected = torch.tensor([-4.0, -1.0], requires_grad=True)
    loss, _ = orpo_loss(PairLogps(chosen, rejected, chosen_lengths=torch.tensor([3, 2]), rejected_lengths=torch.tensor([2, 2])))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert chosen.grad[0] < 0 and (rejected.grad > 0).all()


def test_kto_by_hand():
    policy = torch.tensor([-5.0, -7.0, -6.0], requires_grad=True)
    ref = torch.tensor([-6.0, -6.0, -6.0])
    desirable = torch.tensor([True, False, True])
    policy_kl = torch.tensor([-6.5, -5.5], requires_grad=True)  # mismatched (prompt, other completion)
    z0 = kto_reference_point(policy_kl, torch.tensor([-6.0, -6.2]))
    assert z0.item() == pytest.approx((-0.5 + 0.7) / 2) and not z0.requires_grad
    beta, lam_d, lam_u = 0.1, 1.0, 1.5
    loss, metrics = kto_loss(UnpairedLogps(policy, ref, desirable, z0), beta=beta, desirable_weight=lam_d,
                             undesirable_weight=lam_u)
    r, z = [1.0, -1.0, 0.0], 0.1
    hand = [lam_d * (1 - sigmoid(beta * (r[0] - z))),
            lam_u * (1 - sigmoid(beta * (z - r[1]))),
            lam_d * (1 - sigmoid(beta * (r[2] - z)))]
    assert loss.item() == pytest.approx(sum(hand) / 3)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * (1.0 + 0.0) / 2)
    assert metrics["rewards/rejected"].item() == pytest.approx(beta * -1.0)
    assert metrics["kl"].item() == pytest.approx(0.1)
    loss.backward()
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0
    assert policy_kl.grad is None  # no gradient through the reference point
    assert kto_reference_point(torch.tensor([-7.0]), torch.tensor([-6.0])).item() == 0.0  # clamped at 0


def test_config_mappings_share_one_call_signature():
    logps = pair_logps()
    lengths = torch.tensor([4, 5])
    paired = [loss for loss in PREFERENCE_LOSSES.values() if not loss.unpaired]
    for loss in (loss for loss in paired if loss.reference):
        value, metrics = loss(PairLogps(*logps), beta=0.1)
        assert torch.isfinite(value) and "rewards/margins" in metrics, loss.name
    for loss in (loss for loss in paired if not loss.reference):
        value, metrics = loss(PairLogps(logps[0], logps[1], chosen_lengths=lengths, rejected_lengths=lengths))
        assert torch.isfinite(value) and "rewards/accuracies" in metrics, loss.name


def test_a_config_names_a_loss_and_its_hyperparameters_checked_against_the_signature():
    from posttrain.config import ConfigError, load_config
    from posttrain.losses.dpo import preference_loss, resolve_loss
    from posttrain.recipes.config import DPOConfig

    cfg = load_config(DPOConfig, None, ["loss.name=cdpo", "loss.label_smoothing=0.2"])
    assert cfg.loss == {"name": "cdpo", "beta": 0.1, "label_smoothing": 0.2}  # defaults from the signature
    assert load_config(DPOConfig, None, ["loss=simpo"]).loss == {"name": "simpo", "beta": 2.0, "gamma": 0.5}
    with pytest.raises(ConfigError, match="loss orpo has no parameter 'beta'; it takes lam"):
        load_config(DPOConfig, None, ["loss.name=orpo", "loss.beta=0.5"])
    with pytest.raises(ConfigError, match="unknown loss 'dop'; choose one of sigmoid, cdpo"):
        load_config(DPOConfig, None, ["loss.name=dop"])
    with pytest.raises(ConfigError, match="'beta' is now 'loss.beta'"):
        load_config(DPOConfig, None, ["beta=0.5"])
    with pytest.raises(ValueError, match="beta must be a number"):
        resolve_loss({"name": "ipo", "beta": "high"})

    @preference_loss("toy_hinge", reference=True)
    def toy_hinge(x: PairLogps, margin: float = 1.0) -> tuple[torch.Tensor, dict]:
        """A hinge on h, for this test.

        Args:
            margin: the h beyond which a pair costs nothing.
        """
        chosen, rejected = x.log_ratios()
        return torch.relu(margin - (chosen - rejected)).mean(), {}

    with pytest.raises(ValueError, match="'sigmoid' is already posttrain.losses.dpo.dpo_loss"):
        preference_loss("sigmoid", reference=True)(toy_hinge)
    try:  # one decorated function is a new loss: config, signature check and --help see it
        cfg = load_config(DPOConfig, None, ["loss.name=toy_hinge", "loss.margin=3"])
        loss, hyper = resolve_loss(cfg.loss)
        assert loss.reference and not loss.unpaired and hyper == {"margin": 3.0}
        assert loss(PairLogps(*pair_logps()), **hyper)[0].item() == pytest.approx(((3 - 2) + (3 - 0)) / 2)
        assert "      margin = 1.0: the h beyond which a pair costs nothing." in DPOConfig.help_lines()
    finally:
        PREFERENCE_LOSSES.pop("toy_hinge")


def test_dpo_settings_that_cannot_go_together_fail_when_the_config_loads():
    from posttrain.config import ConfigError, load_config
    from posttrain.recipes.config import DPOConfig

    with pytest.raises(ConfigError, match="config.rounds: 0: at least one round is needed"):
        load_config(DPOConfig, None, ["rounds=0"])
    with pytest.raises(ConfigError, match="nll_weight: adds the chosen responses' NLL to a pairwise loss; kto has"):
        load_config(DPOConfig, None, ["loss.name=kto", "nll_weight=0.5"])
    with pytest.raises(ConfigError, match="round_reference: initial with LoRA"):
        load_config(DPOConfig, None, ["model.lora.enabled=true", "round_reference=initial", "rounds=2"])
