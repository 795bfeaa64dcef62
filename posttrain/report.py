"""The demo's report: one self-contained HTML page (``run_dir/report.html``) of a ``posttrain demo`` run.

It reads what the demo wrote — ``summary.json``, each ``<stage>/stage.json`` and the recipes'
``metrics.jsonl`` files — and shows:

- how long each stage took (``#timings``);
- one table of every stage (``#stage-table``): the base model per prompting strategy, SFT, DPO
  and PPO, with the mean gold reward on held-out prompts, the win-rate against SFT (with its
  interval and the length-controlled win-rate), the KL to SFT, the mean response length and the
  accuracy per task family;
- plots (``img.plot``): training losses (SFT, reward models, DPO), PPO's proxy and gold reward and
  KL over steps, gold reward by stage, win-rates with their intervals, accuracy per family and stage;
- the reward models' held-out numbers (``#reward-table``), links to each model's card
  (``#model-cards``) and every stage's raw results (``#stage-<name>``).

The page has no scripts and loads nothing: CSS is inline and plots are base64 PNGs drawn with
matplotlib's Agg canvas, so it opens offline, from a mail attachment, or in a headless browser.
Stages that did not run are shown as "stage not run", never left out silently. The table helpers
(:func:`report_stage_table`, :func:`table_families`) are pure functions of ``summary.json``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from posttrain.files import write_text_atomic
from posttrain.rl.diagnostics import series, smooth
from posttrain.training.metrics import read_metrics

STAGES = ("world", "base", "prompting", "sft", "reward", "dpo", "ppo", "overoptimization", "final")
STAGE_TITLES = {
    "world": "world: entities, corpus, tasks, annotated preferences",
    "base": "base model",
    "prompting": "prompting the base model",
    "sft": "instruction fine-tuning (SFT)",
    "reward": "reward models",
    "dpo": "direct preference optimization (DPO)",
    "ppo": "RLHF with PPO",
    "overoptimization": "over-optimization: PPO with a small KL coefficient",
    "final": "final evaluation of every model",
}
SETTINGS = {"zero_shot": "zero-shot", "few_shot": "few-shot", "cot": "chain of thought",
            "zero_shot_cot": "zero-shot CoT", "mc_sum": "multiple choice (sum)",
            "mc_norm": "multiple choice (norm.)", "mc": "multiple choice"}
MODEL_LABELS = {"base": "base", "sft": "SFT", "best_of_n": "best-of-n (SFT samples, RM)", "dpo": "DPO", "ppo": "PPO"}
COLORS = {"base": "#8c8c8c", "sft": "#4c72b0", "best_of_n": "#8172b3", "dpo": "#dd8452", "ppo": "#55a868"}
# Keys the PPO recipe logs (posttrain.recipes.ppo), with older/alternative names after them.
PPO_PROXY, PPO_GOLD, PPO_KL = ("reward/score", "score", "reward"), ("reward/gold", "gold"), ("kl", "objective/kl")
PPO_EVAL_PROXY, PPO_EVAL_GOLD = ("eval/score",), ("eval/gold",)
WIDE_PLOTS = ("plot-losses", "plot-ppo", "plot-accuracy")  # drawn across the page, the others two by two
MAX_JSON_CHARS = 20_000


# --- reading the run ---------------------------------------------------------------------------

@dataclass
class DemoRun:
    run_dir: Path
    results: dict[str, Any]
    """stage -> its results, for the stages that ran (from stage.json, else summary.json)."""
    seconds: dict[str, float]
    """stage -> wall time, for the stages with a stage.json."""
    problems: list[str] = field(default_factory=list)
    """Files that could not be read, shown at the top of the report."""

    def stage_names(self) -> list[str]:
        return [*STAGES, *(s for s in self.results if s not in STAGES)]


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path}: not readable JSON ({e}); rerun that stage (delete its folder) to remake it")
        return None


def load_run(run_dir: str | Path) -> DemoRun:
    """A demo run folder's stage results and timings; unreadable files are listed in ``problems``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"demo run folder {run_dir} not found: run `posttrain demo` first "
                                f"(or pass the folder it wrote, demo.run_dir)")
    problems: list[str] = []
    summary = _read_json(run_dir / "summary.json", problems) if (run_dir / "summary.json").exists() else {}
    results = dict(summary) if isinstance(summary, dict) else {}
    seconds = {}
    for marker in sorted(run_dir.glob("*/stage.json")):
        data = _read_json(marker, problems)
        if isinstance(data, dict):
            name = data.get("stage", marker.parent.name)
            results[name] = data.get("results", {})
            if isinstance(data.get("seconds"), (int, float)):
                seconds[name] = float(data["seconds"])
    return DemoRun(run_dir, results, seconds, problems)


