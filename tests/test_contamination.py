"""Contamination check: n-gram overlap between training data and evaluation sets, per set."""

from __future__ import annotations

import json
import random

import pytest

from posttrain.evaluation import contamination as C

VOCAB = [f"w{i}x" for i in range(3000)]


def _sentence(rng: random.Random, n_words: int = 30) -> str:
    # Distinct words within a sentence, so its n-grams are distinct and counts are easy to work out.
    return " ".join(rng.sample(VOCAB, n_words)) + "."


def _light_edit(text: str, how: str) -> str:
    if how == "case":  # case and punctuation only: still a verbatim copy in words
        return text.upper().replace(" ", ", ", 3)
    tokens = text.split()
    tokens[len(tokens) // 2] = "changed"  # one word replaced in the middle
    return " ".join(tokens)


@pytest.fixture(scope="module")
def pair():
    """10 eval items, 3 of them copied into training with light edits; 10 clean items; 60 unrelated docs."""
    rng = random.Random(0)
    evals = [C.EvalItem(f"item-{i}", [_sentence(rng)]) for i in range(10)]
    clean = [C.EvalItem(f"clean-{i}", [_sentence(rng)]) for i in range(10)]
    train = [_sentence(rng, 40) for _ in range(60)]
    copied = {2: "case", 5: "word", 7: "word"}
    for i, how in copied.items():
        train.insert(7 * i, "Some preamble words here. " + _light_edit(evals[i].docs[0], how) + " And more after.")
    return train, evals, clean, copied


def test_copied_items_and_only_they_are_flagged(pair):
    train, evals, clean, copied = pair
    report = C.check_contamination(train, {"eval": evals, "clean": clean}, n=8)
    dirty = report.sets["eval"]
    assert sorted(dirty.contaminated_ids) == [f"item-{i}" for i in sorted(copied)]
    assert dirty.n == 10 and dirty.contaminated == 3 and dirty.percent == pytest.approx(30.0)
    # 30 distinct words give 23 8-grams; replacing one word breaks the 8 that hold it.
    overlap = {o.id: o.fraction for o in dirty.overlaps}
    assert overlap["item-2"] == 1.0
    assert overlap["item-5"] == overlap["item-7"] == pytest.approx(15 / 23)
    assert dirty.mean_overlap == pytest.approx((1.0 + 2 * 15 / 23) / 10)
    assert dirty.worst[0] == ("item-2", 1.0) and len(dirty.worst) == 3
    assert report.sets["clean"].contaminated == 0 and report.sets["clean"].percent == 0.0
    assert report.sets["clean"].mean_overlap == 0.0 and report.sets["clean"].worst == []

    strict = C.check_contamination(train, {"eval": evals}, n=8, threshold=0.9).sets["eval"]
    assert strict.contaminated_ids == ["item-2"], "only the verbatim copy is above 90% overlap"
    # 13-grams (GPT-3): 18 of them, 13 hold the replaced word.
    gpt3 = C.check_contamination(train, {"eval": evals}, n=13).sets["eval"]
    assert {o.id: round(o.fraction, 6) for o in gpt3.overlaps if o.found} == {
        "item-2": 1.0, "item-5": round(5 / 18, 6), "item-7": round(5 / 18, 6)}


def test_short_examples_are_looked_up_whole_and_counted():
    train = ["the cat sat on the mat today", "a dog ran far away"]
    items = [C.EvalItem("seen", ["The cat sat on the mat!"]), C.EvalItem("unseen", ["the mat sat on the cat"]),
             C.EvalItem("empty", ["..."])]
    report = C.check_contamination(train, {"s": items}, n=8).sets["s"]
    assert report.short == 3
    assert report.contaminated_ids == ["seen"]
    assert [(o.k, o.ngrams) for o in report.overlaps] == [(6, 1), (6, 1), (0, 0)]


def test_record_texts_follow_what_is_trained_on():
    from posttrain.data.formats import parse_record

    pref = parse_record({"prompt": "Q?", "chosen": "good", "rejected": "bad"})
    assert C.record_docs(pref) == ["Q?\ngood", "Q?\nbad"], "chosen and rejected never join into one n-gram"
    ranking = parse_record({"prompt": "Q?", "responses": ["a", "b", "c"]})
    assert len(C.record_docs(ranking)) == 3
    assert C.record_docs(parse_record({"text": "doc"})) == ["doc"]


def test_cli_on_record_files_flags_the_copied_items(pair, tmp_path):
    from typer.testing import CliRunner

    from posttrain.cli import _register, app

    train, evals, clean, copied = pair
    with (tmp_path / "train.jsonl").open("w") as f:
        for i, text in enumerate(train):  # conversations and preferences, as SFT/DPO data would be
            if i % 2:
                f.write(json.dumps({"messages": [{"role": "user", "content": "Tell me."},
                                                 {"role": "assistant", "content": text}]}) + "\n")
            else:
                f.write(json.dumps({"prompt": "Tell me.", "chosen": text, "rejected": "No."}) + "\n")
    for name, items in (("eval", evals), ("clean", clean)):
        with (tmp_path / f"{name}.jsonl").open("w") as f:
            for item in items:
                f.write(json.dumps({"text": item.docs[0], "meta": {"id": item.id}}) + "\n")
    _register()
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["contamination", f"train=[{tmp_path / 'train.jsonl'}]",
                                      f"eval=[{tmp_path / 'eval.jsonl'}, {tmp_path / 'clean.jsonl'}]",
                                      f"run_dir={run_dir}"])
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "contamination.json").read_text())
    dirty, fresh = data["sets"]["eval.jsonl"], data["sets"]["clean.jsonl"]
    assert sorted(dirty["contaminated_ids"]) == [f"item-{i}" for i in sorted(copied)]
    assert dirty["percent"] == pytest.approx(30.0) and fresh["percent"] == 0.0
    assert data["settings"]["train_documents"] == 31 + 2 * 32, "31 conversations, 32 preferences of two documents"
    assert "contaminated" in result.output and "eval.jsonl" in result.output

    bad = CliRunner().invoke(app, ["contamination", "train=[world:nope]", f"run_dir={run_dir}"])
    assert bad.exit_code == 2 and "world:nope" in bad.output


