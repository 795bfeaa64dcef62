"""Reward-hacking diagnostics of an RL run, read from its ``metrics.jsonl``.

The reward an RL run optimizes is a proxy (a learned reward model); where a gold reward exists
(the embedded world) the run also logs it, and the two curves over training show reward hacking
(Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"): the proxy keeps rising while
the gold reward peaks and falls, typically as the KL to the reference grows. A KL penalty large
enough keeps the policy where the proxy is still right.

Keys read (as the ppo recipe logs them): ``reward/score`` (proxy, training rollouts),
``reward/gold`` (gold, training rollouts), ``eval/score`` and ``eval/gold`` (held-out prompts),
``kl`` (per response, nats) and ``kl_coef``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt

PROXY, GOLD, EVAL_PROXY, EVAL_GOLD, KL = "reward/score", "reward/gold", "eval/score", "eval/gold", "kl"


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every record holding a finite number under ``key``, in step order."""
    points = sorted((r["step"], float(r[key])) for r in records
                    if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key])))
    return [s for s, _ in points], [v for _, v in points]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def hacking_summary(records: Sequence[dict[str, Any]], window: int = 5) -> dict[str, float]:
    """Start, peak and end of the proxy and gold curves (moving averages over ``window`` steps)
    and the final KL: the numbers a report on reward hacking needs. Held-out (eval/*) values are
    used when logged, otherwise the training rollouts'. Empty when there is no gold reward."""
    out: dict[str, float] = {}
    for name, keys in (("proxy", (EVAL_PROXY, PROXY)), ("gold", (EVAL_GOLD, GOLD)), ("kl", (KL,))):
        key = next((k for k in keys if len(series(records, k)[0]) >= 2), None)
        if key is None:
            continue
        steps, values = series(records, key)
        curve = smooth(values, window if not key.startswith("eval/") else 1)
        peak = max(range(len(curve)), key=curve.__getitem__)
        out.update({f"{name}_start": curve[0], f"{name}_end": curve[-1], f"{name}_peak": curve[peak],
                    f"{name}_peak_step": float(steps[peak])})
    if "gold_start" not in out:
        return {}
    out["gold_drop_from_peak"] = out["gold_peak"] - out["gold_end"]
    return out


def plot_proxy_vs_gold(records: Sequence[dict[str, Any]], out_path: str | Path, title: str = "") -> Path | None:
    """Save a two-panel plot: proxy and gold reward over training steps (training rollouts, lightly
    smoothed, and held-out evaluations as markers), and the KL to the reference. Returns the path,
    or None when the records hold no gold reward."""
    if not series(records, GOLD)[0] and not series(records, EVAL_GOLD)[0]:
        return None
    matplotlib.use("Agg")  # no display needed; safe in tests and on servers
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    gold_axis = top.twinx()  # the proxy (a normalized score) and gold (in [0, 1]) have their own scales
    for axis, train_key, eval_key, color, label in ((top, PROXY, EVAL_PROXY, "tab:blue", "proxy reward"),
                                                    (gold_axis, GOLD, EVAL_GOLD, "tab:orange", "gold reward")):
        steps, values = series(records, train_key)
        if steps:
            axis.plot(steps, smooth(values, 5), color=color, label=f"{label} (rollouts)")
        steps, values = series(records, eval_key)
        if steps:
            axis.plot(steps, values, "o--", color=color, alpha=0.7, label=f"{label} (held-out)")
        axis.set_ylabel(label, color=color)
    handles = top.get_legend_handles_labels()[0] + gold_axis.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8)
    top.set_title(title or "Proxy vs gold reward over training")
    steps, values = series(records, KL)
    if steps:
        bottom.plot(steps, values, color="tab:green")
    bottom.set_ylabel("KL to reference (nats)")
    bottom.set_xlabel("step (rollout batches)")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
