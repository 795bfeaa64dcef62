"""Records, format adapters, readers and writers: every format read, every bad record named or counted."""

from __future__ import annotations

import json
import logging

import pytest

from posttrain.data import (
    Conversation,
    DataError,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Ranking,
    Text,
    Unpaired,
    parse_record,
    read_many,
    read_records,
    write_jsonl,
)

GOOD_A = {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]}
GOOD_B = {"messages": [{"role": "system", "content": "Answer in capitals."},
                       {"role": "user", "content": "Capital of Zorbia?"},
                       {"role": "assistant", "content": "QUELL"}]}


def user(text):
    return Message("user", text)


def assistant(text):
    return Message("assistant", text)


def write_lines(path, lines):
    """Lines are dicts (dumped as JSON), str or bytes (written as they are)."""
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line.encode() if isinstance(line, str) else line) + b"\n"
    path.write_bytes(out)
    return path


def check_bad_record(tmp_path, caplog, bad_lines, *, line, field, reason, words, skipped=None):
    """A file of two good records around ``bad_lines`` (from line 3, after a blank line 2).

    Reading it must stop at ``line`` with an error naming file, line and field and containing
    ``words``; with skip_invalid the bad records are counted by reason and the good ones kept.
    """
    path = write_lines(tmp_path / "train.jsonl", [GOOD_A, "", *bad_lines, GOOD_B])
    with pytest.raises(DataError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert (info.value.line, info.value.field, info.value.reason) == (line, field, reason)
    if field is not None:
        assert f"field '{field}'" in message
    for word in words:
        assert word in message
    assert "skip_invalid" in message

    with caplog.at_level(logging.WARNING, logger="posttrain.data"):
        result = read_records(path, skip_invalid=True)
    assert result.records == [parse_record(GOOD_A), parse_record(GOOD_B)]
    assert result.locations == [f"{path}:1", f"{path}:{3 + len(bad_lines)}"]
    assert dict(result.report.skipped) == (skipped or {reason: 1})
    assert result.report.read == 2 and result.report.total_skipped == sum((skipped or {reason: 1}).values())
    summary = result.report.summary()
    assert f"skipped {result.report.total_skipped}" in summary and f"{path}:{line}" in summary
    assert [r.getMessage() for r in caplog.records if r.name == "posttrain.data"] == [summary]
    return result


# ---------------------------------------------------------------- one test per validation case


def test_malformed_json(tmp_path, caplog):
    check_bad_record(tmp_path, caplog, ['{"messages": [{"role": "user", "content": "hi"}'],
                     line=3, field=None, reason="invalid_json", words=["invalid JSON", "column"])


def test_missing_role(tmp_path, caplog):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"content": "hello"}]}
    check_bad_record(tmp_path, caplog, [bad], line=3, field="messages[1].role", reason="missing_field",
                     words=["missing role", "system, user, assistant"])


def test_unknown_role(tmp_path, caplog):
    bad = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                        {"role": "bot", "content": "hello"}]}
    check_bad_record(tmp_path, caplog, [bad], line=3, field="messages[2].role", reason="unknown_role",
                     words=["unknown role 'bot'; expected one of system, user, assistant"])


def test_empty_assistant_turn(tmp_path, caplog):
    blank_turn = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n\t"}]}
    empty_chosen = {"prompt": "hi", "chosen": "", "rejected": "hello"}
    empty_rejected = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello",
                      "rejected": [{"role": "assistant", "content": ""}]}
    result = check_bad_record(tmp_path, caplog, [blank_turn, empty_chosen, empty_rejected], line=3,
                              field="messages[1].content", reason="empty_turn", words=["empty assistant turn"],
                              skipped={"empty_turn": 3})
    examples = result.report.examples["empty_turn"]
    assert "field 'chosen'" in examples[1] and "field 'rejected[0].content'" in examples[2]


