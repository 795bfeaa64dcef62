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
   process (``posttrain.rl.experience``) before whitening, advantages and minibatches.
2. **Score**: every reward source (reward models, Python functions, the world's gold reward),
   weighted and summed; unfinished responses can be penalized, scores clipped. Where the prompts
   are the world's, the gold reward is logged beside the proxy.
3. **Experience**: one no-grad pass of the policy (log-probs, values, entropy) and one of the
   reference (the LoRA policy with its adapter disabled, or a frozen copy). The trainer's
   log-probs are the "old" ones of the ratios; their gap to the sampler's is logged.
4. **Advantages** (``posttrain.rl.algorithms``): ppo puts -beta * KL on every token and the score on the
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
from dataclasses import replace
from pathlib import Path

import torch

from posttrain.data.readers import read_from_config
from posttrain.generation import stop_at_end_of_turn
from posttrain.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, set_dropout
from posttrain.models.value import ActorCritic, ValueHead, load_critic
from posttrain.recipes.config import PPOConfig
from posttrain.rl.diagnostics import hacking_summary, plot_proxy_vs_gold
from posttrain.rl.loop import train
from posttrain.rl.prompts import PromptSet, encode_prompts, reward_function, reward_sources
from posttrain.training.loop import RunContext, TrainingError, finish_run, refuse_fsdp, setup_run
from posttrain.training.metrics import read_metrics


# --- prompts and models -------------------------------------------------------------------------------

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
    return encode_prompts(tokenizer, messages, records, cfg.data.max_length, ctx.print, ", ".join(sources))


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
    sources = reward_sources(cfg.rewards, cfg.reward_weights, str(ctx.device))
    ids_from = tokenizer if cfg.reward_input == "ids" else None
    model = train(ctx, cfg, model, reference, tokenizer, prompts, reward_function(sources, prompts, ids_from),
                  (heldout, reward_function(sources, heldout, ids_from)) if heldout is not None else None)
    if ctx.is_main:
        records = read_metrics(ctx.run_dir / "metrics.jsonl")
        plot = plot_proxy_vs_gold(records, ctx.run_dir / "proxy_vs_gold.png", f"{cfg.algorithm}, beta={cfg.kl_coef}")
        summary = hacking_summary(records)
        if plot:
            (ctx.run_dir / "reward_hacking.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            ctx.print(f"proxy vs gold reward: {plot}; " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return finish_run(ctx, model.policy, tokenizer)
