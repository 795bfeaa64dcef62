"""RLHF: maximise a reward minus beta * KL(pi_theta || pi_ref) with PPO, or with the critic-free
RLOO and GRPO, which share its rollouts and rewards.

    posttrain ppo --config configs/ppo/world.yaml
    posttrain ppo --config configs/ppo/world.yaml algorithm=rloo samples_per_prompt=4

One step, as in Ziegler et al. 2019, Stiennon et al. 2020 and InstructGPT (Ouyang et al. 2022,
§3.5, eq. 2), with the details of Huang et al. 2024 ("The N+ implementation details of RLHF with PPO"):

1. **Rollout**: ``prompts_per_step`` prompts, ``samples_per_prompt`` responses each, sampled
   from the policy with a KV cache (``posttrain.rl.rollout``); the sampler's token log-probs are kept.
   Each response has a seed of its own (step, prompt, sample), so N processes, each sampling its
   share of the step's prompts, draw what one process would; their experience is joined on every
   process (:func:`gather_step`) before whitening, advantages and minibatches.
2. **Score**: every reward source (reward models, Python functions, the world's gold reward),
   weighted and summed; unfinished responses can be penalized, scores clipped. Where the prompts
   are the world's, the gold reward is logged beside the proxy.
3. **Experience**: one no-grad pass of the policy (log-probs, values, entropy) and one of the
   reference (the LoRA policy with its adapter disabled, or a frozen copy). The trainer's
   log-probs are the "old" ones of the ratios; their gap to the sampler's is logged.
4. **Advantages** (:data:`ALGORITHMS`): ppo puts -beta * KL on every token and the score on the
   last, then GAE(gamma, lambda) against the critic; rloo takes score - beta * sum KL per
   response and a leave-one-out baseline; grpo normalizes scores within each prompt's group and
   puts a k3 KL in its loss.
5. **Update**: ``ppo_epochs`` passes over the batch in shuffled minibatches, clipped losses.
6. **KL coefficient**: fixed, or Ziegler's adaptive controller toward ``kl_target``.

Logged per step (metrics.jsonl): reward/score (proxy), reward/gold, kl, kl_coef, policy/entropy,
response/length, policy/clipfrac, policy/approx_kl, value/explained_variance, value/clipfrac,
rollout/logp_diff, episodes_per_s; held-out eval/score and eval/gold; and at the end
``run_dir/proxy_vs_gold.png`` (``posttrain.rl.diagnostics``) when a gold reward exists.
"""

from __future__ import annotations

import json
import zlib
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from posttrain.data.readers import read_from_config
from posttrain.generation import stop_at_end_of_turn
from posttrain.losses.ppo import grpo_loss, ppo_policy_loss, ppo_value_loss, rloo_loss, token_entropy
from posttrain.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, set_dropout
from posttrain.models.lora import disabled_adapter
from posttrain.models.value import ActorCritic, ValueHead, load_critic, response_logits
from posttrain.recipes.config import PPOConfig
from posttrain.rl import math as rlm
from posttrain.rl.diagnostics import hacking_summary, plot_proxy_vs_gold
from posttrain.rl.kl import AdaptiveKLController, FixedKLController
from posttrain.rl.rollout import Rollout, by_length, concat_rollouts, sample_rollouts, token_logps
from posttrain.scorers import load_scorer, world_gold
from posttrain.training.loop import (Checkpointer, ProgressBar, RunContext, Timer, TrainingError, finish_run,
                                     gather_objects, refuse_fsdp, setup_run, train_step)
from posttrain.training.metrics import read_metrics
from posttrain.training.optim import build_optimizer, build_scheduler, own_learning_rate
from posttrain.training.sampler import StepSampler, require_one_step

RewardFn = Callable[[Sequence[int], Rollout], dict[str, torch.Tensor]]
"""(prompt index of each row, rollout) -> {"score": (B,) proxy reward, optionally "gold": (B,), and
"reward/<source>": (B,) per source}."""


# --- prompts -------------------------------------------------------------------------------

@dataclass
class PromptSet:
    """Prompts to roll out from: token ids (chat-rendered), their messages, and their records."""

    ids: list[list[int]]
    messages: list[list[dict]]
    records: list[Any]
    """What reward functions may need beyond the messages: world TaskExamples, or data records."""

    def __len__(self) -> int:
        return len(self.ids)


