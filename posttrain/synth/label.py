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
from posttrain.synth.prompts import JUDGE, render_conversation, verdict
from posttrain.synth.report import SynthReport
from posttrain.synth.teachers import ResponseCache, Teaching, make_teacher, teacher_license

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


def judge_prompt(template: str, pair: Preference, swap: bool) -> list[dict[str, str]]:
    a, b = text_of(pair.chosen), text_of(pair.rejected)
    if swap:
        a, b = b, a
    text = template.format(conversation=render_conversation(pair.to_dict()["prompt"]), a=a, b=b)
    return [{"role": "user", "content": text}]


def agreement(hits: list[bool]) -> dict[str, float]:
    return {"agreement": sum(hits) / len(hits) if hits else float("nan"), "pairs": len(hits)}


def label(cfg) -> Path:
    """Label ``cfg.inputs`` with ``cfg.judge``; write the preference file and its report; return the file."""
    from rich.console import Console

    from posttrain.data.readers import read_many
    from posttrain.data.writers import write_jsonl

    if cfg.votes < 1:
        raise UserError(f"votes={cfg.votes}: ask the judge at least once per order")
    template = check_template(cfg.template or JUDGE)
    pairs = input_pairs(read_many(cfg.inputs, world=cfg.world, world_split=cfg.split).records)
    if not pairs:
        raise UserError(f"inputs {cfg.inputs}: no pairs to label")
    teaching = Teaching(make_teacher(cfg.judge, cfg.world.seed), ResponseCache(cfg.cache_dir), cfg.judge, cfg.progress)
    report = SynthReport("label", teaching.identity)
    # for_first[i]: verdicts for the input's chosen response (the one shown first in the first order)
    for_first, counted = [0] * len(pairs), [0] * len(pairs)
    unreadable = report.stage("verdicts")
    consistent = [True] * len(pairs)
    for vote in range(cfg.votes):
        orders = []
        for swap in (False, True):
            replies = teaching.ask([judge_prompt(template, p, swap) for p in pairs],
                                   f"judging ({'B/A' if swap else 'A/B'}, vote {vote + 1})", samples=vote)
            picks = []
            for i, reply in enumerate(replies):
                pick = verdict(reply.text)
                if pick is None:
                    unreadable.drop("names neither A nor B", reply.text)
                    picks.append(None)
                    continue
                unreadable.keep()
                first = pick == (1 if swap else 0)
                for_first[i] += first
                counted[i] += 1
                picks.append(first)
            orders.append(picks)
        for i, (x, y) in enumerate(zip(*orders)):
            consistent[i] = consistent[i] and x is not None and x == y
    label_time = cfg.date or datetime.date.today().isoformat()
    license = cfg.license or teacher_license(cfg.judge)
    stage = report.stage("pairs")
    out: list[Preference] = []
    judge_gold, input_gold, input_agrees = [], [], []
    for i, pair in enumerate(pairs):
        if counted[i] == 0:
            stage.drop("no readable verdict", i)
            continue
        p_first = for_first[i] / counted[i]
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
        meta.update(p_chosen=max(p_first, 1 - p_first), judge=teaching.identity, template="label/pairwise-both-orders",
                    date=label_time, license=license, input_agrees=keep_order, orders_agree=consistent[i])
        out.append(Preference(pair.prompt, chosen, rejected, None, meta))
    path = Path(cfg.output)
    write_jsonl(out, path)
    report.records, report.cache_hits, report.requests_sent = len(out), teaching.hits, teaching.sent
    report.extra.update(
        output=str(path), license=license, date=label_time, votes=cfg.votes,
        orders_agree=sum(consistent) / len(pairs), agreement_with_input_labels=agreement(input_agrees),
        **({"agreement_with_gold": {"judge": agreement(judge_gold), "input_labels": agreement(input_gold)}}
           if judge_gold else {}))
    report_path = path.with_name(path.name.removesuffix(".jsonl") + ".report.json")
    write_json_atomic(report_path, report.to_dict())
    console = Console(stderr=True)
    console.print(report.table())
    line = f"the judge agrees with itself across orders on {100 * report.extra['orders_agree']:.1f}% of the pairs"
    if judge_gold:
        line += (f"; with gold on {100 * sum(judge_gold) / len(judge_gold):.1f}% (the input labels: "
                 f"{100 * sum(input_gold) / len(input_gold):.1f}%)")
    console.print(line)
    console.print(f"{len(out)} labelled pairs written to {path}; report in {report_path}")
    return path
