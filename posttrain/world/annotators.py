"""Simulated annotators: noisy human-like preference labels drawn from the gold reward.

The model of an annotator (Bradley-Terry with a noise temperature ``T`` and a length bias ``b``):
each response gets a utility ``u = gold.total + b * words``; comparing ``a`` with ``b`` the
annotator perceives ``d = (u_a - u_b) / T + noise`` with standard logistic noise and picks ``a``
when ``d > 0``, so

    P(a preferred) = sigmoid((u_a - u_b) / T).

The 4-point **strength** of the choice is read off the same perceived margin ``|d|``:
1 (slightly better) below 1, 2 below 2, 3 below 4, 4 (much better) from 4 up; so a choice against
the gold order is almost always weak. **Rankings** of K responses are Plackett-Luce draws with
weights ``exp(u / T)`` (Gumbel-max sampling), whose pairwise marginals are the same BT model.
**Helpfulness** and **safety** are labeled separately (Llama 2 style): the same model on
``gold.helpfulness`` or on ``gold.safety`` instead of the total, and absolute labels
``P(label) = sigmoid((score - threshold) / T)`` (:data:`LABEL_THRESHOLDS`).

Candidate responses can be made for any task before a model exists (:func:`candidate_responses`:
the correct answer, its worked solution, wrong answers, a rule-breaking version, verbose versions,
an over-refusal, an unsafe compliance); later stages pass their own model samples instead. The
``write_*`` functions write the foundation's preference, ranking and unpaired formats with
``posttrain.data.writers.write_jsonl``. With the same seed and inputs every file has the same bytes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from posttrain.data.records import Message, Preference, Ranking, Unpaired
from posttrain.data.writers import write_jsonl
from posttrain.world.gold import GoldScore, gold_reward
from posttrain.world.tasks import REFUSAL, RULES, TaskExample

Aspect = Literal["overall", "helpfulness", "safety"]
STRENGTH_EDGES = (1.0, 2.0, 4.0)
"""Perceived-margin thresholds |d| between strengths 1|2, 2|3 and 3|4."""
LABEL_THRESHOLDS = {"helpful": 0.75, "safe": 0.5}
"""Gold score at which an absolute label is a coin flip: a helpfulness of 0.75 needs a correct answer that
keeps the rule (a wrong one scores at most 0.43, a correct rule-breaking one 0.71); safety is 0 or 1."""
VERBOSE_PADDING = ("I hope this helps.", "Let me know if you have any other questions about the world.",
                   "It is always a pleasure to answer questions like this one.",
                   "Thank you for asking such a good question.")
"""Sentences that lengthen an answer without changing it (verbose candidates)."""


@dataclass
class AnnotatorConfig:
    noise_temperature: float = 0.1
    """BT temperature T on the gold total (in [0, 1]): 0.1 picks a correct answer over a wrong one ~97% of the time."""
    length_bias: float = 0.0
    """Utility added per word of a response (verbosity bias); 0.02 makes 10 extra words worth 0.2 gold points."""
    seed: int = 0
    """Seed of the annotator's random draws."""


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def strength_of(margin: float) -> int:
    """Strength 1-4 of a choice from its perceived margin |d| (in units of T)."""
    return 1 + sum(abs(margin) >= edge for edge in STRENGTH_EDGES)


def _words(text: str) -> int:
    return len(text.split())


def _aspect_score(score: GoldScore, aspect: Aspect) -> float:
    if aspect == "overall":
        return score.total
    if aspect == "helpfulness":
        return score.helpfulness
    if aspect == "safety":
        return score.safety
    raise ValueError(f"unknown aspect {aspect!r}; use overall, helpfulness or safety")


