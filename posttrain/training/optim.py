"""AdamW and the learning-rate schedule shared by every recipe: linear warmup, then cosine to a floor.

The schedule is one pure function, :func:`lr_at`, so it can be checked against numbers
worked by hand; :func:`build_scheduler` wraps it in a ``LambdaLR`` so its position is saved
and restored with the checkpoint like any torch scheduler.
"""

from __future__ import annotations

import math

import torch

from posttrain.training.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) in a run of ``total_steps`` steps.

    - warmup, steps ``0 .. warmup_steps-1``: linear from 0, ``lr * (step + 1) / warmup_steps``,
      so the first step already learns a little and the last warmup step uses the peak ``lr``;
    - then cosine from ``lr`` down to the floor ``lr * min_lr_ratio``, reached at the last step
      (``total_steps - 1``) and kept for any step after it.
    """
    peak = cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    warmup = max(0, cfg.warmup_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = total_steps - 1 - warmup
    if decay_steps <= 0:
        return peak
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases and norm gains are 1-d; decaying them toward 0 only hurts (they are not weights
    # that multiply inputs). Names catch norms stored with extra dims by some architectures.
    return param.ndim < 2 or "norm" in name.lower()


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (``requires_grad``), without weight decay on biases and norms;
    torch's fused kernel where the parameters allow it (as Hugging Face's Trainer defaults to).

    Tied parameters (e.g. input and output embeddings) appear once.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():  # named_parameters() already skips tied duplicates
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (every requires_grad is False); "
                         "check the LoRA settings or which layers are frozen")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=_fusable(decay + no_decay) or None)


def _fusable(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain (not sharded) floating-point
    tensors on the CPU or a GPU. On this project's CPUs it steps a 20M-parameter model 5x faster than
    the default for-loop implementation, with the same update (tested)."""
    from torch.distributed.tensor import DTensor

    return all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor)
               for p in params)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """``LambdaLR`` following :func:`lr_at`; after ``k`` calls to ``.step()`` the lr is ``lr_at(k)``."""
    if cfg.lr <= 0:
        raise ValueError(f"train.lr must be positive, got {cfg.lr}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)


def own_learning_rate(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], lr: float) -> None:
    """Move ``params`` into a param group of their own at ``lr`` (before any step; the schedule
    scales every group's lr by the same factor)."""
    ids = {id(p) for p in params}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
