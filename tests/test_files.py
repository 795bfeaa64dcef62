"""Atomic result files: strict JSON (NaN as null), no temporary file left behind."""

import json
import math

import pytest

from posttrain.files import write_json_atomic, write_jsonl_atomic, write_text_atomic


def test_json_is_strict_and_nan_becomes_null(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "r.json", {"lc": math.nan, "rows": [1.5, math.nan, {"x": math.nan}]})
    assert json.loads(path.read_text()) == {"lc": None, "rows": [1.5, None, {"x": None}]}
    lines = write_jsonl_atomic(tmp_path / "r.jsonl", [{"a": 1}, {"a": math.nan}]).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"a": None}]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "old\n")

    with pytest.raises(TypeError):
        write_text_atomic(path, object())  # not text: the write fails midway
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
