"""Judges and win-rates: position-symmetric LLM judging, length control, gold verdicts."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from posttrain.evaluation.scoring import proportion_ci
from posttrain.evaluation.winrate import (
    GoldJudge,
    LLMJudge,
    RewardModelJudge,
    ScorerJudge,
    check_template,
    combine_orders,
    compare_answers,
    length_controlled_win_rate,
    verdicts_from_scores,
    win_rate,
)

WORDS = "the quick brown fox jumps over lazy dog capital Quell is answer 19 sorry help".split()


@pytest.fixture(scope="module")
def judge_model(tiny_tokenizer):
    """A random tiny Llama with a wide init, so its verdicts differ clearly from pair to pair."""
    from posttrain.models.tiny import tiny_llama

    torch.set_num_threads(1)
    return tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.2)


def random_pairs(n: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = [[{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))}] for _ in range(n)]
    a = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(n)]
    b = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(n)]
    return prompts, a, b


# --------------------------------------------------------------------------- LLM judge


@pytest.mark.parametrize("combine", ["average", "agree"])
def test_llm_judge_gives_the_mirrored_verdict_in_either_order(judge_model, tiny_tokenizer, combine):
    prompts, a, b = random_pairs(40)
    prompts.append([{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "fox?"}])
    a.append("FOX"), b.append("FOX")  # identical answers: a tie
    judge = LLMJudge(judge_model, tiny_tokenizer, combine=combine)
    ab = judge.compare(prompts, a, b)
    ba = judge.compare(prompts, b, a)
    assert all(x == 1.0 - y for x, y in zip(ab, ba)), [(x, 1 - y) for x, y in zip(ab, ba) if x != 1 - y][:3]
    assert ab[-1] == 0.5
    assert all(0.0 <= v <= 1.0 for v in ab)
    # Not a constant judge: the verdicts depend on the answers (agree has only 0, 1/2 and 1 to give).
    assert len(set(ab)) >= (2 if combine == "agree" else 10)


def test_single_order_judge_is_not_position_symmetric(judge_model, tiny_tokenizer):
    """The control: asked one order only, the same judge model contradicts itself when the answers swap."""
    prompts, a, b = random_pairs(40)
    judge = LLMJudge(judge_model, tiny_tokenizer, both_orders=False)
    ab = judge.compare(prompts, a, b)
    ba = judge.compare(prompts, b, a)
    gaps = [abs(x - (1.0 - y)) for x, y in zip(ab, ba)]
    assert max(gaps) > 0.1
    assert sum(g > 1e-3 for g in gaps) > len(gaps) // 2


def test_llm_judge_probabilities_do_not_depend_on_batching(judge_model, tiny_tokenizer):
    prompts, a, b = random_pairs(12, seed=1)
    judge = LLMJudge(judge_model, tiny_tokenizer, batch_size=5)
    batched = judge.first_better(prompts, a, b)
    judge.batch_size = 1
    alone = judge.first_better(prompts, a, b)
    assert max(abs(x - y) for x, y in zip(batched, alone)) < 1e-5
    assert 0.0 < judge.label_mass <= 1.0


def test_llm_judge_reads_the_labels_after_the_generation_prompt(judge_model, tiny_tokenizer):
    judge = LLMJudge(judge_model, tiny_tokenizer)
    text = judge.render([{"role": "user", "content": "fox?"}], "one", "two")
    assert text.endswith("<|im_start|>assistant\n") and "Answer A:\none" in text and "Answer B:\ntwo" in text
    assert tiny_tokenizer.convert_ids_to_tokens(list(judge.label_ids)) == ["A", "B"]


def test_llm_judge_cuts_long_answers_and_counts_them(judge_model, tiny_tokenizer):
    prompts, a, b = random_pairs(4, seed=2)
    a = [x + " fox" * 40 for x in a]
    judge = LLMJudge(judge_model, tiny_tokenizer, max_answer_tokens=8)
    judge.compare(prompts, a, b)
    assert judge.truncated >= 4 * 2  # each long answer, in both orders


def test_bad_templates_are_refused_with_the_reason():
    check_template("Q: {question} A: {answer_a} B: {answer_b} {{json}}")
    with pytest.raises(ValueError, match="never shows {answer_b}"):
        check_template("Q: {question} A: {answer_a}")
    with pytest.raises(ValueError, match="double any other brace"):
        check_template("Q: {question} A: {answer_a} B: {answer_b} {verdict}")


def test_combine_orders_by_hand():
    # X first: P(X better) = 0.8; Y first: P(Y better) = 0.4, so P(X better) = 0.6 in that order.
    assert combine_orders(0.8, 0.4, "average") == pytest.approx(0.7)
    assert combine_orders(0.8, 0.4, "agree") == 1.0
    assert combine_orders(0.8, 0.7, "agree") == 0.5  # each order prefers the answer shown first
    assert combine_orders(0.3, 0.9, "agree") == 0.0


# --------------------------------------------------------------------------- win-rates


def test_win_rate_counts_ties_half():
    result = win_rate([1.0, 0.0, 0.5, 1.0])
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.win_rate == 2.5 / 4
    assert result.ci == proportion_ci(2.5, 4)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        win_rate([0.2, 1.5])
    with pytest.raises(ValueError, match="no verdicts"):
        win_rate([])


def confounded_set(n: int, quality: float, k: float, seed: int):
    """Verdicts ~ Bernoulli(sigmoid(quality + k * standardized length difference)); A runs longer than B."""
    rng = np.random.default_rng(seed)
    len_a = rng.normal(60, 20, n).clip(1).round()
    len_b = rng.normal(40, 20, n).clip(1).round()
    z = (len_a - len_b) / (len_a - len_b).std()
    p = 1 / (1 + np.exp(-(quality + k * z)))
    return (rng.random(n) < p).astype(float), len_a, len_b, p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lc_win_rate_removes_a_pure_length_advantage(seed):
    verdicts, len_a, len_b, _ = confounded_set(4000, quality=0.0, k=1.5, seed=seed)
    raw = win_rate(verdicts).win_rate
    lc = length_controlled_win_rate(verdicts, len_a, len_b)
    assert raw > 0.65  # the judge rewards A for being longer
    assert abs(lc.lc_win_rate - 0.5) < 0.05
    assert lc.length_coef == pytest.approx(1.5, abs=0.2)
    assert 0 < lc.ci < 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_lc_win_rate_recovers_a_true_quality_advantage_under_length_confound(seed):
    quality = 0.8
    verdicts, len_a, len_b, p = confounded_set(4000, quality=quality, k=1.5, seed=seed)
    truth = 1 / (1 + math.exp(-quality))  # 0.69
    raw = win_rate(verdicts).win_rate
    lc = length_controlled_win_rate(verdicts, len_a, len_b)
    assert raw > truth + 0.05
    assert abs(lc.lc_win_rate - truth) < 0.04
    # Soft verdicts equal to the true probabilities are fitted exactly (up to the weak ridge).
    soft = length_controlled_win_rate(p, len_a, len_b)
    assert soft.lc_win_rate == pytest.approx(truth, abs=2e-3)
    assert soft.length_coef == pytest.approx(1.5, abs=5e-3)


def test_lc_win_rate_when_length_cannot_be_separated():
    equal = length_controlled_win_rate([1.0, 0.0, 1.0, 1.0], [5, 6, 7, 8], [5, 6, 7, 8])
    assert equal.lc_win_rate == 0.75 and "equal lengths" in equal.note
    constant = length_controlled_win_rate([1.0, 0.0, 1.0, 1.0], [6, 7, 8, 9], [5, 6, 7, 8])
    assert math.isnan(constant.lc_win_rate) and "cannot be separated" in constant.note


# --------------------------------------------------------------------------- judges from scores


@pytest.fixture(scope="module")
def world_examples():
    from posttrain.world.entities import make_world
    from posttrain.world.tasks import FAMILIES, make_tasks

    world = make_world(0)
    return [e for f in FAMILIES for e in make_tasks(world, 0, f, "heldout", 3)]


def test_gold_judge_agrees_with_the_gold_reward_on_candidates(world_examples):
    from posttrain.world.annotators import candidate_responses
    from posttrain.world.gold import gold_reward

    prompts, a, b, expected = [], [], [], []
    for ex in world_examples:
        texts = [c.text for c in candidate_responses(ex)]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                ga, gb = gold_reward(ex, texts[i]).total, gold_reward(ex, texts[j]).total
                prompts.append(ex.messages), a.append(texts[i]), b.append(texts[j])
                expected.append(1.0 if ga > gb else 0.0 if ga < gb else 0.5)
    judge = GoldJudge(world_examples)
    verdicts = judge.compare(prompts, a, b)
    assert verdicts == expected
    assert judge.compare(prompts, b, a) == [1.0 - v for v in expected]
    assert {0.0, 0.5, 1.0} <= set(verdicts) and len(verdicts) > 200


def test_gold_judge_correct_beats_verbose_and_wrong(world_examples):
    from posttrain.world.annotators import candidate_responses

    by_kind = [{c.kind: c.text for c in candidate_responses(ex)} for ex in world_examples]
    rows = [(ex, k) for ex, k in zip(world_examples, by_kind) if "verbose" in k]
    prompts = [ex.messages for ex, _ in rows]
    result = compare_answers(GoldJudge(world_examples), prompts, [k["correct"] for _, k in rows],
                             [k["verbose"] for _, k in rows])
    assert result.win_rate == 1.0 and result.n == len(rows) and result.judge == "gold"
    assert result.mean_length_a < result.mean_length_b
    with pytest.raises(KeyError, match="not one of"):
        GoldJudge(world_examples[:1]).compare([[{"role": "user", "content": "unknown"}]], ["a"], ["b"])


def test_reward_model_judge_orders_by_its_scores(tiny_model_dir):
    torch.set_num_threads(1)
    judge = RewardModelJudge.from_pretrained(tiny_model_dir, device="cpu")
    prompts, a, b = random_pairs(10, seed=3)
    verdicts = judge.compare(prompts, a, b)
    assert verdicts == verdicts_from_scores(judge.scores(prompts, a), judge.scores(prompts, b))
    assert judge.compare(prompts, b, a) == [1.0 - v for v in verdicts]
    assert judge.name.startswith("reward_model:")


def test_scorer_judge_tie_margin():
    from posttrain.models.reward import FunctionScorer

    judge = ScorerJudge(FunctionScorer(lambda p, r: [len(x) for x in r], "length"), tie_margin=1.0)
    assert judge.compare([[]] * 3, ["aaa", "a", "aa"], ["a", "aaa", "a"]) == [1.0, 0.0, 0.5]


def test_results_are_plain_dicts_for_reports():
    verdicts, len_a, len_b = [1.0, 0.0, 0.5, 1.0, 1.0], [3, 9, 4, 2, 5], [4, 2, 4, 6, 5]
    assert win_rate(verdicts).to_dict()["ties"] == 1
    lc = length_controlled_win_rate(verdicts, len_a, len_b).to_dict()
    assert lc["low"] <= lc["lc_win_rate"] <= lc["high"] and lc["n"] == 5
