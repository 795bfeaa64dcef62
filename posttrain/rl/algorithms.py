"""PPO, RLOO and GRPO as two functions each: advantages from a scored rollout, and the loss of a
minibatch of experience; :func:`update` runs an algorithm's ppo_epochs passes over a step.

* ppo puts -beta * KL on every token and the score on the last, then GAE(gamma, lambda) against the
  critic; its loss is the clipped policy loss plus vf_coef times the clipped value loss.
* rloo takes score - beta * sum KL per response and a leave-one-out baseline over the prompt's samples.
* grpo normalizes scores within each prompt's group and puts a k3 KL to the reference in its loss.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from posttrain.losses.ppo import grpo_loss, ppo_policy_loss, ppo_value_loss, rloo_loss, token_entropy
from posttrain.rl import math as rlm
from posttrain.rl.experience import Experience
from posttrain.rl.rollout import by_length, token_logps
from posttrain.rl.settings import RLSettings
from posttrain.training.loop import RunContext, train_step


# --- advantages ------------------------------------------------------------------------------

def ppo_advantages(cfg: RLSettings, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token rewards -beta * KL_t (+ score at the last token), GAE against the critic, whitening."""
    rewards, _ = rlm.per_token_kl_penalty_rewards(score, fwd["old_logps"], fwd["ref_logps"], mask, kl_coef,
                                                  cfg.kl_estimator)
    advantages, returns = rlm.gae(rewards, fwd["values"], mask, cfg.gamma, cfg.lam)
    return (rlm.masked_whiten(advantages, mask) if cfg.whiten_advantages else advantages), returns


def rloo_advantages(cfg: RLSettings, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, None]:
    """Sequence reward score - beta * sum_t KL_t, minus the mean of the other samples of its prompt."""
    kl = rlm.kl_estimator(cfg.kl_estimator)(fwd["old_logps"], fwd["ref_logps"])
    advantages = rlm.rloo_advantages(score - kl_coef * rlm.masked_sum(kl, mask, dim=1), cfg.samples_per_prompt)
    if cfg.whiten_advantages:  # each group's mean is already 0: this only rescales
        advantages = advantages / (advantages.std() + 1e-8)
    return advantages, None


def grpo_advantages(cfg: RLSettings, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, None]:
    """(score - group mean) / group std; the KL goes into the loss, not the reward."""
    return rlm.grpo_advantages(score, cfg.samples_per_prompt), None


# --- losses (summed over their units, for train_step) -----------------------------------------

def _policy_logps(cfg: RLSettings, model, mb: Experience, with_values: bool):
    out = model(**mb.rollout.model_inputs(), with_values=with_values)
    return out, token_logps(out.logits, mb.rollout.response_ids, cfg.temperature)


def _entropy_bonus(cfg: RLSettings, out, mask) -> torch.Tensor:
    if cfg.entropy_coef == 0:
        return torch.zeros(())
    return -cfg.entropy_coef * rlm.masked_mean(token_entropy(out.logits.float() / cfg.temperature), mask)


def ppo_loss(cfg: RLSettings, kl_coef: float, model, mb: Experience):
    mask = mb.rollout.response_mask
    out, logps = _policy_logps(cfg, model, mb, with_values=True)
    policy, metrics = ppo_policy_loss(logps, mb.old_logps, mb.advantages, mask, cfg.clip_eps)
    value, value_metrics = ppo_value_loss(out.values, mb.values, mb.returns, mask, cfg.value_clip_eps)
    loss = policy + cfg.vf_coef * value + _entropy_bonus(cfg, out, mask)
    n = mask.sum()
    metrics = {**metrics, **value_metrics, "loss/policy": policy.detach(), "loss/value": value.detach()}
    return loss * n, {k: v * n for k, v in metrics.items()}


def rloo_sequence_loss(cfg: RLSettings, kl_coef: float, model, mb: Experience):
    mask = mb.rollout.response_mask
    out, logps = _policy_logps(cfg, model, mb, with_values=False)
    loss, metrics = rloo_loss(logps, mb.old_logps, mb.advantages, mask, cfg.clip_eps)
    n = len(mb)
    return (loss + _entropy_bonus(cfg, out, mask)) * n, {k: v * n for k, v in metrics.items()}


def grpo_sequence_loss(cfg: RLSettings, kl_coef: float, model, mb: Experience):
    mask = mb.rollout.response_mask
    out, logps = _policy_logps(cfg, model, mb, with_values=False)
    loss, metrics = grpo_loss(logps, mb.old_logps, mb.ref_logps, mb.advantages, mask, cfg.clip_eps, kl_coef)
    n = len(mb)
    metrics["grpo/kl_k3"] = metrics.pop("kl")
    return (loss + _entropy_bonus(cfg, out, mask)) * n, {k: v * n for k, v in metrics.items()}


@dataclass(frozen=True)
class Algorithm:
    advantages: Callable
    """(cfg, score, forward outputs, response_mask, kl_coef) -> (advantages, returns or None)."""
    loss: Callable
    """(cfg, kl_coef, model, minibatch) -> (loss summed over units, metrics summed over units)."""
    per_token: bool
    """Normalization unit of the loss: response tokens (True) or responses."""


ALGORITHMS = {
    "ppo": Algorithm(ppo_advantages, ppo_loss, per_token=True),
    "rloo": Algorithm(rloo_advantages, rloo_sequence_loss, per_token=False),
    "grpo": Algorithm(grpo_advantages, grpo_sequence_loss, per_token=False),
}


def update(ctx: RunContext, cfg: RLSettings, model, optimizer, scheduler, experience: Experience, kl_coef: float,
           step: int) -> dict[str, float]:
    """ppo_epochs passes over the step's experience (every process's) in shuffled minibatches, each
    one optimizer update whose micro-batches the processes share; metrics averaged over updates."""
    algorithm, tc = ALGORITHMS[cfg.algorithm], cfg.train
    minibatch = tc.batch_size * tc.grad_accum * ctx.world_size
    count = (lambda mb: int(mb.rollout.response_mask.sum())) if algorithm.per_token else len
    totals: dict[str, float] = {}
    updates = 0
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(len(experience), generator=torch.Generator().manual_seed(
            zlib.crc32(f"{tc.seed}-{step}-{epoch}".encode())))
        for start in range(0, len(experience), minibatch):
            rows = by_length(experience.rollout, order[start:start + minibatch])
            # (grad_accum, world_size, batch_size): micro-batch k of process r, as StepSampler cuts a global batch.
            micro = [experience.select(ids) for ids in rows.reshape(tc.grad_accum, ctx.world_size, -1)[:, ctx.rank]]
            result = train_step(ctx, model, optimizer, scheduler, micro, partial(algorithm.loss, cfg, kl_coef),
                                count, step=step)
            for key, value in {**result.metrics, "loss": result.loss, "grad_norm": result.grad_norm,
                               "lr": result.lr}.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    return {k: v / updates for k, v in totals.items()}
