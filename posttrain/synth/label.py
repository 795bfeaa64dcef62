"""AI feedback (RLAIF; Bai et al. 2022, Lee et al. 2023): a judge model labels preference pairs.

    posttrain label inputs=[pairs.jsonl] judge.kind=openai judge.base_url=... judge.model=...
    posttrain label --config configs/label/world.yaml

Each pair is shown to the judge twice, the two responses swapped (:data:`~posttrain.synth.prompts.JUDGE`),
``votes`` times per order; the response picked by more of the verdicts is ``chosen`` and the share
of verdicts that picked it is the soft label ``meta.p_chosen``. A judge that favours a position
contradicts itself across the two orders: those ties are dropped (or kept at 0.5), and replies that
name neither response are counted, never silently read. The records are the preference layout
every recipe reads (reward, dpo), with the judge's provenance. The report gives how often the
judge agreed with itself across orders, with the pairs' own labels, and with gold in the world.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from posttrain.data.records import Message, Preference
from posttrain.errors import UserError
from posttrain.files import write_json_atomic
from posttrain.synth.prompts import DEFAULT_RUBRIC, JUDGE, RUBRIC, rating, render_conversation, verdict
from posttrain.synth.report import Stage, SynthReport
from posttrain.synth.teachers import Teaching, cached_teacher, teacher_license

KEPT_META = ("id", "task_id", "family")
"""Fields of an input record's meta that stay true whatever the judge says (the rest describe its old label)."""


def text_of(messages: list[Message]) -> str:
    return "\n".join(m.content for m in messages)


def input_pairs(records: list) -> list[Preference]:
    """Every pair the records hold: preferences as they are, rankings as all the pairs they imply."""
    pairs = []
    for record in records:
        if record.kind == "preference":
            pairs.append(record)
        elif record.kind == "ranking":
            pairs += record.to_pairs()
        else:
            raise UserError(f"label: a {record.kind} record holds no pair to judge; give preference or ranking records")
    return pairs


def check_template(template: str) -> str:
    missing = [k for k in ("{conversation}", "{a}", "{b}") if k not in template]
    if missing:
        raise UserError(f"template: the judge prompt must show {', '.join(missing)} (it has {template[:80]!r}...)")
    return template


def judge_messages(template: str, conversation: list[dict[str, str]], a: str, b: str) -> list[dict[str, str]]:
    """The chat request asking a judge whether answer ``a`` or ``b`` to ``conversation`` is better."""
    return [{"role": "user", "content": template.format(conversation=render_conversation(conversation), a=a, b=b)}]


def judge_prompt(template: str, pair: Preference, swap: bool) -> list[dict[str, str]]:
    a, b = text_of(pair.chosen), text_of(pair.rejected)
    return judge_messages(template, pair.to_dict()["prompt"], *((b, a) if swap else (a, b)))


def judge_ranker(teaching: Teaching, template: str, prompts: list[list[dict[str, str]]], pools: list[list[str]]):
    """A ranker (``posttrain.data.labelling.Ranker``) by a judge: every two distinct responses of a pool
    compared in both orders, all pools' comparisons asked at once; a response ranks by its share of
    readable verdicts won. None where every response won as often (the judge sees no difference)."""
    cells = [(i, a, b) for i, pool in enumerate(pools) for x, a in enumerate(dict.fromkeys(pool))
             for b in list(dict.fromkeys(pool))[x + 1:]]
    asked = [judge_messages(template, prompts[i], x, y) for i, a, b in cells for x, y in ((a, b), (b, a))]
    replies = teaching.ask(asked, "judging pools")
    wins: dict[tuple[int, str], list[int]] = {}
    for k, (i, a, b) in enumerate(cells):
        for reply, (x, y) in zip(replies[2 * k: 2 * k + 2], ((a, b), (b, a))):
            pick = verdict(reply.text)
            if pick is not None:
                winner, loser = (x, y) if pick == 0 else (y, x)
                wins.setdefault((i, winner), [0, 0])[0] += 1
                wins.setdefault((i, loser), [0, 0])
                for t in (winner, loser):
                    wins[i, t][1] += 1

    def share(i: int, text: str) -> float:
        won, seen = wins.get((i, text), (0, 0))
        return won / seen if seen else 0.5

    def rank(i: int, responses: list[str]) -> list[str] | None:
        order = sorted(responses, key=lambda t: -share(i, t))  # stable: ties keep pool order
        return None if share(i, order[0]) == share(i, order[-1]) else order

    return rank


