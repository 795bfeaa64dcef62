"""posttrain label (RLAIF): a judge labels preference pairs in both orders; what a reward model learns from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from background import DATE  # tests/background.py

from posttrain.config import load_config
from posttrain.errors import UserError
from posttrain.recipes.config import LabelConfig


def run_label(tmp: Path, *overrides: str) -> tuple[list[dict], dict]:
    from posttrain.synth.label import label

    cfg = load_config(LabelConfig, None, [f"output={tmp / 'labels.jsonl'}", f"cache_dir={tmp / 'cache'}",
                                          "progress=false", f"date={DATE}", *overrides])
    path = label(cfg)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return rows, json.loads((tmp / "labels.report.json").read_text())


def test_verdicts_are_read_only_when_they_name_one_response():
    from posttrain.synth.prompts import JUDGE, judged_parts, parse_conversation, render_conversation, verdict

    assert [verdict(t) for t in ("A", " B.", "Response A", "A is better than B", "Neither", "")] == \
        [0, 1, 0, None, None, None]
    conversation = [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "Hi?\nYes"},
                    {"role": "assistant", "content": "HELLO."}, {"role": "user", "content": "Why?"}]
    assert parse_conversation(render_conversation(conversation)) == conversation
    prompt = JUDGE.format(conversation=render_conversation(conversation), a="one\ntwo", b="three")
    assert judged_parts(prompt) == (conversation, "one\ntwo", "three")


def test_both_orders_cancel_the_judges_position_bias(tmp_path):
    """A judge that always prefers the first response it is shown contradicts itself on every pair."""
    rows, report = run_label(tmp_path, "world.examples=8", "world.families=[reverse]", "judge.world.position_bias=50")
    assert rows == [] and report["stages"]["pairs"]["dropped"] == {"verdicts split evenly (the orders disagree)": 16}
    assert report["orders_agree"] == 0.0
    rows, report = run_label(tmp_path, "world.examples=8", "world.families=[reverse]", "judge.world.position_bias=50",
                             "ties=keep")
    assert len(rows) == 16 and all(r["meta"]["p_chosen"] == 0.5 for r in rows)


def test_labels_carry_provenance_agree_with_gold_and_rerun_from_the_cache(tmp_path):
    from posttrain.data.readers import read_records

    args = ["world.examples=20", "world.families=[fact_lookup,harmful,chat_rule]", "judge.world.position_bias=0",
            "judge.world.judge_noise=0.02"]
    rows, report = run_label(tmp_path, *args)
    records = read_records(tmp_path / "labels.jsonl").records  # the preference layout every recipe reads
    assert len(records) == len(rows) == report["records"] > 100
    for r in records:
        assert r.kind == "preference" and r.meta["judge"].startswith("world-teacher") and r.meta["date"] == DATE
        assert r.meta["license"] == "Apache-2.0" and 0.5 < r.meta["p_chosen"] <= 1.0
    gold = report["agreement_with_gold"]
    assert gold["judge"]["agreement"] > 0.97 and gold["judge"]["agreement"] > gold["input_labels"]["agreement"]
    assert report["requests_sent"] == 2 * 120 - report["cache_hits"]
    data = (tmp_path / "labels.jsonl").read_bytes()
    _, again = run_label(tmp_path, *args)
    assert again["requests_sent"] == 0 and (tmp_path / "labels.jsonl").read_bytes() == data


def test_unreadable_verdicts_are_counted_and_a_bad_template_is_refused(tmp_path, monkeypatch):
    from posttrain.synth.world_teacher import WorldTeacher

    judge = WorldTeacher.judge
    monkeypatch.setattr(WorldTeacher, "judge", lambda self, c, a, b, rng: "Both are fine." if "p" in a else
                        judge(self, c, a, b, rng))
    rows, report = run_label(tmp_path, "world.examples=8", "world.families=[reverse]", "votes=2",
                             "judge.temperature=1.0")
    verdicts = report["stages"]["verdicts"]
    assert verdicts["generated"] == 2 * 2 * 16 and verdicts["dropped"]["names neither A nor B"] > 0
    assert report["stages"]["pairs"]["generated"] == 16
    with pytest.raises(UserError, match=r"must show \{b\}"):
        run_label(tmp_path, "template=Which is better, {a} or the other? {conversation}")


def test_a_reward_model_on_rlaif_labels_reaches_90_percent_of_one_on_human_labels(rlaif_world):
    """The same pairs (64 prompts per trained family, 2 pairs each): labelled by the simulated annotators,
    or by the world's judge in both orders (ties dropped); the same reward-model recipe from the world
    SFT model; agreement with the gold order on held-out pairs."""
    human, rlaif = (json.loads((rlaif_world / "runs" / name / "eval" / "reward.json").read_text())
                    for name in ("human", "rlaif"))
    labels = json.loads((rlaif_world / "rlaif.report.json").read_text())
    line = (f"gold agreement on {human['pairs']} held-out pairs: human labels {human['gold']['agreement']:.3f}, "
            f"RLAIF {rlaif['gold']['agreement']:.3f} ({labels['records']} of {labels['stages']['pairs']['generated']} "
            f"pairs kept; the judge agrees with gold on {labels['agreement_with_gold']['judge']['agreement']:.3f}, "
            f"the annotators on {labels['agreement_with_gold']['input_labels']['agreement']:.3f})")
    print("\n" + line)
    assert rlaif["gold"]["agreement"] >= 0.9 * human["gold"]["agreement"], line


def test_a_judge_ranks_each_prompts_responses_for_iterative_dpo(tmp_path):
    """DPO's labeler=judge: every two responses of a pool compared in both orders, best against worst."""
    from posttrain.data.labelling import label_pairs, response_pools
    from posttrain.synth.config import TeacherConfig, WorldTeacherStyle
    from posttrain.synth.label import judge_ranker
    from posttrain.synth.prompts import JUDGE
    from posttrain.synth.teachers import ResponseCache, Teaching, make_teacher
    from posttrain.world.gold import gold_reward
    from posttrain.world.tasks import task_examples

    examples = task_examples(0, ["fact_lookup", "sorting", "chat_rule", "harmful"], "train", 10)
    prompts = [e.as_dicts() for e in examples]
    pools = response_pools(examples, None, len(examples), skip_kinds=("cot",))
    cfg = TeacherConfig(temperature=0.0, world=WorldTeacherStyle(judge_noise=0.02))
    teaching = Teaching(make_teacher(cfg), ResponseCache(tmp_path), cfg)
    records, ties = label_pairs(prompts, pools, judge_ranker(teaching, JUDGE, prompts, pools), "best_worst", 1, 0,
                                [{"i": i} for i in range(len(examples))])
    assert len(records) + ties == 40 and teaching.sent == sum(len(set(p)) * (len(set(p)) - 1) for p in pools)
    right = [gold_reward(e, r.chosen[0].content).total > gold_reward(e, r.rejected[0].content).total
             for e, r in ((examples[r.meta["i"]], r) for r in records)]
    assert sum(right) >= 0.9 * len(records) >= 30


