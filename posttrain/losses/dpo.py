"""Direct preference optimization and its relatives: DPO, conservative DPO, IPO (against a
reference model); SimPO, ORPO (reference-free); KTO (unpaired, desirable/undesirable labels).

Inputs are sequence log-probs of the response given the prompt, shape (B,):
``policy_chosen_logps``, ``policy_rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``
are *summed* over response tokens (``posttrain.losses.sft.sum_logps``); the reference-free
losses also take the response lengths (B,) in tokens, to length-normalize.

Notation: the implicit reward of a response is  beta * (log pi(y|x) - log pi_ref(y|x)),  and
h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)).

Each loss returns ``(loss, metrics)``: the loss is a mean over pairs (examples for KTO); to sum
instead (``posttrain.training.loop`` wants sums), multiply by the number of pairs. Metrics follow
TRL's names: rewards/chosen, rewards/rejected (mean implicit rewards), rewards/accuracies
(chosen reward > rejected reward), rewards/margins, logps/chosen, logps/rejected (mean policy
sequence log-probs as passed in).

A config picks a loss by name: :data:`DPO_LOSSES` (called as
``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=...)``)
or :data:`REFERENCE_FREE_LOSSES` (``fn(policy_chosen_logps, policy_rejected_logps,
chosen_lengths, rejected_lengths, ...)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.rl.math import masked_mean


def _preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                        policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor) -> dict:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_chosen_logps.detach().mean(),
        "logps/rejected": policy_rejected_logps.detach().mean(),
    }


def _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """(log pi/pi_ref of chosen, of rejected), each (B,); the reference carries no gradient."""
    return policy_chosen_logps - ref_chosen_logps.detach(), policy_rejected_logps - ref_rejected_logps.detach()


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """DPO, -log sigmoid(beta * h)  (Rafailov et al. 2023, eq. 7). Shapes: four (B,) -> scalar."""
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, policy_chosen_logps, policy_rejected_logps)


def cdpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
              beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Conservative DPO for labels flipped with probability eps = ``label_smoothing`` (Mitchell
    2023, "A note on DPO with noisy preferences & relationship to IPO"):

        -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    eps = 0 is DPO. The loss is minimized at a finite h (sigmoid(beta * h) = 1 - eps) instead of
    pushing h to infinity. Shapes: four (B,) -> scalar; 0 <= eps < 0.5.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing is the probability that a label is flipped, in [0, 0.5); got {label_smoothing}")
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen - rejected)
    loss = (-(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, policy_chosen_logps, policy_rejected_logps)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, dict]:
    """IPO, (h - 1/(2 beta))^2  (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", eq. 17, with tau = beta). Minimum at h = 1/(2 beta).

    h is built from whatever log-probs are passed: the paper's are sequence log-probs (summed over
    tokens, as DPO's); TRL's ``loss_type="ipo"`` passes per-token means instead
    (:func:`posttrain.losses.sft.mean_logps`), which changes the scale of h and so the sensible
    beta. Shapes: four (B,) -> scalar.
    """
    chosen, rejected = _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()
    return loss, _preference_metrics(beta * chosen, beta * rejected, policy_chosen_logps, policy_rejected_logps)


def _check_lengths(*lengths: torch.Tensor) -> None:
    if any(bool((n <= 0).any()) for n in lengths):
        raise ValueError("response lengths must be positive token counts; an empty response has no "
                         "per-token log-prob (drop it, or check the response mask)")


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor,
               beta: float = 2.0, gamma: float = 0.5) -> tuple[torch.Tensor, dict]:
    """SimPO, reference-free with length-normalized rewards (Meng et al. 2024, eq. 6):

        -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

    Shapes: summed logps (B,), lengths (B,) response token counts -> scalar. Rewards in the
    metrics are beta * mean token log-prob. Defaults beta = 2.0, gamma = 0.5 (TRL's).
    """
    _check_lengths(chosen_lengths, rejected_lengths)
    chosen = beta * policy_chosen_logps / chosen_lengths
    rejected = beta * policy_rejected_logps / rejected_lengths
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, _preference_metrics(chosen, rejected, policy_chosen_logps, policy_rejected_logps)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012: expm1 near 0, log1p far)."""
    near_zero = x > -0.6931471805599453  # -log 2
    # Each branch gets an argument safe for it, so the unused branch cannot produce NaN gradients.
    return torch.where(near_zero, torch.log(-torch.expm1(torch.where(near_zero, x, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x))))


def orpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor,
              lam: float = 0.1) -> tuple[torch.Tensor, dict]:
    """ORPO, SFT plus an odds-ratio penalty, no reference (Hong et al. 2024, eqs. 6-7):

        L = NLL(y_w) + lam * -log sigmoid(log odds(y_w) - log odds(y_l)),
        log odds(y) = log P(y) - log(1 - P(y)),  log P(y) = log pi(y|x) / |y|  (eq. 4)

    NLL is the token-level mean over every chosen token of the batch (sum of logps / sum of
    lengths, as a causal-LM cross-entropy). Length-normalized logps are capped just below 0 so
    that odds stay finite when the model is certain. Shapes: summed logps (B,), lengths (B,) ->
    scalar. Metrics add nll and log_odds_ratio; rewards are lam * mean token log-prob (TRL's).
    """
    _check_lengths(chosen_lengths, rejected_lengths)
    chosen_mean = (policy_chosen_logps / chosen_lengths).clamp(max=-1e-6)
    rejected_mean = (policy_rejected_logps / rejected_lengths).clamp(max=-1e-6)
    log_odds = (chosen_mean - log1mexp(chosen_mean)) - (rejected_mean - log1mexp(rejected_mean))
    odds_ratio_loss = -F.logsigmoid(log_odds).mean()
    nll = -policy_chosen_logps.sum() / chosen_lengths.sum()
    metrics = _preference_metrics(lam * chosen_mean, lam * rejected_mean, policy_chosen_logps, policy_rejected_logps)
    metrics.update(nll=nll.detach(), log_odds_ratio=log_odds.detach().mean())
    return nll + lam * odds_ratio_loss, metrics


def chosen_nll(policy_chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Length-normalized negative log-likelihood of the chosen responses, mean over pairs:

        -(1/B) sum_b log pi(y_w,b | x_b) / |y_w,b|

    the term DPO+NLL adds with a weight alpha to a preference loss, so that the chosen responses'
    likelihood keeps rising instead of falling along with the rejected ones' (Pang et al. 2024,
    "Iterative Reasoning Preference Optimization", eq. 3; TRL's ``rpo_alpha``).
    Shapes: (B,) summed logps, (B,) response token counts -> scalar."""
    _check_lengths(chosen_lengths)
    return -(policy_chosen_logps / chosen_lengths).mean()


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean log pi(y'|x) / pi_ref(y'|x)), a biased estimate of
    KL(pi || pi_ref) from mismatched pairs (x, y') — each prompt with another example's
    completion (Ethayarajh et al. 2024, §4.1). Detached: no gradient flows through z0.
    Shapes: (M,), (M,) -> scalar. Average over the global batch (all processes) before use."""
    return (policy_kl_logps.detach() - ref_kl_logps.detach()).mean().clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor,
             reference_point: torch.Tensor | float, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """KTO, from unpaired desirable / undesirable examples (Ethayarajh et al. 2024, §4.1, the
    loss L_KTO = E[lambda_y - v(x, y)]):

        r = log pi(y|x) - log pi_ref(y|x),  z0 = :func:`kto_reference_point`
        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

    averaged over all examples. Shapes: policy_logps, ref_logps (B,) summed, desirable (B,) bool
    -> scalar. The paper advises lambda_D * n_D / (lambda_U * n_U) in [1, 4/3].
    Metrics: rewards/chosen and rewards/rejected (mean beta * r over desirable / undesirable
    examples; 0 if none), kl (z0), logps/chosen, logps/rejected likewise.
    """
    log_ratio = policy_logps - ref_logps.detach()
    z0 = torch.as_tensor(reference_point, dtype=log_ratio.dtype, device=log_ratio.device).detach()
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio))))
    rewards, logps = beta * log_ratio.detach(), policy_logps.detach()
    metrics = {
        "rewards/chosen": masked_mean(rewards, desirable),
        "rewards/rejected": masked_mean(rewards, ~desirable),
        "logps/chosen": masked_mean(logps, desirable),
        "logps/rejected": masked_mean(logps, ~desirable),
        "kl": z0,
    }
    return losses.mean(), metrics


DPO_LOSSES = {"sigmoid": dpo_loss, "cdpo": cdpo_loss, "ipo": ipo_loss}
"""Losses against a reference model, by config name; all take the four (B,) logps and beta."""

REFERENCE_FREE_LOSSES = {"simpo": simpo_loss, "orpo": orpo_loss}
"""Reference-free losses, by config name; both take the two policy logps and the two lengths."""
