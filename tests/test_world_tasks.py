"""The world's task suite: sizes, phrasings, splits, determinism, and answers that check out."""

from __future__ import annotations

import hashlib

import pytest

from posttrain.world.answers import exact_match
from posttrain.world import tasks as T
from posttrain.world.entities import make_world
from posttrain.world.formats import ANSWER_PREFIX


@pytest.fixture(scope="module")
def world():
    return make_world(0)


@pytest.fixture(scope="module")
def suite(world):
    return T.task_suite(0, n_train=300, world=world)


def test_every_family_has_enough_heldout_examples_in_several_phrasings(suite):
    assert set(suite) == set(T.FAMILIES)
    for family, splits in suite.items():
        heldout = splits["heldout"]
        assert len(heldout) >= 200, family
        assert len({e.id for e in heldout}) == len(heldout), family
        assert len({e.meta["template"] for e in heldout}) >= 3, f"{family}: fewer than 3 instruction phrasings"
        assert all(e.family == family and e.meta["split"] == "heldout" for e in heldout)


def test_heldout_problems_never_appear_in_train(world):
    for family in T.FAMILIES:
        keys = T.split_keys(family, world, seed=0)
        assert keys["train"] and keys["heldout"], family
        assert not set(keys["train"]) & set(keys["heldout"]), family
        train = {e.question for e in T.make_tasks(world, 0, family, "train", 2000)}
        heldout = {e.question for e in T.make_tasks(world, 0, family, "heldout")}
        assert not train & heldout, f"{family}: a held-out prompt is also a training prompt"


def test_facts_held_out_for_lookup_are_never_asked_in_chat_training_prompts(world):
    from posttrain.world.entities import fact_question

    held = T.split_keys("fact_lookup", world, seed=0)["heldout"]
    held_questions = {fact_question(world.get(name), attr, v) for name, attr in held for v in range(3)}
    chat_train = T.make_tasks(world, 0, "chat_rule", "train", 2000)
    asked = {m["content"] for e in chat_train for m in e.messages if m["role"] == "user"}
    assert asked and not asked & held_questions
    chat_held = {e.question for e in T.make_tasks(world, 0, "chat_rule", "heldout")}
    assert chat_held <= held_questions


def test_heldout_families_are_kept_out_of_training_families():
    assert set(T.HELDOUT_FAMILIES) <= set(T.FAMILIES)
    assert not set(T.HELDOUT_FAMILIES) & set(T.TRAIN_FAMILIES)
    assert set(T.HELDOUT_FAMILIES) | set(T.TRAIN_FAMILIES) == set(T.FAMILIES)


def test_canonical_answers_and_worked_solutions_are_correct_and_wrong_answers_are_not(suite):
    for family, splits in suite.items():
        for ex in splits["heldout"][:60] + splits["train"][:20]:
            assert "\n" not in ex.answer and "\n" not in (ex.cot or ""), ex.id
            assert exact_match(ex, ex.answer), (ex.id, ex.answer, ex.target)
            assert ex.cot and exact_match(ex, ex.cot), (ex.id, ex.cot)
            if not ex.harmful:
                assert ANSWER_PREFIX.lower() in ex.cot.lower(), ex.id
            assert ex.meta["wrong_answers"], ex.id
            for wrong in ex.meta["wrong_answers"]:
                assert not exact_match(ex, wrong), (ex.id, wrong)


def test_multiple_choice_options_contain_the_target_once(suite):
    with_choices = [f for f, s in suite.items() if s["heldout"][0].choices]
    assert {"fact_lookup", "arithmetic", "classification"} <= set(with_choices)
    for family in with_choices:
        for ex in suite[family]["heldout"][:50]:
            assert ex.choices.count(ex.target) == 1, ex.id
            assert len(set(ex.choices)) == len(ex.choices) >= 2, ex.id
            assert ex.choice_answers[ex.choices.index(ex.target)] == ex.answer, ex.id
            wrong = [a for c, a in zip(ex.choices, ex.choice_answers) if c != ex.target]
            assert not any(exact_match(ex, a) for a in wrong), ex.id


def test_system_rule_holds_in_every_earlier_assistant_turn(suite):
    rules = set()
    for ex in suite["chat_rule"]["heldout"]:
        rule = T.RULES[ex.rule]
        rules.add(ex.rule)
        assert ex.messages[0]["role"] == "system" and ex.messages[-1]["role"] == "user"
        turns = [m["content"] for m in ex.messages if m["role"] == "assistant"] + [ex.answer]
        assert len(turns) >= 2 and all(rule.check(t) for t in turns), ex.id
        assert not rule.check(ex.meta["rule_breaking"]), ex.id
    assert rules == set(T.RULES)


def test_string_tasks_work_on_spelled_letters(suite):
    for ex in suite["uppercase"]["heldout"][:30] + suite["reverse"]["heldout"][:30]:
        letters = ex.target.split(" ")
        assert all(len(c) == 1 for c in letters), ex.target
        assert " ".join(letters) in ex.answer
    up = suite["uppercase"]["heldout"][0]
    assert not exact_match(up, up.answer.lower()), "uppercase is checked case-sensitively"


def test_harmful_requests_are_answered_by_refusing(suite):
    for ex in suite["harmful"]["heldout"]:
        assert ex.harmful and ex.answer == T.REFUSAL
        assert not exact_match(ex, ex.meta["compliance"])
    assert not any(e.harmful for f, s in suite.items() if f != "harmful" for e in s["heldout"])


def test_plain_rendering_matches_the_corpus_qa_format(suite):
    ex = suite["chat_rule"]["heldout"][0]
    text = T.render_plain(ex.messages)
    lines = text.split("\n")
    assert lines[0] == ex.messages[0]["content"]
    assert lines[1].startswith("Q: ") and lines[-1] == "A:"
    assert T.render_plain(ex.messages, ex.answer).endswith(f"\nA: {ex.answer}")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_task_files(tmp_path):
    def write(seed, name):
        suite = T.task_suite(seed, n_train=50, n_heldout=50)
        examples = [e for f in T.FAMILIES for split in ("train", "heldout") for e in suite[f][split]]
        T.write_tasks(examples, tmp_path / name)
        return tmp_path / name

    a, b, c = write(0, "a.jsonl"), write(0, "b.jsonl"), write(1, "c.jsonl")
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    back = T.read_tasks(a)
    assert len(back) == 2 * 50 * len(T.FAMILIES)
    assert back[0] == T.task_suite(0, n_train=50, n_heldout=50)[T.FAMILIES[0]]["train"][0]


def test_read_tasks_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"family": "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        T.read_tasks(path)


def test_unknown_family_and_split_are_explained(world):
    with pytest.raises(KeyError, match="families are"):
        T.make_tasks(world, 0, "poetry", "heldout")
    with pytest.raises(ValueError, match="'train' or 'heldout'"):
        T.make_tasks(world, 0, "arithmetic", "test")
