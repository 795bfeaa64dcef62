"""Fuzzing the data readers (issue 21): whatever a JSONL file holds, reading it ends in records, a
counted skip, or posttrain's file:line error, never another exception.

hypothesis writes files of arbitrary lines for every record layout: arbitrary JSON values, records
of the layout with fields of the wrong type, unknown keys, unknown roles, huge strings, invalid
UTF-8 and truncated lines. Each file is read twice: with ``skip_invalid`` (every line is a record or
a counted skip) and without (records, or one :class:`DataError` naming the file and line).
"""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.data.readers import DataError, read_records

EXAMPLES = 45
"""Files per layout; each holds 45-60 lines, so every layout sees more than 2,000 generated records."""

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=4)
texts = st.text(max_size=30) | st.just("x" * 20_000) | json_values
roles = st.sampled_from(["system", "user", "assistant", "bot", "", "USER"]) | json_values
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}) | json_values, max_size=5) | json_values
sharegpt = st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "robot"]) | json_values,
                                           "value": texts}) | json_values, max_size=5) | json_values
FIELDS = {
    "messages": {"messages": messages},
    "alpaca": {"instruction": texts, "input": texts, "output": texts},
    "sharegpt": {"conversations": sharegpt},
    "prompt_completion": {"prompt": texts | messages, "completion": texts | messages},
    "preference": {"prompt": texts | messages, "chosen": texts | messages, "rejected": texts | messages,
                   "strength": st.integers(-2, 6) | json_values},
    "ranking": {"prompt": texts | messages, "responses": st.lists(texts | messages, max_size=4) | json_values},
    "unpaired": {"prompt": texts | messages, "completion": texts | messages, "label": st.booleans() | json_values},
    "text": {"text": texts},
    "prompt": {"prompt": texts | messages},
}


LAYOUTS = ["auto", *FIELDS]
"""Every layout of posttrain.data.formats (conversation is messages' other name), and auto-detection."""


def layout_records(layout: str):
    """Records shaped like ``layout``: some fields missing, extra unknown keys, any value in any field."""
    if layout == "auto":  # any layout's record, to be detected
        return st.one_of([layout_records(name) for name in FIELDS])
    return st.fixed_dictionaries({}, optional={**FIELDS[layout], "meta": json_values, "zzz_unknown": json_values})


def lines(layout: str):
    record = layout_records(layout) | json_values
    as_json = record.map(lambda v: json.dumps(v).encode("utf-8"))
    truncated = st.tuples(as_json, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    garbage = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
    broken_utf8 = as_json.map(lambda b: b[:5] + b"\xff\xfe" + b[5:])
    words = st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=30).map(str.encode)
    return st.lists(as_json | truncated | garbage | broken_utf8 | words, min_size=45, max_size=60)


def check_file(path, layout: str) -> None:
    result = read_records(path, layout, skip_invalid=True)
    report = result.report
    nonblank = sum(1 for raw in path.read_bytes().split(b"\n") if raw.strip())
    assert report.read + report.total_skipped <= nonblank  # every record read or counted, nothing else
    assert len(result.records) == report.read == len(result.locations)
    try:
        strict = read_records(path, layout)
    except DataError as e:
        assert str(e).startswith(f"{path}:"), str(e)[:200]
    else:
        assert report.total_skipped == 0 and len(strict.records) == len(result.records)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_readers_end_in_records_counted_skips_or_a_data_error(layout, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    seen = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(lines(layout))
    def run(rows):
        path.write_bytes(b"\n".join(rows) + b"\n")
        seen.append(len(rows))
        check_file(path, layout)

    run()
    assert sum(seen) >= 2000, sum(seen)
