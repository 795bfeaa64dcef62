"""Building blocks of every recipe's training loop, on top of ``accelerate``.

A supervised recipe (SFT, reward model, DPO, pretraining) is config -> pieces -> :func:`fit`::

    ctx = setup_run(cfg)                       # accelerator, seed, run_dir, config.yaml, metrics
    model, optimizer, scheduler = prepare_training(ctx, model, total)   # DDP, or FSDP with train.fsdp
    state = fit(ctx, model, optimizer, scheduler, sampler, total, collate, loss_fn, count_fn, ...)
    finish_run(ctx, model, tokenizer)          # run_dir/final: a plain HF folder

and :func:`fit` is the loop, every step: ``train_step`` (forward/backward of each micro-batch,
clip, update), log, evaluate every ``train.eval_every`` steps and at the end, checkpoint every
``train.save_every`` (resuming where ``train.resume`` says). PPO keeps a loop of its own, since a
step there is a rollout followed by several passes over it.

**Normalization.** ``loss_fn(model, micro_batch)`` returns the loss *summed* over its units
(target tokens for language-model losses, pairs or examples for pairwise ones) and
``count_fn(micro_batch)`` says how many units the micro-batch has. :func:`train_step` counts
the units of the whole step over every micro-batch and every process *before* the forward
passes, and backpropagates ``loss_sum * world_size / global_units`` from each micro-batch:
DDP averages gradients over processes, so the update is the gradient of the mean loss per unit
of the whole global batch, whatever its split into processes and micro-batches.

**Processes.** Under ``torchrun`` / ``accelerate launch`` every process runs the same code on its
own slice of each global batch; anything it does with the model alone (samples, KL, export) is
the main process's, except under FSDP (``train.fsdp``, ``posttrain.training.sharding``), where
every forward needs all processes: :attr:`RunContext.runs_model_work` says who takes part.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from posttrain.config import save_config, to_dict
from posttrain.errors import TrainingError
from posttrain.models.export import export_model
from posttrain.training import checkpoint as ck
from posttrain.training.checkpoint import TrainState
from posttrain.training.config import TrainConfig
from posttrain.training.metrics import MetricsLogger
from posttrain.training.optim import build_optimizer, build_scheduler
from posttrain.training.sampler import LengthGroupedSampler, StepSampler
from posttrain.training.sharding import (
    full_optimizer_state, full_state_dict, load_full_state, shard_model, without_tied_copies,
)

LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(model, micro_batch) -> (loss summed over the micro-batch's units, {metric: sum over units})."""
CountFn = Callable[[Any], int]
"""micro_batch -> its number of normalization units (e.g. target tokens)."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradient norm of a step is NaN or infinite."""


# --- run setup -----------------------------------------------------------------------------

@dataclass
class RunContext:
    """What every part of a run needs: the accelerator, the run folder, the metrics logger."""

    cfg: TrainConfig
    accelerator: Any
    run_dir: Path
    metrics: MetricsLogger
    resume_from: Path | None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    sharded: bool = False
    """The model is sharded across the processes (FSDP; set by :func:`prepare_training`)."""

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def runs_model_work(self) -> bool:
        """Whether this process runs the model for what only the main process reports (samples, KL,
        held-out generations): the main process, and under FSDP every process, in step."""
        return self.is_main or self.sharded

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.world_size

    def print(self, message: str) -> None:
        """Print on the main process only."""
        if self.is_main:
            # soft_wrap: no line breaks inserted, so paths in messages stay whole for copy and grep.
            self.console.print(message, soft_wrap=True)


def _use_cpu(cfg: Any) -> bool:
    device = getattr(getattr(cfg, "model", None), "device", "auto")
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents), or say why it cannot be and what to do."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        blocker = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), run_dir)
        raise TrainingError(f"train.run_dir: cannot create {run_dir}: {blocker} is a file, not a folder; "
                            f"choose another train.run_dir") from None
    except OSError as e:
        raise TrainingError(f"train.run_dir: cannot create {run_dir}: {e.strerror or e}; choose another "
                            f"train.run_dir") from None


