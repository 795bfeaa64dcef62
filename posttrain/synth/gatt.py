"""Ghost attention data (Llama 2, Touvron et al. 2023, §3.3): multi-turn dialogues that keep a
system instruction in every turn.

A model told "answer in capitals" at the start of a chat forgets it a few turns later, and so does
a teacher sampling the later turns. GAtt attaches the instruction to every user turn while the
teacher samples the dialogue, so every sampled answer follows it; the training record then keeps
the instruction only at the start (``instruction_in``: a system message, or the first user turn)
and, as Llama 2 zeroes the loss of earlier turns, trains only the last answer
(``meta.loss_on = "last_assistant"``, which ``posttrain sft`` honours per record).

``attach: false`` samples with the instruction in the system prompt only: the plain multi-turn data
GAtt is measured against.
"""

from __future__ import annotations

import random

from posttrain.errors import UserError
from posttrain.synth.common import Provenance, Seed, usable_answer
from posttrain.synth.config import SynthConfig
from posttrain.synth.report import SynthReport
from posttrain.synth.teachers import Teaching
from posttrain.world.tasks import RULES


def dialogue(seed: Seed, instructions: list[str], rng: random.Random) -> tuple[str, list[str]]:
    """(instruction, user turns) of an input: its own system message, else one drawn from ``instructions``."""
    own = [m["content"] for m in seed.messages if m["role"] == "system"]
    users = [m["content"] for m in seed.messages if m["role"] == "user"]
    return (own[0] if own else rng.choice(instructions)), users


def sampling_turns(instruction: str, users: list[str], answers: list[str], attach: bool) -> list[dict[str, str]]:
    """What the teacher sees for the next turn: the instruction on every user turn (GAtt), or in the system prompt."""
    turns = [] if attach else [{"role": "system", "content": instruction}]
    for k, user in enumerate(users):
        turns.append({"role": "user", "content": f"{instruction}\n\n{user}" if attach else user})
        if k < len(answers):
            turns.append({"role": "assistant", "content": answers[k]})
    return turns


def training_turns(instruction: str, users: list[str], answers: list[str], where: str) -> list[dict[str, str]]:
    """The record: the instruction once, at the start, then the plain dialogue."""
    turns = [{"role": "system", "content": instruction}] if where == "system" else []
    for k, (user, answer) in enumerate(zip(users, answers)):
        if k == 0 and where == "first_user":
            user = f"{instruction}\n\n{user}"
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return turns


def gatt(cfg: SynthConfig, teacher: Teaching, seeds: list[Seed], report: SynthReport, stamp: Provenance) -> list:
    g = cfg.gatt
    if g.instruction_in not in ("system", "first_user"):
        raise UserError(f"gatt.instruction_in={g.instruction_in!r}: choose system or first_user")
    instructions = g.instructions or [p for rule in RULES.values() for p in rule.phrasings]
    rng = random.Random(f"gatt:{cfg.seed}")
    dialogues = [dialogue(s, instructions, rng) for s in seeds]
    answers: list[list[str] | None] = [[] for _ in seeds]
    stage = report.stage("turns")
    for turn in range(max(len(users) for _, users in dialogues)):
        live = [i for i, (_, users) in enumerate(dialogues) if answers[i] is not None and turn < len(users)]
        asked = [sampling_turns(dialogues[i][0], dialogues[i][1][:turn + 1], answers[i], g.attach) for i in live]
        for i, completion in zip(live, teacher.ask(asked, f"turn {turn + 1}")):
            text = usable_answer(completion, stage, seeds[i].id)
            if text is None:
                answers[i] = None  # a dialogue with a missing turn is dropped whole
            else:
                stage.keep()
                answers[i].append(text)
    template = "gatt/attached" if g.attach else "gatt/plain"
    extra = {"loss_on": "last_assistant"} if g.train_last_turn else {}
    records = []
    dropped = report.stage("dialogues")
    for seed, (instruction, users), said in zip(seeds, dialogues, answers):
        if said is None:
            dropped.drop("a turn had no usable answer", seed.id)
            continue
        dropped.keep()
        records.append(stamp.record(training_turns(instruction, users, said, g.instruction_in), template, seed.id,
                                    instruction=instruction, **extra))
    return records
