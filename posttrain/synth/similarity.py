"""ROUGE-L between instructions, the similarity filter of self-instruct (Wang et al. 2022, §2.3).

Tokens as ``rouge_score`` makes them (lower case, runs of letters and digits); the longest common
subsequence by ``rapidfuzz`` (C++), so a pool of thousands of instructions filters in seconds.
"""

from __future__ import annotations

import re

from rapidfuzz.distance import LCSseq

_WORD = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure of two token lists: 2 * LCS / (len(a) + len(b)), 0 when both are empty."""
    if not a or not b:
        return 0.0
    return 2.0 * LCSseq.similarity(a, b) / (len(a) + len(b))


class SimilarityPool:
    """Instructions kept so far; a candidate joins only if its ROUGE-L with every one stays below ``threshold``."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.kept: list[list[str]] = []

    def closest(self, tokens: list[str]) -> float:
        """The highest ROUGE-L of ``tokens`` with a kept instruction (0 for an empty pool)."""
        return max((rouge_l(tokens, k) for k in self.kept), default=0.0)

    def offer(self, text: str) -> bool:
        """Keep ``text`` unless it is too close to a kept instruction; return whether it was kept."""
        tokens = rouge_tokens(text)
        if self.closest(tokens) >= self.threshold:
            return False
        self.kept.append(tokens)
        return True
