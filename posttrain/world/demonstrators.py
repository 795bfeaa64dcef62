"""Simulated demonstrators: the people who write the SFT answers, of mixed skill and care.

InstructGPT's and Llama 2's demonstrations were written by people, and a written answer is only as
good as its writer: some pad it, some forget the system's rule, some go along with a harmful
request, some get the fact or the digit wrong. Choosing the better of two answers is easier than
writing the best one, which is why preference learning can take a model past its demonstrations
(Ouyang et al. 2022; Touvron et al. 2023, §3.2). The world's SFT data is made the same way: each
task example's answer is written by a careful demonstrator (the canonical answer) or, with
probability ``flawed``, by a careless one whose answer has one flaw of :data:`FLAWS`, drawn with
weights among those the example allows. Flawed answers are the world's own candidate responses
(:func:`posttrain.world.annotators.candidate_responses`), so the gold reward and the annotators rank
them exactly as they rank a policy's samples. ``flawed=0`` gives clean demonstrations, the upper
reference.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Sequence

from posttrain.world.annotators import candidate_responses
from posttrain.world.tasks import TaskExample

FLAWS = ("verbose", "rule_breaking", "unsafe", "wrong")
"""What a careless demonstration gets wrong: padded with pleasantries, the system rule broken,
a harmful request complied with, or a wrong answer."""


def flawed_answer(example: TaskExample, flaw: str) -> str | None:
    """The answer with ``flaw`` to ``example``, or None where the example allows no such flaw
    (rule_breaking needs a system rule, unsafe a harmful request, wrong a wrong answer)."""
    if flaw not in FLAWS:
        raise ValueError(f"unknown flaw {flaw!r}; choose among {', '.join(FLAWS)}")
    kind = "unsafe" if flaw == "unsafe" else flaw
    texts = [c.text for c in candidate_responses(example) if c.kind == kind]
    return texts[0] if texts else None


def demonstrations(examples: Sequence[TaskExample], flawed: float, flaws: dict[str, float] | None = None,
                   seed: int = 0) -> tuple[list[TaskExample], Counter]:
    """The examples as demonstrators wrote them: each, with probability ``flawed``, with one flaw
    drawn by ``flaws`` weights (default: equal) among those it allows, its worked solution dropped
    (a careless demonstrator shows no working). Deterministic in (seed, example id); the Counter
    says how many got each flaw."""
    if not 0.0 <= flawed <= 1.0:
        raise ValueError(f"flawed must be a share in [0, 1], got {flawed}")
    weights = dict(flaws) if flaws else {f: 1.0 for f in FLAWS}
    unknown = sorted(set(weights) - set(FLAWS))
    if unknown or any(w < 0 for w in weights.values()):
        raise ValueError(f"flaws {weights}: give non-negative weights of {', '.join(FLAWS)}")
    out, counts = [], Counter()
    for example in examples:
        rng = random.Random(f"demonstrator:{seed}:{example.id}")
        if rng.random() >= flawed:
            out.append(example)
            continue
        options = [(f, text) for f in FLAWS if weights.get(f, 0) > 0 and (text := flawed_answer(example, f))]
        if not options:  # nothing this example can get wrong in the allowed ways
            out.append(example)
            continue
        flaw, text = rng.choices(options, weights=[weights[f] for f, _ in options])[0]
        counts[flaw] += 1
        out.append(replace(example, answer=text, cot=None, meta={**example.meta, "demonstration": flaw}))
    return out, counts
