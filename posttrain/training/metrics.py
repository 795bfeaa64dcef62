"""Run metrics: one JSON object per line in ``run_dir/metrics.jsonl``, mirrored to TensorBoard.

Only the main process writes. Every line carries the optimizer ``step`` it belongs to, so that
a resumed run can cut the file back to its checkpoint's step and no step appears twice.
(Named ``metrics`` rather than ``logging`` so it does not shadow the standard library.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl`` file, in order (an unfinished last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # Only a run killed in the middle of a write leaves a partial line, and only the last.
            continue
    return records


def _clean(value: Any) -> Any:
    """JSON-safe scalar: tensors and numpy numbers become floats; nan/inf are kept as strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends ``{"step": step, **metrics}`` to ``metrics.jsonl`` and, if asked, TensorBoard scalars.

    ``resume_step``: the step a resumed run continues from; records after it (written by the
    interrupted run after its last checkpoint) are removed, and TensorBoard is told to discard
    its events after that step too. ``enabled=False`` (non-main processes) writes nothing.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False,
                 resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if tensorboard:
            # Imported here: TensorBoard is slow to import and only the main process needs it.
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path.parent / "tensorboard"),
                                         purge_step=resume_step + 1 if resume_step else None)

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
