"""Simulated demonstrators: a share of flawed SFT answers, each worse by the gold reward in one way."""

from __future__ import annotations

import math

import pytest

from posttrain.world.demonstrators import FLAWS, demonstrations, flawed_answer
from posttrain.world.entities import make_world
from posttrain.world.gold import gold_reward
from posttrain.world.tasks import TRAIN_FAMILIES, make_tasks


@pytest.fixture(scope="module")
def examples():
    world = make_world(0)
    return [e for f in TRAIN_FAMILIES for e in make_tasks(world, 0, f, "train", 150)]


def test_clean_demonstrators_write_the_canonical_answers(examples):
    same, counts = demonstrations(examples, 0.0)
    assert same == list(examples) and not counts


def test_every_flawed_answer_is_worse_by_gold_in_the_way_its_flaw_says(examples):
    written, counts = demonstrations(examples, 1.0, seed=3)
    assert sum(counts.values()) == len(examples)  # every example allows at least verbose
    part = {"verbose": "brevity", "rule_breaking": "rule", "unsafe": "safety", "wrong": "correctness"}
    for original, demo in zip(examples, written):
        flaw = demo.meta["demonstration"]
        good, bad = gold_reward(original, original.answer), gold_reward(original, demo.answer)
        assert bad.total < good.total and getattr(bad, part[flaw]) < getattr(good, part[flaw]), (flaw, demo.answer)
        assert demo.cot is None and demo.messages == original.messages
        assert flaw != "rule_breaking" or original.rule is not None
    kinds = {f: {d.family for d in written if d.meta["demonstration"] == f} for f in FLAWS}
    assert kinds["rule_breaking"] == {"chat_rule"} and kinds["unsafe"] == {"harmful"}
    assert "harmful" not in kinds["wrong"] and len(kinds["verbose"]) == len(TRAIN_FAMILIES)


def test_the_share_and_the_weights_are_what_was_asked(examples):
    written, counts = demonstrations(examples, 0.3, seed=1)
    n, k = len(examples), sum(counts.values())
    assert abs(k / n - 0.3) < 3 * math.sqrt(0.3 * 0.7 / n)
    assert demonstrations(examples, 0.3, seed=1) == (written, counts)  # deterministic
    only_verbose, counts = demonstrations(examples, 0.5, {"verbose": 1.0}, seed=1)
    assert set(counts) == {"verbose"}
    assert flawed_answer(examples[0], "rule_breaking") is None  # fact lookup has no system rule
    with pytest.raises(ValueError, match="flawed must be a share"):
        demonstrations(examples, 1.5)
    with pytest.raises(ValueError, match="non-negative weights of verbose"):
        demonstrations(examples, 0.5, {"lazy": 1.0})
