"""Read training records from JSONL/JSON, Parquet, text files, `datasets` folders and hub datasets.

``read_records(source)`` returns a ``ReadResult``: the records, where each came from, and a
``ReadReport`` that counts what was read (by kind) and what was skipped (by reason, with the
first few examples). Sources, chosen by what ``source`` is:

    *.jsonl, *.ndjson, *.json   one JSON object per line (line numbers 1-based); a .json file that
                                starts with ``[`` is read as one JSON array (items numbered from 0)
    *.parquet                   one record per row (rows numbered from 0)
    *.txt                       pretraining text: one document per block of lines separated by a
                                blank line (a document is numbered by its first line)
    a folder                    written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
                                (``split`` picks from a DatasetDict); rows numbered from 0
    anything else               a hub dataset name, via ``datasets.load_dataset(name, split=split)``

JSONL: blank lines are ignored (they are not records, so they are neither read nor skipped);
each line is decoded on its own, so one line of bad bytes is reported by line number and the
lines around it still read. A UTF-8 byte-order mark at the start of a file is ignored.

A bad record raises ``DataError`` naming file, line and field, e.g.::

    data/train.jsonl:17: field 'messages[2].role': unknown role 'bot'; expected one of system,
    user, assistant (set skip_invalid: true to skip such records)

With ``skip_invalid=True`` it is skipped instead, counted under its reason (see
``posttrain.data.formats.REASONS``), and a one-line summary is logged as a warning on the
``posttrain.data`` logger. Problems with a source as a whole (missing file, unreadable Parquet,
unknown split) always raise.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from posttrain.data.chat import fit_to_template
from posttrain.data.errors import DataError, set_location, where_of
from posttrain.data.formats import FORMATS, FieldError, parse_record
from posttrain.data.records import Record

logger = logging.getLogger("posttrain.data")

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
LOCAL_SUFFIXES = JSONL_SUFFIXES + (".parquet", ".txt", ".csv", ".gz", ".arrow")

EXAMPLES_PER_REASON = 3


@dataclass
class ReadReport:
    """What was read and what was skipped; nothing leaves a reader without being counted here."""

    sources: list[str] = field(default_factory=list)
    read: int = 0
    kinds: Counter = field(default_factory=Counter)
    """Records read, by kind (conversation, preference, ...)."""
    skipped: Counter = field(default_factory=Counter)
    """Records skipped, by reason."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """The first few skipped records of each reason, as error messages with their locations."""

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def add_record(self, record: Record) -> None:
        self.read += 1
        self.kinds[record.kind] += 1

    def add_skip(self, error: DataError) -> None:
        reason = error.reason or "invalid"
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(error.describe())

    def merge(self, other: ReadReport) -> None:
        self.sources += other.sources
        self.read += other.read
        self.kinds.update(other.kinds)
        self.skipped.update(other.skipped)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[:EXAMPLES_PER_REASON - len(mine)])

    def summary(self) -> str:
        """One line: sources, records read by kind, records skipped by reason with the first example."""
        where = ", ".join(self.sources) if len(self.sources) <= 3 else f"{len(self.sources)} sources"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kinds.items()))
        text = f"{where}: read {self.read} records" + (f" ({kinds})" if kinds else "")
        if self.skipped:
            parts = [f"{n} {reason} (first: {self.examples[reason][0]})" for reason, n in sorted(self.skipped.items())]
            text += f"; skipped {self.total_skipped}: " + "; ".join(parts)
        return text


@dataclass
class ReadResult:
    """Records in source order, each with its location (``path:line`` or ``path: row N``), and the report."""

    records: list[Record] = field(default_factory=list)
    report: ReadReport = field(default_factory=ReadReport)
    locations: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def expect(self, *kinds: str) -> list[Record]:
        """The records, after checking each is one of ``kinds``; raises DataError at the first that is not."""
        for record, where in zip(self.records, self.locations):
            if record.kind not in kinds:
                raise DataError(where, f"a {record.kind} record where {' or '.join(kinds)} records are expected "
                                f"(this data has {dict(self.report.kinds)}); pass data that fits this stage")
        return self.records


# ---------------------------------------------------------------- rows from each kind of source
# Each yields (number, object) where object is a parsed JSON object, or a FieldError for a row
# that could not even be decoded.


def _decode(raw: bytes, lineno: int) -> str | FieldError:
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return FieldError(None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                          "re-encode the file as UTF-8", "encoding")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = _decode(raw, lineno)
            if isinstance(text, FieldError):
                yield lineno, text
            elif text.strip():
                try:  # without the line's newline, so an error at its end names the column where it is
                    yield lineno, json.loads(text.rstrip("\r\n"))
                except json.JSONDecodeError as e:
                    yield lineno, FieldError(None, f"invalid JSON: {e.msg} (column {e.colno})", "invalid_json")


def _json_array_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(str(path), f"not valid UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"invalid JSON: {e.msg}", line=e.lineno) from None
    yield from enumerate(items)


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _text_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """One {"text": block} per blank-line-separated block, numbered by the block's first line."""
    start, lines, bad = None, [], None
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = _decode(raw, lineno)
            if isinstance(text, str) and not text.strip():
                if start is not None:
                    yield start, bad or {"text": "".join(lines).rstrip("\r\n")}
                start, lines, bad = None, [], None
                continue
            if start is None:
                start = lineno
            if isinstance(text, FieldError):
                # Report the bad line itself, though the whole document is what gets skipped.
                bad = bad or FieldError(None, f"line {lineno}: {text.problem}", text.reason)
            else:
                lines.append(text)
    if start is not None:
        yield start, bad or {"text": "".join(lines).rstrip("\r\n")}


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq  # deferred, as datasets in _load_from_disk

        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield index, row
                index += 1
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) for corrupt files
        raise DataError(str(path), f"cannot read as Parquet: {e}") from None


