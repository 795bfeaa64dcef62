"""Checkpoints that survive a kill at any moment, and resume to the same result.

A checkpoint is a folder ``run_dir/checkpoints/step-000050/`` holding

- ``model.safetensors``: the model's weights (safetensors, shared tensors stored once);
- ``optimizer.pt``, ``scheduler.pt`` (and ``scaler.pt`` under fp16): their ``state_dict``;
- ``rng.pt``: the python, numpy and torch (CPU and CUDA) generator states of every process;
- ``state.json``: step, data position (epoch and next batch), global batch size, and an
  ``extra`` dict a recipe may fill with its own state (a KL coefficient, a reward baseline...).

It is written into ``.tmp-step-000050`` and renamed once complete, so a folder named
``step-*`` is always whole; a ``.tmp-*`` folder left by a killed run is removed on resume.
Torch files are read back with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

_STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


@dataclass
class TrainState:
    """Where a run is: optimizer steps done and the position of the next batch in the data."""

    step: int = 0
    """Optimizer steps completed."""
    epoch: int = 0
    """Epoch of the next batch."""
    batch_in_epoch: int = 0
    """Index of the next global batch within ``epoch``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Recipe state that must survive a resume (JSON-serializable)."""

    def advance(self, epoch: int, batch_in_epoch: int) -> None:
        """Record that the global batch ``batch_in_epoch`` of ``epoch`` has been trained on."""
        self.step += 1
        self.epoch = epoch
        self.batch_in_epoch = batch_in_epoch + 1


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``ckpt_dir`` as (step, path), oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / "state.json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def remove_partial(ckpt_dir: str | Path) -> list[Path]:
    """Delete half-written ``.tmp-*`` folders (left by a kill during a save); return what was removed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = [p for p in ckpt_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def prune(ckpt_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0`` keeps all); return the deleted."""
    found = list_checkpoints(ckpt_dir)
    if keep <= 0 or len(found) <= keep:
        return []
    doomed = [path for _, path in found[:-keep]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``state.json`` of checkpoint folder ``path``."""
    state_file = Path(path) / "state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a checkpoint: it has no state.json "
                                f"(expected a folder like run_dir/checkpoints/step-000050)")
    return json.loads(state_file.read_text(encoding="utf-8"))


# --- random generator states --------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch generator states, as plain lists and tensors."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# --- save / load ---------------------------------------------------------------------------

def save_checkpoint(
    ckpt_dir: str | Path,
    state: TrainState,
    model: torch.nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    scheduler: Any,
    rng_states: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    scaler: Any = None,
) -> Path:
    """Write the checkpoint for ``state.step`` atomically and return its folder.

    ``model`` is the unwrapped model, or the whole weights gathered from a sharded one (and
    ``optimizer`` then its gathered state dict); ``rng_states`` has one entry per process (rank
    order); ``meta`` is stored in state.json to check a resume against (e.g. the global batch size).
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_dir_name(state.step)
    tmp = ckpt_dir / f"{TMP_PREFIX}{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if isinstance(model, dict):
        save_file(_unshared(model), str(tmp / "model.safetensors"))
    else:
        save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    torch.save(rng_states, tmp / "rng.pt")
    payload = {**asdict(state), **(meta or {})}
    # state.json last: its presence marks a complete folder even before the rename.
    (tmp / "state.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    _fsync_files(tmp)  # else a power cut could publish the folder before its contents reach the disk
    if final.exists():  # a re-save of the same step (a run resumed from an older checkpoint)
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with a copy for each tensor that shares memory with an earlier one (tied
    embeddings), which safetensors will not write twice."""
    seen, out = set(), {}
    for key, tensor in weights.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if where in seen else tensor.contiguous()
        seen.add(where)
    return out


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
) -> tuple[TrainState, dict[str, Any], list[dict[str, Any]]]:
    """Load weights and optimizer/scheduler/scaler state in place.

    Returns (train state, the whole state.json, the per-process RNG states); the caller picks
    its own RNG state, since which one is a matter of ranks. ``model`` None leaves the weights
    (and the optimizer state) to the caller (a sharded model: :func:`read_whole`).
    """
    path = Path(path)
    payload = read_state(path)
    device = next(model.parameters()).device if model is not None else "cpu"
    missing, unexpected = ([], []) if model is None else load_model(model, str(path / "model.safetensors"),
                                                                     strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{path}/model.safetensors does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}; was the checkpoint written with another "
                         f"model or LoRA setting?")
    if optimizer is not None and model is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rng_states = torch.load(path / "rng.pt", weights_only=True)
    state = TrainState(step=payload["step"], epoch=payload["epoch"],
                       batch_in_epoch=payload["batch_in_epoch"], extra=payload.get("extra", {}))
    return state, payload, rng_states


def read_whole(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The whole weights and optimizer state of checkpoint ``path`` (on the CPU), for a sharded
    model whose processes each take their shards of them."""
    path = Path(path)
    return load_file(path / "model.safetensors"), torch.load(path / "optimizer.pt", weights_only=True)
