"""RL math for language-model post-training: masked statistics, GAE, KL estimators, reward
shaping with a per-token KL penalty, and critic-free advantages (RLOO, GRPO).

Everything here is a pure function of tensors and imports only torch.

Layout conventions (see DESIGN.md):

* Token-level tensors are ``(B, T)`` over the *response* tokens of a rollout: position ``t``
  holds the quantity for the ``t``-th generated token (its log-prob, value, reward...).
* ``response_mask`` is ``(B, T)`` bool, True on real response tokens. Sequences are usually
  right-padded (after the end-of-sequence token), but nothing here assumes a side: ends are found
  from the mask, never by searching for a pad id, and values at masked positions are never read
  (they may hold anything, even NaN).
* Critic-free methods sample ``k`` responses per prompt; their rewards come flat, shape
  ``(num_prompts * k,)``, grouped contiguously: ``[p0_s0, p0_s1, ..., p0_s(k-1), p1_s0, ...]``
  (what ``prompts.repeat_interleave(k)`` gives before generation).
"""

from __future__ import annotations

from typing import Callable

import torch


# --- masked statistics -------------------------------------------------------------------

def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is True; masked entries count as 0 even if NaN/inf."""
    # torch.where, not values * mask: a padded position holding inf or NaN would poison a product.
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the True entries of ``mask`` (all of them, or along ``dim``).

    An empty mask (or an empty row, with ``dim``) gives 0 rather than NaN.
    """
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over the True entries of ``mask`` (a scalar).

    ``unbiased`` applies Bessel's correction n / (n - 1), and then needs at least 2 entries.
    """
    count = int(mask.sum())
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked values, got {count}: "
                         f"the mask selects too few tokens (is every response empty?)")
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return var * count / (count - 1) if unbiased else var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalize ``values`` to mean 0 and (unbiased) variance 1 over the True entries of ``mask``.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as PPO
    implementations do for rewards. Statistics ignore masked entries; the result is 0 there.
    Shapes: values, mask (B, T) -> (B, T). (Advantage normalization, "The 37 Implementation
    Details of PPO", Huang et al. 2022.)
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


# --- generalized advantage estimation ----------------------------------------------------

def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns, per token (Schulman et al. 2016, "High-Dimensional
    Continuous Control Using Generalized Advantage Estimation", eq. 16):

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t            (the value targets, "returns")

    Shapes: rewards, values (B, T) float, response_mask (B, T) bool -> advantages, returns (B, T).

    The episode ends at the last True of each row: V and A after it are 0, so nothing is
    bootstrapped past the final response token. Masked positions (padding on either side, or a
    hole such as a tool output inside a response) are skipped: the recursion passes from one real
    token to the next real token, and the result is 0 there. Inputs at masked positions are never
    read. Both outputs are detached (they are targets, not functions of the parameters).
    """
    rewards, values = rewards.detach(), values.detach()
    zero = torch.zeros_like(values[:, 0])
    next_value, next_advantage = zero, zero
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        real = response_mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(real, advantage, zero)
        next_value = torch.where(real, values[:, t], next_value)
        next_advantage = torch.where(real, advantage, next_advantage)
    returns = torch.where(response_mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


# --- KL estimators (Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html)
# Samples x come from the policy q; with log r = log p_ref(x) - log q(x), each estimates KL(q || p_ref).

def kl_k1(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor) -> torch.Tensor:
    """k1 = -log r = log q(x) - log p(x): unbiased, high variance, can be negative. Shape kept."""
    return policy_token_logps - ref_token_logps


def kl_k2(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2: biased (low bias when q is near p), low variance, never negative."""
    return 0.5 * (ref_token_logps - policy_token_logps) ** 2


def kl_k3(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r: unbiased, low variance, never negative (used by GRPO)."""
    log_ratio = ref_token_logps - policy_token_logps
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}
"""Per-token KL(policy || reference) estimators by name, for configs."""


def kl_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The estimator called ``name`` in :data:`KL_ESTIMATORS`, or an error listing the choices."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name]


# --- rewards -----------------------------------------------------------------------------

def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of the last True of each row of ``response_mask`` (B, T); error on an empty row."""
    empty = ~response_mask.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"response_mask rows {rows} have no response token, so there is no token "
                         f"to carry the sequence score; drop empty responses before scoring")
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return torch.where(response_mask, positions, -1).argmax(dim=1)


def per_token_kl_penalty_rewards(
    score: torch.Tensor, policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
    response_mask: torch.Tensor, kl_coef: float, estimator: str = "k1", score_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards for PPO: -kl_coef * KL on every response token, plus the sequence score on
    the last one (Ziegler et al. 2019 §2.2; Stiennon et al. 2020 §3.4; Ouyang et al. 2022 eq. 2).

        r_t = -kl_coef * kl_t + [t == last response token] * clip(score, -score_clip, score_clip)

    Shapes: score (B,), *_token_logps (B, T), response_mask (B, T) bool ->
    (rewards (B, T), kl (B, T)), both 0 at masked positions and detached. ``estimator`` names a
    per-token KL estimator of :data:`KL_ESTIMATORS` (k1, the log-ratio, is the classic choice).
    ``score_clip`` (optional) bounds the reward-model score (reward clipping, as PPO does on
    Atari; TRL's ``score_clip``).
    """
    kl = kl_estimator(estimator)(policy_token_logps.detach(), ref_token_logps.detach())
    kl = torch.where(response_mask, kl, torch.zeros_like(kl))
    score = score.detach().to(kl.dtype)
    if score_clip is not None:
        score = score.clamp(-score_clip, score_clip)
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(response_mask)] += score
    return rewards, kl


