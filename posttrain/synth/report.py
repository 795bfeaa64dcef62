"""What a synth run made and threw away: per stage, how many were generated, kept and dropped, and why.

Nothing is dropped silently: every filter calls :meth:`Stage.drop` with its reason, and the report
(printed, and written beside the data as ``<name>.report.json``) lists every reason with its count
and one example.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stage:
    name: str
    generated: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    """One dropped item per reason, to show what the reason means."""

    def keep(self) -> None:
        self.generated += 1
        self.kept += 1

    def drop(self, reason: str, example: Any = "") -> None:
        self.generated += 1
        self.dropped[reason] += 1
        self.examples.setdefault(reason, str(example)[:300])

    def to_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "kept": self.kept, "dropped": dict(self.dropped.most_common()),
                "dropped_examples": self.examples}


@dataclass
class SynthReport:
    method: str
    teacher: str
    stages: dict[str, Stage] = field(default_factory=dict)
    records: int = 0
    cache_hits: int = 0
    requests_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        return self.stages.setdefault(name, Stage(name))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "teacher": self.teacher, "records": self.records,
                "cache_hits": self.cache_hits, "requests_sent": self.requests_sent,
                "stages": {n: s.to_dict() for n, s in self.stages.items()}, **self.extra}

    def table(self):
        """A rich table: one row per stage, the drop reasons spelled out."""
        from rich.table import Table

        command = "label" if self.method == "label" else f"synth {self.method}"
        table = Table(title=f"{command}: {self.records} records from {self.teacher}")
        for column in ("stage", "generated", "kept", "dropped (reason: count)"):
            table.add_column(column, justify="right" if column in ("generated", "kept") else "left")
        for s in self.stages.values():
            reasons = ", ".join(f"{r}: {n}" for r, n in s.dropped.most_common()) or "-"
            table.add_row(s.name, str(s.generated), str(s.kept), reasons)
        table.caption = f"teacher requests: {self.requests_sent} sent, {self.cache_hits} from the cache"
        return table
