"""Evaluating reward models on held-out comparisons.

- **accuracy**: the share of held-out pairs whose chosen response gets the higher reward (a tie
  counts one half), overall and by the annotator's preference strength (Llama 2, Table 8: models
  are most accurate on "significantly better" pairs and near chance on "negligibly better");
- **calibration**: the predicted probability that a response wins, ``sigmoid(r_a - r_b)`` on raw
  scores (the Bradley-Terry model the loss fits), binned against how often it did win, with the
  expected calibration error; each pair counts in both orientations, so the curve is symmetric;
- **agreement with gold** (the embedded world, where each record's meta holds ``gold_chosen`` and
  ``gold_rejected``): how often the model orders a pair like the gold reward (pairs of equal gold
  left out), and the **oracle accuracy**, the accuracy the gold reward itself reaches on the same
  noisy labels: the ceiling that label noise leaves a perfect model;
- **within-prompt correlation** with gold on the policy's own samples (:func:`within_prompt_correlation`):
  best-of-n and RL ask a reward model to rank several answers to one prompt, near misses among
  them, which hand-made comparison pairs need not show.

Scores are raw (``normalize=False``): normalization is an affine map that changes no order, but
calibration needs the logits as trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from posttrain.models.reward import as_dicts
from posttrain.scorers import as_scorer


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs with r_chosen > r_rejected, ties counting 1/2. Shapes: (N,), (N,)."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    return float(wins.mean())


def accuracy_by_strength(chosen: torch.Tensor, rejected: torch.Tensor,
                         strength: Sequence[int | None]) -> dict[str, dict[str, float]]:
    """{strength: {"accuracy", "pairs"}} for each strength present (pairs without one are left out)."""
    out = {}
    for level in sorted({s for s in strength if s is not None}):
        rows = torch.tensor([s == level for s in strength])
        out[str(level)] = {"accuracy": pairwise_accuracy(chosen[rows], rejected[rows]), "pairs": int(rows.sum())}
    return out


def calibration(chosen: torch.Tensor, rejected: torch.Tensor, bins: int = 10) -> dict[str, Any]:
    """Predicted win probability ``sigmoid(r_a - r_b)`` (raw scores) against observed wins, in
    ``bins`` equal-width bins of the prediction; ``ece`` is the pair-weighted mean |predicted - observed|.

    Each pair enters twice: (chosen over rejected, won) and (rejected over chosen, lost).
    """
    p = torch.sigmoid((chosen - rejected).double())
    predicted = torch.cat([p, 1 - p])
    observed = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    which = (predicted * bins).long().clamp(max=bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        rows = which == b
        n = int(rows.sum())
        if n == 0:
            continue
        mean_p, freq = float(predicted[rows].mean()), float(observed[rows].mean())
        table.append({"bin": [b / bins, (b + 1) / bins], "predicted": mean_p, "observed": freq, "count": n})
        ece += n * abs(mean_p - freq)
    return {"bins": table, "ece": ece / max(1, len(predicted))}


def gold_agreement(chosen: torch.Tensor, rejected: torch.Tensor, gold_chosen: Sequence[float],
                   gold_rejected: Sequence[float]) -> dict[str, float]:
    """How often the model orders a pair as the gold reward does, over pairs whose gold differs."""
    gc, gr = torch.tensor(gold_chosen, dtype=torch.float64), torch.tensor(gold_rejected, dtype=torch.float64)
    differ = (gc - gr).abs() > 1e-9
    better = torch.where(gc > gr, chosen, rejected)[differ]
    worse = torch.where(gc > gr, rejected, chosen)[differ]
    return {"agreement": pairwise_accuracy(better, worse), "pairs": int(differ.sum())}


def within_prompt_correlation(scores: Sequence[float], gold: Sequence[float], groups: Sequence[Any]) -> dict[str, float]:
    """How well a scorer ranks several responses to the same prompt: the Pearson correlation of its
    scores with gold within each prompt (``groups`` names each response's prompt), averaged over the
    prompts. Prompts whose responses all get the same gold, or the same score, rank nothing and are
    counted apart ("tied"); the correlation is NaN when no prompt is left."""
    by_group: dict[Any, list[tuple[float, float]]] = {}
    for s, g, key in zip(scores, gold, groups, strict=True):
        by_group.setdefault(key, []).append((float(s), float(g)))
    rs = []
    for pairs in by_group.values():
        x, y = torch.tensor(pairs, dtype=torch.float64).T
        if len(pairs) > 1 and x.std() > 1e-9 and y.std() > 1e-9:
            rs.append(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))
    mean = sum(rs) / len(rs) if rs else math.nan
    se = (torch.tensor(rs, dtype=torch.float64).std().item() / math.sqrt(len(rs))) if len(rs) > 1 else math.nan
    return {"correlation": mean, "se": se, "prompts": len(rs), "tied": len(by_group) - len(rs)}


def oracle_accuracy(gold_chosen: Sequence[float], gold_rejected: Sequence[float]) -> float:
    """Accuracy of the gold reward on the (noisy) labels: what a perfect reward model would score."""
    return pairwise_accuracy(torch.tensor(gold_chosen, dtype=torch.float64),
                             torch.tensor(gold_rejected, dtype=torch.float64))


def score_pairs(scorer: Any, records: Sequence[Any], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (chosen, rejected) rewards (N,), (N,) of preference records, both sides in one call.

    A :class:`~posttrain.models.reward.RewardScorer` scores the whole conversations (multi-turn
    responses included); any other scorer (``posttrain.scorers.as_scorer``) gets the prompt and
    the last assistant message.
    """
    n = len(records)
    if hasattr(scorer, "score_conversations"):
        conversations = [as_dicts(r.prompt) + as_dicts(side) for r in records for side in (r.chosen, r.rejected)]
        rewards = scorer.score_conversations(conversations, batch_size=batch_size, normalize=False)
    else:
        prompts = [as_dicts(r.prompt) for r in records for _ in range(2)]
        responses = [as_dicts(side)[-1]["content"] for r in records for side in (r.chosen, r.rejected)]
        rewards = as_scorer(scorer)(prompts, responses)
    rewards = rewards.reshape(n, 2)
    return rewards[:, 0], rewards[:, 1]


def reward_report(scorer: Any, records: Sequence[Any], batch_size: int = 32, bins: int = 10) -> dict[str, Any]:
    """Everything above that the records allow, as a JSON-ready dict."""
    if not records:
        raise ValueError("reward_report: no held-out preference records to evaluate on")
    chosen, rejected = score_pairs(scorer, records, batch_size)
    report: dict[str, Any] = {"pairs": len(records), "accuracy": pairwise_accuracy(chosen, rejected),
                              "calibration": calibration(chosen, rejected, bins)}
    strengths = [getattr(r, "strength", None) for r in records]
    if any(s is not None for s in strengths):
        report["accuracy_by_strength"] = accuracy_by_strength(chosen, rejected, strengths)
    if all("gold_chosen" in r.meta and "gold_rejected" in r.meta for r in records):
        gc, gr = [r.meta["gold_chosen"] for r in records], [r.meta["gold_rejected"] for r in records]
        report["oracle_accuracy"] = oracle_accuracy(gc, gr)
        report["accuracy_vs_oracle"] = report["accuracy"] / report["oracle_accuracy"]
        report["gold"] = gold_agreement(chosen, rejected, gc, gr)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One line for logs: accuracy (and against the oracle), calibration error, by strength."""
    text = f"held-out accuracy {100 * report['accuracy']:.1f}% on {report['pairs']} pairs"
    if "oracle_accuracy" in report:
        text += (f" (gold-reward oracle {100 * report['oracle_accuracy']:.1f}%, ratio "
                 f"{report['accuracy_vs_oracle']:.3f}; agreement with gold order {100 * report['gold']['agreement']:.1f}%)")
    text += f"; calibration error {report['calibration']['ece']:.3f}"
    if "sample_agreement" in report:
        agreement = report["sample_agreement"]
        text += (f"; within-prompt correlation with gold on {agreement['samples_per_prompt']} samples per prompt "
                 f"{agreement['all']['correlation']:.2f} (" + ", ".join(
                     f"{f} {v['correlation']:.2f}" for f, v in agreement["families"].items()) + ")")
    if "accuracy_by_strength" in report:
        text += "; by strength " + ", ".join(f"{k}: {100 * v['accuracy']:.0f}%"
                                             for k, v in report["accuracy_by_strength"].items())
    return text


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's scalars under metric names (eval/...), for metrics.jsonl."""
    out = {"eval/accuracy": report["accuracy"], "eval/ece": report["calibration"]["ece"]}
    if "oracle_accuracy" in report:
        out.update({"eval/oracle_accuracy": report["oracle_accuracy"],
                    "eval/accuracy_vs_oracle": report["accuracy_vs_oracle"],
                    "eval/gold_agreement": report["gold"]["agreement"]})
    if "sample_agreement" in report:
        out["eval/sample_correlation"] = report["sample_agreement"]["all"]["correlation"]
    for level, v in report.get("accuracy_by_strength", {}).items():
        out[f"eval/accuracy_strength_{level}"] = v["accuracy"]
    return {k: v for k, v in out.items() if not math.isnan(v)}


def write_report(report: dict[str, Any], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
