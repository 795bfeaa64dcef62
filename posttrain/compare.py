"""`posttrain compare`: the same prompts to several checkpoints, side by side, judged against the first.

Every model answers every prompt (greedy by default) with its own tokenizer's chat template; a
judge (:mod:`posttrain.evaluation.winrate`: the world's gold reward, a reward model or an LLM
asked both orders) compares each later model's answer with the first model's. The run prints a
table of prompts and answers with the verdicts and a summary of win-rates (raw and
length-controlled), and writes to ``run_dir``:

- ``compare.json``: settings, one summary entry per model, one row per prompt (prompt, every
  model's answer, verdicts against the first model, per-answer scores when the judge has them);
- ``compare.html``: the same as one self-contained page (no scripts, no external files);
- ``config.yaml``: the config of the run.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import posttrain
from posttrain.config import save_config
from posttrain.data.formats import FieldError
from posttrain.data.readers import parse_rows, read_records
from posttrain.errors import UserError
from posttrain.evaluation.winrate import (
    DEFAULT_JUDGE_TEMPLATE, GoldJudge, LLMJudge, RewardModelJudge, ScorerJudge, compare_answers,
    format_conversation, word_count,
)
from posttrain.files import write_json_atomic, write_text_atomic
from posttrain.generation.hf import generate_chat
from posttrain.models.config import ModelConfig
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.world.entities import make_world
from posttrain.world.tasks import FAMILIES, check_families, make_tasks

if TYPE_CHECKING:
    from posttrain.evaluation.winrate import Judge
    from posttrain.recipes.config import CompareConfig


class CompareError(UserError):
    """A compare setting that cannot work; the message says which and what to do."""


@dataclass
class PromptSet:
    """The prompts every model answers."""

    messages: list[list[dict[str, str]]]
    ids: list[str]
    """A stable name per prompt: the world task id, or file:line."""
    families: list[str]
    """World task family per prompt ("" for file prompts)."""
    examples: list[Any] = field(default_factory=list)
    """World TaskExamples (for the gold judge); empty for file prompts."""
    source: str = ""
    """Where the prompts came from, in words."""


# --------------------------------------------------------------------------- prompts


def spread(n: int, k: int) -> list[int]:
    """``n`` items shared as evenly as possible by ``k`` groups, the first ones taking the remainder."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def world_prompts(families: list[str], n: int, seed: int) -> PromptSet:
    """``n`` held-out task prompts of the world of ``seed``, spread evenly over ``families`` (empty: all)."""
    families = check_families(families or FAMILIES, "families", CompareError)
    if n < 1:
        raise CompareError(f"n: compare at least one world prompt (n={n})")
    world = make_world(seed)
    counts = spread(n, len(families))
    examples = [e for f, k in zip(families, counts) if k for e in make_tasks(world, seed, f, "heldout", k)]
    return PromptSet([list(e.messages) for e in examples], [e.id for e in examples], [e.family for e in examples],
                     examples, f"world seed {seed}, held-out prompts of {', '.join(families)}")


def _jsonl_rows(path: Path):
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, FieldError(None, f"invalid JSON: {e.msg} (column {e.colno})", "invalid_json")
                continue
            # {"messages": [...]} ending with a user turn is a prompt, not a conversation to learn from.
            if isinstance(raw, dict) and isinstance(raw.get("messages"), list) and raw["messages"] \
                    and isinstance(raw["messages"][-1], dict) and raw["messages"][-1].get("role") != "assistant":
                raw = {"prompt": raw["messages"], **{k: v for k, v in raw.items() if k != "messages"}}
            yield lineno, raw


def file_prompts(path: str, n: int) -> PromptSet:
    """The first ``n`` (0: all) prompts of a file: {"prompt": ...} or {"messages": [...]} records (JSONL,
    or any format posttrain's readers take); a conversation's trailing assistant turns are dropped."""
    source = Path(path)
    if not source.exists():
        raise CompareError(f"prompts: no file {path}; give a JSONL file of {{\"prompt\": ...}} or "
                           f"{{\"messages\": [...]}} records, or prompts=world")
    if source.suffix == ".jsonl":
        result = parse_rows(_jsonl_rows(source), str(source), unit="line")
    else:
        result = read_records(source)
    records = result.expect("prompt", "conversation")
    if not records:
        raise CompareError(f"prompts: {path} holds no records")
    messages = []
    for record in records:
        turns = record.as_dicts()
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        messages.append(turns)
    keep = len(messages) if n <= 0 else min(n, len(messages))
    return PromptSet(messages[:keep], result.locations[:keep], [""] * keep, [],
                     f"{path}: first {keep} of {len(messages)} prompts")


