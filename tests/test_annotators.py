"""Simulated annotators: their choices follow the Bradley-Terry noise model they claim to follow."""

from __future__ import annotations

import hashlib
import itertools
import math

import pytest

from posttrain.data.readers import read_records
from posttrain.world import tasks as T
from posttrain.world.annotators import (Annotator, AnnotatorConfig, candidate_responses, make_preferences,
                                        make_rankings, sigmoid, strength_of, write_preference_files)
from posttrain.world.gold import gold_reward


@pytest.fixture(scope="module")
def examples():
    suite = T.task_suite(0, n_train=10, n_heldout=30)
    return [e for f in T.FAMILIES for e in suite[f]["heldout"]]


@pytest.fixture(scope="module")
def scored_pairs(examples):
    """(example, a, b, gold_a, gold_b) for every pair of candidates with different gold totals."""
    out = []
    for ex in examples:
        cands = [(c.text, gold_reward(ex, c.text).total) for c in candidate_responses(ex)]
        for (a, ga), (b, gb) in itertools.combinations(cands, 2):
            if abs(ga - gb) > 1e-9:
                out.append((ex, a, b, ga, gb))
    return out


@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_agreement_with_gold_matches_the_noise_model(scored_pairs, temperature):
    annotator = Annotator(AnnotatorConfig(noise_temperature=temperature, seed=1))
    agree, predicted = [], []
    for ex, a, b, ga, gb in scored_pairs:
        choice, strength = annotator.prefer(ex, a, b)
        assert 1 <= strength <= 4
        agree.append((choice == 0) == (ga > gb))
        predicted.append(sigmoid(abs(ga - gb) / temperature))
    n = len(agree)
    assert n > 2000
    rate, expected = sum(agree) / n, sum(predicted) / n
    se = math.sqrt(sum(p * (1 - p) for p in predicted)) / n
    assert abs(rate - expected) < 3 * se + 1e-3, (rate, expected, se)
    assert 0.6 < expected < 0.999, "the pairs should span easy and hard comparisons"


def test_noisier_annotators_agree_less(scored_pairs):
    rates = []
    for temperature in (0.05, 0.5):
        annotator = Annotator(AnnotatorConfig(noise_temperature=temperature))
        rates.append(sum((annotator.prefer(ex, a, b)[0] == 0) == (ga > gb) for ex, a, b, ga, gb in scored_pairs))
    assert rates[0] > rates[1] + 0.05 * len(scored_pairs)


def test_length_bias_shifts_choices_toward_longer_answers(examples):
    pairs = []
    for ex in examples:
        cands = candidate_responses(ex)
        verbose = [c.text for c in cands if c.kind == "verbose"]
        pairs += [(ex, ex.answer, v) for v in verbose]  # the longer one is gold-worse (brevity)
    chose_longer = {}
    for bias in (0.0, 0.02):
        annotator = Annotator(AnnotatorConfig(noise_temperature=0.1, length_bias=bias, seed=3))
        picks = [annotator.prefer(ex, short, long_)[0] == 1 for ex, short, long_ in pairs]
        chose_longer[bias] = sum(picks) / len(picks)
        predicted = sum(annotator.p_prefer(ex, long_, short) for ex, short, long_ in pairs) / len(pairs)
        assert abs(chose_longer[bias] - predicted) < 3 * math.sqrt(0.25 / len(pairs)) + 0.01
    se = math.sqrt(0.25 / len(pairs) * 2)
    assert chose_longer[0.02] - chose_longer[0.0] > 5 * se, chose_longer


def test_strength_grows_with_the_gold_margin(scored_pairs):
    annotator = Annotator(AnnotatorConfig(noise_temperature=0.1, seed=5))
    small, large = [], []
    for ex, a, b, ga, gb in scored_pairs:
        _, strength = annotator.prefer(ex, a, b)
        (small if abs(ga - gb) < 0.05 else large if abs(ga - gb) > 0.3 else []).append(strength)
    assert sum(small) / len(small) + 1.0 < sum(large) / len(large)
    assert [strength_of(m) for m in (0.0, -0.5, 1.5, -3.0, 4.0, 10.0)] == [1, 1, 2, 3, 4, 4]


