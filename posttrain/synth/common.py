"""What every method shares: its inputs as prompts, the checks on a teacher's answer, and provenance."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from posttrain.data.records import Conversation, Message
from posttrain.errors import UserError
from posttrain.synth.config import SynthConfig
from posttrain.synth.report import Stage
from posttrain.synth.teachers import Completion


@dataclass(frozen=True)
class Seed:
    """One input: a prompt (messages ending with a user turn) and, where the input has one, its answer."""

    id: str
    messages: list[dict[str, str]]
    answer: str | None = None

    @property
    def instruction(self) -> str | None:
        """The prompt as one instruction, when it is a single user turn (else None)."""
        users = [m for m in self.messages if m["role"] == "user"]
        return users[0]["content"] if len(users) == 1 and len(self.messages) == 1 else None


def read_seeds(cfg: SynthConfig) -> list[Seed]:
    """cfg.inputs as prompts: world:sft (or world:prompts) gives the world's task examples, any other source
    is read as posttrain reads data (conversations: the turns before the last answer are the prompt)."""
    from posttrain.data.readers import read_many
    from posttrain.world.tasks import task_examples

    seeds: list[Seed] = []
    for source in cfg.inputs:
        if source in ("world:sft", "world:prompts"):
            w = cfg.world
            seeds += [Seed(e.id, e.as_dicts(), e.answer)
                      for e in task_examples(w.seed, w.families, "train", w.examples, first=w.first,
                                             setting="world.families", error=UserError)]
            continue
        result = read_many([source])
        for i, (record, where) in enumerate(zip(result.records, result.locations)):
            seed_id = str(record.meta.get("id", f"{source}:{i}"))
            if record.kind == "conversation":
                messages = record.as_dicts()
                last = max(j for j, m in enumerate(messages) if m["role"] == "user")
                answer = messages[last + 1]["content"] if last + 1 < len(messages) else None
                seeds.append(Seed(seed_id, messages[:last + 1], answer))
            elif record.kind in ("prompt", "preference", "ranking", "unpaired"):
                seeds.append(Seed(seed_id, [m.to_dict() for m in record.prompt]))
            else:
                raise UserError(f"{where}: a {record.kind} record is no prompt; synth inputs are conversations or "
                                f"prompts (messages ending with a user turn)")
    if not seeds:
        raise UserError(f"inputs {cfg.inputs}: no prompts to start from")
    return seeds


def usable_answer(completion: Completion, stage: Stage, item: Any = "") -> str | None:
    """The answer's text, or None after counting why it cannot be used (empty, or cut off at max_tokens)."""
    text = completion.text.strip()
    if not text:
        stage.drop("empty answer", item)
        return None
    if completion.finish_reason == "length":
        stage.drop("cut off at teacher.max_tokens", text)
        return None
    return text


class Provenance:
    """The ``meta`` of every record a run writes: where it came from, how, when, and under which license."""

    def __init__(self, cfg: SynthConfig, teacher: str, license: str):
        self.method, self.teacher, self.license = cfg.method, teacher, license
        self.date = cfg.date or datetime.date.today().isoformat()
        self.count = 0

    def record(self, messages: list[dict[str, str]], template: str, source: str, **extra: Any) -> Conversation:
        """A conversation record stamped with its provenance and a running id."""
        meta = {"id": f"{self.method}-{self.count:05d}", "method": self.method, "teacher": self.teacher,
                "template": template, "date": self.date, "license": self.license, "source": source, **extra}
        self.count += 1
        return Conversation([Message(m["role"], m["content"]) for m in messages], meta)