def _dataset_rows(dataset: Any) -> Iterator[tuple[int, Any]]:
    index = 0
    for table in dataset.with_format("arrow").iter(batch_size=1024):
        for row in table.to_pylist():
            yield index, row
            index += 1


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets  # deferred (about a second): config modules import this package (posttrain --help)

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(str(path), f"no split '{split}' in this DatasetDict; it has {', '.join(loaded)} "
                            "(set split: to one of them)")
        return loaded[split]
    return loaded


def _load_from_hub(name: str, split: str) -> Any:
    import datasets  # deferred, as in _load_from_disk

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, not found, gated, bad split: all say the same to the user
        raise DataError(name, f"neither a local file or folder nor a dataset reachable on the Hugging Face hub "
                        f"(split '{split}'): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                        "-- check the path, or go online (HF_HUB_OFFLINE unset) for hub datasets") from None


def _rows(source: str | Path, format: str, split: str) -> tuple[str, str, str, Iterable[tuple[int, Any]]]:
    """(name to report, unit of numbering, format, rows) for any kind of source."""
    path = Path(source)
    name = str(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            if suffix == ".json" and _starts_with_bracket(path):
                return name, "item", format, _json_array_rows(path)
            return name, "line", format, _jsonl_rows(path)
        if suffix == ".parquet":
            return name, "row", format, _parquet_rows(path)
        if suffix == ".txt":
            if format not in ("auto", "text"):
                raise DataError(name, f"a .txt file holds plain text documents, not '{format}' records "
                                "(use format: text or auto)")
            return name, "line", "text", _text_rows(path)
        raise DataError(name, f"unsupported file type '{suffix}'; expected .jsonl, .json, .parquet or .txt, "
                        "or a folder written by datasets' save_to_disk")
    if path.is_dir():
        if not _is_saved_dataset(path):
            raise DataError(name, "folder is not a dataset written by save_to_disk (no state.json or "
                            "dataset_dict.json); list its data files instead")
        return name, "row", format, _dataset_rows(_load_from_disk(path, split))
    if path.suffix.lower() in LOCAL_SUFFIXES or name.startswith((".", "/", "~")):
        raise DataError(name, "file not found")
    return f"{name}[{split}]", "row", format, _dataset_rows(_load_from_hub(name, split))


# ---------------------------------------------------------------- public API


def parse_rows(rows: Iterable[tuple[int, Any]], source: str = "<memory>", format: str = "auto",
               skip_invalid: bool = False, unit: str = "row") -> ReadResult:
    """Validate (number, JSON object) rows into records; the core of every reader, usable on in-memory data."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format '{format}'; expected auto or one of {', '.join(FORMATS)}")
    result = ReadResult(report=ReadReport(sources=[source]))
    for number, raw in rows:
        try:
            if isinstance(raw, FieldError):
                raise raw
            record = parse_record(raw, format)
        except FieldError as e:
            error = DataError(source, e.problem, line=number, unit=unit, field=e.field, reason=e.reason)
            if not skip_invalid:
                raise error from None
            result.report.add_skip(error)
            continue
        result.records.append(record)
        result.locations.append(where_of(source, number, unit))
        set_location(record, result.locations[-1])
        result.report.add_record(record)
    return result


def read_records(source: str | Path, format: str = "auto", split: str = "train",
                 skip_invalid: bool = False) -> ReadResult:
    """Read and validate every record of one source (file, `datasets` folder or hub name); see the module doc."""
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format '{format}'; expected auto or one of {', '.join(FORMATS)}")
    name, unit, format, rows = _rows(source, format, split)
    result = parse_rows(rows, name, format, skip_invalid, unit)
    if result.report.skipped:
        logger.warning(result.report.summary())
    else:
        logger.info(result.report.summary())
    return result


def read_world(source: str, world: Any, split: str) -> ReadResult:
    """The records a ``world:<name>`` source names (:mod:`posttrain.world.source`), located by name."""
    from posttrain.world.source import world_records  # deferred: the world imports posttrain.data, whose package imports this module

    result = ReadResult()
    result.report.sources.append(source)
    for i, record in enumerate(world_records(source, world, split)):
        result.records.append(record)
        result.locations.append(f"{source}[{i}]")
        result.report.add_record(record)
    return result


def read_many(sources: Sequence[str | Path], format: str = "auto", split: str = "train",
              skip_invalid: bool = False, world: Any = None, world_split: str = "train") -> ReadResult:
    """Read several sources in order into one result, with one combined report; ``world:<name>`` sources
    come from the ``world`` section (its ``world_split``: train, or heldout for evaluation data)."""
    combined = ReadResult()
    for source in sources:
        if isinstance(source, str) and source.startswith("world:"):
            result = read_world(source, world, world_split)
        else:
            result = read_records(source, format, split, skip_invalid)
        combined.records += result.records
        combined.locations += result.locations
        combined.report.merge(result.report)
    return combined


def read_from_config(cfg: Any, which: str | Sequence[str] = "train", tokenizer: Any = None, world: Any = None,
                     world_split: str | None = None) -> ReadResult:
    """Read ``cfg.train`` or ``cfg.eval`` of a DataConfig (or the sources ``which`` lists) with its layout,
    split and skip_invalid; ``world:<name>`` entries come from the recipe's ``world`` section (held-out
    examples for ``eval``). Given the ``tokenizer``, its ``system`` setting is applied and every record is
    checked against the chat template (:func:`posttrain.data.chat.fit_to_template`)."""
    sources = getattr(cfg, which) if isinstance(which, str) else which
    world_split = world_split or ("heldout" if which == "eval" else "train")
    result = read_many(sources, cfg.layout, cfg.split, cfg.skip_invalid, world, world_split)
    if tokenizer is None:
        return result
    return fit_to_template(result, tokenizer, cfg.system, cfg.skip_invalid)
