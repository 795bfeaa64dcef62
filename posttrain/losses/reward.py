"""Reward-model losses: pairwise Bradley-Terry, Llama 2's preference-strength margin, K-wise
rankings (InstructGPT's all pairs, Plackett-Luce), and the centering regularizer.

Every loss takes scalar rewards, one per response, and returns ``(loss, metrics)``: the loss is
a mean over comparisons (pairs, or rankings); metrics are detached scalars. To sum over units
instead (``posttrain.training.loop`` wants sums), multiply by the number of pairs / rankings.

A config picks a loss by name: :data:`PAIRWISE_LOSSES` for (chosen, rejected) pairs,
:data:`RANKING_LOSSES` for rankings of K responses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LLAMA2_MARGIN_SMALL: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
"""Llama 2's "margin small" (Touvron et al. 2023, Table 27), indexed by preference strength - 1:
strength 1 = negligibly better / unsure -> 0, 2 = slightly better -> 1/3, 3 = better -> 2/3,
4 = significantly better -> 1."""

LLAMA2_MARGIN_LARGE: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)
"""Llama 2's "margin large" (Table 27), same levels: 0, 1, 2, 3. The paper finds that margins
help most on clearly separable pairs (§3.2.2, Table 28)."""


def preference_margin(strength: torch.Tensor, margin_table: tuple[float, ...] = LLAMA2_MARGIN_SMALL) -> torch.Tensor:
    """Margin m(strength) for each pair: (B,) integer strengths 1..len(table) -> (B,) float."""
    strength = strength.long()
    if strength.numel() and (int(strength.min()) < 1 or int(strength.max()) > len(margin_table)):
        raise ValueError(f"preference strength must be 1..{len(margin_table)} (one per margin table entry), "
                         f"got values {sorted(set(strength.tolist()))}; pairs without a strength "
                         f"need the plain bradley_terry loss or a default strength")
    table = torch.tensor(margin_table, dtype=torch.float32, device=strength.device)
    return table[strength - 1]


def center_penalty(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_w + r_l)^2): the auxiliary loss that keeps rewards centred at zero, which the
    Bradley-Terry loss alone leaves free (Eisenstein et al. 2023, "Helping or Herding? Reward
    Model Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv:2312.09244, reward-model
    training setup; TRL's ``center_rewards_coefficient``). Shapes: (B,), (B,) -> scalar."""
    return ((rewards_chosen + rewards_rejected) ** 2).mean()