def load_prompts(cfg: "CompareConfig") -> PromptSet:
    if cfg.prompts == "world":
        return world_prompts(cfg.families, cfg.n, cfg.seed)
    if cfg.families:
        raise CompareError("families: only world prompts have families; leave it empty for a prompt file")
    return file_prompts(cfg.prompts, cfg.n)


# --------------------------------------------------------------------------- models and judge


def model_names(models: list[str], names: list[str]) -> list[str]:
    """``names`` when given (one per model, distinct); else each path's last parts, as few as keep them apart."""
    if names:
        if len(names) != len(models):
            raise CompareError(f"names: {len(names)} names for {len(models)} models; give one per model or none")
        if len(set(names)) != len(names):
            raise CompareError(f"names: {names} repeats a name; each model needs its own column")
        return list(names)
    parts = [Path(m).parts or (m,) for m in models]
    depth = [1] * len(models)
    while True:
        out = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        dupes = {o for o in out if out.count(o) > 1}
        grow = [i for i, o in enumerate(out) if o in dupes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    return [o if out.count(o) == 1 else f"{o}#{i + 1}" for i, o in enumerate(out)]


def make_judge(cfg: "CompareConfig", prompts: PromptSet) -> "Judge | None":
    """The judge the config asks for (None: answers only)."""
    kind = cfg.judge
    if kind == "auto":
        kind = "gold" if prompts.examples else "none"
    if kind == "none":
        return None
    if kind == "gold":
        if not prompts.examples:
            raise CompareError("judge=gold scores the embedded world's tasks only; use prompts=world, or "
                               "judge=reward_model / llm with judge_model=<folder>, or judge=none")
        return GoldJudge(prompts.examples)
    if kind == "teacher":
        from posttrain.synth.label import TeacherJudge
        from posttrain.synth.teachers import cached_teacher

        return TeacherJudge(cached_teacher(cfg.judge_teacher, Path(cfg.run_dir) / "judge-cache"))
    if not cfg.judge_model:
        what = "a reward model" if kind == "reward_model" else "a causal LM"
        raise CompareError(f"judge={kind} needs judge_model=<folder> ({what})")
    if kind == "reward_model":
        return RewardModelJudge.from_pretrained(cfg.judge_model, device=cfg.device, dtype=cfg.dtype,
                                                batch_size=cfg.batch_size)
    return LLMJudge.from_pretrained(cfg.judge_model, device=cfg.device, dtype=cfg.dtype,
                                    template=cfg.judge_template or DEFAULT_JUDGE_TEMPLATE, combine=cfg.judge_combine,
                                    batch_size=cfg.batch_size, max_answer_tokens=cfg.judge_max_answer_tokens or None)


@dataclass
class Answers:
    name: str
    path: str
    texts: list[str]
    cut: int
    """Answers that reached max_new_tokens without a stop token."""
    seconds: float


def answer_all(cfg: "CompareConfig", path: str, name: str, prompts: PromptSet) -> Answers:
    """Load one checkpoint, answer every prompt, free it."""
    start = time.time()
    model_cfg = ModelConfig(name_or_path=path, device=cfg.device, dtype=cfg.dtype)
    tokenizer = load_tokenizer(model_cfg)
    model = load_causal_lm(model_cfg, for_training=False, tokenizer=tokenizer)
    outputs = generate_chat(model, tokenizer, prompts.messages, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, batch_size=cfg.batch_size,
                            seed=cfg.seed if cfg.temperature > 0 else None)
    del model
    return Answers(name, path, [o.text for o in outputs], sum(not o.finished for o in outputs), time.time() - start)


# --------------------------------------------------------------------------- the result


def build_result(cfg: "CompareConfig", prompts: PromptSet, answers: list[Answers], judge: "Judge | None",
                 seconds: float) -> dict[str, Any]:
    """compare.json's content: settings, per-model summary, per-prompt rows (verdicts vs the first model)."""
    base = answers[0]
    comparisons = {a.name: compare_answers(judge, prompts.messages, a.texts, base.texts)
                   for a in answers[1:]} if judge is not None else {}
    scores = {}
    if isinstance(judge, ScorerJudge):  # per-answer scores for the table (gold, reward model)
        scores = {a.name: judge.scores(prompts.messages, a.texts) for a in answers}
    summary = []
    for a in answers:
        entry: dict[str, Any] = {"name": a.name, "path": a.path,
                                 "mean_length": sum(map(word_count, a.texts)) / len(a.texts),
                                 "cut": a.cut, "generation_seconds": round(a.seconds, 1)}
        if scores:
            entry["mean_score"] = sum(scores[a.name]) / len(a.texts)
        entry["vs_baseline"] = comparisons[a.name].summary() if a.name in comparisons else None
        summary.append(entry)
    rows = []
    for i, messages in enumerate(prompts.messages):
        row: dict[str, Any] = {"index": i, "id": prompts.ids[i], "family": prompts.families[i], "prompt": messages,
                               "answers": {a.name: a.texts[i] for a in answers},
                               "verdicts": {name: c.verdicts[i] for name, c in comparisons.items()}}
        if scores:
            row["scores"] = {name: s[i] for name, s in scores.items()}
        rows.append(row)
    settings = {"models": [a.path for a in answers], "names": [a.name for a in answers], "baseline": base.name,
                "prompts": prompts.source, "n": len(prompts.messages), "judge": getattr(judge, "name", "none"),
                "verdict": "1: the model's answer is better than the baseline's, 0: worse, 0.5: tie",
                "length_unit": "words", "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
                "seed": cfg.seed, "posttrain_version": posttrain.__version__, "seconds": round(seconds, 1)}
    if getattr(judge, "truncated", 0):
        settings["judge_answers_cut"] = judge.truncated
    if hasattr(judge, "label_mass"):  # an LLM judge: near 1 when it answers with one of the two labels
        settings["judge_label_mass"] = judge.label_mass
    return {"settings": settings, "summary": summary, "rows": rows}


# --------------------------------------------------------------------------- terminal


def verdict_word(v: float) -> str:
    return "win" if v > 0.5 else "loss" if v < 0.5 else "tie"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:max(limit - 1, 1)] + "…"


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _lc_text(c: dict[str, Any]) -> str:
    if c["lc_low"] != c["lc_low"]:
        return _pct(c["lc_win_rate"])
    return f"{_pct(c['lc_win_rate'])} [{100 * c['lc_low']:.0f}–{100 * c['lc_high']:.0f}]"


