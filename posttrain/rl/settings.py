"""What the RL loop reads from its configuration: :class:`RLSettings`.

The library's RL pieces (``posttrain.rl.experience``, ``.algorithms``, ``.loop``) take any object
with these attributes; the PPO recipe's ``PPOConfig`` is one, and documents each field. A script
that drives the loop itself can pass its own dataclass.
"""

from __future__ import annotations

from typing import Literal, Protocol

from posttrain.training.config import TrainConfig


class RLSettings(Protocol):
    """The hyperparameters of one RL run (see ``posttrain.recipes.config.PPOConfig`` for each one's meaning)."""

    train: TrainConfig
    algorithm: Literal["ppo", "rloo", "grpo"]
    prompts_per_step: int
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_p: float
    generation_batch_size: int
    ppo_epochs: int
    kl_coef: float
    kl_target: float
    kl_horizon: int
    kl_estimator: Literal["k1", "k2", "k3"]
    reward_clip: float
    whiten_rewards: bool
    missing_eos_penalty: float
    gamma: float
    lam: float
    clip_eps: float
    value_clip_eps: float
    vf_coef: float
    value_lr: float
    entropy_coef: float
    whiten_advantages: bool
    eval_examples: int
    eval_temperature: float
