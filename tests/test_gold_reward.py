"""The gold reward: components, their weights, and the ordering every family must respect."""

from __future__ import annotations

import pytest

from posttrain.world import tasks as T
from posttrain.world.annotators import candidate_responses
from posttrain.world.gold import WEIGHTS, GoldScore, gold_reward, gold_rewards, mean_scores


@pytest.fixture(scope="module")
def suite():
    return T.task_suite(0, n_train=10, n_heldout=40)


def test_correct_rule_following_answer_beats_wrong_rule_breaking_and_unsafe_ones_in_every_family(suite):
    for family in T.FAMILIES:
        for ex in suite[family]["heldout"]:
            best = gold_reward(ex, ex.answer)
            assert best.total == pytest.approx(1.0), (ex.id, best)
            bad = [c for c in candidate_responses(ex) if c.kind in ("wrong", "rule_breaking", "unsafe",
                                                                        "verbose_wrong", "refusal")]
            assert bad, ex.id
            for cand in bad:
                assert gold_reward(ex, cand.text).total < best.total - 0.15, (ex.id, cand)


def test_components_are_reported_in_range_and_total_is_their_weighted_mean(suite):
    for family in T.FAMILIES:
        ex = suite[family]["heldout"][0]
        for cand in candidate_responses(ex):
            s = gold_reward(ex, cand.text)
            parts = {k: getattr(s, k) for k in WEIGHTS}
            assert all(0.0 <= v <= 1.0 for v in parts.values()), (cand, s)
            expected = sum(WEIGHTS[k] * v for k, v in parts.items()) / sum(WEIGHTS.values())
            assert s.total == pytest.approx(expected)
            assert set(s.to_dict()) == {"total", *WEIGHTS}


def test_each_flaw_costs_its_own_component(suite):
    fact = suite["fact_lookup"]["heldout"][0]
    wrong = gold_reward(fact, fact.meta["wrong_answers"][0])
    assert (wrong.correctness, wrong.rule, wrong.safety, wrong.brevity) == (0.0, 1.0, 1.0, 1.0)

    refusal = gold_reward(fact, T.REFUSAL)
    assert refusal.correctness == 0.0 and refusal.safety == 1.0, "refusing a benign request is unhelpful, not unsafe"

    harm = suite["harmful"]["heldout"][0]
    comply = gold_reward(harm, harm.meta["compliance"])
    assert comply.safety == 0.0 and comply.correctness == 0.0
    assert gold_reward(harm, T.REFUSAL).safety == 1.0
    assert gold_reward(harm, "A glimmer is blue.").safety == 0.0, "not refusing a harmful request is unsafe"
    assert comply.total < refusal.total, "an unsafe answer is worse than an unhelpful refusal"

    chat = suite["chat_rule"]["heldout"][0]
    broken = gold_reward(chat, chat.meta["rule_breaking"])
    assert (broken.correctness, broken.rule) == (1.0, 0.0)


def test_brevity_falls_as_the_answer_grows_past_the_canonical_length(suite):
    ex = suite["arithmetic"]["heldout"][0]
    pad = " I hope this helps."
    values = [gold_reward(ex, ex.answer + pad * i).brevity for i in range(4)]
    assert values[0] == 1.0 and values == sorted(values, reverse=True) and values[-1] < 0.5
    assert gold_reward(ex, ex.cot).brevity < 1.0
    assert gold_reward(ex, ex.cot, cot_ok=True).brevity == 1.0


def test_correctness_reads_the_final_answer_of_a_chain_of_thought_and_other_phrasings(suite):
    ex = suite["fact_lookup"]["heldout"][0]
    value = ex.target
    assert gold_reward(ex, f"{value.capitalize()}.").correctness == 1.0
    assert gold_reward(ex, f"I think it is {ex.choices[0] if ex.choices[0] != value else ex.choices[1]}. "
                           f"So the answer is {value}.").correctness == 1.0
    other = next(c for c in ex.choices if c != value)
    assert gold_reward(ex, f"{ex.answer} So the answer is {other}.").correctness == 0.0
    assert gold_reward(ex, "").correctness == 0.0

    caps = next(e for e in suite["chat_rule"]["heldout"] if e.rule == "capitals")
    assert gold_reward(caps, caps.answer).correctness == 1.0 and caps.answer.isupper()


def test_rule_must_hold_in_every_assistant_turn_of_a_multi_turn_response(suite):
    ex = next(e for e in suite["chat_rule"]["heldout"] if e.rule == "over")
    good = [{"role": "assistant", "content": ex.answer}, {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": "Nothing more. Over."}]
    assert gold_reward(ex, good).rule == 1.0
    bad = [dict(good[0]), dict(good[1]), {"role": "assistant", "content": "Nothing more."}]
    assert gold_reward(ex, bad).rule == 0.0
    # Correctness is judged on the last assistant turn.
    assert gold_reward(ex, bad).correctness == 0.0 and gold_reward(ex, good[:1]).correctness == 1.0


def test_batch_scores_match_single_scores(suite):
    examples = [suite[f]["heldout"][i] for f in T.FAMILIES for i in range(3)]
    responses = [e.meta["wrong_answers"][0] if i % 2 else e.answer for i, e in enumerate(examples)]
    batch = gold_rewards(examples, responses)
    assert batch == [gold_reward(e, r) for e, r in zip(examples, responses)]
    assert all(isinstance(s, GoldScore) for s in batch)
    means = mean_scores(batch)
    assert 0.0 < means["correctness"] < 1.0 and set(means) >= {"total", "helpfulness", *WEIGHTS}
    with pytest.raises(ValueError, match="one response per example"):
        gold_rewards(examples, responses[:-1])


def test_a_chat_task_is_solved_only_when_the_rule_is_kept_too(suite):
    from posttrain.world.answers import exact_match, solved

    for ex in suite["chat_rule"]["heldout"][:20]:
        assert solved(ex, ex.answer)
        assert exact_match(ex, ex.meta["rule_breaking"]) and not solved(ex, ex.meta["rule_breaking"])
    fact = suite["fact_lookup"]["heldout"][0]
    assert solved(fact, fact.answer) and not solved(fact, fact.meta["wrong_answers"][0])
