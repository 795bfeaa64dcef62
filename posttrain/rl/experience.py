"""From a scored rollout to the experience an RL update learns from.

:func:`make_experience` runs one no-grad pass of the policy (log-probs, entropy, values) and one of
the reference over this process's rollout, joins every process's share of the step
(:func:`gather_step`), turns scores into the score to optimize (missing-eos penalty, whitening,
clipping) and calls the algorithm's advantage function on it.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from posttrain.losses.ppo import token_entropy
from posttrain.models.lora import disabled_adapter
from posttrain.models.value import ActorCritic, response_logits
from posttrain.rl import math as rlm
from posttrain.rl.rollout import Rollout, by_length, concat_rollouts, token_logps
from posttrain.rl.settings import RLSettings
from posttrain.training.loop import RunContext, gather_objects


@dataclass
class Experience:
    """A scored rollout with everything the update needs; response tensors are (B, R)."""

    rollout: Rollout
    old_logps: torch.Tensor
    """Trainer log-probs of the sampled tokens before this batch's updates."""
    ref_logps: torch.Tensor
    values: torch.Tensor | None
    advantages: torch.Tensor
    """(B, R) for ppo, (B,) for rloo and grpo."""
    returns: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.rollout)

    def select(self, rows: torch.Tensor) -> "Experience":
        rollout = self.rollout.select(rows)
        width = rollout.response_length  # select() drops response columns that are padding in every row

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else (t[rows, :width] if t.dim() == 2 else t[rows])

        return Experience(rollout, cut(self.old_logps), cut(self.ref_logps), cut(self.values), cut(self.advantages),
                          cut(self.returns))


@torch.no_grad()
def forward_rollout(model: ActorCritic, reference: torch.nn.Module | None, rollout: Rollout, temperature: float,
                    batch_size: int) -> dict[str, torch.Tensor]:
    """Trainer log-probs, entropy and values of the policy, and reference log-probs, (B, R) each,
    computed ``batch_size`` rows at a time. ``reference`` None: the LoRA policy, adapter disabled."""
    parts: dict[str, list[torch.Tensor]] = {}
    model.eval()
    order = by_length(rollout, torch.arange(len(rollout)))
    for start in range(0, len(rollout), batch_size):
        chunk = rollout.select(order[start:start + batch_size])
        ids, inputs = chunk.response_ids, chunk.model_inputs()
        out = model(**inputs, with_values=model.has_values)
        with nullcontext() if reference is not None else disabled_adapter(model.policy):
            ref_logits, _ = response_logits(reference if reference is not None else model.policy, **inputs)
        found = {"old_logps": token_logps(out.logits, ids, temperature),
                 "entropy": token_entropy(out.logits.float() / temperature),
                 "ref_logps": token_logps(ref_logits, ids, temperature), "values": out.values}
        for key, value in found.items():
            if value is not None:  # back to the rollout's width (select() dropped all-padding columns)
                pad = rollout.response_length - value.shape[1]
                parts.setdefault(key, []).append(torch.nn.functional.pad(value, (0, pad)))
    restore = torch.argsort(order).to(rollout.input_ids.device)
    return {k: torch.cat(v)[restore] for k, v in parts.items()}


def score_to_optimize(cfg: RLSettings, rollout: Rollout, score: torch.Tensor) -> torch.Tensor:
    """The score after the missing-eos penalty, whitening and clipping."""
    score = score - cfg.missing_eos_penalty * (~rollout.finished).float()
    if cfg.whiten_rewards and cfg.algorithm != "grpo":
        score = (score - score.mean()) / (score.std() + 1e-8)
    return score.clamp(-cfg.reward_clip, cfg.reward_clip) if cfg.reward_clip > 0 else score


def gather_step(ctx: RunContext, rollout: Rollout, fwd: dict[str, torch.Tensor], scores: dict[str, torch.Tensor],
                pad_id: int) -> tuple[Rollout, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every process's share of the step, joined in rank order on every process: the rollout, its
    (B, R) forward outputs (padded to the widest response) and (B,) scores. Each process then holds
    the batch that one process would have sampled, so whitening, advantages, statistics and
    minibatches are those of the whole step."""
    if ctx.world_size == 1:
        return rollout, fwd, scores
    cpu = lambda d: {k: v.cpu() for k, v in d.items()}  # noqa: E731
    parts = gather_objects(ctx, (rollout.to("cpu"), cpu(fwd), cpu(scores)))
    joined = concat_rollouts([r for r, _, _ in parts], pad_id)
    width = joined.response_length
    fwd = {k: torch.cat([torch.nn.functional.pad(f[k], (0, width - f[k].shape[1])) for _, f, _ in parts])
           for k in fwd}
    return joined, fwd, {k: torch.cat([s[k] for _, _, s in parts]) for k in scores}


def make_experience(ctx: RunContext, cfg: RLSettings, model: ActorCritic, reference, rollout: Rollout,
                    scores: dict[str, torch.Tensor], kl_coef: float, batch_size: int, pad_id: int,
                    advantages_fn: Callable) -> tuple[Experience, dict[str, float]]:
    """This process's forward passes over its rollout, then the experience of the whole step
    (:func:`gather_step`): scores (``scores["score"]`` and the per-source ones, logged as means),
    advantages (``advantages_fn``, an algorithm's: ``posttrain.rl.algorithms``) and statistics."""
    device = next(model.parameters()).device
    fwd = forward_rollout(model, reference, rollout.to(device), cfg.temperature, batch_size)
    rollout, fwd, scores = gather_step(ctx, rollout, fwd, scores, pad_id)
    rollout, fwd = rollout.to(device), {k: v.to(device) for k, v in fwd.items()}
    mask = rollout.response_mask
    score = score_to_optimize(cfg, rollout, scores["score"].to(device))
    advantages, returns = advantages_fn(cfg, score, fwd, mask, kl_coef)
    kl = rlm.masked_sum(rlm.kl_estimator(cfg.kl_estimator)(fwd["old_logps"], fwd["ref_logps"]), mask, dim=1)
    stats = {
        "kl": kl.mean(), "reward/total": (score - kl_coef * kl).mean(),
        "policy/entropy": rlm.masked_mean(fwd["entropy"], mask),
        "rollout/logp_diff": rlm.masked_mean((fwd["old_logps"] - rollout.rollout_token_logps).abs(), mask),
        "rollout/logp_diff_max": torch.where(mask, (fwd["old_logps"] - rollout.rollout_token_logps).abs(), 0).max(),
    }
    if returns is not None:
        stats["value/explained_variance"] = rlm.explained_variance(fwd["values"], returns, mask)
    for key, value in scores.items():  # score and gold as reward/score and reward/gold, beside reward/<source>
        stats[key if key.startswith("reward/") else f"reward/{key}"] = value.float().mean()
    stats["response/length"] = rollout.response_lengths.float().mean()
    stats["response/finished"] = rollout.finished.float().mean()
    experience = Experience(rollout, fwd["old_logps"], fwd["ref_logps"], fwd.get("values"), advantages, returns)
    return experience, {k: float(v) for k, v in stats.items()}