def answers_table(result: dict[str, Any], show_chars: int):
    """Rich table: one row per prompt, one column per model, each later answer with its verdict."""
    names = result["settings"]["names"]
    colours = {"win": "green", "loss": "red", "tie": "yellow"}
    table = Table(title=f"Answers (verdicts vs {names[0]}, judge: {result['settings']['judge']})", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("prompt", ratio=2)
    for name in names:
        table.add_column(name, ratio=2)
    for row in result["rows"]:
        cells = [str(row["index"]), escape(_short(format_conversation(row["prompt"]), show_chars))]
        for name in names:
            cell = escape(_short(row["answers"][name], show_chars)) or "[dim](empty)[/dim]"
            if name in row["verdicts"]:
                v = row["verdicts"][name]
                word = verdict_word(v)
                cell += f"\n[bold {colours[word]}]{word}[/]" + (f" {v:.2f}" if v not in (0.0, 0.5, 1.0) else "")
            if "scores" in row:
                cell += f" [dim]score {row['scores'][name]:.2f}[/dim]"
            cells.append(cell)
        table.add_row(*cells)
    return table


def summary_table(result: dict[str, Any]):
    """Rich table: one row per model, win-rates against the first."""
    settings = result["settings"]
    table = Table(title=f"Against {settings['baseline']} on {settings['n']} prompts (judge: {settings['judge']}; "
                        f"win-rate ± 95% CI, ties half; LC: length-controlled [95% CI])")
    columns = ["model", "win-rate", "LC win-rate", "wins/ties/losses", "mean words", "cut"]
    scored = any("mean_score" in s for s in result["summary"])
    for c in columns + (["mean score"] if scored else []):
        table.add_column(c, justify="left" if c == "model" else "right")
    for s in result["summary"]:
        c = s["vs_baseline"]
        if c is None:
            cells = [s["name"] + (" (baseline)" if s["name"] == settings["baseline"] else ""), "-", "-", "-"]
        else:
            cells = [s["name"], f"{_pct(c['win_rate'])} ± {100 * c['ci']:.1f}",
                     _lc_text(c),
                     f"{c['wins']}/{c['ties']}/{c['losses']}"]
        cells += [f"{s['mean_length']:.1f}", str(s["cut"])]
        if scored:
            cells.append(f"{s['mean_score']:.3f}")
        table.add_row(*cells)
    return table


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #1d2330; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #d5d9e0; padding: 0.45rem 0.6rem; vertical-align: top; text-align: left; }
th { background: #f1f3f7; }
td.text { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 0.7rem; font-size: 0.75rem;
         font-family: system-ui, sans-serif; font-weight: 600; margin-top: 0.35rem; }
.win { background: #d8f3dc; color: #1b5e20; } .loss { background: #fde2e1; color: #8e1c1c; }
.tie { background: #fff3c4; color: #6d5200; } .base { background: #e3e8f3; color: #2b3a67; }
.meta { color: #5b6475; font-size: 0.85rem; } .score { color: #5b6475; font-size: 0.75rem; margin-left: 0.4rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_summary(result: dict[str, Any]) -> str:
    scored = any("mean_score" in s for s in result["summary"])
    head = ["model", "win-rate vs baseline", "LC win-rate", "wins / ties / losses", "mean words", "cut at max tokens"]
    head += ["mean score"] if scored else []
    lines = ["<table id=\"summary\"><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for s in result["summary"]:
        c = s["vs_baseline"]
        if c is None:
            cells = [f"{_e(s['name'])} <span class=\"badge base\">baseline</span>", "–", "–", "–"]
        else:
            lc = _lc_text(c)
            cells = [_e(s["name"]), _e(f"{_pct(c['win_rate'])} ± {100 * c['ci']:.1f}"), _e(lc),
                     _e(f"{c['wins']} / {c['ties']} / {c['losses']}")]
        cells += [_e(f"{s['mean_length']:.1f}"), _e(s["cut"])]
        if scored:
            cells.append(_e(f"{s['mean_score']:.3f}"))
        tds = (f"<td class=\"{'num' if k else ''}\">{c}</td>" for k, c in enumerate(cells))
        lines.append("<tr>" + "".join(tds) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _html_rows(result: dict[str, Any]) -> str:
    names = result["settings"]["names"]
    head = "<th>#</th><th>prompt</th>" + "".join(f"<th>{_e(n)}</th>" for n in names)
    lines = [f"<table id=\"answers\"><thead><tr>{head}</tr></thead><tbody>"]
    for row in result["rows"]:
        label = f"<div class=\"meta\">{_e(row['id'])}</div>" if row["id"] else ""
        cells = [f"<td class=\"num\">{row['index']}</td>",
                 f"<td class=\"text\">{_e(format_conversation(row['prompt']))}{label}</td>"]
        for n in names:
            extra = ""
            if n in row["verdicts"]:
                v = row["verdicts"][n]
                word = verdict_word(v)
                shown = word if v in (0.0, 0.5, 1.0) else f"{word} {v:.2f}"
                extra += f"<br><span class=\"badge {word}\" title=\"verdict {v:.4f}\">{_e(shown)}</span>"
            if "scores" in row:
                extra += f"<span class=\"score\">score {row['scores'][n]:.3f}</span>"
            cells.append(f"<td class=\"text\">{_e(row['answers'][n])}{extra}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def render_html(result: dict[str, Any]) -> str:
    """compare.html: one self-contained page (inline CSS, no scripts); every text from models or files is escaped."""
    s = result["settings"]
    meta = (f"{s['n']} prompts ({s['prompts']}); judge: {s['judge']}; verdicts against {s['baseline']}; "
            f"{'greedy' if s['temperature'] == 0 else 'temperature ' + str(s['temperature'])}, "
            f"max {s['max_new_tokens']} new tokens; posttrain {s['posttrain_version']}")
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>posttrain compare</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        "<h1>posttrain compare</h1>", f"<p class=\"meta\">{_e(meta)}</p>",
        "<h2>Summary</h2>", _html_summary(result),
        "<p class=\"meta\">Win-rate: share of prompts where the model's answer beats the baseline's, ties counted "
        "half, ± the 95% interval. LC: the win-rate at equal answer lengths (a logistic regression on the length "
        "difference, as AlpacaEval's length control).</p>",
        "<h2>Answers</h2>", _html_rows(result), "</body>", "</html>", ""])


# --------------------------------------------------------------------------- the command


def run_compare(cfg: "CompareConfig") -> dict[str, Any]:
    """The `posttrain compare` command: answer, judge, print, write compare.json / compare.html."""
    console = Console()
    if not console.is_terminal:  # logs and pipes: room for the answer columns
        console = Console(width=max(console.width, 160))
    if not cfg.models:
        raise CompareError("models: give at least one checkpoint, e.g. models=[runs/sft/final,runs/dpo/final]")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise CompareError(f"max_new_tokens ({cfg.max_new_tokens}) and batch_size ({cfg.batch_size}) must be "
                           f"at least 1")
    names = model_names(cfg.models, cfg.names)
    start = time.time()
    prompts = load_prompts(cfg)
    judge = make_judge(cfg, prompts)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    console.print(f"compare: {len(prompts.messages)} prompts ({prompts.source}); "
                  f"judge: {getattr(judge, 'name', 'none')}")
    answers = []
    for path, name in zip(cfg.models, names):
        answers.append(answer_all(cfg, path, name, prompts))
        a = answers[-1]
        console.print(f"  {name}: {len(a.texts)} answers in {a.seconds:.1f}s "
                      f"({a.cut} cut at max_new_tokens={cfg.max_new_tokens})")
    result = build_result(cfg, prompts, answers, judge, time.time() - start)
    write_json_atomic(run_dir / "compare.json", result)
    write_text_atomic(run_dir / "compare.html", render_html(result))
    console.print(answers_table(result, cfg.show_chars))
    console.print(summary_table(result))
    console.print(f"written: {run_dir / 'compare.html'}, {run_dir / 'compare.json'}")
    return result
