"""Policy-gradient losses for RLHF: PPO's clipped policy and value losses, an entropy bonus,
REINFORCE with a leave-one-out baseline (RLOO), and GRPO.

Token-level tensors are (B, T) over response tokens, with ``response_mask`` (B, T) bool True on
real tokens (see ``posttrain.rl.math`` for the layout and for advantages/returns). ``old_*`` are
the values recorded at rollout time, before this PPO epoch's updates; they, the advantages and
the returns carry no gradient. Entries at masked positions never reach a loss or its gradient,
whatever they hold (padding may be garbage, inf or NaN).

Each loss returns ``(loss, metrics)``; PPO losses are means over every response token of the
batch (the "token-level" mean); to sum instead, multiply by ``response_mask.sum()``.
"""

from __future__ import annotations

import torch

from posttrain.losses.sft import map_row_chunks
from posttrain.rl.math import kl_k3, masked_mean


def _zero_padding(response_mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor with 0 at masked positions, so that padding cannot turn a gradient into NaN
    (masking only the result would give 0 * NaN = NaN in backward)."""
    return [torch.where(response_mask, t, torch.zeros((), dtype=t.dtype, device=t.device)) for t in tensors]


def _clipped_surrogate(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token max(-A * ratio, -A * clip(ratio)), whether the clipped term bound, and log ratio."""
    log_ratio, advantages = _zero_padding(response_mask, policy_token_logps - old_token_logps.detach(),
                                          advantages.detach())
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped, log_ratio


def _policy_metrics(log_ratio: torch.Tensor, bound: torch.Tensor, response_mask: torch.Tensor) -> dict:
    log_ratio = log_ratio.detach()
    return {
        # Fraction of tokens where clipping is active, i.e. whose gradient is zero.
        "policy/clipfrac": masked_mean(bound.float(), response_mask),
        # k3 estimate of KL(old || new) from tokens sampled by the old policy (the "37 details" debug variable).
        "policy/approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask),
        "policy/ratio": masked_mean(torch.exp(log_ratio), response_mask),
    }


def ppo_policy_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate, negated (Schulman et al. 2017, eq. 7), per token:

        ratio = exp(logp - old_logp)
        loss  = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))

    Shapes: policy_token_logps, old_token_logps, advantages (B, T), response_mask (B, T) bool ->
    scalar. Metrics: policy/clipfrac, policy/approx_kl (k3, (ratio - 1) - log ratio),
    policy/ratio (mean).
    """
    losses, bound, log_ratio = _clipped_surrogate(policy_token_logps, old_token_logps, advantages, response_mask, clip_eps)
    return masked_mean(losses, response_mask), _policy_metrics(log_ratio, bound, response_mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   response_mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped value loss ("The 37 Implementation Details of PPO", Huang et al. 2022, #9; as in
    OpenAI baselines and Ziegler et al. 2019's code):

        0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2))

    Shapes: values, old_values, returns (B, T), response_mask (B, T) bool -> scalar.
    Metrics: value/clipfrac (the clipped term bound), value/mean (mean V), value/error (mean (V - R)^2).
    """
    values, old_values, returns = _zero_padding(response_mask, values, old_values.detach(), returns.detach())
    clipped_values = torch.clamp(values, old_values - clip_eps, old_values + clip_eps)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), response_mask)
    metrics = {
        "value/clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), response_mask),
        "value/mean": masked_mean(values.detach(), response_mask),
        "value/error": masked_mean(unclipped_loss.detach(), response_mask),
    }
    return loss, metrics