def pairwise_votes(teaching: Teaching, template: str, pairs: list[Preference], votes: int,
                   stage: Stage) -> tuple[list[float | None], list[bool]]:
    """Per pair, the share of readable verdicts (both orders, ``votes`` each) that pick its first
    response (None without any), and whether each order's verdicts agreed with the other's."""
    for_first, counted, consistent = [0] * len(pairs), [0] * len(pairs), [True] * len(pairs)
    for vote in range(votes):
        orders = []
        for swap in (False, True):
            replies = teaching.ask([judge_prompt(template, p, swap) for p in pairs],
                                   f"judging ({'B/A' if swap else 'A/B'}, vote {vote + 1})", samples=vote)
            picks = []
            for i, reply in enumerate(replies):
                pick = verdict(reply.text)
                if pick is None:
                    stage.drop("names neither A nor B", reply.text)
                    picks.append(None)
                    continue
                stage.keep()
                first = pick == (1 if swap else 0)
                for_first[i] += first
                counted[i] += 1
                picks.append(first)
            orders.append(picks)
        for i, (x, y) in enumerate(zip(*orders)):
            consistent[i] = consistent[i] and x is not None and x == y
    return [f / c if c else None for f, c in zip(for_first, counted)], consistent


def rubric_votes(teaching: Teaching, rubric: str, pairs: list[Preference], votes: int,
                 stage: Stage) -> tuple[list[float | None], list[bool]]:
    """Per pair, from 1-10 ratings of each response alone (``votes`` each): the share of (rating,
    rating) comparisons its first response wins, ties counting half (None without ratings of both),
    and whether every comparison went one way."""
    texts = list(dict.fromkeys((i, text_of(r)) for i, p in enumerate(pairs) for r in (p.chosen, p.rejected)))
    ratings: dict[tuple[int, str], list[int]] = {key: [] for key in texts}
    for vote in range(votes):
        asked = [[{"role": "user", "content": RUBRIC.format(rubric=rubric, response=text,
                                                              conversation=render_conversation(pairs[i].to_dict()["prompt"]))}]
                 for i, text in texts]
        for key, reply in zip(texts, teaching.ask(asked, f"rating (vote {vote + 1})", samples=vote)):
            value = rating(reply.text)
            if value is None:
                stage.drop("gives no rating from 1 to 10", reply.text)
            else:
                stage.keep()
                ratings[key].append(value)
    shares, consistent = [], []
    for i, pair in enumerate(pairs):
        first, second = ratings[i, text_of(pair.chosen)], ratings[i, text_of(pair.rejected)]
        outcomes = [(x > y) + 0.5 * (x == y) for x in first for y in second]
        shares.append(sum(outcomes) / len(outcomes) if outcomes else None)
        consistent.append(bool(outcomes) and len(set(outcomes)) == 1 and outcomes[0] != 0.5)
    return shares, consistent


class TeacherJudge:
    """A judge (``posttrain.evaluation.winrate.Judge``) behind the teacher interface: any chat model, an API
    included, asked :data:`~posttrain.synth.prompts.JUDGE` in both orders; a verdict is the share of readable
    replies that pick answer A (0.5 when neither order could be read), so a position bias cancels out."""

    def __init__(self, teaching: Teaching, template: str = JUDGE):
        self.teaching, self.template = teaching, check_template(template)
        self.name = f"judge:{teaching.identity}"
        self.unreadable = 0

    def compare(self, prompts, answers_a, answers_b) -> list[float]:
        conversations = [[m if isinstance(m, dict) else m.to_dict() for m in p] for p in prompts]
        asked = [judge_messages(self.template, c, x, y)
                 for c, a, b in zip(conversations, answers_a, answers_b) for x, y in ((a, b), (b, a))]
        replies = self.teaching.ask(asked, "judging")
        out = []
        for k in range(len(conversations)):
            picks = [verdict(replies[2 * k].text), verdict(replies[2 * k + 1].text)]
            for_a = [p == 0 for p in picks[:1] if p is not None] + [p == 1 for p in picks[1:] if p is not None]
            self.unreadable += 2 - len(for_a)
            out.append(sum(for_a) / len(for_a) if for_a else 0.5)
        return out


def agreement(hits: list[bool]) -> dict[str, float]:
    return {"agreement": sum(hits) / len(hits) if hits else float("nan"), "pairs": len(hits)}