def encode_prompts(tokenizer, messages: list[list[dict]], records: list, max_tokens: int, ctx: RunContext,
                   what: str) -> PromptSet:
    """Render each prompt with the chat template (ready for the assistant's turn); prompts longer
    than ``max_tokens`` are dropped and counted."""
    keep = PromptSet([], [], [])
    for m, record in zip(messages, records):
        text = tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            keep.ids.append(ids), keep.messages.append(m), keep.records.append(record)
    if len(keep) < len(messages):
        ctx.print(f"{what}: dropped {len(messages) - len(keep)} of {len(messages)} prompts longer than "
                  f"data.max_length={max_tokens} tokens")
    if not keep.ids:
        raise TrainingError(f"{what}: no prompt left (every one is longer than data.max_length={max_tokens})")
    return keep


def read_prompts(cfg: PPOConfig, tokenizer, ctx: RunContext, sources: list[str], split: str) -> PromptSet:
    """The prompts of ``sources``: prompt records, conversations (what precedes the last answer) and the
    world's tasks (``world:prompts``: world.examples per family, or eval_examples held-out ones)."""
    world = cfg.world if split == "train" else replace(cfg.world, eval_examples=cfg.eval_examples)
    result = read_from_config(cfg.data, sources, tokenizer, world=world, world_split=split)
    ctx.print(result.report.summary())
    records = result.expect("prompt", "conversation", "task")
    messages = []
    for r in records:
        turns = r.as_dicts()
        while turns and turns[-1]["role"] == "assistant":  # a conversation's prompt is what precedes its answer
            turns = turns[:-1]
        messages.append(turns)
    return encode_prompts(tokenizer, messages, records, cfg.data.max_length, ctx, ", ".join(sources))


# --- rewards -------------------------------------------------------------------------------

def reward_sources(cfg: PPOConfig, device: str) -> list[tuple[str, float, Callable]]:
    """(name, weight, scoring function) of every entry of cfg.rewards, each loaded once."""
    if not cfg.rewards:
        raise TrainingError("rewards is empty: name reward-model folders, 'module:function' rewards, or world_gold")
    weights = list(cfg.reward_weights) or [1.0] * len(cfg.rewards)
    if len(weights) != len(cfg.rewards):
        raise TrainingError(f"reward_weights has {len(weights)} entries for {len(cfg.rewards)} rewards")
    names = [Path(spec.rstrip("/")).name if Path(spec).exists() else spec for spec in cfg.rewards]
    return [(name, w, load_scorer(spec, device)) for name, spec, w in zip(names, cfg.rewards, weights)]


def reward_function(sources: list[tuple[str, float, Callable]], prompts: PromptSet) -> RewardFn:
    """The weighted sum of the sources on ``prompts``, plus the gold reward where they are the world's."""
    has_gold = bool(prompts.records) and all(getattr(r, "kind", None) == "task" for r in prompts.records)  # world tasks

    def reward(rows: Sequence[int], rollout: Rollout) -> dict[str, torch.Tensor]:
        p, rec = [prompts.messages[i] for i in rows], [prompts.records[i] for i in rows]
        out = {f"reward/{name}": fn(p, rollout.texts, rec).float() for name, _, fn in sources}
        out["score"] = sum(w * s for (_, w, _), s in zip(sources, out.values()))
        if has_gold:
            out["gold"] = world_gold(p, rollout.texts, rec).float()
        return out

    return reward


# --- experience ----------------------------------------------------------------------------

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


