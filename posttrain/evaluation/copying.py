"""Copying from the context (induction), measured: how much likelier a random span is the second time.

Few-shot and chain-of-thought prompts help only a model that uses its context: one that, having
seen a string once, predicts it better the next time (the induction heads of Olsson et al. 2022,
"In-context Learning and Induction Heads"). This probe makes that one number: spans of random
letters, new to any corpus, are scored once after a neutral lead and once after the same lead,
the span itself and some filler. A model with induction heads gains several nats per token on
the second copy; one without gains about nothing. The world's base model is checked with it
(``tests/test_prompting.py``) and any pretraining run can be (``copying_gain``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean

from posttrain.evaluation.multiple_choice import continuation_logprobs

LEAD = "The code is"
"""Text before the span's first appearance."""

FILLER = ". Later that day someone asked for it again. The code is"
"""Text between the two appearances, ending where the second copy is predicted."""


@dataclass(frozen=True)
class CopyingScore:
    first: float
    """Mean log-probability per token of the spans the first time they appear."""
    second: float
    """Mean log-probability per token of the same spans repeated after the filler."""
    n: int
    """Spans scored."""

    @property
    def gain(self) -> float:
        """Nats per token gained by having seen the span: about 0 without induction, several with it."""
        return self.second - self.first


def random_spans(n: int, length: int, seed: int) -> list[str]:
    """``n`` spelled strings of ``length`` random lowercase letters ("q x v b ..."), deterministic in ``seed``."""
    rng = random.Random(f"copying:{seed}")
    return [" ".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(length)) for _ in range(n)]


def copying_gain(model, tokenizer, n: int = 40, length: int = 10, seed: int = 0, batch_size: int = 32) -> CopyingScore:
    """Score ``n`` random spans of ``length`` letters the first and the second time they appear."""
    spans = random_spans(n, length, seed)
    contexts = [LEAD] * n + [f"{LEAD} {s}{FILLER}" for s in spans]
    scores, _ = continuation_logprobs(model, tokenizer, contexts, [f" {s}" for s in spans] * 2, batch_size=batch_size)
    per_token = [s.mean_logp for s in scores]
    return CopyingScore(first=fmean(per_token[:n]), second=fmean(per_token[n:]), n=n)