def _row_entropy(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    return log_z - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def token_entropy(logits: torch.Tensor, chunk_size: int | None = 1024) -> torch.Tensor:
    """Entropy of each next-token distribution, H = logsumexp(l) - sum softmax(l) * l.
    Shapes: logits (B, T, V) -> (B, T) float32; computed ``chunk_size`` rows at a time."""
    flat = logits.reshape(-1, logits.shape[-1])
    return map_row_chunks(_row_entropy, chunk_size, flat).view(logits.shape[:-1])


def entropy_loss(logits: torch.Tensor, response_mask: torch.Tensor,
                 chunk_size: int | None = 1024) -> tuple[torch.Tensor, dict]:
    """Negated mean token entropy, the entropy bonus S of PPO's objective (Schulman et al. 2017,
    eq. 9): add ``entropy_coef * loss`` to the policy loss to encourage exploration.
    Shapes: logits (B, T, V), response_mask (B, T) bool -> scalar. Metrics: policy/entropy."""
    entropy = masked_mean(token_entropy(logits, chunk_size), response_mask)
    return -entropy, {"policy/entropy": entropy.detach()}


def reinforce_loss(policy_logps: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """REINFORCE on whole sequences, -mean(A * log pi(y|x)) (Williams 1992); with RLOO advantages
    (``posttrain.rl.math.rloo_advantages``) this is RLOO (Ahmadian et al. 2024, "Back to Basics:
    Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs", §3.2).

    Shapes: policy_logps (B,) summed over response tokens, advantages (B,) -> scalar.
    Metrics: advantages/mean, advantages/std.
    """
    advantages = advantages.detach()
    loss = -(advantages * policy_logps).mean()
    return loss, {"advantages/mean": advantages.mean(), "advantages/std": advantages.std(unbiased=False)}


def grpo_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
              advantages: torch.Tensor, response_mask: torch.Tensor, clip_eps: float = 0.2,
              beta: float = 0.04) -> tuple[torch.Tensor, dict]:
    """GRPO (Shao et al. 2024, DeepSeekMath, eqs. 3-4), negated: PPO's clipped surrogate with one
    group-normalized advantage per sequence, minus a per-token k3 KL to the reference in the loss
    (not in the reward), averaged over each sequence's tokens and then over sequences:

        loss = mean_i 1/|o_i| sum_t [ max(-A_i ratio, -A_i clip(ratio)) + beta * k3(pi || pi_ref) ]

    Shapes: *_token_logps (B, T), advantages (B,) (``posttrain.rl.math.grpo_advantages``),
    response_mask (B, T) bool -> scalar. Metrics: as :func:`ppo_policy_loss`, plus kl (mean k3).
    """
    per_token_advantages = advantages.unsqueeze(1).expand_as(policy_token_logps)
    losses, bound, log_ratio = _clipped_surrogate(policy_token_logps, old_token_logps, per_token_advantages,
                                                response_mask, clip_eps)
    kl = kl_k3(*_zero_padding(response_mask, policy_token_logps, ref_token_logps.detach()))
    loss = masked_mean(losses + beta * kl, response_mask, dim=1).mean()
    metrics = _policy_metrics(log_ratio, bound, response_mask)
    metrics["kl"] = masked_mean(kl.detach(), response_mask)
    return loss, metrics


def rloo_loss(policy_token_logps: torch.Tensor, old_token_logps: torch.Tensor, advantages: torch.Tensor,
              response_mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    """RLOO with PPO's clipping, negated: one leave-one-out advantage per sequence
    (``posttrain.rl.math.rloo_advantages``), the clipped surrogate summed over each sequence's
    tokens and averaged over sequences:

        loss = mean_i sum_t max(-A_i ratio_t, -A_i clip(ratio_t, 1 - eps, 1 + eps))

    With ratio = 1 (the first update on fresh samples) its gradient is REINFORCE's,
    -mean_i A_i grad log pi(y_i|x_i) (Ahmadian et al. 2024, "Back to Basics", §3.2); the clipped
    ratio lets several updates reuse one batch of samples, as PPO does. Unlike :func:`grpo_loss`
    no length normalization is applied, so the sequence-level gradient stays unbiased.

    Shapes: *_token_logps (B, T), advantages (B,), response_mask (B, T) bool -> scalar.
    Metrics: as :func:`ppo_policy_loss`.
    """
    per_token_advantages = advantages.unsqueeze(1).expand_as(policy_token_logps)
    losses, bound, log_ratio = _clipped_surrogate(policy_token_logps, old_token_logps, per_token_advantages,
                                                response_mask, clip_eps)
    loss = torch.where(response_mask, losses, torch.zeros_like(losses)).sum(dim=1).mean()
    return loss, _policy_metrics(log_ratio, bound, response_mask)