def ppo_advantages(cfg: PPOConfig, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token rewards -beta * KL_t (+ score at the last token), GAE against the critic, whitening."""
    rewards, _ = rlm.per_token_kl_penalty_rewards(score, fwd["old_logps"], fwd["ref_logps"], mask, kl_coef,
                                                  cfg.kl_estimator)
    advantages, returns = rlm.gae(rewards, fwd["values"], mask, cfg.gamma, cfg.lam)
    return (rlm.masked_whiten(advantages, mask) if cfg.whiten_advantages else advantages), returns


def rloo_advantages(cfg: PPOConfig, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, None]:
    """Sequence reward score - beta * sum_t KL_t, minus the mean of the other samples of its prompt."""
    kl = rlm.kl_estimator(cfg.kl_estimator)(fwd["old_logps"], fwd["ref_logps"])
    advantages = rlm.rloo_advantages(score - kl_coef * rlm.masked_sum(kl, mask, dim=1), cfg.samples_per_prompt)
    if cfg.whiten_advantages:  # each group's mean is already 0: this only rescales
        advantages = advantages / (advantages.std() + 1e-8)
    return advantages, None


def grpo_advantages(cfg: PPOConfig, score, fwd, mask, kl_coef) -> tuple[torch.Tensor, None]:
    """(score - group mean) / group std; the KL goes into the loss, not the reward."""
    return rlm.grpo_advantages(score, cfg.samples_per_prompt), None


def score_to_optimize(cfg: PPOConfig, rollout: Rollout, score: torch.Tensor) -> torch.Tensor:
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


def make_experience(ctx: RunContext, cfg: PPOConfig, model: ActorCritic, reference, rollout: Rollout,
                    scores: dict[str, torch.Tensor], kl_coef: float, batch_size: int,
                    pad_id: int) -> tuple[Experience, dict[str, float]]:
    """This process's forward passes over its rollout, then the experience of the whole step
    (:func:`gather_step`): scores (``scores["score"]`` and the per-source ones, logged as means),
    advantages and statistics."""
    device = next(model.parameters()).device
    fwd = forward_rollout(model, reference, rollout.to(device), cfg.temperature, batch_size)
    rollout, fwd, scores = gather_step(ctx, rollout, fwd, scores, pad_id)
    rollout, fwd = rollout.to(device), {k: v.to(device) for k, v in fwd.items()}
    mask = rollout.response_mask
    score = score_to_optimize(cfg, rollout, scores["score"].to(device))
    advantages, returns = ALGORITHMS[cfg.algorithm].advantages(cfg, score, fwd, mask, kl_coef)
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


# --- losses (summed over their units, for train_step) -----------------------------------------

def _policy_logps(cfg: PPOConfig, model, mb: Experience, with_values: bool):
    out = model(**mb.rollout.model_inputs(), with_values=with_values)
    return out, token_logps(out.logits, mb.rollout.response_ids, cfg.temperature)


def _entropy_bonus(cfg: PPOConfig, out, mask) -> torch.Tensor:
    if cfg.entropy_coef == 0:
        return torch.zeros(())
    return -cfg.entropy_coef * rlm.masked_mean(token_entropy(out.logits.float() / cfg.temperature), mask)


def ppo_loss(cfg: PPOConfig, kl_coef: float, model, mb: Experience):
    mask = mb.rollout.response_mask
    out, logps = _policy_logps(cfg, model, mb, with_values=True)
    policy, metrics = ppo_policy_loss(logps, mb.old_logps, mb.advantages, mask, cfg.clip_eps)
    value, value_metrics = ppo_value_loss(out.values, mb.values, mb.returns, mask, cfg.value_clip_eps)
    loss = policy + cfg.vf_coef * value + _entropy_bonus(cfg, out, mask)
    n = mask.sum()
    metrics = {**metrics, **value_metrics, "loss/policy": policy.detach(), "loss/value": value.detach()}
    return loss * n, {k: v * n for k, v in metrics.items()}


def rloo_sequence_loss(cfg: PPOConfig, kl_coef: float, model, mb: Experience):
    mask = mb.rollout.response_mask
    out, logps = _policy_logps(cfg, model, mb, with_values=False)
    loss, metrics = rloo_loss(logps, mb.old_logps, mb.advantages, mask, cfg.clip_eps)
    n = len(mb)
    return (loss + _entropy_bonus(cfg, out, mask)) * n, {k: v * n for k, v in metrics.items()}


def grpo_sequence_loss(cfg: PPOConfig, kl_coef: float, model, mb: Experience):
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


def update(ctx: RunContext, cfg: PPOConfig, model, optimizer, scheduler, experience: Experience, kl_coef: float,
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


# --- building the run ----------------------------------------------------------------------

def build_models(cfg: PPOConfig, tokenizer, ctx: RunContext) -> tuple[ActorCritic, torch.nn.Module | None]:
    """The policy with its value function, and the reference (None: the LoRA policy, adapter disabled)."""
    policy = load_causal_lm(cfg.model, tokenizer=tokenizer)
    stop_at_end_of_turn(policy, tokenizer)  # responses end at the chat template's end-of-turn token
    head = critic = None
    if cfg.algorithm == "ppo" and cfg.critic == "head":
        head = ValueHead(policy.config.hidden_size).to(ctx.device)
    elif cfg.algorithm == "ppo":
        critic = load_critic(cfg.critic, resolve_dtype(cfg.model.dtype, ctx.device), ctx.device)
        set_dropout(critic, cfg.model.dropout)
        if critic.backbone.config.vocab_size < len(tokenizer):
            raise TrainingError(f"critic: {cfg.critic} has {critic.backbone.config.vocab_size} token embeddings, the "
                                f"policy's tokenizer {len(tokenizer)}: the critic must share the policy's tokenizer")
    reference = None if cfg.model.lora.enabled else load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
    return ActorCritic(policy, head, critic), reference


def check_shapes(cfg: PPOConfig) -> int:
    """Episodes per process per step, after checking that they split into whole minibatches."""
    episodes = cfg.prompts_per_step * cfg.samples_per_prompt
    minibatch = cfg.train.batch_size * cfg.train.grad_accum
    if cfg.algorithm != "ppo" and cfg.samples_per_prompt < 2:
        raise TrainingError(f"algorithm={cfg.algorithm} compares samples of the same prompt: "
                            f"set samples_per_prompt >= 2")
    if episodes % minibatch:
        raise TrainingError(f"prompts_per_step x samples_per_prompt = {episodes} episodes do not split into "
                            f"minibatches of train.batch_size x train.grad_accum = {minibatch}; make it a divisor")
    return episodes


def kl_controller(cfg: PPOConfig):
    if cfg.kl_target > 0:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


def evaluate(ctx: RunContext, cfg: PPOConfig, model: ActorCritic, tokenizer, heldout: tuple[PromptSet, RewardFn],
             step: int) -> dict[str, float]:
    """Answer the held-out prompts (greedy unless eval_temperature > 0) and score the answers."""
    prompts, reward = heldout
    rollout = sample_rollouts(model.policy, tokenizer, prompts.ids, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.eval_temperature, batch_size=cfg.generation_batch_size,
                              seed=cfg.train.seed)
    scores = reward(rollout.prompt_index.tolist(), rollout)
    out = {f"eval/{k.split('/')[-1]}": float(v.mean()) for k, v in scores.items()}
    out["eval/length"] = float(rollout.response_lengths.float().mean())
    ctx.metrics.log(step, out)
    ctx.print("eval " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in out.items()))
    return out


# --- the run -------------------------------------------------------------------------------

def train(ctx: RunContext, cfg: PPOConfig, model: ActorCritic, reference, tokenizer, prompts: PromptSet,
          reward: RewardFn, heldout: tuple[PromptSet, RewardFn] | None = None) -> ActorCritic:
    """The RL loop over rollout batches; returns the (unwrapped) trained model. Usable directly
    with any prompts and reward function (e.g. token-id prompts and an exact reward)."""
    tc = cfg.train
    episodes = check_shapes(cfg)
    updates_per_step = cfg.ppo_epochs * episodes // (tc.batch_size * tc.grad_accum)
    require_one_step(len(prompts), cfg.prompts_per_step, 1, ctx.world_size, "prompts", "prompts_per_step")
    sampler = StepSampler(len(prompts), cfg.prompts_per_step, 1, ctx.world_size, ctx.rank, tc.seed)
    optimizer = build_optimizer(model, tc)
    value_head = model.critic.head if model.critic is not None else model.value_head
    if value_head is not None and cfg.value_lr > 0:
        own_learning_rate(optimizer, list(value_head.parameters()), cfg.value_lr)
    scheduler = build_scheduler(optimizer, tc, tc.max_steps * updates_per_step)
    model, optimizer = ctx.accelerator.prepare(model, optimizer)
    inner: ActorCritic = ctx.accelerator.unwrap_model(model)
    controller = kl_controller(cfg)
    ckpt = Checkpointer(ctx, model, optimizer, scheduler)
    state = ckpt.restore()
    if "kl_controller" in state.extra:
        controller.load_state_dict(state.extra["kl_controller"])
    if heldout is not None and state.step == 0 and cfg.eval_examples > 0:
        evaluate(ctx, cfg, inner, tokenizer, heldout, 0)
    timer = Timer()
    with ProgressBar(ctx, tc.max_steps, start=state.step, description=cfg.algorithm) as bar:
        for epoch, index, (rows,) in sampler.iterate(state.epoch, state.batch_in_epoch):
            if state.step >= tc.max_steps:
                break
            step = state.step + 1
            # Seeded per step and per prompt (its index in the data): a resumed run, and any split of the
            # step's prompts across processes, samples the same responses.
            seed = zlib.crc32(f"{tc.seed}-{step}".encode())
            rollout = sample_rollouts(inner.policy, tokenizer, [prompts.ids[i] for i in rows],
                                      samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, top_p=cfg.top_p,
                                      batch_size=cfg.generation_batch_size, seed=seed, prompt_keys=rows)
            rollout_s = timer.lap()
            scores = reward([rows[i] for i in rollout.prompt_index.tolist()], rollout)
            rollout.prompt_index += ctx.rank * len(rows)  # numbered among the whole step's prompts
            experience, stats = make_experience(ctx, cfg, inner, reference, rollout, scores, controller.kl_coef,
                                                tc.batch_size, tokenizer.pad_token_id or 0)
            experience_s = timer.lap()
            stats.update(update(ctx, cfg, model, optimizer, scheduler, experience, controller.kl_coef, step))
            update_s = timer.lap()
            stats.update({"kl_coef": controller.kl_coef,
                          "episodes_per_s": len(experience) / (rollout_s + experience_s + update_s),
                          "time/rollout_s": rollout_s, "time/experience_s": experience_s, "time/update_s": update_s})
            controller.update(stats["kl"], n_steps=len(experience))  # episodes of every process
            state.advance(epoch, index)
            state.extra["kl_controller"] = controller.state_dict()
            if state.step % tc.log_every == 0 or state.step == tc.max_steps:
                ctx.metrics.log(state.step, stats)
            bar.update(state.step, score=stats["reward/score"], kl=stats["kl"], beta=controller.kl_coef)
            if heldout is not None and cfg.eval_examples > 0 and (
                    (tc.eval_every and state.step % tc.eval_every == 0) or state.step == tc.max_steps):
                evaluate(ctx, cfg, inner, tokenizer, heldout, state.step)
            ckpt.maybe_save(state)
            timer.lap()  # evaluation and checkpoints are not training throughput
    ckpt.maybe_save(state, final=True)
    return inner


def ppo(cfg: PPOConfig) -> Path:
    """Train the policy against cfg.rewards; export ``run_dir/final`` and return its path."""
    ctx = setup_run(cfg)
    refuse_fsdp(ctx, "ppo", "each process samples its own rollouts, of its own lengths, so their forward passes "
                "cannot run in step")
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    train_sources = cfg.data.train or ["world:prompts"]
    eval_sources = cfg.data.eval or (["world:prompts"] if any(s.startswith("world:") for s in train_sources) else [])
    prompts = read_prompts(cfg, tokenizer, ctx, train_sources, "train")
    heldout = read_prompts(cfg, tokenizer, ctx, eval_sources, "heldout") if eval_sources and cfg.eval_examples else None
    if heldout is not None and cfg.data.eval:
        heldout = replace(heldout, ids=heldout.ids[:cfg.eval_examples], messages=heldout.messages[:cfg.eval_examples],
                          records=heldout.records[:cfg.eval_examples])
    ctx.print(f"{len(prompts)} training prompts" + (f", {len(heldout)} held-out" if heldout else ""))
    model, reference = build_models(cfg, tokenizer, ctx)
    sources = reward_sources(cfg, str(ctx.device))
    model = train(ctx, cfg, model, reference, tokenizer, prompts, reward_function(sources, prompts),
                  (heldout, reward_function(sources, heldout)) if heldout is not None else None)
    if ctx.is_main:
        records = read_metrics(ctx.run_dir / "metrics.jsonl")
        plot = plot_proxy_vs_gold(records, ctx.run_dir / "proxy_vs_gold.png", f"{cfg.algorithm}, beta={cfg.kl_coef}")
        summary = hacking_summary(records)
        if plot:
            (ctx.run_dir / "reward_hacking.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            ctx.print(f"proxy vs gold reward: {plot}; " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return finish_run(ctx, model.policy, tokenizer)