def test_rubric_ratings_label_pairs_one_response_at_a_time(tmp_path):
    rows, report = run_label(tmp_path, "mode=rubric", "world.examples=20", "world.families=[fact_lookup,harmful]",
                             "judge.world.judge_noise=0.02", "votes=2", "judge.temperature=1.0")
    ratings = report["stages"]["ratings"]
    distinct = ratings["generated"] // 2  # each distinct response of each pair, rated twice
    assert ratings["kept"] == ratings["generated"] and distinct <= 2 * 80
    assert report["records"] == len(rows) and report["records"] + sum(report["stages"]["pairs"]["dropped"].values()) == 80
    assert all(r["meta"]["template"] == "label/rubric" for r in rows)
    assert report["agreement_with_gold"]["judge"]["agreement"] > 0.95


def test_a_teacher_judge_gives_win_rate_verdicts_in_both_orders(tmp_path):
    """posttrain compare's judge=teacher: the verdict is the share of both orders that pick answer A."""
    from posttrain.synth.config import TeacherConfig, WorldTeacherStyle
    from posttrain.synth.label import TeacherJudge
    from posttrain.synth.teachers import ResponseCache, Teaching, make_teacher
    from posttrain.world.tasks import task_examples

    examples = task_examples(0, ["fact_lookup", "sorting", "harmful"], "heldout", 10)
    wrong = [e.meta["compliance"] if e.harmful else e.meta["wrong_answers"][0] for e in examples]
    exact = TeacherConfig(temperature=0.0, world=WorldTeacherStyle(judge_noise=0.001, position_bias=0.0))
    judge = TeacherJudge(Teaching(make_teacher(exact), ResponseCache(tmp_path / "a"), exact))
    prompts = [e.as_dicts() for e in examples]
    assert judge.compare(prompts, [e.answer for e in examples], wrong) == [1.0] * 30
    assert judge.compare(prompts, wrong, [e.answer for e in examples]) == [0.0] * 30
    biased = TeacherConfig(temperature=0.0, world=WorldTeacherStyle(judge_noise=0.001, position_bias=5.0))
    judge = TeacherJudge(Teaching(make_teacher(biased), ResponseCache(tmp_path / "b"), biased))
    assert judge.compare(prompts, [e.answer for e in examples], wrong) == [0.5] * 30  # the orders disagree