def label(cfg) -> Path:
    """Label ``cfg.inputs`` with ``cfg.judge``; write the preference file and its report; return the file."""
    from rich.console import Console

    from posttrain.data.readers import read_many
    from posttrain.data.writers import write_jsonl

    if cfg.votes < 1:
        raise UserError(f"votes={cfg.votes}: ask the judge at least once per order (or per response)")
    template = check_template(cfg.template or JUDGE)
    pairs = input_pairs(read_many(cfg.inputs, world=cfg.world, world_split=cfg.split).records)
    if not pairs:
        raise UserError(f"inputs {cfg.inputs}: no pairs to label")
    teaching = cached_teacher(cfg.judge, cfg.cache_dir, cfg.world.seed, cfg.progress)
    report = SynthReport("label", teaching.identity)
    if cfg.mode == "pairwise":
        p_firsts, consistent = pairwise_votes(teaching, template, pairs, cfg.votes, report.stage("verdicts"))
    elif cfg.mode == "rubric":
        p_firsts, consistent = rubric_votes(teaching, cfg.rubric or DEFAULT_RUBRIC, pairs, cfg.votes,
                                            report.stage("ratings"))
    else:
        raise UserError(f"mode={cfg.mode!r}: choose pairwise or rubric")
    label_time = cfg.date or datetime.date.today().isoformat()
    license = cfg.license or teacher_license(cfg.judge)
    stage = report.stage("pairs")
    out: list[Preference] = []
    judge_gold, input_gold, input_agrees = [], [], []
    for i, (pair, p_first) in enumerate(zip(pairs, p_firsts)):
        if p_first is None:
            stage.drop("no readable verdict", i)
            continue
        if p_first == 0.5 and cfg.ties == "drop":
            stage.drop("verdicts split evenly (the orders disagree)", i)
            continue
        stage.keep()
        keep_order = p_first >= 0.5
        chosen, rejected = (pair.chosen, pair.rejected) if keep_order else (pair.rejected, pair.chosen)
        meta: dict[str, Any] = {k: pair.meta[k] for k in KEPT_META if k in pair.meta}
        if "gold_chosen" in pair.meta and "gold_rejected" in pair.meta:
            gold = (pair.meta["gold_chosen"], pair.meta["gold_rejected"])
            meta["gold_chosen"], meta["gold_rejected"] = gold if keep_order else gold[::-1]
            if gold[0] != gold[1]:
                judge_gold.append(meta["gold_chosen"] > meta["gold_rejected"])
                input_gold.append(gold[0] > gold[1])
        input_agrees.append(keep_order)
        meta.update(p_chosen=max(p_first, 1 - p_first), judge=teaching.identity,
                    template="label/pairwise-both-orders" if cfg.mode == "pairwise" else "label/rubric",
                    date=label_time, license=license, input_agrees=keep_order, orders_agree=consistent[i])
        out.append(Preference(pair.prompt, chosen, rejected, None, meta))
    path = Path(cfg.output)
    write_jsonl(out, path)
    report.records, report.cache_hits, report.requests_sent = len(out), teaching.hits, teaching.sent
    report.extra.update(
        output=str(path), license=license, date=label_time, votes=cfg.votes,
        **{"orders_agree" if cfg.mode == "pairwise" else "ratings_agree": sum(consistent) / len(pairs)},
        mode=cfg.mode, agreement_with_input_labels=agreement(input_agrees),
        **({"agreement_with_gold": {"judge": agreement(judge_gold), "input_labels": agreement(input_gold)}}
           if judge_gold else {}))
    report_path = path.with_name(path.name.removesuffix(".jsonl") + ".report.json")
    write_json_atomic(report_path, report.to_dict())
    console = Console(stderr=True)
    console.print(report.table())
    line = (f"the judge agrees with itself across orders on {100 * sum(consistent) / len(pairs):.1f}% of the pairs"
            if cfg.mode == "pairwise" else
            f"every rating orders the pair the same way on {100 * sum(consistent) / len(pairs):.1f}% of the pairs")
    if judge_gold:
        line += (f"; with gold on {100 * sum(judge_gold) / len(judge_gold):.1f}% (the input labels: "
                 f"{100 * sum(input_gold) / len(input_gold):.1f}%)")
    console.print(line)
    console.print(f"{len(out)} labelled pairs written to {path}; report in {report_path}")
    return path