# --- critic-free advantages --------------------------------------------------------------

def _groups(rewards: torch.Tensor, k: int, minimum: int) -> torch.Tensor:
    """View flat ``rewards`` (num_prompts * k,) as (num_prompts, k), or say why not."""
    if rewards.dim() != 1 or rewards.numel() % k != 0 or k < minimum:
        raise ValueError(f"rewards must be flat with num_prompts * k entries grouped by prompt and "
                         f"k >= {minimum}; got shape {tuple(rewards.shape)} with k={k}")
    return rewards.view(-1, k)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: A_i = r_i - mean_{j != i} r_j over the k samples of
    the same prompt (Kool et al. 2019; Ahmadian et al. 2024 "Back to Basics", §3.2 RLOO).

    Shapes: rewards (num_prompts * k,), grouped contiguously by prompt -> advantages, same shape.
    Equal to k/(k-1) * (r_i - group mean).
    """
    groups = _groups(rewards, k, minimum=2)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Group-normalized advantages of GRPO: A_i = (r_i - mean(r)) / (std(r) + eps) over the k
    samples of the same prompt (Shao et al. 2024, DeepSeekMath §4.1.2, outcome supervision).

    Shapes: rewards (num_prompts * k,), grouped contiguously by prompt -> advantages, same shape.
    std is the unbiased sample std (as in TRL); ``scale=False`` only subtracts the mean
    (Liu et al. 2025, "Dr. GRPO", which removes the std's question-difficulty bias).
    A group whose rewards are all equal gets advantage 0 (it carries no learning signal).
    """
    groups = _groups(rewards, k, minimum=2)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)
    return centered.reshape(-1)


# --- diagnostics -------------------------------------------------------------------------

def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over the True entries of ``mask``: how much of the
    returns' variance the critic explains (1: perfectly, 0: no better than a constant, < 0: worse).
    Shapes: (B, T) each -> scalar; NaN when the returns do not vary (nothing to explain)."""
    returns_var = masked_var(returns, mask, unbiased=False)
    if returns_var <= 0:
        return torch.tensor(float("nan"), dtype=returns.dtype, device=returns.device)
    return 1 - masked_var(returns - values, mask, unbiased=False) / returns_var