def setup_run(cfg: Any) -> RunContext:
    """Start a run for recipe config ``cfg`` (which has a ``train`` section).

    Creates the ``Accelerator`` (CPU unless a GPU is there and ``model.device`` allows it; under
    ``torchrun`` it joins the process group, gloo on CPU), seeds every generator, resolves
    ``train.resume``, removes half-written checkpoints, writes ``run_dir/config.yaml`` and opens
    the metrics (cut back to the checkpoint being resumed).
    """
    train: TrainConfig = cfg.train
    accelerator = Accelerator(cpu=_use_cpu(cfg), mixed_precision=train.mixed_precision)
    set_seed(train.seed)
    run_dir = Path(train.run_dir)
    console = Console(stderr=True)
    ckpt_dir = run_dir / "checkpoints"
    if accelerator.is_main_process:
        make_run_dir(run_dir)
        for path in ck.remove_partial(ckpt_dir):
            console.print(f"[yellow]removed half-written checkpoint {path} (a save was interrupted)[/yellow]",
                          soft_wrap=True)
    accelerator.wait_for_everyone()
    resume_from = resolve_resume(train, ckpt_dir)
    if resume_from is not None:
        check_same_config(cfg, run_dir / "config.yaml", resume_from)
    resume_step = ck.read_state(resume_from)["step"] if resume_from else 0
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    metrics = MetricsLogger(run_dir, enabled=accelerator.is_main_process,
                            tensorboard=train.tensorboard, resume_step=resume_step)
    accelerator.wait_for_everyone()
    return RunContext(train, accelerator, run_dir, metrics, resume_from, console)


def resolve_resume(cfg: TrainConfig, ckpt_dir: Path) -> Path | None:
    """The checkpoint to continue from according to ``train.resume``, or None to start fresh."""
    latest = ck.latest_checkpoint(ckpt_dir)
    if cfg.resume == "auto":
        return latest
    if cfg.resume == "never":
        if latest is not None:
            raise TrainingError(
                f"train.resume=never but {ckpt_dir} already holds checkpoints (newest: {latest.name}); "
                f"use train.resume=auto to continue that run, or choose another train.run_dir")
        return None
    path = Path(cfg.resume)
    if not (path / "state.json").exists():
        raise TrainingError(f"train.resume={cfg.resume!r}: no checkpoint there (expected a folder "
                            f"with state.json, like {ckpt_dir}/step-000050), or use auto / never")
    return path


RESUMABLE_CHANGES = ("train.run_dir", "train.max_steps", "train.epochs", "train.resume", "train.log_every",
                     "train.eval_every", "train.save_every", "train.keep_checkpoints", "train.progress",
                     "train.tensorboard")
"""Config keys a resumed run may change (where the run folder lives, how long it runs, what it
reports); any other change would make the resumed run a different experiment than the checkpoint's."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) and value else f"{prefix}{key}"))
    return {k.rstrip("."): v for k, v in out.items()}


def _plain(data: Any) -> Any:
    """Tuples as lists and paths as strings, as a config reads back from YAML."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return str(data) if isinstance(data, Path) else data