def test_wrong_field_types(tmp_path, caplog):
    content_list = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                 {"role": "assistant", "content": "hello"}]}
    content_int = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}
    strength_str = {"prompt": "hi", "chosen": "a", "rejected": "b", "strength": "strong"}
    strength_big = {"prompt": "hi", "chosen": "a", "rejected": "b", "strength": 7}
    label_str = {"prompt": "hi", "completion": "a", "label": "yes"}
    result = check_bad_record(tmp_path, caplog, [content_list, content_int, strength_str, strength_big, label_str],
                              line=3, field="messages[0].content", reason="wrong_type",
                              words=["expected a string, got list"], skipped={"wrong_type": 4, "bad_value": 1})
    examples = " ".join(result.report.examples["wrong_type"])
    assert ":4: field 'messages[1].content': expected a string, got int 5" in examples
    assert ":5: field 'strength': expected an integer, got str 'strong'" in examples
    assert len(result.report.examples["wrong_type"]) == 3  # the first few are kept, all are counted
    assert ":6: field 'strength': expected 1 (slight) to 4 (decisive), got 7" in result.report.examples["bad_value"][0]


def test_non_utf8_bytes(tmp_path, caplog):
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}'
    check_bad_record(tmp_path, caplog, [bad], line=3, field=None, reason="encoding",
                     words=["not valid UTF-8", "0xe9", "re-encode"])


def test_conversation_without_assistant_turn(tmp_path, caplog):
    bad = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    check_bad_record(tmp_path, caplog, [bad], line=3, field="messages", reason="no_assistant_turn",
                     words=["no assistant turn"])


def test_preference_with_chosen_equal_to_rejected(tmp_path, caplog):
    bad = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": [{"role": "assistant", "content": "5"}]}
    check_bad_record(tmp_path, caplog, [bad], line=3, field="rejected", reason="identical_pair",
                     words=["identical to chosen"])


def test_unknown_record_layout_names_keys_and_formats(tmp_path, caplog):
    check_bad_record(tmp_path, caplog, [{"question": "q", "answer": "a"}], line=3, field=None,
                     reason="unknown_format", words=["question, answer", "messages (OpenAI)", "prompt+chosen+rejected"])


def test_blank_lines_are_ignored_not_counted(tmp_path, caplog):
    path = write_lines(tmp_path / "t.jsonl", ["", GOOD_A, "   ", "\t", "", GOOD_B, ""])
    with caplog.at_level(logging.WARNING, logger="posttrain.data"):
        result = read_records(path)
    assert len(result) == 2 and result.locations == [f"{path}:2", f"{path}:6"]
    assert result.report.total_skipped == 0 and not caplog.records
    assert "skipped" not in result.report.summary()


# ---------------------------------------------------------------- formats


def test_every_canonical_form_and_adapter_is_detected():
    msgs = [{"role": "user", "content": "q"}]
    cases = {
        "messages": (GOOD_A, Conversation([user("Add 2 and 3."), assistant("5")])),
        "sharegpt": ({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                        {"from": "gpt", "value": "a"}, {"from": "user", "value": "q2"},
                                        {"from": "model", "value": "a2"}]},
                     Conversation([Message("system", "s"), user("q"), assistant("a"), user("q2"), assistant("a2")])),
        "alpaca": ({"instruction": "Sort.", "input": "b a", "output": "a b", "system": "Be brief."},
                   Conversation([Message("system", "Be brief."), user("Sort.\n\nb a"), assistant("a b")])),
        "alpaca_no_input": ({"instruction": "Say hi.", "input": "", "output": "hi"},
                            Conversation([user("Say hi."), assistant("hi")])),
        "prompt_completion": ({"prompt": "TL;DR:", "completion": " short"}, PromptCompletion("TL;DR:", " short")),
        "conversational_prompt_completion": ({"prompt": msgs, "completion": [{"role": "assistant", "content": "a"}]},
                                             Conversation([user("q"), assistant("a")])),
        "preference": ({"prompt": "q", "chosen": "a", "rejected": "b", "strength": 3},
                       Preference([user("q")], [assistant("a")], [assistant("b")], 3)),
        "preference_trl_implicit_prompt": (
            {"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"}],
             "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "b"}]},
            Preference([Message("system", "s"), user("q")], [assistant("a")], [assistant("b")], None)),
        "preference_prompt_repeated_in_responses": (
            {"prompt": msgs, "chosen": msgs + [{"role": "assistant", "content": "a"}],
             "rejected": msgs + [{"role": "assistant", "content": "b"}]},
            Preference([user("q")], [assistant("a")], [assistant("b")], None)),
        "ranking": ({"prompt": "q", "responses": ["best", "mid", "worst"]},
                    Ranking([user("q")], [[assistant("best")], [assistant("mid")], [assistant("worst")]])),
        "ranking_with_ranks": ({"prompt": "q", "responses": ["mid", "worst", "best"], "ranks": [2, 3, 1]},
                               Ranking([user("q")], [[assistant("best")], [assistant("mid")], [assistant("worst")]])),
        "unpaired": ({"prompt": "q", "completion": "a", "label": False},
                     Unpaired([user("q")], [assistant("a")], False)),
        "text": ({"text": "Zorbia is a city."}, Text("Zorbia is a city.")),
        "prompt": ({"prompt": msgs}, Prompt([user("q")])),
    }
    for name, (raw, expected) in cases.items():
        assert parse_record(raw) == expected, name