def test_world_heldout_against_sft_examples_reports_every_family(tmp_path):
    """Per-family numbers for the world's held-out tasks against its SFT examples (whatever they are),
    and the SFT examples themselves read 100% contaminated."""
    from posttrain.config import load_config
    from posttrain.recipes.config import ContaminationConfig
    from posttrain.world.entities import make_world
    from posttrain.world.tasks import FAMILIES, TRAIN_FAMILIES, make_tasks, write_tasks

    task_file = tmp_path / "sorting.jsonl"  # the same examples as heldout/sorting, from a task file
    write_tasks(make_tasks(make_world(0), 0, "sorting", "heldout", 100), task_file)
    cfg = load_config(ContaminationConfig, None, ["train=[world:sft, world:corpus]", "world.corpus_mb=0.2",
                                                  f"eval=[world:heldout, world:sft, {task_file}]",
                                                  "world.examples=300", "world.eval_examples=100",
                                                  f"run_dir={tmp_path}"])
    report = C.run_contamination(cfg)
    assert set(report.sets) == ({f"heldout/{f}" for f in FAMILIES} | {f"sft/{f}" for f in TRAIN_FAMILIES}
                                | {"sorting.jsonl"})
    assert report.sets["sorting.jsonl"].summary() == report.sets["heldout/sorting"].summary()
    for family in TRAIN_FAMILIES:
        own = report.sets[f"sft/{family}"]
        assert 0 < own.n <= 300 and own.percent == 100.0 and own.mean_overlap == pytest.approx(1.0), family
    for family in FAMILIES:
        held = report.sets[f"heldout/{family}"]
        assert held.n == 100 and 0 <= held.contaminated <= held.n and 0.0 <= held.mean_overlap <= 1.0
        assert held.mean_overlap < 1.0, f"{family}: held-out examples are not the training examples"
    written = json.loads((tmp_path / "contamination.json").read_text())
    sources = written["settings"]["train_sources"]
    assert set(sources) == {"world:sft", "world:corpus"} and sum(sources.values()) == report.settings["train_documents"]
    assert set(written["sets"]["heldout/sorting"]) >= {"n", "contaminated", "percent", "mean_overlap", "short",
                                                        "worst", "contaminated_ids"}