def check_same_config(cfg: Any, saved_path: Path, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` under a config that differs from the run's saved one in
    anything but :data:`RESUMABLE_CHANGES` (a stale run_dir would otherwise be continued silently)."""
    if not saved_path.exists():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
    current = _flatten(yaml.safe_load(yaml.safe_dump(_plain(to_dict(cfg)))))
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        raise TrainingError(
            f"{checkpoint} was written by a run with another config ({saved_path}): {shown}{more}. "
            f"Choose a new train.run_dir for the new settings, or run with the saved config to continue that run.")


def prepare_training(ctx: RunContext, model: torch.nn.Module, total: int) -> tuple[torch.nn.Module, Any, Any]:
    """(model, optimizer, scheduler) ready to train for ``total`` steps: the model wrapped for DDP
    by accelerate, or with ``train.fsdp`` and several processes sharded (FSDP2) before its
    optimizer is built over the shards."""
    if ctx.cfg.fsdp and ctx.world_size > 1:
        if ctx.accelerator.distributed_type == DistributedType.FSDP:
            raise TrainingError("train.fsdp shards the model itself; remove the FSDP settings from the accelerate "
                                "config (or keep them and set train.fsdp=false)")
        model = shard_model(model, ctx.device, ctx.cfg.mixed_precision)
        ctx.sharded = True
        optimizer = build_optimizer(model, ctx.cfg)
        return model, optimizer, build_scheduler(optimizer, ctx.cfg, total)
    optimizer = build_optimizer(model, ctx.cfg)
    scheduler = build_scheduler(optimizer, ctx.cfg, total)
    model, optimizer = ctx.accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler


def refuse_fsdp(ctx: RunContext, recipe: str, why: str) -> None:
    """Stop a recipe that cannot run sharded before it loads anything big."""
    if ctx.cfg.fsdp and ctx.world_size > 1:
        raise TrainingError(f"train.fsdp: {recipe} does not run sharded ({why}); set train.fsdp=false (DDP)")


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` passes when max_steps is -1."""
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch


def epoch_sampler(ctx: RunContext, n: int, unit: str = "examples",
                  lengths: tuple[int, ...] | None = None) -> tuple[StepSampler, int]:
    """(sampler of this process's micro-batches, the run's optimizer steps) for ``n`` training items:
    length-grouped when ``lengths`` are given. Items that do not fill the last global batch of an
    epoch are said once (a different tail is left out each epoch)."""
    tc = ctx.cfg
    args = (n, tc.batch_size, tc.grad_accum, ctx.world_size, ctx.rank, tc.seed)
    sampler = StepSampler(*args) if lengths is None else LengthGroupedSampler(*args, lengths=lengths)
    if sampler.dropped_per_epoch:
        ctx.print(f"{sampler.dropped_per_epoch} of {n} {unit} do not fill the last global batch of "
                  f"{sampler.global_batch} and are left out of each epoch (a different tail every epoch)")
    return sampler, total_steps(tc, sampler.steps_per_epoch)


# --- one optimizer step ----------------------------------------------------------------------

@dataclass
class StepResult:
    """What one optimizer step did, reduced over every process."""

    loss: float
    """Loss per unit over the whole global batch."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    """Learning rate the step used."""
    units: int
    """Normalization units (e.g. target tokens) in the global batch."""
    metrics: dict[str, float]
    """Each metric of the loss function, per unit of the global batch."""


def reduce_sum(ctx: RunContext, values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum ``values`` (float64) over every process."""
    tensor = torch.as_tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.world_size == 1:
        return tensor
    return ctx.accelerator.reduce(tensor, reduction="sum")


def gather_objects(ctx: RunContext, obj: Any) -> list[Any]:
    """``obj`` of every process (picklable, any size), in rank order, on every process."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def train_step(
    ctx: RunContext,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: list[Any],
    loss_fn: LossFn,
    count_fn: CountFn,
    step: int,
) -> StepResult:
    """Forward/backward every micro-batch, clip, update; raise on a non-finite loss before updating.

    ``step`` is the number of the step being taken (1-based), for messages. Gradients are
    synchronized across processes only on the last micro-batch.
    """
    accelerator = ctx.accelerator
    model.train()
    local_units = sum(count_fn(mb) for mb in micro_batches)
    global_units = int(reduce_sum(ctx, [local_units]).item())
    if global_units == 0:
        raise TrainingError(f"step {step}: the batch has no units to train on (e.g. every target "
                            f"token is masked); check the data and its loss mask")
    scale = ctx.world_size / global_units
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    metric_sums: dict[str, torch.Tensor] = {}
    for i, micro_batch in enumerate(micro_batches):
        is_last = i == len(micro_batches) - 1
        with nullcontext() if is_last else accelerator.no_sync(model):
            loss, metrics = loss_fn(model, micro_batch)
            accelerator.backward(loss * scale)
        loss_sum += loss.detach().double()
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + torch.as_tensor(value).detach().double().to(ctx.device)
    keys = sorted(metric_sums)
    totals = reduce_sum(ctx, torch.stack([loss_sum, *(metric_sums[k] for k in keys)]))
    loss_value = totals[0].item() / global_units
    lr = scheduler.get_last_lr()[0]
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(_non_finite_message(ctx, step, "loss", loss_value, lr))
    max_norm = ctx.cfg.max_grad_norm if ctx.cfg.max_grad_norm > 0 else float("inf")
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
    if not math.isfinite(grad_norm) and accelerator.scaler is None:  # fp16 scaling skips inf steps itself
        raise NonFiniteLossError(_non_finite_message(ctx, step, "gradient norm", grad_norm, lr))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics_out = {k: totals[i + 1].item() / global_units for i, k in enumerate(keys)}
    return StepResult(loss_value, grad_norm, lr, global_units, metrics_out)


def _non_finite_message(ctx: RunContext, step: int, what: str, value: float, lr: float) -> str:
    latest = ck.latest_checkpoint(ctx.checkpoint_dir)
    where = (f"the last good checkpoint is {latest}; train.resume=auto continues from it"
             if latest else "no checkpoint was written yet")
    return (f"step {step}: the {what} is {value}, so the run stopped before applying this update; "
            f"{where}. Try a lower train.lr (this step used {lr:.3g}), a longer train.warmup_steps, "
            f"gradient clipping (train.max_grad_norm > 0), mixed_precision=no, and check the data of "
            f"this step for empty, corrupt or extremely long examples.")


@torch.no_grad()
def evaluate(ctx: RunContext, model: torch.nn.Module, batches: Iterable[Any],
             loss_fn: LossFn, count_fn: CountFn) -> dict[str, float]:
    """Loss and metrics per unit over ``batches`` (this process's share), summed over processes."""
    was_training = model.training
    model.eval()
    units, loss_sum, metric_sums, idle = 0, 0.0, {}, 0
    if ctx.sharded:  # every forward gathers weights from all processes: each runs as many as the busiest
        batches = list(batches)
        counts = gather_objects(ctx, len(batches))
        if 0 in counts and max(counts):
            raise TrainingError(f"train.fsdp: {counts.count(0)} of {ctx.world_size} processes have no held-out "
                                f"example, but every forward needs all of them; hold out at least one per process")
        idle = max(counts) - len(batches)
    for batch in batches:
        loss, metrics = loss_fn(model, batch)
        units += count_fn(batch)
        loss_sum += loss.double().item()
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
    for _ in range(idle):  # forwards that only keep step with the other processes; not counted
        loss_fn(model, batches[-1])
    model.train(was_training)
    # Processes may hold different numbers of batches, so sum python objects rather than
    # tensors whose shapes would have to agree.
    parts = gather_objects(ctx, (units, loss_sum, metric_sums))
    total_units = sum(p[0] for p in parts)
    if total_units == 0:
        return {}
    out = {"loss": sum(p[1] for p in parts) / total_units}
    for key in parts[0][2]:
        out[key] = sum(p[2].get(key, 0.0) for p in parts) / total_units
    return out


def shard(items: list[Any], ctx: RunContext) -> list[Any]:
    """This process's share of ``items`` (every world_size-th, from its rank), e.g. for evaluation."""
    return items[ctx.rank::ctx.world_size]


# --- checkpoints ---------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores a run's model, optimizer, scheduler, RNG and data position atomically."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, optimizer: Any, scheduler: Any):
        self.ctx, self.model, self.optimizer, self.scheduler = ctx, model, optimizer, scheduler
        self.last_saved_step: int | None = None

    @property
    def _scaler(self):
        return self.ctx.accelerator.scaler

    def restore(self) -> TrainState:
        """Load ``ctx.resume_from`` if there is one; return the state to continue from."""
        ctx = self.ctx
        if ctx.resume_from is None:
            return TrainState()
        if ctx.sharded:  # every process reads the whole state and keeps its shards
            state, payload, rng_states = ck.load_checkpoint(ctx.resume_from, None, None, self.scheduler, self._scaler)
            load_full_state(self.model, self.optimizer, *ck.read_whole(ctx.resume_from))
        else:
            state, payload, rng_states = ck.load_checkpoint(ctx.resume_from, ctx.accelerator.unwrap_model(self.model),
                                                            self.optimizer, self.scheduler, self._scaler)
        if payload.get("global_batch", ctx.global_batch) != ctx.global_batch:
            raise TrainingError(
                f"{ctx.resume_from} was written with a global batch of {payload['global_batch']} examples "
                f"but this run has {ctx.global_batch} (batch_size x grad_accum x processes); the data "
                f"position would not match. Resume with the same global batch or start a new run_dir.")
        if len(rng_states) != ctx.world_size:
            ctx.print(f"[yellow]{ctx.resume_from} holds random states of {len(rng_states)} processes, "
                      f"this run has {ctx.world_size}: dropout and sampling will differ from an "
                      f"uninterrupted run[/yellow]")
        ck.set_rng_state(rng_states[ctx.rank % len(rng_states)])
        self.last_saved_step = state.step
        ctx.print(f"resumed from {ctx.resume_from} at step {state.step}")
        return state

    def maybe_save(self, state: TrainState, final: bool = False) -> Path | None:
        """Save if ``state.step`` is a multiple of ``train.save_every``, or if ``final``."""
        ctx = self.ctx
        every = ctx.cfg.save_every
        due = final or (every > 0 and state.step % every == 0)
        if not due or state.step == self.last_saved_step:
            return None
        rng_states = gather_objects(ctx, ck.rng_state())
        model, optimizer = ctx.accelerator.unwrap_model(self.model), self.optimizer
        if ctx.sharded:  # every process hands in its shards; the main process writes the whole
            model, optimizer = full_state_dict(self.model), full_optimizer_state(self.model, self.optimizer)
        path = None
        if ctx.is_main:
            path = ck.save_checkpoint(
                ctx.checkpoint_dir, state, model, optimizer, self.scheduler, rng_states, scaler=self._scaler,
                meta={"global_batch": ctx.global_batch, "world_size": ctx.world_size, "sharded": ctx.sharded})
            ck.prune(ctx.checkpoint_dir, ctx.cfg.keep_checkpoints)
        ctx.accelerator.wait_for_everyone()
        self.last_saved_step = state.step
        return path



# --- progress and the end of a run -----------------------------------------------------------

class ProgressBar:
    """A rich progress bar on the main process, with the latest loss, lr and throughput.

    Off when ``train.progress`` is false or stderr is not a terminal; then a plain line is
    printed about every tenth of the run instead, so logs still show the run moving.
    """

    def __init__(self, ctx: RunContext, total: int, start: int = 0, description: str = "train"):
        self.ctx, self.total, self.start = ctx, total, start
        self.live = ctx.is_main and ctx.cfg.progress and ctx.console.is_terminal
        self.every = max(1, total // 10)
        self._progress = None
        self._task = None
        self.description = description

    def __enter__(self) -> "ProgressBar":
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.ctx.console)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total,
                                                 completed=self.start, info="")
        return self

    def update(self, step: int, **fields: float) -> None:
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif self.ctx.is_main and (step % self.every == 0 or step == self.total):
            self.ctx.console.print(f"{self.description} step {step}/{self.total}  {info}", highlight=False,
                                   soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _fmt(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def finish_run(ctx: RunContext, model: torch.nn.Module, tokenizer: Any) -> Path:
    """Export ``run_dir/final`` (safetensors, tokenizer, chat template) and close the metrics.
    Under FSDP every process hands in its shards of ``model`` first."""
    out = ctx.run_dir / "final"
    ctx.accelerator.wait_for_everyone()
    weights = None
    if ctx.sharded:
        weights = without_tied_copies(model, full_state_dict(model))
    if ctx.is_main:
        export_model(ctx.accelerator.unwrap_model(model), tokenizer, out, state_dict=weights)
        ctx.print(f"final model written to {out}")
    ctx.metrics.close()
    ctx.accelerator.wait_for_everyone()
    return out


class Throughput(NamedTuple):
    """How :func:`fit` reports speed: the metric's name and what a step counts."""

    name: str
    """Metric key, e.g. ``tokens_per_s``."""
    count: Callable[["StepResult", list], float]
    """(step result, the step's micro-batches) -> what the step processed (e.g. its units)."""


def units_per_s(name: str) -> Throughput:
    """Throughput in the loss's own units (tokens, pairs, comparisons), over every process."""
    return Throughput(name, lambda result, batches: result.units)


def fit(ctx: RunContext, model: torch.nn.Module, optimizer: Any, scheduler: Any, sampler: Any, total: int,
        collate: Callable[[list[int]], Any], loss_fn: LossFn, count_fn: CountFn, *, description: str,
        throughput: Throughput, logged: Callable[["StepResult"], dict] = lambda result: {},
        progress: Callable[["StepResult"], dict] = lambda result: {"lr": result.lr},
        evaluate_at: Callable[[int], dict] | None = None) -> TrainState:
    """Train ``model`` for ``total`` optimizer steps of ``sampler``'s micro-batches (``collate(ids)``
    makes one); return the final :class:`~posttrain.training.checkpoint.TrainState`.

    Resumes from the checkpoint ``train.resume`` names; logs loss, lr, grad norm, epoch, throughput
    and ``logged(result)`` every ``train.log_every`` steps and at the end; shows ``progress(result)``
    beside the loss in the progress bar; calls ``evaluate_at(step)`` every ``train.eval_every`` steps
    and at the end; checkpoints every ``train.save_every`` steps and at the end.
    """
    tc = ctx.cfg
    ckpt = Checkpointer(ctx, model, optimizer, scheduler)
    state = ckpt.restore()
    timer = Timer()
    with ProgressBar(ctx, total, start=state.step, description=description) as bar:
        for epoch, index, micro in sampler.iterate(state.epoch, state.batch_in_epoch):
            if state.step >= total:
                break
            batches = [collate(ids) for ids in micro]
            result = train_step(ctx, model, optimizer, scheduler, batches, loss_fn, count_fn, step=state.step + 1)
            state.advance(epoch, index)
            rate = throughput.count(result, batches) / max(timer.lap(), 1e-9)
            if state.step % tc.log_every == 0 or state.step == total:
                ctx.metrics.log(state.step, {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                                             **logged(result), throughput.name: rate, "epoch": epoch,
                                             **result.metrics})
            bar.update(state.step, loss=result.loss, **progress(result), per_s=rate)
            if evaluate_at is not None and ((tc.eval_every and state.step % tc.eval_every == 0) or state.step == total):
                evaluate_at(state.step)
            ckpt.maybe_save(state)
            timer.lap()  # evaluation and checkpoint time is not training throughput
    ckpt.maybe_save(state, final=True)
    return state


class Timer:
    """Seconds since the last ``lap()``, for throughput numbers."""

    def __init__(self):
        self._t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._t = now - self._t, now
        return elapsed
