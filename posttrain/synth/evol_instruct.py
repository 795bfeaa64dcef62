"""Evol-Instruct (Xu et al. 2023, WizardLM): the teacher rewrites prompts into harder ones (in depth:
add a constraint, deepen, concretize, ask for more reasoning steps) or into new ones of the same
domain (in breadth), round after round, and answers them.

An evolution is eliminated by the paper's four rules, each counted: (1) it brings no information
gain (the teacher, asked the paper's equality question, judges it equal to its parent); (2) the
teacher cannot answer it (the answer holds "sorry" and is shorter than ``min_words``); (3) the
answer is only punctuation and stop words; (4) it copies the rewriting prompt's own words ("given
prompt", "#Rewritten Prompt#"...). Empty or cut-off rewrites and answers are dropped too.
"""

from __future__ import annotations

import random
import re

from posttrain.errors import UserError
from posttrain.synth.common import Provenance, Seed, usable_answer
from posttrain.synth.config import SynthConfig
from posttrain.synth.prompts import EQUALITY, EVOL_BREADTH, EVOL_DEPTH, EVOL_LEAKS, EVOL_METHODS
from posttrain.synth.report import SynthReport
from posttrain.synth.teachers import Teaching

STOP_WORDS = frozenset(
    "a an the and or but if of at by for with about to from in on is are was were be been it its this that these "
    "those i you he she we they me my your our their as so not no yes do does did can will just".split())


def only_stop_words(text: str) -> bool:
    """Elimination rule 3: nothing but punctuation and stop words."""
    return all(w in STOP_WORDS for w in re.findall(r"[a-z0-9']+", text.lower()))


def rewrite_request(prompt: str, operation: str) -> list[dict[str, str]]:
    text = EVOL_BREADTH.format(prompt=prompt) if operation == "breadth" else \
        EVOL_DEPTH.format(method=EVOL_METHODS[operation], prompt=prompt)
    return [{"role": "user", "content": text}]


def evol_instruct(cfg: SynthConfig, teacher: Teaching, seeds: list[Seed], report: SynthReport,
                  stamp: Provenance) -> list:
    ev = cfg.evol_instruct
    unknown = [m for m in ev.in_depth if m not in EVOL_METHODS]
    if unknown or not ev.in_depth:
        raise UserError(f"evol_instruct.in_depth={ev.in_depth}: choose among {', '.join(EVOL_METHODS)}")
    rng = random.Random(f"evol:{cfg.seed}")
    current = [(s.id, s.instruction) for s in seeds if s.instruction]
    if not current:
        raise UserError("evol-instruct: the inputs hold no single-turn prompt to evolve")
    records = []
    if ev.keep_original:
        answers = report.stage("original answers")
        for (seed_id, text), completion in zip(current, teacher.ask([[{"role": "user", "content": t}] for _, t in current],
                                                                     "original answers")):
            answer = usable_answer(completion, answers, text)
            if answer is not None:
                answers.keep()
                records.append(stamp.record([{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
                                            "evol-instruct/original", seed_id, evolution=0))
    for round_ in range(1, ev.rounds + 1):
        ops = ["breadth" if rng.random() < ev.in_breadth else rng.choice(ev.in_depth) for _ in current]
        rewrites = teacher.ask([rewrite_request(t, op) for (_, t), op in zip(current, ops)], f"round {round_}: rewrites")
        evolved = report.stage(f"round {round_} rewrites")
        candidates = []
        for (seed_id, parent), op, completion in zip(current, ops, rewrites):
            text = completion.text.strip()
            if not text or completion.finish_reason == "length":
                evolved.drop("empty or cut off", text)
            elif any(leak in text.lower() for leak in EVOL_LEAKS):
                evolved.drop("copies the rewriting prompt (rule 4)", text)
            else:
                candidates.append((seed_id, parent, op, text))
        judged = teacher.ask([[{"role": "user", "content": EQUALITY.format(first=p, second=t)}]
                              for _, p, _, t in candidates], f"round {round_}: equality", temperature=0.0)
        survivors = []
        for (seed_id, parent, op, text), verdict in zip(candidates, judged):
            if verdict.text.strip().lower().startswith("equal"):
                evolved.drop("no information gain (rule 1)", text)
            else:
                survivors.append((seed_id, op, text))
        answered = teacher.ask([[{"role": "user", "content": t}] for _, _, t in survivors], f"round {round_}: answers")
        current = []
        for (seed_id, op, text), completion in zip(survivors, answered):
            answer = usable_answer(completion, evolved, text)
            if answer is None:
                continue
            if "sorry" in answer.lower() and len(answer.split()) < ev.min_words:
                evolved.drop("the teacher could not answer it (rule 2)", text)
            elif only_stop_words(answer):
                evolved.drop("answer is only punctuation and stop words (rule 3)", answer)
            else:
                evolved.keep()
                current.append((seed_id, text))
                records.append(stamp.record([{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
                                            f"evol-instruct/{op}", seed_id, evolution=round_, operation=op))
    return records