# --- the table of every stage ------------------------------------------------------------------

def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a dict, else {} (a stage that wrote something unexpected shows as missing)."""
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _gold_mean(value: Any) -> float | None:
    """Gold reward as the final stage writes it ({"mean": x, ...}) or a bare number."""
    return _number(value.get("mean")) if isinstance(value, Mapping) else _number(value)


def _half_width(ci: Any) -> float | None:
    """A confidence interval's half-width, given as one (a number) or as [low, high]."""
    if isinstance(ci, Sequence) and not isinstance(ci, str) and len(ci) == 2:
        low, high = map(_number, ci)
        return None if low is None or high is None else (high - low) / 2
    return _number(ci)


def _win(value: Any) -> dict[str, float | None]:
    """A win-rate entry: a number, or {"win_rate", "ci", "n", "lc_win_rate"} where the LC win-rate may
    itself be a number or {"lc_win_rate", "ci", ...} (posttrain.evaluation.winrate's LengthControlled)."""
    value = _mapping(value) or {"win_rate": value}
    lc = value.get("lc_win_rate")
    lc, lc_ci = (lc.get("lc_win_rate"), lc.get("ci")) if isinstance(lc, Mapping) else (lc, value.get("lc_ci"))
    return {"win_rate": _number(value.get("win_rate")), "win_rate_ci": _half_width(value.get("ci")),
            "lc_win_rate": _number(lc), "lc_win_rate_ci": _half_width(lc_ci), "win_n": _number(value.get("n"))}


def _accuracy_column(accuracy: Any, column: str | None) -> dict[str, float]:
    """{family: percent} from {family: percent} or, for one column, {family: {column: percent}}."""
    out = {}
    for family, cell in _mapping(accuracy).items():
        if isinstance(cell, Mapping):
            cell = cell.get(column) if column in cell else (next(iter(cell.values())) if len(cell) == 1 else None)
        if _number(cell) is not None:
            out[family] = float(cell)
    return out


def _settings(accuracy: Any) -> list[str]:
    """The prompting columns (zero_shot, few_shot, ...) in order of first appearance."""
    seen: dict[str, None] = {}
    for cell in _mapping(accuracy).values():
        if isinstance(cell, Mapping):
            seen.update(dict.fromkeys(cell))
    return list(seen)


def _empty_row(model: str, label: str, stage: str, ran: bool) -> dict[str, Any]:
    return {"model": model, "label": label, "stage": stage, "ran": ran, "gold": None, "win_rate": None,
            "win_rate_ci": None, "lc_win_rate": None, "lc_win_rate_ci": None, "win_n": None, "kl_to_sft": None,
            "mean_length": None, "accuracy": {}}


def _final_numbers(final: Mapping[str, Any], model: str) -> dict[str, Any]:
    """What the final stage measured for one model (keys it lacks stay None)."""
    numbers: dict[str, Any] = {"gold": _gold_mean(_mapping(final.get("gold")).get(model)),
                               "kl_to_sft": _number(_mapping(final.get("kl_to_sft")).get(model)),
                               "mean_length": _number(_mapping(final.get("mean_length")).get(model))}
    win = _mapping(final.get("win_rate_vs_sft")).get(model)
    if win is not None:
        numbers.update(_win(win))
    return {k: v for k, v in numbers.items() if v is not None}