def _pairwise(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, margin: torch.Tensor | float,
              center_coef: float, p_chosen: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    diff = rewards_chosen - rewards_rejected
    logits = diff - margin
    if p_chosen is None:
        loss = -F.logsigmoid(logits).mean()
    else:  # cross-entropy against the soft label
        p = p_chosen.to(diff.dtype)
        loss = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
    metrics = {
        "accuracy": (diff > 0).float().mean().detach(),
        "margin": diff.mean().detach(),
        "rewards/chosen": rewards_chosen.mean().detach(),
        "rewards/rejected": rewards_rejected.mean().detach(),
    }
    if center_coef:
        penalty = center_penalty(rewards_chosen, rewards_rejected)
        loss = loss + center_coef * penalty
        metrics["center_penalty"] = penalty.detach()
    return loss, metrics


def bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor,
                       center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Pairwise Bradley-Terry loss  -log sigmoid(r_w - r_l)  (Ouyang et al. 2022 eq. 1 with K = 2;
    Stiennon et al. 2020 §3.4), plus ``center_coef *`` :func:`center_penalty`.

    Shapes: rewards_chosen, rewards_rejected (B,) -> scalar mean over pairs.
    Metrics: accuracy (r_w > r_l), margin (mean r_w - r_l), rewards/chosen, rewards/rejected
    (means), and center_penalty when ``center_coef`` is not 0.
    """
    return _pairwise(rewards_chosen, rewards_rejected, 0.0, center_coef)


def soft_bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, p_chosen: torch.Tensor,
                            center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry on soft labels: the cross-entropy of sigmoid(r_w - r_l) against ``p_chosen``,
    the labeller's probability that the chosen response is better (an AI judge's share of verdicts,
    RLAIF; Lee et al. 2023 train on the judge's probabilities):

        -[p log sigmoid(r_w - r_l) + (1 - p) log sigmoid(r_l - r_w)]

    p = 1 is :func:`bradley_terry_loss`; p = 0.5 is minimized by equal rewards. Shapes: (B,), (B,),
    (B,) -> scalar mean over pairs; metrics as :func:`bradley_terry_loss`.
    """
    return _pairwise(rewards_chosen, rewards_rejected, 0.0, center_coef, p_chosen)


def margin_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, strength: torch.Tensor,
                margin_table: tuple[float, ...] = LLAMA2_MARGIN_SMALL,
                center_coef: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Llama 2's ranking loss with a preference-strength margin (Touvron et al. 2023, §3.2.2 eq. 2):

        -log sigmoid(r_w - r_l - m(strength))

    ``strength`` (B,) holds the annotator's 4-point rating, 1 (negligibly better / unsure) to
    4 (significantly better); ``margin_table[strength - 1]`` is m, by default Llama 2's "margin
    small" (0, 1/3, 2/3, 1). The margin asks clearly-better responses for a larger reward gap.
    Shapes and metrics as :func:`bradley_terry_loss` (accuracy and margin ignore m).
    """
    margin = preference_margin(strength, margin_table).to(rewards_chosen.dtype)
    return _pairwise(rewards_chosen, rewards_rejected, margin, center_coef)


def _ranking_rewards(rewards: torch.Tensor, mask: torch.Tensor | None, at_least: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (B, K) ranking batch; return (rewards with masked entries zeroed, mask)."""
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    counts = mask.sum(dim=1)
    if rewards.dim() != 2 or bool((counts < at_least).any()):
        raise ValueError(f"rankings need rewards of shape (B, K) with at least {at_least} responses "
                         f"each; got shape {tuple(rewards.shape)}, responses per ranking {counts.tolist()}")
    # Zero, not just ignore: garbage (even NaN) at padded slots must not reach the gradient.
    return torch.where(mask, rewards, torch.zeros_like(rewards)), mask


def _ranking_pairs(rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, K) differences r_i - r_j and the bool pairs (i ranked above j, both real)."""
    diff = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    upper = torch.ones_like(diff, dtype=torch.bool).triu(diagonal=1)
    return diff, upper & mask.unsqueeze(2) & mask.unsqueeze(1)


def _ranking_metrics(rewards: torch.Tensor, mask: torch.Tensor) -> dict:
    rewards = rewards.detach()
    diff, pairs = _ranking_pairs(rewards, mask)
    n_pairs = pairs.sum()
    positions = torch.arange(rewards.shape[1], device=rewards.device)
    first = torch.where(mask, positions, rewards.shape[1]).argmin(dim=1, keepdim=True)
    last = torch.where(mask, positions, -1).argmax(dim=1, keepdim=True)
    scores = torch.where(mask, rewards, torch.full_like(rewards, -torch.inf))
    return {
        "accuracy": ((diff > 0) & pairs).sum() / n_pairs,
        "margin": torch.where(pairs, diff, torch.zeros_like(diff)).sum() / n_pairs,
        "top1_accuracy": (scores.argmax(dim=1, keepdim=True) == first).float().mean(),
        "rewards/best": rewards.gather(1, first).mean(),
        "rewards/worst": rewards.gather(1, last).mean(),
    }


def ranking_all_pairs_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """InstructGPT's K-wise loss (Ouyang et al. 2022 eq. 1): for each ranking, the mean over its
    K choose 2 pairs of  -log sigmoid(r_better - r_worse),  then the mean over rankings (each
    ranking weighs the same, as one batch element per prompt in the paper).

    Shapes: rewards (B, K), ordered best first; mask (B, K) bool, True on real responses, for
    rankings of unequal K (responses stay best first among the True entries) -> scalar.
    Metrics: accuracy (fraction of all pairs ordered right), margin (mean r_better - r_worse over
    pairs), top1_accuracy (the best response scored highest), rewards/best and rewards/worst
    (mean reward of each ranking's first and last response).
    """
    rewards, mask = _ranking_rewards(rewards, mask, at_least=2)
    diff, pairs = _ranking_pairs(rewards, mask)
    pair_losses = torch.where(pairs, -F.logsigmoid(diff), torch.zeros_like(diff))
    loss = (pair_losses.sum(dim=(1, 2)) / pairs.sum(dim=(1, 2))).mean()
    return loss, _ranking_metrics(rewards, mask)


def plackett_luce_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood of the observed ranking under the Plackett-Luce model (Plackett
    1975; Luce 1959; as used for rankings in Rafailov et al. 2023, App. A.3, and Zhu et al. 2023
    "Principled RLHF with pairwise or K-wise comparisons", §4):

        -sum_{k=1}^{K} log( exp(r_k) / sum_{j >= k} exp(r_j) )

    i.e. the best response is picked by a softmax over all K, the second over the remaining K-1,
    and so on (the last term is log 1 = 0). Summed per ranking, averaged over rankings.
    Shapes: rewards (B, K) best first; mask (B, K) bool as in :func:`ranking_all_pairs_loss`.
    Metrics: as :func:`ranking_all_pairs_loss`.
    """
    rewards, mask = _ranking_rewards(rewards, mask, at_least=2)
    # A very negative finite filler drops masked slots out of every softmax without inf - inf.
    filled = torch.where(mask, rewards, torch.full_like(rewards, torch.finfo(rewards.dtype).min))
    remaining = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)  # log sum_{j >= k} exp(r_j)
    log_probs = torch.where(mask, filled - remaining, torch.zeros_like(rewards))
    loss = -log_probs.sum(dim=1).mean()
    return loss, _ranking_metrics(rewards, mask)


PAIRWISE_LOSSES = {"bradley_terry": bradley_terry_loss, "soft_bradley_terry": soft_bradley_terry_loss,
                   "margin": margin_loss}
"""Pairwise reward losses by config name; ``margin`` also needs ``strength``, ``soft_bradley_terry`` ``p_chosen``."""

RANKING_LOSSES = {"all_pairs": ranking_all_pairs_loss, "plackett_luce": plackett_luce_loss}
"""K-wise ranking losses by config name, all called as ``fn(rewards, mask)``."""