def test_extra_fields_go_to_meta_and_null_fields_count_as_absent():
    raw = {"id": 7, "prompt": "q", "chosen": "a", "rejected": "b", "strength": None, "meta": {"source": "world"},
           "text": None}
    record = parse_record(raw)
    assert isinstance(record, Preference) and record.strength is None
    assert record.meta == {"id": 7, "source": "world"}


def test_preference_helpers_build_conversations_and_ranking_pairs():
    pref = parse_record({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                         "chosen": "a", "rejected": "b"})
    chosen, rejected = pref.to_conversations()
    assert chosen.as_dicts() == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a"}]
    assert rejected.messages[-1] == assistant("b") and rejected.messages[:2] == pref.prompt
    ranking = parse_record({"prompt": "q", "responses": ["1", "2", "3"]})
    assert [(p.chosen[0].content, p.rejected[0].content) for p in ranking.to_pairs()] == [
        ("1", "2"), ("1", "3"), ("2", "3")]


def test_explicit_format_reports_missing_fields(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a"}])
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'rejected': missing \(a preference record needs it"):
        read_records(path)
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'text': missing"):
        read_records(path, format="text")
    with pytest.raises(ValueError, match="unknown data format 'chat'"):
        read_records(path, format="chat")


def test_expect_names_the_first_record_of_the_wrong_kind(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [GOOD_A, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    result = read_records(path)
    assert result.expect("conversation", "preference") == result.records
    with pytest.raises(DataError, match=r"mixed.jsonl:2: a preference record where conversation records"):
        result.expect("conversation")


# ---------------------------------------------------------------- sources and writers


def all_kinds():
    prompt = [Message("system", "Answer in capitals."), user("Capital of Zorbia?")]
    return [
        Conversation(prompt + [assistant("QUELL"), user("And of Quell?"), assistant("NONE")], {"id": "c1"}),
        PromptCompletion("Q: 2+3=\nA:", " 5"),
        Prompt(prompt, {"task": "fact"}),
        Preference(prompt, [assistant("QUELL")], [assistant("Quell ü ✓")], 4),
        Preference([user("hi")], [assistant("hello")], [assistant("go away")], None, {"annotator": 2}),
        Ranking(prompt, [[assistant("QUELL")], [assistant("quell")], [assistant("I don't know")]]),
        Unpaired(prompt, [assistant("quell")], False, {"gold": 0.25}),
        Text("Zorbia is a city.\n\nIts capital is Quell."),
    ]


def test_round_trip_every_kind_with_identical_bytes(tmp_path):
    records = all_kinds()
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(records, first) == len(records)
    write_jsonl(list(all_kinds()), second)
    assert first.read_bytes() == second.read_bytes()
    assert "ü ✓" in first.read_text(encoding="utf-8")  # not \u-escaped
    result = read_records(first)
    assert result.records == records
    assert [r.kind for r in result] == [r.kind for r in records]
    write_jsonl(result.records, second)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temp files left


def test_writer_refuses_a_record_that_would_not_read_back_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_jsonl(all_kinds()[:2], path)
    before = path.read_bytes()
    bad = Preference([user("q")], [assistant("same")], [assistant("same")])
    with pytest.raises(ValueError, match=r"record 1 \(preference\): field 'rejected': identical to chosen"):
        write_jsonl([all_kinds()[0], bad], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl"]


def test_parquet_rows_with_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    same = Preference([user("q")], [assistant("a")], [assistant("a")])
    rows = [r.to_dict() for r in all_kinds()[3:5]] + [same.to_dict()]
    keys = {k: None for row in rows for k in row}
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist([{**keys, **row} for row in rows]), path)  # its schema comes from row 0
    with pytest.raises(DataError, match=r"prefs.parquet: row 2: field 'rejected': identical to chosen"):
        read_records(path)
    result = read_records(path, skip_invalid=True)
    assert result.records == all_kinds()[3:5]  # the null strength and meta of the other rows are absent
    assert result.locations == [f"{path}: row 0", f"{path}: row 1"]
    assert dict(result.report.skipped) == {"identical_pair": 1}


def test_datasets_folders_dataset_and_dataset_dict(tmp_path):
    import datasets

    records = all_kinds()
    convs = [r.to_dict() for r in records[:1]] + [GOOD_A, GOOD_B]
    datasets.Dataset.from_list(convs).save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds").records == [records[0], parse_record(GOOD_A), parse_record(GOOD_B)]

    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([GOOD_A, bad, GOOD_B]),
        "test": datasets.Dataset.from_list([{"text": "held out"}]),
    }).save_to_disk(str(tmp_path / "dd"))
    assert read_records(tmp_path / "dd", split="test").records == [Text("held out")]
    with pytest.raises(DataError, match=r"dd: row 1: field 'messages\[1\].role': unknown role 'bot'"):
        read_records(tmp_path / "dd")
    with pytest.raises(DataError, match=r"no split 'validation'.*train, test"):
        read_records(tmp_path / "dd", split="validation")


def test_hub_name_offline_and_missing_file_errors(tmp_path):
    with pytest.raises(DataError, match="neither a local file or folder nor a dataset reachable on the Hugging Face hub"):
        read_records("posttrain-test/no-such-dataset")
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match="not a dataset written by save_to_disk"):
        read_records(tmp_path / "notes")


def test_text_file_blocks_and_json_array(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_bytes(b"Zorbia is a city.\nIts capital is Quell.\n\n\nA fox.\n\nbad \xff byte\nstill bad\n\nlast")
    with pytest.raises(DataError, match=r"corpus.txt:7: line 7: not valid UTF-8"):
        read_records(txt)
    result = read_records(txt, skip_invalid=True)
    assert [r.text for r in result] == ["Zorbia is a city.\nIts capital is Quell.", "A fox.", "last"]
    assert result.locations == [f"{txt}:1", f"{txt}:5", f"{txt}:10"] and result.report.skipped == {"encoding": 1}

    array = tmp_path / "data.json"
    array.write_text(json.dumps([GOOD_A, {"text": ""}], indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"data.json: item 1: field 'text': empty text"):
        read_records(array)


def test_read_many_combines_records_and_reports(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [GOOD_A, "{oops"])
    b = write_lines(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "y"}, "{oops", GOOD_B])
    result = read_many([a, b], skip_invalid=True)
    assert len(result) == 3 and result.locations == [f"{a}:1", f"{b}:1", f"{b}:3"]
    assert result.report.read == 3 and dict(result.report.kinds) == {"conversation": 2, "preference": 1}
    assert dict(result.report.skipped) == {"invalid_json": 2}
    assert result.report.examples["invalid_json"][0].startswith(f"{a}:2: invalid JSON")
    assert result.report.summary().startswith(f"{a}, {b}: read 3 records (2 conversation, 1 preference); skipped 2")