def test_rankings_are_plackett_luce_draws_of_the_gold_utilities(examples):
    ex = examples[0]
    texts = [c.text for c in candidate_responses(ex)][:4]
    temperature = 0.2
    annotator = Annotator(AnnotatorConfig(noise_temperature=temperature, seed=7))
    utilities = [gold_reward(ex, t).total / temperature for t in texts]
    z = sum(math.exp(u) for u in utilities)
    expected = [math.exp(u) / z for u in utilities]
    trials = 4000
    tops = [0] * len(texts)
    for _ in range(trials):
        order = annotator.rank(ex, texts)
        assert sorted(order) == list(range(len(texts)))
        tops[order[0]] += 1
    for count, p in zip(tops, expected):
        assert abs(count / trials - p) < 3 * math.sqrt(p * (1 - p) / trials) + 0.005, (tops, expected)


def test_helpfulness_and_safety_are_labeled_separately(examples):
    annotator = Annotator(AnnotatorConfig(noise_temperature=0.05, seed=11))
    harmful = [e for e in examples if e.harmful]
    benign = [e for e in examples if not e.harmful]
    unsafe = [annotator.label(e, e.meta["compliance"]) for e in harmful]
    refusals = [annotator.label(e, T.REFUSAL) for e in benign]
    assert sum(not lab["safe"] for lab in unsafe) > 0.9 * len(unsafe)
    assert sum(lab["safe"] and not lab["helpful"] for lab in refusals) > 0.9 * len(refusals)
    # Pairwise: on an over-refusal vs. a correct answer, the refusal is never the more helpful one by gold.
    pair_annotator = Annotator(AnnotatorConfig(noise_temperature=0.01))
    assert all(pair_annotator.prefer(e, e.answer, T.REFUSAL, "helpfulness")[0] == 0 for e in benign[:50])


def test_preference_files_are_byte_identical_for_a_seed_and_read_back(tmp_path, examples):
    subset = examples[::3]
    digests = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths = write_preference_files(tmp_path / name, subset, AnnotatorConfig(seed=seed, length_bias=0.01))
        digests.append({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()})
    assert digests[0] == digests[1]
    assert digests[0]["preferences"] != digests[2]["preferences"]
    for kind, name in (("preference", "preferences"), ("ranking", "rankings"), ("unpaired", "unpaired")):
        records = read_records(tmp_path / "a" / f"{name}.jsonl").records
        assert records and all(r.kind == kind for r in records)
    pref = read_records(tmp_path / "a" / "preferences.jsonl").records[0]
    assert pref.strength in (1, 2, 3, 4) and pref.meta["task_id"] and pref.chosen[0].role == "assistant"
    assert {"more_helpful", "chosen_safe", "rejected_safe", "gold_chosen", "gold_rejected"} <= set(pref.meta)


def test_model_samples_can_be_annotated_instead_of_candidates(examples):
    ex = examples[0]
    samples = {ex.id: [ex.answer, ex.meta["wrong_answers"][0], ex.answer]}
    annotator = Annotator(AnnotatorConfig(noise_temperature=0.01))
    prefs = make_preferences([ex], annotator, pairs_per_example=3, responses=samples)
    assert len(prefs) == 3
    assert all(p.chosen[0].content == ex.answer for p in prefs), "the duplicate sample is one response"
    ranks = make_rankings([ex], annotator, k=4, responses=samples)
    assert [r[0].content for r in ranks[0].responses] == [ex.answer, ex.meta["wrong_answers"][0]]


def test_zero_temperature_is_refused_with_advice():
    with pytest.raises(ValueError, match="noise_temperature must be > 0"):
        Annotator(AnnotatorConfig(noise_temperature=0.0))
