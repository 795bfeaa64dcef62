"""`posttrain eval`: prompt a model on the world's task families and report accuracy per strategy.

For each family (rows) and strategy (columns: zero-shot, few-shot, chain of thought, zero-shot
CoT, and multiple choice by summed / length-normalized log-prob) it scores ``n`` held-out examples,
prints accuracy with its 95% interval, and writes into the run directory:

- ``results.json``: every cell (n, correct, accuracy, interval, chance, prompts truncated) and every
  setting that changes scores (model, its dtype and device, prompt format, chat template and its
  SHA-256, strategies, shots, n, seed, split, batch size, token budgets, posttrain, task-suite,
  torch and transformers versions);
- ``predictions.jsonl``: each example's completion, extracted answer and verdict;
- ``config.yaml``: the resolved config.

Generation is greedy and batched. Plain Q/A completions stop and are read at their first newline
(answers are one line); chat replies end at <|im_end|> or eos and are read whole. Each cell's
token budget is the longest canonical solution of its examples, worked or direct, plus a margin
(capped by ``max_new_tokens``), so a cell costs little more than its answers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from posttrain.evaluation.prompting import STRATEGIES, build_prompt, completion_answer, select_shots, uses_shots
from posttrain.evaluation.scoring import exact_match, extract_answer, follows_rule, proportion_ci, solved
from posttrain.world.tasks import FAMILIES, HELDOUT_FAMILIES, TASKS_VERSION, TaskExample, make_tasks

MC_COLUMNS = ("mc_sum", "mc_norm")
"""The two columns the "mc" strategy fills: option chosen by summed and by per-token log-prob."""


@dataclass
class Cell:
    family: str
    strategy: str
    n: int
    correct: int
    chance: float | None = None
    """Accuracy of guessing (1 / options) for multiple choice; None for generation."""
    truncated: int = 0
    """Prompts that lost tokens from the left to fit the model's context."""
    shots_dropped: int = 0
    """Solved examples left out of prompts (summed over prompts) to fit max_prompt_tokens."""
    max_new_tokens: int | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def ci95(self) -> float:
        return proportion_ci(self.correct, self.n)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "predictions"}
        return {**out, "accuracy": round(self.accuracy, 6), "ci95": round(self.ci95, 6)}


# ---------------------------------------------------------------------------------------------
# One cell


def _encode(tokenizer, prompt: str, chat: bool) -> list[int]:
    # A chat template writes its own special tokens; plain prompts are encoded as the corpus was.
    return tokenizer(prompt, add_special_tokens=not chat)["input_ids"]


def _budget(tokenizer, examples: Sequence[TaskExample], cap: int) -> int:
    """Tokens to generate: the longest canonical solution, worked or direct, plus a quarter and a few
    tokens, at most ``cap``. Worked solutions count whatever the strategy: a model tuned to show its
    working answers a plain question that way, and is judged by its conclusion."""
    longest = max(len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
                  for e in examples for text in (e.answer, e.cot) if text)
    return max(1, min(cap, math.ceil(longest * 1.25) + 4))


def _context_limit(model) -> int:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9


@functools.lru_cache(maxsize=8)
def _stop_ids(tokenizer, newline: bool) -> tuple[int, ...]:
    """<|im_end|> if the vocabulary has it, and with ``newline`` every token whose text holds a newline."""
    ids = []
    if newline:
        ids = [i for tok, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([tok])]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    return tuple(sorted(set(ids)))


