"""Prompting strategies: zero-shot, few-shot, chain of thought and zero-shot chain of thought.

The four ways GPT-3-era papers prompt a model, built for any :class:`~posttrain.world.tasks.TaskExample`:

- ``zero_shot``: the question alone (Radford et al. 2019);
- ``few_shot``: ``k`` solved examples of the same family first (Brown et al. 2020), in the answer
  format the family is scored in: worked for :data:`~posttrain.world.tasks.WORKED_FAMILIES`;
- ``cot``: the same examples solved with their worked reasoning (Wei et al. 2022);
- ``zero_shot_cot``: the question, then the answer opened with "Let's think step by step."
  (Kojima et al. 2022).

Base models get plain text in the corpus' "Q: ...\\nA: ..." form (:func:`posttrain.world.tasks.render_plain`,
examples separated by a blank line, the prompt ending with "A:"); chat models get the same turns
through their chat template (solved examples become earlier user/assistant turns). Shots are drawn
from the family's train split, per example, with a seed: the same settings give the same prompts.
Answers are one line, so a completion is read up to its first newline (:func:`completion_answer`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from posttrain.world.formats import COT_TRIGGER
from posttrain.world.tasks import WORKED_FAMILIES, TaskExample, render_plain

Strategy = Literal["zero_shot", "few_shot", "cot", "zero_shot_cot"]
STRATEGIES: tuple[str, ...] = ("zero_shot", "few_shot", "cot", "zero_shot_cot")
"""Generation strategies, in report order."""
ZERO_SHOT_COT_TRIGGER = COT_TRIGGER
"""Kojima et al.'s trigger, written at the start of the answer."""


def uses_shots(strategy: str) -> bool:
    return strategy in ("few_shot", "cot")


def select_shots(example: TaskExample, pool: Sequence[TaskExample], k: int, seed: int) -> list[TaskExample]:
    """``k`` solved examples for ``example``: a seeded draw from ``pool`` (its family's train split).

    Under a system rule, shots follow the same rule, so one system prompt covers the whole
    conversation. The draw depends on the example's id, not on which other examples are evaluated.
    """
    if k <= 0:
        return []
    candidates = [s for s in pool if s.id != example.id and s.rule == example.rule and s.question != example.question]
    rng = random.Random(f"shots:{seed}:{example.id}")
    return rng.sample(candidates, min(k, len(candidates)))


def _solution(shot: TaskExample, strategy: str) -> str:
    worked = strategy == "cot" or (strategy == "few_shot" and shot.family in WORKED_FAMILIES)
    return shot.cot if worked and shot.cot else shot.answer


def plain_prompt(example: TaskExample, strategy: str, shots: Sequence[TaskExample] = ()) -> str:
    """Base-model text: solved Q/A examples, a blank line between each, then the question ending "A:"."""
    _check_strategy(strategy)
    blocks = [render_plain(s.messages, _solution(s, strategy)) for s in shots if uses_shots(strategy)]
    query = render_plain(example.messages)
    if strategy == "zero_shot_cot":
        query += f" {ZERO_SHOT_COT_TRIGGER}"
    return "\n\n".join(blocks + [query])


def chat_messages(example: TaskExample, strategy: str, shots: Sequence[TaskExample] = ()) -> list[dict[str, str]]:
    """Chat turns: the system rule, each solved example as a user/assistant exchange, then the question."""
    _check_strategy(strategy)
    system = [m for m in example.messages if m["role"] == "system"]
    turns = [dict(m) for m in system]
    if uses_shots(strategy):
        for s in shots:
            turns += [dict(m) for m in s.messages if m["role"] != "system"]
            turns.append({"role": "assistant", "content": _solution(s, strategy)})
    turns += [dict(m) for m in example.messages if m["role"] != "system"]
    return turns


def chat_prompt(tokenizer, example: TaskExample, strategy: str, shots: Sequence[TaskExample] = ()) -> str:
    """The chat template's rendering of :func:`chat_messages`, opened for the assistant (and the
    zero-shot CoT trigger written as the start of its reply)."""
    text = tokenizer.apply_chat_template(chat_messages(example, strategy, shots), tokenize=False,
                                         add_generation_prompt=True)
    return text + (ZERO_SHOT_COT_TRIGGER if strategy == "zero_shot_cot" else "")


def build_prompt(example: TaskExample, strategy: str, shots: Sequence[TaskExample] = (), chat: bool = False,
                 tokenizer=None) -> str:
    """The prompt text for one example (chat needs the tokenizer for its template)."""
    if chat:
        if tokenizer is None:
            raise ValueError("build_prompt(chat=True) needs the tokenizer, whose chat template renders the turns")
        return chat_prompt(tokenizer, example, strategy, shots)
    return plain_prompt(example, strategy, shots)


def completion_answer(text: str) -> str:
    """The answer in a completion: everything up to the first newline (answers are one line)."""
    return text.lstrip(" ").split("\n", 1)[0].strip()


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown prompting strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
