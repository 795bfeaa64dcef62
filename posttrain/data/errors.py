"""Bad input data and where it was read: the error every reader and every later check raises, naming
source, line (or row), field and what to do; and the location a record keeps after reading."""

from __future__ import annotations

from typing import Any

from posttrain.errors import UserError

SKIP_HINT = " (set skip_invalid: true to skip such records)"


def where_of(path: str, number: int | None, unit: str) -> str:
    """``path:17`` for a line, ``path: row 17`` for a row or item, ``path`` alone for no number."""
    if number is None:
        return path
    return f"{path}:{number}" if unit == "line" else f"{path}: {unit} {number}"


_LOCATION = "_posttrain_location"


def set_location(record: Any, where: str) -> Any:
    """Remember where ``record`` was read (``path:line``), for errors found after reading; returns it."""
    object.__setattr__(record, _LOCATION, where)  # records are frozen; the location is not a field
    return record


def location_of(record: Any, index: int) -> str:
    """Where ``record`` was read, or its 0-based position when it was not read from a file."""
    return getattr(record, _LOCATION, None) or f"record {index} (0-based)"


class DataError(UserError, ValueError):
    """Bad input data: says which source, which line (or row), which field, and what is wrong.

    ``line`` is a 1-based line for JSONL and text files, a 0-based index for Parquet rows,
    ``datasets`` rows and JSON array items (``unit`` says which); both are None for problems with
    the source as a whole. ``reason`` is a code from ``formats.REASONS`` for record-level problems.
    """

    def __init__(self, path: str, problem: str, *, line: int | None = None, unit: str = "line",
                 field: str | None = None, reason: str | None = None):
        self.path, self.problem, self.line, self.unit = path, problem, line, unit
        self.field, self.reason = field, reason
        super().__init__(self.describe() + (SKIP_HINT if reason else ""))

    @property
    def location(self) -> str:
        return where_of(self.path, self.line, self.unit)

    def describe(self) -> str:
        """The message without the skip_invalid hint."""
        where = f"{self.location}: field '{self.field}'" if self.field else self.location
        return f"{where}: {self.problem}"
