"""Instruction-data mixtures: task data rendered as instructions, several sources mixed by weight or
by epochs, and rehearsal of pretraining text.

**Renderings** (FLAN 2022, Longpre et al. 2023, https://arxiv.org/abs/2301.13688 §3.2): the same
task data taught in several forms makes a model that answers in each of them. A task item is
anything with ``messages`` (the prompt: optional system rule, user turns), ``answer`` and, for
chain of thought, ``cot``:

- ``zero_shot``: the prompt, then the answer;
- ``few_shot``: ``k`` solved items of the same task as earlier user/assistant turns, then the
  prompt and its answer (only the last answer should carry the loss: tokenize with
  ``loss_on="last_assistant"``);
- ``cot``: the prompt followed by a trigger ("Let's think step by step.", Kojima et al. 2022),
  then the reasoning closed by the answer (Wei et al. 2022);
- ``worked``: the prompt as it is, then the reasoning closed by the answer: the model learns to
  show its working unasked, which small models need for multi-digit arithmetic (the scratchpad
  of Nye et al. 2021; rationale answers as in Orca, Mukherjee et al. 2023);
- ``options``: the prompt with the item's ``choices`` offered ("... Is it red, blue or green?"),
  then the answer: FLAN's options templates, which teach picking among named options.

Datasets of plain fields become instructions through :class:`PromptTemplate` (a user and an
assistant pattern with ``{field}`` slots), several phrasings per task, as FLAN's templates do.

**Mixing.** A :class:`Source` is a list of tokenized examples with either ``epochs`` (passes over
it: 2.0 repeats it twice, 0.5 keeps a seeded half) or a ``weight`` (its share of the examples of
the weighted sources, whose combined size stays what it is; a source smaller than its share is
repeated, a larger one subsampled). Whole passes come first and the fraction is a seeded draw
without replacement, so an example is never seen k+1 times before every example of its source
has been seen k times. :class:`MixReport` says what every source gave.

**Rehearsal** (Code Llama, Rozière et al. 2023, §2.2; "replay" in continual learning): chunks of
pretraining text, trained on every token, are mixed in so that instruction tuning does not erase
what pretraining taught. Its weight is a ratio of *loss tokens*: 0.5 adds pretraining chunks
holding half as many loss tokens as the instruction data, so (the loss being a mean over the
step's loss tokens) it is the instruction loss plus half a language-modeling loss per token.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from posttrain.data.chat import Example

COT_TRIGGER = "Let's think step by step."
"""Opens a chain-of-thought answer (Kojima et al. 2022); the same words as zero-shot CoT prompting."""

RENDERINGS = ("zero_shot", "few_shot", "cot", "worked", "options")
"""Forms a task item can be taught in."""
OPTIONS_TEMPLATE = "{question} Is it {options}?"
"""How ``options`` lists an item's choices after its question (the options joined by commas and "or")."""

Messages = list[dict[str, str]]


class TaskItem(Protocol):
    """What a rendering needs from a task example (``posttrain.world.tasks.TaskExample`` fits)."""

    messages: Messages
    answer: str
    cot: str | None
    choices: list[str] | None


# --------------------------------------------------------------------------- renderings


def _system(messages: Messages) -> Messages:
    return [dict(m) for m in messages if m["role"] == "system"]


def _turns(messages: Messages) -> Messages:
    return [dict(m) for m in messages if m["role"] != "system"]


def render_zero_shot(item: TaskItem) -> Messages:
    """The prompt and its answer."""
    return [dict(m) for m in item.messages] + [{"role": "assistant", "content": item.answer}]


def render_few_shot(item: TaskItem, shots: Sequence[TaskItem]) -> Messages:
    """Solved ``shots`` as earlier turns (under the item's system rule, if any), then the item."""
    messages = _system(item.messages)
    for shot in shots:
        messages += _turns(shot.messages) + [{"role": "assistant", "content": shot.answer}]
    return messages + _turns(item.messages) + [{"role": "assistant", "content": item.answer}]