@contextlib.contextmanager
def stop_at_answer_end(model, tokenizer, newline: bool = True) -> Iterator[None]:
    """Make generation stop where an answer ends: while inside, <|im_end|> (and with ``newline`` every
    newline-bearing token: plain Q/A answers are one line) is an extra eos id of the model's
    generation_config, which ``posttrain.generation.generate`` honours."""
    from posttrain.models.loading import unwrap_model

    inner = unwrap_model(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft keeps it on the base
    config = inner.generation_config
    saved = config.eos_token_id
    current = [saved] if isinstance(saved, int) else list(saved or [])
    config.eos_token_id = current + [i for i in _stop_ids(tokenizer, newline) if i not in current]
    try:
        yield
    finally:
        config.eos_token_id = saved


def fit_prompt(tokenizer, example: TaskExample, strategy: str, shots: Sequence[TaskExample], chat: bool,
               limit: int) -> tuple[list[int], int, bool]:
    """(prompt ids, shots kept, cut from the left): drop the farthest shots until the prompt fits ``limit``
    tokens; a prompt too long even without shots loses its first tokens."""
    shots = list(shots)
    while True:
        ids = _encode(tokenizer, build_prompt(example, strategy, shots, chat, tokenizer), chat)
        if len(ids) <= limit:
            return ids, len(shots), False
        if not shots:
            return ids[len(ids) - limit:], 0, True
        shots = shots[1:]


def evaluate_generation(model, tokenizer, examples: Sequence[TaskExample], pool: Sequence[TaskExample],
                        strategy: str, *, shots: int = 3, seed: int = 0, chat: bool = False, batch_size: int = 32,
                        max_new_tokens: int = 128, max_prompt_tokens: int = 10**9) -> Cell:
    """Accuracy of greedy completions under one prompting strategy: the answer matches (and a system
    rule is kept, see :func:`posttrain.evaluation.scoring.solved`)."""
    from posttrain.generation import generate

    budget = _budget(tokenizer, examples, max_new_tokens)
    room = max(1, min(max_prompt_tokens, _context_limit(model) - budget))
    prompts, truncated, shots_dropped = [], 0, 0
    for ex in examples:
        shot_list = select_shots(ex, pool, shots, seed) if uses_shots(strategy) else []
        ids, kept, cut = fit_prompt(tokenizer, ex, strategy, shot_list, chat, room)
        truncated += cut
        shots_dropped += len(shot_list) - kept
        prompts.append(ids)
    with stop_at_answer_end(model, tokenizer, newline=not chat):
        outputs = generate(model, tokenizer, prompts, max_new_tokens=budget, temperature=0.0, batch_size=batch_size)
    cell = Cell(examples[0].family, strategy, len(examples), 0, truncated=truncated, shots_dropped=shots_dropped,
                max_new_tokens=budget)
    for ex, out in zip(examples, outputs):
        answer = out.text.strip() if chat else completion_answer(out.text)
        ok = solved(ex, answer)
        cell.correct += ok
        cell.predictions.append({"id": ex.id, "strategy": strategy, "completion": out.text,
                                 "extracted": extract_answer(ex, answer), "target": ex.target, "correct": ok,
                                 "answer_matches": exact_match(ex, answer), "rule_kept": follows_rule(ex, answer)})
    return cell


def evaluate_multiple_choice(model, tokenizer, examples: Sequence[TaskExample], pool: Sequence[TaskExample] = (),
                             *, shots: int = 0, seed: int = 0, chat: bool = False,
                             batch_size: int = 32) -> tuple[Cell, Cell]:
    """(summed, length-normalized) log-prob multiple-choice accuracy; examples need ``choices``."""
    from posttrain.evaluation.multiple_choice import continuation_logprobs, pick

    strategy = "few_shot" if shots > 0 else "zero_shot"
    contexts, continuations, spans = [], [], []
    for ex in examples:
        if not ex.choices:
            raise ValueError(f"{ex.id} has no choices; multiple choice needs examples with choices")
        shot_list = select_shots(ex, pool, shots, seed) if shots > 0 else []
        context = build_prompt(ex, strategy, shot_list, chat, tokenizer)
        start = len(contexts)
        for option in ex.choice_answers:
            contexts.append(context)
            continuations.append(option if chat else f" {option}")
        spans.append((start, len(contexts)))
    scores, truncated = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size,
                                              add_special_tokens=not chat)
    family = examples[0].family
    chance = sum(1 / len(ex.choices) for ex in examples) / len(examples)
    cells = (Cell(family, "mc_sum", len(examples), 0, chance, truncated),
             Cell(family, "mc_norm", len(examples), 0, chance, truncated))
    for ex, (a, b) in zip(examples, spans):
        gold = ex.choices.index(ex.target)
        for cell, normalized in zip(cells, (False, True)):
            choice = pick(scores[a:b], normalized)
            cell.correct += choice == gold
            cell.predictions.append({"id": ex.id, "strategy": cell.strategy, "choice": ex.choices[choice],
                                     "target": ex.target, "correct": choice == gold,
                                     "logps": [round(s.logp, 4) for s in scores[a:b]]})
    return cells


# ---------------------------------------------------------------------------------------------
# The suite


@dataclass
class EvalReport:
    cells: dict[str, dict[str, Cell]]
    """family -> column (strategy, mc_sum, mc_norm) -> cell."""
    settings: dict[str, Any]

    def accuracy(self, family: str, column: str) -> float:
        return self.cells[family][column].accuracy

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings,
                "results": {f: {c: cell.summary() for c, cell in cols.items()} for f, cols in self.cells.items()}}


