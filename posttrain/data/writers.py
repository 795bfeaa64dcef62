"""Write records as JSONL in their canonical forms, atomically and byte-for-byte deterministically.

The same records always give the same bytes (UTF-8, no ASCII escaping, the fixed key order of
each record's ``to_dict()``, ``\\n`` line ends), so seeded data generation can be compared by
file hash. The file appears complete or not at all: it is written beside the target and moved
into place with ``os.replace``. By default every record is checked with the readers' own
validation first, so a written file always reads back (fix or filter a bad record, or pass
``validate=False``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from posttrain.data.formats import FieldError, parse_record
from posttrain.data.records import Record


def record_to_json(record: Record | Mapping[str, Any]) -> str:
    """One JSONL line (without the newline) for a record or a plain mapping."""
    data = dict(record) if isinstance(record, Mapping) else record.to_dict()
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


def _check(record: Record | Mapping[str, Any], index: int) -> None:
    if isinstance(record, Mapping):
        return
    try:
        parse_record(record.to_dict(), record.kind)
    except FieldError as e:
        raise ValueError(f"record {index} ({record.kind}): {e}; it would not read back "
                         "(fix or filter it, or pass validate=False)") from None


def write_jsonl(records: Iterable[Record | Mapping[str, Any]], path: str | Path, validate: bool = True) -> int:
    """Write ``records`` (records, or plain dicts written as they are) to ``path``; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                if validate:
                    _check(record, count)
                f.write(record_to_json(record) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