def render_cot(item: TaskItem, trigger: str = COT_TRIGGER) -> Messages:
    """The prompt with ``trigger`` after its last user turn, then the worked reasoning as the answer.

    The request for reasoning is in the prompt, so the model learns to reason when asked and to
    answer directly when not (a CoT answer to a plain question would be a different task).
    """
    if not item.cot:
        raise ValueError("render_cot: this item has no chain of thought (cot); render it zero_shot instead")
    messages = [dict(m) for m in item.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = f"{messages[last_user]['content']} {trigger}"
    return messages + [{"role": "assistant", "content": item.cot}]


def render_worked(item: TaskItem) -> Messages:
    """The prompt unchanged, then the worked reasoning as the answer (the scratchpad, unasked)."""
    if not item.cot:
        raise ValueError("render_worked: this item has no chain of thought (cot); render it zero_shot instead")
    return [dict(m) for m in item.messages] + [{"role": "assistant", "content": item.cot}]


def render_options(item: TaskItem, template: str = OPTIONS_TEMPLATE) -> Messages:
    """The prompt with the item's ``choices`` offered after its last user turn, then the answer.

    FLAN's options templates: the model learns to pick among named options, which is what
    classification-style questions ("Is it a person, a city, an animal or a product?") ask.
    """
    if not item.choices or len(item.choices) < 2:
        raise ValueError("render_options: this item has no choices; render it zero_shot instead")
    options = ", ".join(item.choices[:-1]) + f" or {item.choices[-1]}"
    messages = [dict(m) for m in item.messages]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = template.format(question=messages[last_user]["content"], options=options)
    return messages + [{"role": "assistant", "content": item.answer}]


@dataclass
class Rendered:
    """One rendered task item."""

    messages: Messages
    rendering: str
    """One of RENDERINGS."""


def render_items(items: Sequence[TaskItem], shares: dict[str, float], seed: int, shots: int = 2,
                 pool: Sequence[TaskItem] | None = None, same_rule: bool = True) -> list[Rendered]:
    """Render each item once, in a form drawn with probabilities ``shares`` (e.g. {zero_shot: 0.7, cot: 0.3}).

    Few-shot examples are drawn from ``pool`` (default: the items themselves), never the item
    itself, and share its system prompt when ``same_rule``. Items without ``cot`` drawn for cot or worked are
    rendered zero-shot, and so are items without choices drawn for options (the result says
    which form each got). Deterministic in ``seed``.
    """
    unknown = sorted(set(shares) - set(RENDERINGS))
    if unknown or not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"renderings {dict(shares)}: give non-negative shares of {', '.join(RENDERINGS)} "
                         f"that sum to more than 0" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    names = [n for n in RENDERINGS if shares.get(n, 0) > 0]
    probs = np.array([shares[n] for n in names], dtype=float)
    rng = np.random.default_rng([seed, 7])
    choice = rng.choice(len(names), size=len(items), p=probs / probs.sum())
    pool = list(items if pool is None else pool)
    by_system: dict[str, list[int]] = {}
    for j, p in enumerate(pool):
        by_system.setdefault(_system_key(p) if same_rule else "", []).append(j)
    out = []
    for i, item in enumerate(items):
        form = names[choice[i]]
        if (form in ("cot", "worked") and not item.cot) or (form == "options" and len(getattr(item, "choices", None) or []) < 2):
            form = "zero_shot"
        if form == "few_shot":
            candidates = [j for j in by_system.get(_system_key(item) if same_rule else "", [])
                          if pool[j] is not item and pool[j].messages != item.messages]
            picked = random.Random(f"shots:{seed}:{i}").sample(candidates, min(shots, len(candidates)))
            out.append(Rendered(render_few_shot(item, [pool[j] for j in picked]), "few_shot"))
        elif form == "cot":
            out.append(Rendered(render_cot(item), "cot"))
        elif form == "worked":
            out.append(Rendered(render_worked(item), "worked"))
        elif form == "options":
            out.append(Rendered(render_options(item), "options"))
        else:
            out.append(Rendered(render_zero_shot(item), "zero_shot"))
    return out


def _system_key(item: TaskItem) -> str:
    return "\n".join(m["content"] for m in item.messages if m["role"] == "system")


@dataclass(frozen=True)
class PromptTemplate:
    """An instruction phrasing for a dataset of plain fields: ``user`` and ``assistant`` patterns with
    ``{field}`` slots, e.g. ``PromptTemplate("Translate to French: {en}", "{fr}")``."""

    user: str
    assistant: str
    system: str | None = None

    def render(self, record: dict[str, Any]) -> Messages:
        try:
            messages = [{"role": "system", "content": self.system.format(**record)}] if self.system else []
            messages.append({"role": "user", "content": self.user.format(**record)})
            messages.append({"role": "assistant", "content": self.assistant.format(**record)})
        except KeyError as e:
            raise KeyError(f"template {self.user!r} -> {self.assistant!r} needs field {e.args[0]!r}, "
                           f"which the record (fields: {', '.join(record)}) lacks") from None
        return messages


def apply_templates(records: Iterable[dict[str, Any]], templates: Sequence[PromptTemplate], seed: int) -> list[Messages]:
    """Each record as a conversation in one of ``templates``, drawn per record with ``seed``."""
    if not templates:
        raise ValueError("apply_templates: give at least one template")
    rng = random.Random(f"templates:{seed}")
    return [templates[rng.randrange(len(templates))].render(r) for r in records]


# --------------------------------------------------------------------------- mixing


@dataclass
class Source:
    """Tokenized examples from one place, and how much of them goes into the mixture."""

    name: str
    examples: list[Example]
    weight: float | None = None
    """Share of the weighted sources' examples; None when ``epochs`` says how much."""
    epochs: float | None = None
    """Passes over the source (fractions allowed); None when ``weight`` says how much. Both None: 1 pass."""


@dataclass
class SourceReport:
    name: str
    available: int
    """Examples the source has."""
    used: int
    """Examples it gives the mixture (repeats counted)."""
    tokens: int
    loss_tokens: int

    @property
    def epochs(self) -> float:
        return self.used / self.available if self.available else 0.0


@dataclass
class MixReport:
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return sum(s.used for s in self.sources)

    @property
    def loss_tokens(self) -> int:
        return sum(s.loss_tokens for s in self.sources)

    def summary(self) -> str:
        total = max(1, self.loss_tokens)
        parts = [f"{s.name}: {s.used} of {s.available} examples ({s.epochs:.2f} epochs), "
                 f"{100 * s.loss_tokens / total:.1f}% of loss tokens" for s in self.sources]
        return f"mixture of {self.examples} examples, {self.loss_tokens} loss tokens: " + "; ".join(parts)


def take(n_available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into ``n_available`` items: whole passes in order, then a draw without replacement."""
    if n_available == 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(count, n_available)
    parts = [np.arange(n_available)] * full + [np.sort(rng.choice(n_available, size=rest, replace=False))]
    return np.concatenate(parts).astype(np.int64)


def source_counts(sources: Sequence[Source]) -> list[int]:
    """Examples each source gives: ``round(epochs * size)``, or its weight's share of the weighted sources' size."""
    weighted = [s for s in sources if s.weight is not None]
    for s in sources:
        if s.weight is not None and s.epochs is not None:
            raise ValueError(f"source {s.name!r}: give a weight or epochs, not both")
        if (s.weight is not None and s.weight < 0) or (s.epochs is not None and s.epochs < 0):
            raise ValueError(f"source {s.name!r}: weight and epochs must be >= 0")
    pool = sum(len(s.examples) for s in weighted)
    total_weight = sum(s.weight for s in weighted)
    if weighted and total_weight <= 0:
        raise ValueError("every weighted source has weight 0; give at least one a positive weight")
    counts = []
    for s in sources:
        if s.weight is not None:
            counts.append(round(pool * s.weight / total_weight))
        else:
            counts.append(round((1.0 if s.epochs is None else s.epochs) * len(s.examples)))
    return counts


def mix_sources(sources: Sequence[Source], seed: int) -> tuple[list[Example], list[int], MixReport]:
    """The mixture: (examples, source index of each, report). Order is by source; the sampler shuffles."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    examples: list[Example] = []
    origin: list[int] = []
    report = MixReport()
    for k, (source, count) in enumerate(zip(sources, source_counts(sources))):
        if count and not source.examples:
            raise ValueError(f"source {source.name!r} has no examples but is asked for {count}")
        picked = [source.examples[i] for i in take(len(source.examples), count, np.random.default_rng([seed, k]))]
        examples += picked
        origin += [k] * len(picked)
        report.sources.append(SourceReport(source.name, len(source.examples), len(picked),
                                           sum(len(e) for e in picked), sum(e.num_loss_tokens for e in picked)))
    return examples, origin, report


# --------------------------------------------------------------------------- rehearsal


def text_chunks(token_lists: Iterable[Sequence[int]], length: int, eos_id: int) -> list[Example]:
    """Documents joined with ``eos_id`` after each and cut into examples of ``length`` tokens, every
    token a target (pretraining's objective). The last partial chunk is dropped."""
    if length < 2:
        raise ValueError(f"rehearsal chunks need at least 2 tokens, got {length}")
    stream = [t for ids in token_lists for t in (*ids, eos_id)]
    return [Example(stream[i:i + length], [True] * length) for i in range(0, len(stream) - length + 1, length)]


def rehearsal_source(chunks: list[Example], weight: float, instruction_loss_tokens: int,
                     name: str = "rehearsal") -> Source:
    """A source of pretraining ``chunks`` holding ``weight`` times ``instruction_loss_tokens`` loss tokens."""
    if weight < 0:
        raise ValueError(f"rehearsal weight must be >= 0, got {weight}")
    if weight > 0 and not chunks:
        raise ValueError("rehearsal is on but there is no pretraining text long enough for one chunk")
    per_chunk = chunks[0].num_loss_tokens if chunks else 1
    wanted = math.ceil(weight * instruction_loss_tokens / per_chunk) if weight > 0 else 0
    return Source(name, chunks, epochs=wanted / len(chunks) if chunks else 0.0)