class Annotator:
    """One simulated annotator; its draws come from one seeded stream, in call order."""

    def __init__(self, cfg: AnnotatorConfig | None = None):
        self.cfg = cfg or AnnotatorConfig()
        if self.cfg.noise_temperature <= 0:
            raise ValueError(f"noise_temperature must be > 0 (got {self.cfg.noise_temperature}); "
                             "use a small value such as 0.01 for a near-noiseless annotator")
        self.rng = random.Random(f"annotator:{self.cfg.seed}")

    def utility(self, example: TaskExample, response: str, aspect: Aspect = "overall") -> float:
        """Gold score of the aspect plus the length bias."""
        return _aspect_score(gold_reward(example, response), aspect) + self.cfg.length_bias * _words(response)

    def p_prefer(self, example: TaskExample, a: str, b: str, aspect: Aspect = "overall") -> float:
        """P(a is preferred to b) under this annotator's BT model."""
        delta = self.utility(example, a, aspect) - self.utility(example, b, aspect)
        return sigmoid(delta / self.cfg.noise_temperature)

    def _logistic(self) -> float:
        u = min(max(self.rng.random(), 1e-12), 1 - 1e-12)
        return math.log(u / (1 - u))

    def prefer(self, example: TaskExample, a: str, b: str, aspect: Aspect = "overall") -> tuple[int, int]:
        """(0 if a is preferred else 1, strength 1-4)."""
        delta = self.utility(example, a, aspect) - self.utility(example, b, aspect)
        perceived = delta / self.cfg.noise_temperature + self._logistic()
        return (0 if perceived > 0 else 1), strength_of(perceived)

    def rank(self, example: TaskExample, responses: Sequence[str], aspect: Aspect = "overall") -> list[int]:
        """Indices of ``responses``, best first: a Plackett-Luce draw with weights exp(u / T)."""
        keys = []
        for i, r in enumerate(responses):
            gumbel = -math.log(-math.log(min(max(self.rng.random(), 1e-12), 1 - 1e-12)))
            keys.append((self.utility(example, r, aspect) / self.cfg.noise_temperature + gumbel, -i))
        return [-i for _, i in sorted(keys, reverse=True)]

    def label(self, example: TaskExample, response: str) -> dict[str, bool]:
        """Separate absolute labels {"helpful": ..., "safe": ...}, each noisy around its gold score."""
        score = gold_reward(example, response)
        out = {}
        for name, value in (("helpful", score.helpfulness), ("safe", score.safety)):
            threshold = LABEL_THRESHOLDS[name]
            out[name] = self.rng.random() < sigmoid((value - threshold) / self.cfg.noise_temperature)
        return out


# ---------------------------------------------------------------------------------------------
# Candidate responses


@dataclass(frozen=True)
class Candidate:
    text: str
    kind: str
    """correct, cot, wrong, verbose, verbose_wrong, rule_breaking, refusal, unsafe."""


def candidate_responses(example: TaskExample) -> list[Candidate]:
    """Responses of known quality to ``example``, made from the task itself (no model needed)."""
    rule = RULES[example.rule] if example.rule else None
    # Under a system rule every variant but the rule-breaking one keeps the rule, so each differs
    # from the canonical answer in one respect only.
    follow = rule.apply if rule else (lambda t: t)
    plain = example.meta.get("rule_breaking", example.answer)
    out = [Candidate(example.answer, "correct")]
    if example.cot:
        out.append(Candidate(example.cot, "cot"))
    wrong = list(example.meta.get("wrong_answers", []))
    out += [Candidate(w, "unsafe" if example.harmful else "wrong") for w in wrong]
    out.append(Candidate(follow(f"{plain} {VERBOSE_PADDING[0]} {VERBOSE_PADDING[1]}"), "verbose"))
    out.append(Candidate(follow(f"{plain} {' '.join(VERBOSE_PADDING)}"), "verbose"))
    if wrong and not example.harmful:
        wrong_plain = rule.strip(wrong[0]) if rule else wrong[0]
        out.append(Candidate(follow(f"{wrong_plain} {' '.join(VERBOSE_PADDING)}"), "verbose_wrong"))
    if rule:
        out.append(Candidate(plain, "rule_breaking"))
    if not example.harmful:
        out.append(Candidate(follow(REFUSAL), "refusal"))
    return out


# ---------------------------------------------------------------------------------------------
# Preference data


def _prompt(example: TaskExample) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in example.messages]


def _reply(text: str) -> list[Message]:
    return [Message("assistant", text)]


def annotate_pair(annotator: Annotator, example: TaskExample, a: str, b: str,
                  meta: dict | None = None) -> Preference:
    """One preference record for responses ``a`` and ``b``. Meta holds the separate labels, as Llama 2
    collected them: which response is more helpful (a helpfulness-only comparison) and whether each is
    safe (absolute labels), plus both gold totals."""
    choice, strength = annotator.prefer(example, a, b)
    chosen, rejected = (a, b) if choice == 0 else (b, a)
    helpful, _ = annotator.prefer(example, chosen, rejected, "helpfulness")
    gold_c, gold_r = gold_reward(example, chosen), gold_reward(example, rejected)
    record_meta = {"task_id": example.id, "family": example.family,
                   "more_helpful": "chosen" if helpful == 0 else "rejected",
                   "chosen_safe": annotator.label(example, chosen)["safe"],
                   "rejected_safe": annotator.label(example, rejected)["safe"],
                   "gold_chosen": gold_c.total, "gold_rejected": gold_r.total, **(meta or {})}
    return Preference(_prompt(example), _reply(chosen), _reply(rejected), strength, record_meta)


def make_preferences(examples: Iterable[TaskExample], annotator: Annotator, pairs_per_example: int = 2,
                     responses: dict[str, list[str]] | None = None) -> list[Preference]:
    """Annotated pairs of candidate responses (or of ``responses[example.id]``, e.g. model samples)."""
    out = []
    for ex in examples:
        pool = _pool(ex, responses)
        if len(pool) < 2:
            continue
        for _ in range(pairs_per_example):
            i, j = annotator.rng.sample(range(len(pool)), 2)
            out.append(annotate_pair(annotator, ex, pool[i][0], pool[j][0],
                                     {"kinds": [pool[i][1], pool[j][1]]}))
    return out


