"""Writing result files atomically: a reader (or a killed run) never sees half a file.

Every file is written beside its target and moved into place with ``os.replace``. JSON is strict
(NaN, which some statistics give when they cannot be computed, is written as null).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path``, creating its folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(value: Any) -> Any:
    """``value`` with every NaN float (at any depth of dicts and lists) replaced by None."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON (NaN as null) with a final newline; return the path."""
    return write_text_atomic(path, json.dumps(json_safe(data), indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Any) -> Path:
    """Write one JSON object per line."""
    return write_text_atomic(path, "".join(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n"
                                           for r in rows))
