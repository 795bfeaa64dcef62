"""The statistics every reported rate carries: confidence intervals of proportions and standard
errors of differences. (Reading answers, exact match and rules is :mod:`posttrain.world.answers`.)"""

from __future__ import annotations

import math


def proportion_ci(correct: int, n: int, z: float = 1.96) -> float:
    """Half-width of the ~95% interval of a proportion (Agresti-Coull, sane at 0 and 1), in [0, 1]."""
    if n <= 0:
        return float("nan")
    n_adj = n + z * z
    p_adj = (correct + z * z / 2) / n_adj
    return z * math.sqrt(p_adj * (1 - p_adj) / n_adj)


def difference_se(p1: float, n1: int, p2: float, n2: int) -> float:
    """Standard error of p1 - p2 for two independent proportions."""
    return math.sqrt(p1 * (1 - p1) / max(n1, 1) + p2 * (1 - p2) / max(n2, 1))