def make_rankings(examples: Iterable[TaskExample], annotator: Annotator, k: int = 4,
                  responses: dict[str, list[str]] | None = None) -> list[Ranking]:
    """One ranking of ``k`` responses per example, best first, with their gold totals in meta."""
    out = []
    for ex in examples:
        pool = _pool(ex, responses)
        if len(pool) < 2:
            continue
        picked = annotator.rng.sample(pool, min(k, len(pool)))
        order = annotator.rank(ex, [t for t, _ in picked])
        ranked = [picked[i] for i in order]
        out.append(Ranking(_prompt(ex), [_reply(t) for t, _ in ranked],
                           {"task_id": ex.id, "family": ex.family, "kinds": [c for _, c in ranked],
                            "gold": [gold_reward(ex, t).total for t, _ in ranked]}))
    return out


def make_unpaired(examples: Iterable[TaskExample], annotator: Annotator, per_example: int = 2,
                  responses: dict[str, list[str]] | None = None) -> list[Unpaired]:
    """Single responses labeled desirable (helpful and safe, by the annotator's absolute labels) or not."""
    out = []
    for ex in examples:
        pool = _pool(ex, responses)
        for text, kind in annotator.rng.sample(pool, min(per_example, len(pool))):
            labels = annotator.label(ex, text)
            out.append(Unpaired(_prompt(ex), _reply(text), labels["helpful"] and labels["safe"],
                                {"task_id": ex.id, "family": ex.family, "kind": kind, **labels,
                                 "gold": gold_reward(ex, text).total}))
    return out


def annotate(examples: Iterable[TaskExample], annotator: Annotator, aspect: str, ranking: bool, pairs: int, k: int,
             responses: dict[str, list[str]] | None) -> list:
    """Preference pairs (or rankings of ``k``) of each example's responses, judged on ``aspect``
    (overall, or helpfulness or safety alone: Llama 2's two reward models, with that aspect's gold in meta)."""
    if aspect == "overall":
        return make_rankings(examples, annotator, k, responses) if ranking else \
            make_preferences(examples, annotator, pairs, responses)
    score = lambda ex, t: getattr(gold_reward(ex, t), aspect)  # noqa: E731 - the aspect's gold, for evaluation
    out = []
    for ex in examples:
        pool = list(dict.fromkeys(responses[ex.id] if responses is not None else
                                  [c.text for c in candidate_responses(ex)]))
        prompt = _prompt(ex)
        meta = {"task_id": ex.id, "family": ex.family, "aspect": aspect}
        if len(pool) < 2:
            continue
        if ranking:
            picked = annotator.rng.sample(pool, min(k, len(pool)))
            ranked = [picked[i] for i in annotator.rank(ex, picked, aspect)]
            out.append(Ranking(prompt, [_reply(t) for t in ranked], {**meta, "gold": [score(ex, t) for t in ranked]}))
            continue
        for _ in range(pairs):
            a, b = annotator.rng.sample(pool, 2)
            choice, strength = annotator.prefer(ex, a, b, aspect)
            chosen, rejected = (a, b) if choice == 0 else (b, a)
            out.append(Preference(prompt, _reply(chosen), _reply(rejected), strength,
                                  {**meta, "gold_chosen": score(ex, chosen), "gold_rejected": score(ex, rejected)}))
    return out


def _pool(example: TaskExample, responses: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    # The same text twice is one response: a pair of identical texts would carry no preference.
    if responses is not None:
        pool = [(t, "sample") for t in responses.get(example.id, [])]
    else:
        pool = [(c.text, c.kind) for c in candidate_responses(example)]
    return list({t: (t, k) for t, k in reversed(pool)}.values())[::-1]


def write_preference_files(out_dir: str | Path, examples: Sequence[TaskExample], cfg: AnnotatorConfig | None = None,
                           pairs_per_example: int = 2, ranking_k: int = 4) -> dict[str, Path]:
    """preferences.jsonl, rankings.jsonl and unpaired.jsonl for ``examples`` in ``out_dir``; returns the paths.

    Each file has its own annotator stream (same config), so one file's size does not shift another's draws.
    """
    cfg = cfg or AnnotatorConfig()
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in ("preferences", "rankings", "unpaired")}
    write_jsonl(make_preferences(examples, Annotator(cfg), pairs_per_example), paths["preferences"])
    write_jsonl(make_rankings(examples, Annotator(cfg), ranking_k), paths["rankings"])
    write_jsonl(make_unpaired(examples, Annotator(cfg)), paths["unpaired"])
    return paths
