"""Fully sharded data parallel training (``train.fsdp``) with torch's FSDP2 ``fully_shard``.

With several processes, each decoder layer of the model (the classes its transformers model lists
in ``_no_split_modules``) becomes one FSDP unit and the rest (embeddings, final norm, LM head, a
recipe's head) the root unit. Each process keeps 1/N of every weight, gradient and optimizer
state; a unit's weights are all-gathered for its forward and backward, then freed, and its
gradients reduce-scattered (FULL_SHARD, as ZeRO-3). FSDP averages gradients over processes as
DDP does, so ``posttrain.training.loop``'s loss normalization and the results are unchanged.
It runs wherever ``torch.distributed`` does: NCCL on GPUs, gloo on CPUs.

What one process does alone with a plain model needs every process under FSDP:

- saving: :func:`full_state_dict` and :func:`full_optimizer_state` gather the whole weights and
  optimizer state (keyed by parameter name) on the main process, which writes them; a resume
  hands every process its shards of them back (:func:`load_full_state`);
- generating (samples, KL, held-out answers): every process runs the same calls in step, since
  each forward gathers weights from all of them; calls that do not go through the root's forward
  (``lm.generate``) run inside :func:`gathered_root`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from posttrain.errors import UserError
from posttrain.models.lora import is_peft_model


class ShardingError(UserError, ValueError):
    """A model or setting that train.fsdp cannot shard; the message says what to change."""


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the model's repeated blocks, from its transformers models' ``_no_split_modules``."""
    return {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}


def shard_model(model: torch.nn.Module, device: torch.device, mixed_precision: str = "no") -> torch.nn.Module:
    """Shard ``model`` in place across the processes of the default group (call on every process,
    before building the optimizer: the parameters become new, sharded ``DTensor`` ones)."""
    if any(is_peft_model(m) for m in model.modules()):
        raise ShardingError("train.fsdp shards full fine-tuning; with model.lora.enabled only the small adapter "
                            "trains, so set train.fsdp=false (each process keeps the frozen weights, DDP syncs the adapter)")
    if mixed_precision == "fp16":
        raise ShardingError("train.fsdp with mixed_precision=fp16 is not supported (its loss scaling would need a "
                            "sharded grad scaler); use mixed_precision=bf16 or no")
    names = layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ShardingError(f"train.fsdp: {type(model).__name__} holds no transformers model whose layers "
                            f"(_no_split_modules) could be sharded one by one; set train.fsdp=false")
    compute = {"bf16": torch.bfloat16}.get(mixed_precision)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded ``model`` (or any module inside it), on the CPU of the main
    process; empty elsewhere. Every process must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def without_tied_copies(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` (gathered from ``model``) with each tied weight once, under its first name (as a
    plain model's ``save_pretrained`` writes it): gathering made separate copies of them."""
    named = list(model.named_parameters(remove_duplicate=False))
    first: dict[int, str] = {}
    for name, param in named:
        first.setdefault(id(param), name)
    copies = {name for name, param in named if first[id(param)] != name}
    return {k: v for k, v in weights.items() if k not in copies}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state (parameters named, not numbered) on the main process; empty elsewhere."""
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any] | None) -> None:
    """Give every process its shards of whole weights (and optimizer state) that each one has read."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


@contextmanager
def gathered_root(model: torch.nn.Module) -> Iterator[None]:
    """The root unit's weights gathered for the duration, so that sub-modules can be called
    directly (``lm.generate``: the layers gather their own as they run). Every process must enter,
    and run the same calls inside. Nothing for an unsharded model."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