def report_stage_table(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model and setting, from ``summary.json`` ({stage: results}).

    Rows: the base model once per prompting strategy (zero-shot, few-shot, chain of thought,
    multiple choice), then SFT, DPO, PPO and any other model the final stage evaluated. Each row:
    ``model``, ``label``, ``stage`` (the stage that made it), ``ran`` (False: "stage not run"),
    ``gold`` (mean held-out gold reward), ``win_rate``, ``win_rate_ci``, ``lc_win_rate``,
    ``lc_win_rate_ci``, ``win_n`` (against SFT; intervals as half-widths), ``kl_to_sft``,
    ``mean_length`` and ``accuracy`` ({family: percent}); numbers the run did not measure are None.
    The base model's final-stage numbers (gold, win-rate...) go on its zero-shot row, the way the
    final stage prompts it.
    """
    final = _mapping(summary.get("final"))
    final_models, final_accuracy = _mapping(final.get("models")), _mapping(final.get("accuracy"))
    prompting = _mapping(summary.get("prompting")).get("accuracy")
    settings = _settings(prompting)
    # the final stage prompts the base model zero-shot: its numbers go on that row
    measured_row = "zero_shot" if "zero_shot" in settings else (settings[0] if settings else None)
    base_ran = "base" in summary or "base" in final_models or "base" in _mapping(final.get("gold"))
    rows = []
    for setting in settings or [None]:
        label = f"base, {SETTINGS.get(setting, setting)}" if setting else "base"
        row = _empty_row("base", label, "prompting" if setting else "base", base_ran or setting is not None)
        row["accuracy"] = _accuracy_column(prompting, setting) if setting else {}
        if setting == measured_row:
            row.update(_final_numbers(final, "base"))
            row["accuracy"] = row["accuracy"] or _accuracy_column(final_accuracy.get("base"), None)
        rows.append(row)
    measured = {**final_models, **_mapping(final.get("gold"))}  # best-of-n has answers and gold, no model folder
    others = [m for m in measured if m not in MODEL_LABELS]
    for model in ["sft", *(["best_of_n"] if "best_of_n" in measured else []), "dpo", "ppo", *others]:
        results = summary.get(model) if isinstance(summary.get(model), Mapping) else None
        row = _empty_row(model, MODEL_LABELS.get(model, model), model, results is not None or model in measured)
        if results is not None:  # the stage's own numbers, where the final stage did not measure them
            row["gold"] = _gold_mean(results.get("gold"))
            row["kl_to_sft"] = _number(results.get("kl_to_sft", results.get("kl")))
            row["accuracy"] = _accuracy_column(results.get("accuracy"), "zero_shot")
        row.update(_final_numbers(final, model))
        row["accuracy"] = _accuracy_column(final_accuracy.get(model), None) or row["accuracy"]
        rows.append(row)
    return rows


def table_families(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every task family some row has an accuracy for, in order of first appearance."""
    return list(dict.fromkeys(f for row in rows for f in row["accuracy"]))


def stage_timings(run: DemoRun) -> list[dict[str, Any]]:
    """[{stage, title, ran, seconds}] for every demo stage, in order."""
    return [{"stage": s, "title": STAGE_TITLES.get(s, s), "ran": s in run.results, "seconds": run.seconds.get(s)}
            for s in run.stage_names()]


# --- the runs' metrics and models -------------------------------------------------------------

def training_runs(run_dir: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, metrics records) of each training run with a loss: SFT, reward models, DPO (per round)."""
    candidates = [("SFT", run_dir / "sft" / "run")]
    candidates += [(f"reward model: {p.name}", p / "run") for p in sorted((run_dir / "reward").glob("*/"))]
    rounds = sorted((run_dir / "dpo" / "run").glob("round-*/"), key=lambda p: (len(p.name), p.name))  # 2 before 10
    candidates += [(f"DPO {p.name.replace('-', ' ')}", p) for p in rounds] or [("DPO", run_dir / "dpo" / "run")]
    out = []
    for label, folder in candidates:
        records = read_metrics(folder / "metrics.jsonl")
        if series(records, "loss")[0]:
            out.append((label, records))
    return out


def _first_series(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[str, list, list]:
    """(key, steps, values) of the first of ``keys`` the records hold numbers for."""
    for key in keys:
        steps, values = series(records, key)
        if steps:
            return key, steps, values
    return "", [], []


def model_cards(run: DemoRun) -> list[dict[str, Any]]:
    """[{name, model, card}] of every model the run made or used; ``card`` is its README.md or None.

    The run folder's own exports (``<stage>/run/final``, ``reward/<name>/run/final``) come first, so
    a moved run folder still links its cards; then the paths the stages recorded (e.g. the base model).
    """
    final, reward = _mapping(run.results.get("final")), _mapping(run.results.get("reward"))
    candidates = [(stage, run.run_dir / stage / "run" / "final") for stage in ("sft", "dpo", "ppo")]
    candidates += [(f"reward model: {p.parent.parent.name}", p)
                   for p in sorted(run.run_dir.glob("reward/*/run/final"))]
    candidates = [(name, path) for name, path in candidates if path.is_dir()]
    candidates += list(_mapping(final.get("models")).items())
    candidates += [(s, run.results[s].get("model")) for s in ("base", "sft", "dpo", "ppo")
                   if isinstance(run.results.get(s), Mapping)]
    candidates += [(f"reward model: {name}", info.get("model", info.get("path")))
                   for name, info in _mapping(reward.get("models")).items() if isinstance(info, Mapping)]
    names, folders, out = set(), set(), []
    for name, path in candidates:
        if not isinstance(path, (str, os.PathLike)) or not str(path) or name in names:
            continue
        path = Path(path)
        if os.path.realpath(path) in folders:
            continue
        names.add(name)
        folders.add(os.path.realpath(path))
        card = path / "README.md"
        out.append({"name": name, "model": path, "card": card if card.is_file() else None})
    order = ["base", "sft", "reward", "dpo", "ppo"]  # the journey's order; anything else after
    rank = {name: i for i, name in enumerate(order)}
    return sorted(out, key=lambda c: rank.get(c["name"].split()[0], len(order)))


# --- plots -------------------------------------------------------------------------------------

@dataclass
class Plot:
    id: str
    title: str
    caption: str
    png: bytes


def _figure(width: float, height: float, **subplots: Any):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global state, no display needed)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots) if subplots else fig.subplots()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_losses(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> bytes | None:
    """One panel per training run: the training loss (and its moving average) and eval_loss points."""
    if not runs:
        return None
    cols = min(len(runs), 3)
    rows = math.ceil(len(runs) / cols)
    fig, axes = _figure(5.2 * cols, 3.0 * rows, nrows=rows, ncols=cols, squeeze=False)
    for ax, (label, records) in zip(axes.flat, runs):
        steps, values = series(records, "loss")
        ax.plot(steps, values, color="#4c72b0", alpha=0.35, lw=1, label="train loss")
        ax.plot(steps, smooth(values, 5), color="#4c72b0", lw=2, label="train loss (moving avg.)")
        eval_steps, eval_values = series(records, "eval_loss")
        if eval_steps:
            ax.plot(eval_steps, eval_values, "o--", color="#dd8452", label="held-out loss")
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    return _png(fig)


def plot_ppo(records: Sequence[Mapping[str, Any]]) -> bytes | None:
    """PPO over steps: proxy (reward-model) score, gold reward, and KL to the reference."""
    panels = [("proxy reward (reward models)", PPO_PROXY, PPO_EVAL_PROXY, "#4c72b0"),
              ("gold reward", PPO_GOLD, PPO_EVAL_GOLD, "#dd8452"), ("KL to SFT (nats)", PPO_KL, (), "#55a868")]
    panels = [p for p in panels if _first_series(records, p[1])[1] or _first_series(records, p[2])[1]]
    if not panels:
        return None
    fig, axes = _figure(5.2 * len(panels), 3.2, ncols=len(panels), squeeze=False)
    for ax, (title, train_keys, eval_keys, color) in zip(axes.flat, panels):
        key, steps, values = _first_series(records, train_keys)
        if steps:
            ax.plot(steps, values, color=color, alpha=0.3, lw=1)
            ax.plot(steps, smooth(values, 5), color=color, lw=2, label=f"{key} (rollouts, moving avg.)")
        key, steps, values = _first_series(records, eval_keys)
        if steps:
            ax.plot(steps, values, "o--", color="black", label=f"{key} (held-out)")
        ax.set_title(title)
        ax.set_xlabel("step (rollout batches)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def overoptimization_curve(records: Sequence[Mapping[str, Any]], window: int = 5) -> dict[str, list[float]]:
    """Proxy and gold reward against sqrt(KL) to the reference, step by step (moving averages over
    ``window`` rollout batches): the axes of Gao et al. (2023), where the proxy keeps rising while gold
    peaks and falls. Empty lists when the records lack any of the three series."""
    curves = {name: dict(zip(*series(records, key)[:2])) for name, key in
              (("kl", _first_series(records, PPO_KL)[0]), ("proxy", _first_series(records, PPO_PROXY)[0]),
               ("gold", _first_series(records, PPO_GOLD)[0]))}
    steps = sorted(set(curves["kl"]) & set(curves["proxy"]) & set(curves["gold"]))
    out = {name: smooth([curves[name][s] for s in steps], window) for name in curves}
    return {"step": [float(s) for s in steps], "sqrt_kl": [math.sqrt(max(k, 0.0)) for k in out["kl"]],
            "proxy": out["proxy"], "gold": out["gold"]}


def plot_overoptimization(records: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Gold and proxy reward against sqrt(KL) (Gao et al. 2023): each on its own axis."""
    curve = overoptimization_curve(records)
    if len(curve["step"]) < 2:
        return None
    fig, ax = _figure(6.4, 3.6)
    gold_axis = ax.twinx()
    ax.plot(curve["sqrt_kl"], curve["proxy"], color="#4c72b0", lw=2, label="proxy (reward model)")
    gold_axis.plot(curve["sqrt_kl"], curve["gold"], color="#dd8452", lw=2, label="gold")
    peak = max(range(len(curve["gold"])), key=curve["gold"].__getitem__)
    gold_axis.plot([curve["sqrt_kl"][peak]], [curve["gold"][peak]], "o", color="#dd8452")
    ax.set_xlabel("sqrt(KL to SFT), nats^0.5 (rollouts, moving avg.)")
    ax.set_ylabel("proxy reward", color="#4c72b0")
    gold_axis.set_ylabel("gold reward", color="#dd8452")
    ax.set_title("Over-optimization: proxy vs gold as the policy moves away")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + gold_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    return _png(fig)


def plot_gold(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Mean held-out gold reward of each model (bar chart)."""
    rows = [r for r in rows if r["gold"] is not None]
    if not rows:
        return None
    fig, ax = _figure(1.4 * len(rows) + 2.5, 3.4)
    bars = ax.bar([r["label"] for r in rows], [r["gold"] for r in rows],
                  color=[COLORS.get(r["model"], "#937860") for r in rows])
    ax.bar_label(bars, fmt="%.3f", fontsize=9)
    ax.set_ylabel("mean gold reward (held-out)")
    ax.set_title("Gold reward by stage")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="x", labelsize=9)
    return _png(fig)


def plot_win_rates(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Win-rate against SFT (95% interval as error bars) and length-controlled win-rate per model."""
    rows = [r for r in rows if r["win_rate"] is not None]
    if not rows:
        return None
    fig, ax = _figure(1.6 * len(rows) + 3, 3.4)
    x = list(range(len(rows)))
    ci = [100 * (r["win_rate_ci"] or 0) for r in rows]
    bars = ax.bar([i - 0.2 for i in x], [100 * r["win_rate"] for r in rows], 0.4, yerr=ci, capsize=4,
                  color=[COLORS.get(r["model"], "#937860") for r in rows], label="win-rate (95% interval)")
    ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=2)
    lc = [(i, r["lc_win_rate"], r["lc_win_rate_ci"] or 0) for i, r in zip(x, rows) if r["lc_win_rate"] is not None]
    if lc:
        bars = ax.bar([i + 0.2 for i, _, _ in lc], [100 * v for _, v, _ in lc], 0.4, yerr=[100 * c for *_, c in lc],
                      capsize=4, color="white", edgecolor="black", hatch="//", label="length-controlled win-rate")
        ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=2)
    ax.axhline(50, color="black", lw=1, ls=":")
    ax.set_xticks(x, [r["label"] for r in rows])
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of prompts won against SFT")
    ax.set_title("Win-rate against SFT (ties count half)")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def plot_accuracy(rows: Sequence[Mapping[str, Any]], families: Sequence[str]) -> bytes | None:
    """Heatmap of accuracy (%) per family (columns) and model/setting (rows)."""
    rows = [r for r in rows if r["accuracy"]]
    if not rows or not families:
        return None
    grid = [[r["accuracy"].get(f, math.nan) for f in families] for r in rows]
    fig, ax = _figure(0.85 * len(families) + 3.5, 0.45 * len(rows) + 1.8)
    cmap = matplotlib.colormaps["Greens"].with_extremes(bad="#eeeeee")  # a copy: the registry's stays as it is
    image = ax.imshow(np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i, values in enumerate(grid):
        for j, v in enumerate(values):
            ax.text(j, i, "—" if math.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 60 else "black")
    ax.set_xticks(range(len(families)), [f.replace("_", " ") for f in families], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.set_title("Accuracy per task family (%)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def make_plots(run: DemoRun, rows: Sequence[Mapping[str, Any]]) -> list[Plot]:
    """Every plot the run's data allows, in reading order; plots without data are left out."""
    plots = [
        Plot("plot-losses", "Training losses", "Training loss per optimizer step (faint: raw, solid: moving "
             "average over 5 logs) and held-out loss (points), for SFT, each reward model and DPO.",
             plot_losses(training_runs(run.run_dir))),
        Plot("plot-ppo", "PPO: proxy vs gold reward, KL", "The reward PPO optimizes (reward models) next to "
             "the gold reward it stands for, and the KL to the SFT model: gold falling while the proxy "
             "rises is reward hacking.", plot_ppo(read_metrics(run.run_dir / "ppo" / "run" / "metrics.jsonl"))),
        Plot("plot-overoptimization", "Over-optimization", "PPO with a small KL coefficient against the same "
             "reward model (demo stage overoptimization): proxy and gold reward against sqrt(KL) to SFT, as Gao "
             "et al. (2023) plot them. The proxy keeps rising; gold peaks (dot) and falls.",
             plot_overoptimization(read_metrics(run.run_dir / "overoptimization" / "run" / "metrics.jsonl"))),
        Plot("plot-gold", "Gold reward by stage", "Mean gold reward of each model's answers to held-out "
             "prompts (final stage).", plot_gold(rows)),
        Plot("plot-win-rates", "Win-rate against SFT", "Share of held-out prompts on which each model's "
             "answer beats SFT's by gold reward, with its 95% interval; hatched: length-controlled.",
             plot_win_rates(rows)),
        Plot("plot-accuracy", "Accuracy per task family", "Exact-match or multiple-choice accuracy on "
             "held-out examples, per task family and model or prompting strategy.",
             plot_accuracy(rows, table_families(rows))),
    ]
    return [p for p in plots if p.png]


# --- HTML --------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #f6f7f9; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { margin: 0 0 4px; font-size: 28px; } h2 { margin-top: 36px; border-bottom: 2px solid #dde1e6; padding-bottom: 4px; }
.meta, .muted { color: #667; } .not-run { color: #a05a00; font-style: italic; }
table { border-collapse: collapse; background: white; box-shadow: 0 1px 2px rgba(0,0,0,.08); margin: 8px 0; }
th, td { padding: 5px 9px; border: 1px solid #e2e5ea; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; } td.label, th.label { text-align: left; }
th.group { text-align: center; }
th.family { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; font-size: 12px; padding: 6px 4px; }
#stage-table { font-size: 14px; } #stage-table th.metric { white-space: normal; min-width: 70px; max-width: 130px; }
#stage-table th.metric .muted { white-space: nowrap; font-weight: 400; font-size: 12px; }
#stage-table td, #stage-table th { padding: 4px 7px; }
tbody tr:nth-child(even) { background: #fafbfc; }
.table-wrap { overflow-x: auto; }
.bar { display: inline-block; height: 10px; background: #4c72b0; border-radius: 2px; vertical-align: middle; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; background: white; padding: 12px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
figure.wide { grid-column: 1 / -1; }
img.plot { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #556; font-size: 13px; margin-top: 6px; }
.problems { background: #fff4e5; border: 1px solid #f0b46c; padding: 8px 14px; }
section.stage { background: white; padding: 8px 16px; margin: 10px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
section.stage h3 { margin: 6px 0; font-size: 16px; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; font-size: 12px; max-height: 420px; }
.best { font-weight: 700; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _fmt(value: float | None, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    return "—" if value is None else f"{value * scale:{spec}}{suffix}"


def _with_ci(rate: float | None, ci: float | None) -> str:
    """A rate in percent with its interval's half-width in points: 62.0% ± 4.1."""
    return _fmt(rate, ".1f", 100, "%") + (f" ± {100 * ci:.1f}" if rate is not None and ci else "")


def _scalar(value: Any) -> str:
    """A count as a count, a fraction or score with 3 decimals, anything else as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _fmt(_number(value), ".3f") if isinstance(value, float) or value is None else _esc(value)


def _timings_html(run: DemoRun) -> str:
    timings = stage_timings(run)
    total = sum(t["seconds"] or 0 for t in timings)
    lines = ['<table id="timings"><thead><tr><th class="label">stage</th><th class="label">what</th>'
             '<th>time</th><th class="label">share</th></tr></thead><tbody>']
    for t in timings:
        share = (t["seconds"] or 0) / total if total else 0
        status = _duration(t["seconds"]) if t["ran"] else '<span class="not-run">stage not run</span>'
        lines.append(f'<tr class="timing" data-stage="{_esc(t["stage"])}"><td class="label">'
                     f'<a href="#stage-{_esc(t["stage"])}">{_esc(t["stage"])}</a></td>'
                     f'<td class="label">{_esc(t["title"])}</td><td>{status}</td>'
                     f'<td class="label"><span class="bar" style="width:{240 * share:.0f}px"></span></td></tr>')
    lines.append(f'</tbody><tfoot><tr><th class="label">total</th><th></th><th id="total-time">{_duration(total)}'
                 '</th><th></th></tr></tfoot></table>')
    return "\n".join(lines)


def _stage_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    families = table_families(rows)
    golds = [r["gold"] for r in rows if r["gold"] is not None]
    best_gold = max(golds) if golds else None
    head = ('<table id="stage-table"><thead><tr><th class="label" rowspan="2">model</th>'
            '<th class="metric" rowspan="2">gold reward<br><span class="muted">mean, held-out</span></th>'
            '<th class="metric" rowspan="2">win-rate vs SFT<br><span class="muted">± 95% interval</span></th>'
            '<th class="metric" rowspan="2">LC win-rate<br><span class="muted">length-controlled</span></th>'
            '<th class="metric" rowspan="2">KL to SFT<br><span class="muted">nats</span></th>'
            '<th class="metric" rowspan="2">mean length<br><span class="muted">tokens</span></th>'
            + (f'<th class="group" colspan="{len(families)}">accuracy per family (%)</th>' if families else "")
            + '</tr><tr>' + "".join(f'<th class="family">{_esc(f.replace("_", " "))}</th>' for f in families)
            + "</tr></thead><tbody>")
    body = []
    for r in rows:
        label = f'<td class="label">{_esc(r["label"])}</td>'
        if not r["ran"]:
            body.append(f'<tr class="stage-row not-run-row" data-model="{_esc(r["model"])}">{label}'
                        f'<td class="label not-run" colspan="{5 + len(families)}">stage not run</td></tr>')
            continue
        win, lc = _with_ci(r["win_rate"], r["win_rate_ci"]), _with_ci(r["lc_win_rate"], r["lc_win_rate_ci"])
        if r["model"] == "sft" and r["win_rate"] is None:
            win = '<span class="muted">reference</span>'
        gold = _fmt(r["gold"], ".3f")
        if r["gold"] is not None and r["gold"] == best_gold:
            gold = f'<span class="best">{gold}</span>'
        cells = [gold, win, lc, _fmt(r["kl_to_sft"], ".3f"),
                 _fmt(r["mean_length"], ".1f")]
        accuracy = []
        for f in families:
            v = r["accuracy"].get(f)
            shade = "" if v is None else f' style="background: rgba(85,168,104,{0.45 * v / 100:.2f})"'
            accuracy.append(f"<td class=\"family\"{shade}>{_fmt(v, '.0f')}</td>")
        body.append(f'<tr class="stage-row" data-model="{_esc(r["model"])}">{label}'
                    + "".join(f"<td>{c}</td>" for c in cells) + "".join(accuracy) + "</tr>")
    return "<div class=\"table-wrap\">" + head + "\n".join(body) + "</tbody></table></div>"


def _reward_html(reward: Any) -> str:
    models = reward.get("models") if isinstance(reward, Mapping) else None
    if not isinstance(models, Mapping) or not models:
        return '<p class="not-run">stage not run</p>' if reward is None else "<p>No reward-model results.</p>"
    keys = list(dict.fromkeys(k for m in models.values() if isinstance(m, Mapping)
                              for k, v in m.items() if _number(v) is not None))
    lines = ['<table id="reward-table"><thead><tr><th class="label">reward model</th>'
             + "".join(f"<th>{_esc(k.replace('_', ' '))}</th>" for k in keys) + "</tr></thead><tbody>"]
    for name, numbers in models.items():
        numbers = numbers if isinstance(numbers, Mapping) else {}
        lines.append(f'<tr><td class="label">{_esc(name)}</td>'
                     + "".join(f"<td>{_scalar(numbers.get(k))}</td>" for k in keys) + "</tr>")
    return "\n".join(lines) + "</tbody></table>"


def _cards_html(run: DemoRun) -> str:
    cards = model_cards(run)
    if not cards:
        return '<p class="muted">No exported models found in this run.</p>'
    items = []
    for c in cards:
        if c["card"] is not None:
            href = quote(Path(os.path.relpath(c["card"], run.run_dir)).as_posix())
            link = f'<a class="model-card" href="{_esc(href)}">model card</a>'
        else:
            link = '<span class="not-run">no model card</span>'
        items.append(f'<li><b>{_esc(c["name"])}</b>: {link} <span class="muted">({_esc(c["model"])})</span></li>')
    return '<ul id="model-cards">' + "".join(items) + "</ul>"


def _stage_details_html(run: DemoRun) -> str:
    out = []
    for name in run.stage_names():
        title = f'{_esc(name)} <span class="muted">— {_esc(STAGE_TITLES.get(name, ""))}</span>'
        if name not in run.results:
            out.append(f'<section class="stage" id="stage-{_esc(name)}"><h3>{title}</h3>'
                       '<p class="not-run">stage not run</p></section>')
            continue
        text = json.dumps(run.results[name], indent=2, ensure_ascii=False)
        if len(text) > MAX_JSON_CHARS:
            text = (text[:MAX_JSON_CHARS] + f"\n… {len(text) - MAX_JSON_CHARS} more characters: see "
                    f"{run.run_dir / name / 'stage.json'}")
        results = run.results[name] if isinstance(run.results[name], Mapping) else {}
        facts = "".join(f" · {_esc(k.replace('_', ' '))} <b>{_scalar(v)}</b>" for k, v in results.items()
                        if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        out.append(f'<section class="stage" id="stage-{_esc(name)}"><h3>{title}</h3>'
                   f'<p>finished in {_duration(run.seconds.get(name))}{facts}</p>'
                   f'<details><summary>results</summary><pre>{_esc(text)}</pre></details></section>')
    return "\n".join(out)


def render_report(run: DemoRun) -> str:
    """The report page's HTML for a loaded run."""
    rows = report_stage_table(run.results)
    plots = make_plots(run, rows)
    figures = "\n".join(
        f'<figure class="{"wide" if p.id in WIDE_PLOTS else "half"}">'
        f'<img class="plot" id="{p.id}" alt="{_esc(p.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}">'
        f"<figcaption><b>{_esc(p.title)}.</b> {_esc(p.caption)}</figcaption></figure>" for p in plots)
    problems = ("<div class=\"problems\" id=\"problems\"><b>Some files could not be read:</b><ul>"
                + "".join(f"<li>{_esc(p)}</li>" for p in run.problems) + "</ul></div>") if run.problems else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>posttrain demo report</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header id="header">
<h1>posttrain demo report</h1>
<p class="meta">run folder <code>{_esc(run.run_dir)}</code> · report written {time.strftime("%Y-%m-%d %H:%M")}</p>
{problems}
{_timings_html(run)}
</header>
<h2 id="every-stage">Every stage in one table</h2>
<p class="muted">Held-out prompts. Gold reward: the world's exact reward (correctness, rules, safety, brevity).
Win-rates against SFT's answers to the same prompts, judged by gold reward; the length-controlled one
removes the part explained by answer length. The base model's gold and win-rate sit on its zero-shot row.</p>
{_stage_table_html(rows)}
<h2 id="plots">Plots</h2>
<div class="plots">
{figures or '<p class="muted">No plots: no stage with metrics has run yet.</p>'}
</div>
<h2 id="reward-models">Reward models</h2>
<div class="table-wrap">{_reward_html(run.results.get("reward"))}</div>
<h2 id="cards">Model cards</h2>
{_cards_html(run)}
<h2 id="stages">Stages</h2>
{_stage_details_html(run)}
</main>
</body>
</html>
"""


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` for a demo run folder and return its path."""
    run = load_run(run_dir)
    path = run.run_dir / "report.html"
    return write_text_atomic(path, render_report(run))
