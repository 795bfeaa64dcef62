"""Config section shared by every training recipe: optimization, schedule, checkpoints, logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    run_dir: str = "runs/run"
    """Directory for config.yaml, metrics.jsonl, TensorBoard events, checkpoints and the final model."""
    seed: int = 0
    """Seed for model init, data order and dropout."""
    max_steps: int = 100
    """Optimizer steps to run (one step = grad_accum micro-batches), a positive number; -1 runs `epochs` epochs instead."""
    epochs: int = 1
    """Passes over the data when max_steps is -1."""
    batch_size: int = 8
    """Examples per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; the loss is normalized by the target tokens of the whole step."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio (the floor)."""
    warmup_steps: int = 10
    """Steps of linear warmup from 0 to lr."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norm weights)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    log_every: int = 1
    """Write metrics every this many steps."""
    eval_every: int = 0
    """Evaluate on held-out data every this many steps; 0 only at the end."""
    save_every: int = 50
    """Write a checkpoint every this many steps; 0 only at the end."""
    keep_checkpoints: int = 2
    """Most recent checkpoints to keep on disk; 0 keeps them all."""
    resume: str = "auto"
    """auto: continue from the newest checkpoint in run_dir if there is one; never: start fresh; or a checkpoint path."""
    tensorboard: bool = True
    """Also write metrics as TensorBoard events under run_dir/tensorboard."""
    progress: bool = True
    """Show a progress bar on the terminal."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision for GPUs; keep 'no' (fp32) on CPUs, where bf16 is many times slower."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    fsdp: bool = False
    """With several processes, shard weights, gradients and optimizer state across them (torch FSDP2, FULL_SHARD: one unit per decoder layer, one for the rest) instead of a full copy on each (DDP), for models too big for one GPU; same results. pretrain, sft and dpo, full fine-tuning (not LoRA); no effect in one process."""

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for values no run can use; the config loader reports the first."""
        out = []
        if self.max_steps == 0 or self.max_steps < -1:
            out.append(("max_steps", f"{self.max_steps} is not a number of steps: give a positive number, "
                                     f"or -1 to train for `epochs` epochs"))
        if self.max_steps == -1 and self.epochs < 1:
            out.append(("epochs", f"{self.epochs}: with max_steps=-1 at least 1 epoch is needed"))
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                out.append((name, f"{getattr(self, name)}: must be at least 1"))
        return out
