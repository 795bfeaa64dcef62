"""The RL loop: sample a rollout batch, score it, make experience, update; repeat.

One step, as in Ziegler et al. 2019, Stiennon et al. 2020 and InstructGPT (Ouyang et al. 2022,
§3.5, eq. 2): ``prompts_per_step`` prompts, ``samples_per_prompt`` responses each
(``posttrain.rl.rollout``), scored by a :data:`~posttrain.rl.prompts.RewardFn`, turned into
experience (``posttrain.rl.experience``) and learned from by the algorithm's ``ppo_epochs`` passes
(``posttrain.rl.algorithms``); the KL coefficient is fixed or adapted (``posttrain.rl.kl``).
Checkpoints hold the KL controller too, so a killed run resumes to the same result.
"""

from __future__ import annotations

import zlib
from typing import Callable

from posttrain.errors import TrainingError
from posttrain.models.value import ActorCritic
from posttrain.rl.algorithms import ALGORITHMS, update
from posttrain.rl.experience import make_experience
from posttrain.rl.kl import AdaptiveKLController, FixedKLController
from posttrain.rl.prompts import PromptSet, RewardFn
from posttrain.rl.rollout import sample_rollouts
from posttrain.rl.settings import RLSettings
from posttrain.training.loop import Checkpointer, ProgressBar, RunContext, Timer
from posttrain.training.optim import build_optimizer, build_scheduler, own_learning_rate
from posttrain.training.sampler import StepSampler, require_one_step


def check_shapes(cfg: RLSettings) -> int:
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


def kl_controller(cfg: RLSettings):
    if cfg.kl_target > 0:
        return AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)


def evaluate(ctx: RunContext, cfg: RLSettings, model: ActorCritic, tokenizer, heldout: tuple[PromptSet, RewardFn],
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


def train(ctx: RunContext, cfg: RLSettings, model: ActorCritic, reference, tokenizer, prompts: PromptSet,
          reward: RewardFn, heldout: tuple[PromptSet, RewardFn] | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> ActorCritic:
    """The RL loop over rollout batches; returns the (unwrapped) trained model. Usable directly
    with any prompts and reward function (e.g. token-id prompts and an exact reward).
    ``on_step(step, stats)`` is called after each step's update, before evaluation and checkpoints."""
    tc = cfg.train
    episodes = check_shapes(cfg)
    algorithm = ALGORITHMS[cfg.algorithm]
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
                                                tc.batch_size, tokenizer.pad_token_id or 0, algorithm.advantages)
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
            if on_step is not None:
                on_step(state.step, stats)
            if heldout is not None and cfg.eval_examples > 0 and (
                    (tc.eval_every and state.step % tc.eval_every == 0) or state.step == tc.max_steps):
                evaluate(ctx, cfg, inner, tokenizer, heldout, state.step)
            ckpt.maybe_save(state)
            timer.lap()  # evaluation and checkpoints are not training throughput
    ckpt.maybe_save(state, final=True)
    return inner