def evaluate_suite(model, tokenizer, *, families: Sequence[str] = FAMILIES, strategies: Sequence[str] = (*STRATEGIES, "mc"),
                   n: int = 200, shots: int = 3, mc_shots: int = 0, seed: int = 0, split: str = "heldout",
                   chat: bool = False, batch_size: int = 32, max_new_tokens: int = 128,
                   max_prompt_tokens: int = 10**9, world=None, progress=None) -> EvalReport:
    """Every (family, strategy) cell on ``n`` examples of ``split``; shots come from the train split.

    "mc" fills the mc_sum and mc_norm columns for families whose examples have choices.
    ``progress(family, column, cell)`` is called after each cell, if given.
    """
    from posttrain.world.entities import make_world

    unknown = [s for s in strategies if s not in (*STRATEGIES, "mc")]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; use {', '.join(STRATEGIES)} or mc")
    world = world or make_world(seed)
    cells: dict[str, dict[str, Cell]] = {}
    for family in families:
        examples = make_tasks(world, seed, family, split, n)
        pool = make_tasks(world, seed, family, "train") if (shots or mc_shots) else []
        cells[family] = {}
        for strategy in strategies:
            if strategy == "mc":
                if not examples[0].choices:
                    continue
                found = evaluate_multiple_choice(model, tokenizer, examples, pool, shots=mc_shots, seed=seed,
                                                 chat=chat, batch_size=batch_size)
            else:
                found = (evaluate_generation(model, tokenizer, examples, pool, strategy, shots=shots, seed=seed,
                                             chat=chat, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                             max_prompt_tokens=max_prompt_tokens),)
            for cell in found:
                cells[family][cell.strategy] = cell
                if progress:
                    progress(family, cell.strategy, cell)
    settings = {"families": list(families), "strategies": list(strategies), "n_per_family": n, "shots": shots,
                "mc_shots": mc_shots, "seed": seed, "split": split, "prompt_format": "chat" if chat else "plain",
                "chat_template": tokenizer.chat_template if chat else None,
                "chat_template_sha256": _sha256(tokenizer.chat_template) if chat else None,
                "batch_size": batch_size, "max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens,
                "decoding": "greedy", "mc_scoring": "summed and per-token mean log-prob of each full answer",
                "tasks_version": TASKS_VERSION, **_model_settings(model)}
    return EvalReport(cells, settings)


def _sha256(text: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest() if isinstance(text, str) else None


def _model_settings(model) -> dict[str, Any]:
    """Weights dtype, device and the libraries that compute the scores (each can move them)."""
    import torch
    import transformers

    param = next(iter(model.parameters()), None)
    return {"dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
            "device": str(param.device) if param is not None else None,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}


# ---------------------------------------------------------------------------------------------
# Report


def columns_of(report: EvalReport) -> list[str]:
    order = [*STRATEGIES, *MC_COLUMNS]
    present = {c for cols in report.cells.values() for c in cols}
    return [c for c in order if c in present]


def results_table(report: EvalReport, title: str = "Accuracy % (± 95% CI half-width)"):
    """A rich Table: rows are families (unseen-task families marked *), columns are strategies."""
    from rich.table import Table

    columns = columns_of(report)
    table = Table(title=title)
    table.add_column("family")
    table.add_column("n", justify="right")
    for c in columns:
        table.add_column(c, justify="right")
    table.add_column("chance", justify="right")
    for family, cols in report.cells.items():
        n = next(iter(cols.values())).n if cols else 0
        row = [family + (" *" if family in HELDOUT_FAMILIES else ""), str(n)]
        for c in columns:
            cell = cols.get(c)
            row.append("—" if cell is None else f"{100 * cell.accuracy:.1f} ±{100 * cell.ci95:.1f}")
        chance = next((cell.chance for cell in cols.values() if cell.chance is not None), None)
        row.append("—" if chance is None else f"{100 * chance:.0f}")
        table.add_row(*row)
    table.caption = "* held-out family (unseen in instruction tuning); mc = multiple choice by log-prob"
    return table


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_report(report: EvalReport, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """results.json and predictions.jsonl in ``run_dir``; returns the results path."""
    run_dir = Path(run_dir)
    data = report.to_json()
    data["settings"] = {**data["settings"], **(extra or {})}
    results = run_dir / "results.json"
    _write_atomic(results, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    lines = [json.dumps({"family": f, **p}, ensure_ascii=False)
             for f, cols in report.cells.items() for cell in cols.values() for p in cell.predictions]
    _write_atomic(run_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    return results


def run_eval(cfg) -> EvalReport:
    """The `posttrain eval` command: load the model, evaluate the suite, print the table, write the run dir."""
    import time

    import torch
    from rich.console import Console

    import posttrain
    from posttrain.config import save_config
    from posttrain.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

    console = Console()
    if not console.is_terminal:  # logs and pipes: keep the table on one row per family
        console = Console(width=max(console.width, 132))
    families = list(cfg.families) or list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"eval: unknown families {unknown} in `families`; known: {', '.join(FAMILIES)}")
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, for_training=False)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    start = time.time()

    def progress(family: str, column: str, cell: Cell) -> None:
        console.print(f"  {family:22s} {column:14s} {100 * cell.accuracy:5.1f}%  (n={cell.n}, "
                      f"{time.time() - start:.0f}s)")

    report = evaluate_suite(model, tokenizer, families=families, strategies=cfg.strategies, n=cfg.n_per_family,
                            shots=cfg.shots, mc_shots=cfg.mc_shots, seed=cfg.seed, split=cfg.split,
                            chat=cfg.prompt_format == "chat", batch_size=cfg.batch_size,
                            max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                            progress=progress)
    extra = {"model": resolve_model_path(cfg.model.name_or_path), "tokenizer": cfg.model.tokenizer,
             "dtype_requested": cfg.model.dtype, "chat_template_override": cfg.model.chat_template,
             "posttrain_version": posttrain.__version__, "seconds": round(time.time() - start, 1)}
    path = write_report(report, run_dir, extra)
    console.print(results_table(report))
    console.print(f"results: {path}")
    return report
