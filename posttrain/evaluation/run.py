"""`posttrain eval`: prompt a model on the world's task families and report accuracy per strategy.

For each family (rows) and strategy (columns: zero-shot, few-shot, chain of thought, zero-shot
CoT, and multiple choice by summed / length-normalized log-prob) it scores ``n`` held-out examples,
prints accuracy with its 95% interval, and writes into the run directory:

- ``results.json``: every cell (n, correct, accuracy, interval, chance, prompts truncated) and every
  setting that changes scores (model, its dtype and device, prompt format, chat template and its
  SHA-256, strategies, shots, n, seed, split, batch size, token budgets, posttrain, task-suite,
  torch and transformers versions);
- ``predictions.jsonl``: each example's completion, extracted answer and verdict;
- ``copying`` in ``results.json``, beside the prompting suite: how much likelier a random span is the
  second time it appears (:mod:`posttrain.evaluation.copying`), the induction a model needs before
  any few-shot or chain-of-thought prompt can help it;
- ``config.yaml``: the resolved config.

Generation is greedy and batched. Plain Q/A completions stop and are read at their first newline
(answers are one line); chat replies end at <|im_end|> or eos and are read whole. Each cell's
token budget is the longest canonical solution of its examples, worked or direct, plus a margin
(capped by ``max_new_tokens``), so a cell costs little more than its answers.

Three more evaluations run when asked, each a section of ``results.json`` with its own settings
(``strategies: []`` skips the prompting suite, e.g. to evaluate a reward model alone):

- ``reward_model`` (``preference_data``): a reward model's accuracy on comparisons, by preference
  strength, its calibration and, on the world's pairs, its agreement with gold
  (:func:`posttrain.evaluation.reward.reward_report`);
- ``kl`` (``reference``): KL(model || reference) on the model's own samples
  (:func:`posttrain.evaluation.policy.sampled_kl`);
- ``win_rate`` (``win_rate_against``): the model's greedy answers judged against another model's on
  the same prompts, raw and length-controlled (:mod:`posttrain.evaluation.winrate`); each prompt's
  two answers and verdict go to ``win_rate.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig

import posttrain
from posttrain.compare import file_prompts, make_judge, world_prompts
from posttrain.config import save_config
from posttrain.data.chat import apply_system
from posttrain.data.readers import read_records
from posttrain.errors import UserError
from posttrain.evaluation.copying import FILLER, LEAD, copying_gain
from posttrain.evaluation.multiple_choice import continuation_logprobs, pick
from posttrain.evaluation.policy import sampled_kl
from posttrain.evaluation.prompting import STRATEGIES, build_prompt, completion_answer, select_shots, uses_shots
from posttrain.evaluation.reward import reward_report
from posttrain.evaluation.scoring import proportion_ci
from posttrain.evaluation.winrate import ScorerJudge, compare_answers
from posttrain.files import write_json_atomic, write_jsonl_atomic, write_text_atomic
from posttrain.generation import generate
from posttrain.generation.hf import generate_chat
from posttrain.models.config import ModelConfig
from posttrain.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from posttrain.models.reward import RewardScorer
from posttrain.models.wrappers import transformers_model, unwrap_model
from posttrain.recipes.config import CompareConfig, WorldPreferenceConfig
from posttrain.world.annotators import Annotator, AnnotatorConfig, make_preferences
from posttrain.world.answers import exact_match, extract_answer, follows_rule, solved
from posttrain.world.entities import make_world
from posttrain.world.tasks import (
    FAMILIES, HELDOUT_FAMILIES, TASKS_VERSION, TRAIN_FAMILIES, TaskExample, check_families, make_tasks,
)

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
    config = transformers_model(unwrap_model(model)).generation_config  # peft keeps it on the base
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
    rule is kept, see :func:`posttrain.world.answers.solved`)."""
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
    sections: dict[str, Any] = field(default_factory=dict)
    """The other evaluations run (reward_model, kl, win_rate), each {"settings": ..., results...}."""

    def accuracy(self, family: str, column: str) -> float:
        return self.cells[family][column].accuracy

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings,
                "results": {f: {c: cell.summary() for c, cell in cols.items()} for f, cols in self.cells.items()},
                **self.sections}


def evaluate_suite(model, tokenizer, *, families: Sequence[str] = FAMILIES, strategies: Sequence[str] = (*STRATEGIES, "mc"),
                   n: int = 200, shots: int = 3, mc_shots: int = 0, seed: int = 0, split: str = "heldout",
                   chat: bool = False, batch_size: int = 32, max_new_tokens: int = 128,
                   max_prompt_tokens: int = 10**9, world=None, progress=None) -> EvalReport:
    """Every (family, strategy) cell on ``n`` examples of ``split``; shots come from the train split.

    "mc" fills the mc_sum and mc_norm columns for families whose examples have choices.
    ``progress(family, column, cell)`` is called after each cell, if given.
    """
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
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if isinstance(text, str) else None


def _versions() -> dict[str, str]:
    """The libraries that compute the scores (each can move them)."""
    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


def _model_settings(model) -> dict[str, Any]:
    """Weights dtype and device, and the library versions."""
    param = next(iter(model.parameters()), None)
    return {"dtype": str(param.dtype).removeprefix("torch.") if param is not None else None,
            "device": str(param.device) if param is not None else None, **_versions()}


# ---------------------------------------------------------------------------------------------
# Report


def columns_of(report: EvalReport) -> list[str]:
    order = [*STRATEGIES, *MC_COLUMNS]
    present = {c for cols in report.cells.values() for c in cols}
    return [c for c in order if c in present]


def results_table(report: EvalReport, title: str = "Accuracy % (± 95% CI half-width)"):
    """A rich Table: rows are families (unseen-task families marked *), columns are strategies."""
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


def write_report(report: EvalReport, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """results.json and predictions.jsonl in ``run_dir``; returns the results path."""
    run_dir = Path(run_dir)
    data = report.to_json()
    data["settings"] = {**data["settings"], **(extra or {})}
    results = run_dir / "results.json"
    write_json_atomic(results, data)
    lines = [json.dumps({"family": f, **p}, ensure_ascii=False)
             for f, cols in report.cells.items() for cell in cols.values() for p in cell.predictions]
    write_text_atomic(run_dir / "predictions.jsonl", "".join(line + "\n" for line in lines))
    return results


# ---------------------------------------------------------------------------------------------
# Reward-model accuracy, KL to a reference, win-rate against a reference


class EvalError(UserError):
    """An eval setting that cannot work; the message says which and what to do."""


def is_reward_model(name_or_path: str) -> bool:
    """Whether the model's config.json names a sequence-classification (reward) architecture."""
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError):  # e.g. a peft adapter folder: loaded (or refused) as a causal LM
        return False
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def check_modes(cfg, reward_model: bool) -> None:
    """Refuse, before any model is loaded, the evaluations that cannot work on this model and config."""
    name = cfg.model.name_or_path
    if reward_model and cfg.strategies:
        raise EvalError(f"strategies: {name} is a reward model, which cannot be prompted; set strategies: [] to "
                        f"evaluate it on preference_data alone")
    if reward_model and (cfg.reference or cfg.win_rate_against):
        raise EvalError(f"reference / win_rate_against: {name} is a reward model; the KL and the win-rate evaluate "
                        f"a causal LM (a policy)")
    if cfg.preference_data and not reward_model:
        raise EvalError(f"preference_data: {name} is not a reward model (its config.json names no "
                        f"*ForSequenceClassification architecture); give model.name_or_path a folder written by "
                        f"`posttrain reward` (its final/), or leave preference_data empty")
    if "world" in cfg.preference_data and cfg.preference_examples < 1:
        raise EvalError(f"preference_examples: preference_data=world needs at least 1 prompt per family "
                        f"(got {cfg.preference_examples})")
    if cfg.reference and min(cfg.kl_prompts, cfg.kl_max_tokens) < 1:
        raise EvalError(f"kl_prompts ({cfg.kl_prompts}) and kl_max_tokens ({cfg.kl_max_tokens}) must be at least 1 "
                        f"when reference is set")
    if cfg.win_rate_against and min(cfg.win_rate_prompts, cfg.win_rate_max_tokens) < 1:
        raise EvalError(f"win_rate_prompts ({cfg.win_rate_prompts}) and win_rate_max_tokens "
                        f"({cfg.win_rate_max_tokens}) must be at least 1 when win_rate_against is set")
    if cfg.win_rate_against and cfg.judge == "gold" and cfg.prompts != "world":
        raise EvalError("judge=gold scores the embedded world's tasks only; use prompts=world, or judge=reward_model "
                        "/ llm with judge_model=<folder>")
    if not (cfg.strategies or cfg.preference_data or cfg.reference or cfg.win_rate_against):
        raise EvalError("nothing to evaluate: strategies is empty and none of preference_data, reference or "
                        "win_rate_against is set")


def world_preference_pairs(families: Sequence[str], n: int, seed: int) -> tuple[list, dict[str, Any]]:
    """(pairs, how they were made): ``n`` held-out prompts per family (empty: the trained families), each
    with 2 pairs of its candidate responses labelled by the world's simulated annotators, with the
    defaults of ``posttrain reward``'s world data; for seed 0 these are the pairs it holds out."""
    w = WorldPreferenceConfig()
    families = list(families) or list(TRAIN_FAMILIES)
    world = make_world(seed)
    examples = [e for f in families for e in make_tasks(world, seed, f, "heldout", n)]
    annotator = AnnotatorConfig(w.noise_temperature, w.length_bias, seed + 1)
    about = {"source": "world held-out pairs of candidate responses", "families": families,
             "prompts_per_family": n, "pairs_per_prompt": w.pairs_per_prompt,
             "annotator_noise_temperature": annotator.noise_temperature, "annotator_length_bias": annotator.length_bias,
             "annotator_seed": annotator.seed}
    return make_preferences(examples, Annotator(annotator), w.pairs_per_prompt), about


def preference_pairs(source: str, cfg) -> tuple[list, dict[str, Any]]:
    """(preference pairs, what they are) of one preference_data entry; a ranking gives every pair it implies."""
    if source == "world":
        return world_preference_pairs(cfg.families, cfg.preference_examples, cfg.seed)
    result = read_records(source)
    records = [dataclasses.replace(r, prompt=apply_system(r.prompt, cfg.system))
               for r in result.expect("preference", "ranking")]
    pairs = [p for r in records for p in (r.to_pairs() if r.kind == "ranking" else [r])]
    if not pairs:
        raise EvalError(f"preference_data: {source} holds no preference or ranking records")
    return pairs, {"source": str(source), "records": len(records),
                   "rankings": sum(r.kind == "ranking" for r in records)}


def evaluate_reward_model(cfg, console) -> dict[str, Any]:
    """The reward_model section: :func:`~posttrain.evaluation.reward.reward_report` on each preference set."""
    scorer = RewardScorer.from_pretrained(cfg.model.name_or_path, device=cfg.model.device, dtype=cfg.model.dtype)
    scorer.max_length = getattr(scorer.model.config, "max_position_embeddings", None)
    sets = {}
    for source in cfg.preference_data:
        pairs, about = preference_pairs(source, cfg)
        cut = scorer.truncated
        sets[source] = {**about, **reward_report(scorer, pairs, cfg.batch_size),
                        "cut_to_context": scorer.truncated - cut}
    console.print(reward_table(sets))
    settings = {"model": resolve_model_path(cfg.model.name_or_path), "max_length": scorer.max_length,
                "scores": "raw: the saved normalization changes no order, and calibration needs the trained logits",
                "batch_size": cfg.batch_size, **_model_settings(scorer.model)}
    return {"settings": settings, "sets": sets}


def eval_prompts(cfg, n: int):
    """The first ``n`` prompts of ``cfg.prompts`` (a :class:`posttrain.compare.PromptSet`)."""
    if cfg.prompts == "world":
        return world_prompts(list(cfg.families), n, cfg.seed)
    return file_prompts(cfg.prompts, n)


def load_other(path: str, cfg, loaded: dict[str, tuple[Any, Any]]) -> tuple[Any, Any]:
    """(model, tokenizer) of the reference or win-rate model, on the model's device and dtype; each folder once."""
    if path not in loaded:
        model_cfg = ModelConfig(name_or_path=path, device=cfg.model.device, dtype=cfg.model.dtype)
        tokenizer = load_tokenizer(model_cfg)
        loaded[path] = (load_causal_lm(model_cfg, for_training=False, tokenizer=tokenizer), tokenizer)
    return loaded[path]


def evaluate_kl(cfg, model, tokenizer, loaded: dict, console) -> dict[str, Any]:
    """The kl section: KL(model || reference) per response on the model's samples to kl_prompts prompts."""
    prompts = eval_prompts(cfg, cfg.kl_prompts)
    reference, reference_tokenizer = load_other(cfg.reference, cfg, loaded)
    if reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise EvalError(f"reference: {cfg.reference} has another tokenizer than the model; the KL compares both "
                        f"models' probabilities of the same tokens, so give a reference with the model's tokenizer "
                        f"(e.g. the SFT model it was trained from)")
    kl = sampled_kl(model, reference, tokenizer, prompts.messages, cfg.kl_max_tokens, cfg.seed, cfg.batch_size)
    settings = {"reference": resolve_model_path(cfg.reference), "prompts": prompts.source,
                "n_prompts": len(prompts.messages), "max_new_tokens": cfg.kl_max_tokens, "temperature": 1.0,
                "seed": cfg.seed, "batch_size": cfg.batch_size,
                "estimators": "per response, summed over its tokens: k1 = log(pi / pi_ref), k3 = r - 1 - log r with "
                              "r = pi_ref / pi; means over responses"}
    section = {"settings": settings, **kl}
    console.print(kl_table(section))
    return section


def greedy_answers(model, tokenizer, prompts: Sequence[Sequence[dict]], cfg) -> tuple[list[str], int]:
    """(each prompt's greedy answer through the chat template, answers cut at win_rate_max_tokens)."""
    outputs = generate_chat(model, tokenizer, prompts, max_new_tokens=cfg.win_rate_max_tokens, temperature=0.0,
                            batch_size=cfg.batch_size)
    return [o.text for o in outputs], sum(not o.finished for o in outputs)


def judge_settings(judge) -> dict[str, Any]:
    """What the judge is and, for an LLM judge, everything that moves its verdicts."""
    out: dict[str, Any] = {"judge": judge.name}
    if hasattr(judge, "template"):
        out.update({"judge_template_sha256": _sha256(judge.template), "judge_both_orders": judge.both_orders,
                    "judge_combine": judge.combine, "judge_label_mass": judge.label_mass,
                    "judge_answers_cut": judge.truncated})
    return out


def evaluate_win_rate(cfg, model, tokenizer, loaded: dict, console, run_dir: Path) -> dict[str, Any]:
    """The win_rate section: the model's greedy answers judged against win_rate_against's on the same
    prompts (:func:`~posttrain.evaluation.winrate.compare_answers`); per-prompt rows to win_rate.jsonl."""
    prompts = eval_prompts(cfg, cfg.win_rate_prompts)
    judge = make_judge(CompareConfig(judge=cfg.judge, judge_model=cfg.judge_model, device=cfg.model.device,
                                     dtype=cfg.model.dtype, batch_size=cfg.batch_size), prompts)
    other, other_tokenizer = load_other(cfg.win_rate_against, cfg, loaded)
    ours, ours_cut = greedy_answers(model, tokenizer, prompts.messages, cfg)
    theirs, theirs_cut = greedy_answers(other, other_tokenizer, prompts.messages, cfg)
    comparison = compare_answers(judge, prompts.messages, ours, theirs)
    settings = {"against": resolve_model_path(cfg.win_rate_against), **judge_settings(judge),
                "prompts": prompts.source, "n_prompts": len(prompts.messages),
                "max_new_tokens": cfg.win_rate_max_tokens, "decoding": "greedy", "batch_size": cfg.batch_size,
                "length_unit": "words", "verdict": "1: the model's answer is better than the reference's, 0: worse, "
                                                   "0.5: tie"}
    section = {"settings": settings, **comparison.summary(), "answers_cut": ours_cut,
               "reference_answers_cut": theirs_cut}
    scores = {}
    if isinstance(judge, ScorerJudge):  # gold or reward model: the per-answer scores behind the verdicts
        scores = {"model": judge.scores(prompts.messages, ours), "reference": judge.scores(prompts.messages, theirs)}
        section["mean_score"] = sum(scores["model"]) / len(ours)
        section["reference_mean_score"] = sum(scores["reference"]) / len(theirs)
    rows = [{"id": prompts.ids[i], "family": prompts.families[i], "prompt": prompts.messages[i], "answer": ours[i],
             "reference_answer": theirs[i], "verdict": comparison.verdicts[i],
             **({"score": scores["model"][i], "reference_score": scores["reference"][i]} if scores else {})}
            for i in range(len(ours))]
    write_jsonl_atomic(run_dir / "win_rate.jsonl", rows)
    console.print(win_rate_table(section))
    return section


# ---------------------------------------------------------------------------------------------
# Their tables


def _pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def reward_table(sets: dict[str, dict[str, Any]]):
    """Rich table: one row per preference set."""
    levels = sorted({level for r in sets.values() for level in r.get("accuracy_by_strength", {})})
    table = Table(title="Reward model: accuracy % on preference pairs (ties half)")
    for name in ("set", "pairs", "accuracy", *(f"strength {level}" for level in levels), "ECE", "gold agreement",
                 "oracle"):
        table.add_column(name, justify="left" if name == "set" else "right")
    for source, r in sets.items():
        by = r.get("accuracy_by_strength", {})
        table.add_row(source, str(r["pairs"]), _pct(r["accuracy"]),
                      *(f"{_pct(by[level]['accuracy'])} ({by[level]['pairs']})" if level in by else "—"
                        for level in levels),
                      f"{r['calibration']['ece']:.3f}", _pct(r.get("gold", {}).get("agreement")),
                      _pct(r.get("oracle_accuracy")))
    table.caption = ("ECE: expected calibration error of sigmoid(r_a - r_b); oracle: the gold reward's accuracy "
                     "on the same labels")
    return table


def kl_table(section: dict[str, Any]):
    s = section["settings"]
    table = Table(title="KL(model || reference), nats per response sampled from the model at temperature 1")
    table.add_column("reference")
    for name in ("responses", "max tokens", "KL k1", "KL k3"):
        table.add_column(name, justify="right")
    table.add_row(s["reference"], str(section["responses"]), str(s["max_new_tokens"]), f"{section['kl_k1']:.4f}",
                  f"{section['kl_k3']:.4f}")
    return table


def win_rate_table(section: dict[str, Any]):
    s = section["settings"]
    table = Table(title=f"Win-rate % of the model's answers against the reference's (judge: {s['judge']}; ties half)")
    table.add_column("reference")
    for name in ("prompts", "win-rate ±95%", "wins / ties / losses", "LC win-rate [95%]", "words (model / ref.)",
                 "cut (model / ref.)"):
        table.add_column(name, justify="right")
    lc = _pct(section["lc_win_rate"])
    if section["lc_low"] == section["lc_low"]:
        lc += f" [{_pct(section['lc_low'])}–{_pct(section['lc_high'])}]"
    table.add_row(s["against"], str(section["n"]), f"{_pct(section['win_rate'])} ±{_pct(section['ci'])}",
                  f"{section['wins']} / {section['ties']} / {section['losses']}", lc,
                  f"{section['mean_length_a']:.1f} / {section['mean_length_b']:.1f}",
                  f"{section['answers_cut']} / {section['reference_answers_cut']}")
    if section["lc_note"]:
        table.caption = section["lc_note"]
    return table


# ---------------------------------------------------------------------------------------------
# The command


def evaluate_prompting(cfg, model, tokenizer, families: list[str], console) -> EvalReport:
    """The prompting suite of the config, a progress line per cell, then its table."""
    start = time.time()

    def progress(family: str, column: str, cell: Cell) -> None:
        console.print(f"  {family:22s} {column:14s} {100 * cell.accuracy:5.1f}%  (n={cell.n}, "
                      f"{time.time() - start:.0f}s)")

    report = evaluate_suite(model, tokenizer, families=families, strategies=cfg.strategies, n=cfg.n_per_family,
                            shots=cfg.shots, mc_shots=cfg.mc_shots, seed=cfg.seed, split=cfg.split,
                            chat=cfg.prompt_format == "chat", batch_size=cfg.batch_size,
                            max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                            progress=progress)
    console.print(results_table(report))
    report.sections["copying"] = evaluate_copying(model, tokenizer, cfg.batch_size, console)
    return report


def evaluate_copying(model, tokenizer, batch_size: int, console) -> dict[str, Any]:
    """The copying probe (:mod:`posttrain.evaluation.copying`): whether shots in a prompt can help at all."""
    settings = {"n": 40, "length": 10, "seed": 0}
    score = copying_gain(model, tokenizer, **settings, batch_size=batch_size)
    console.print(f"copying from the context: {score.gain:+.2f} nats/token on a random span's second appearance "
                  f"(first {score.first:.2f}, second {score.second:.2f}, n={score.n}); about 0 means no induction, "
                  "and then few-shot prompts cannot help")
    return {"settings": {**settings, "lead": LEAD, "filler": FILLER},
            "first": round(score.first, 4), "second": round(score.second, 4), "gain": round(score.gain, 4)}


def run_eval(cfg) -> EvalReport:
    """The `posttrain eval` command: load the model, run the evaluations the config asks for (each
    prints its table), write the run dir."""
    console = Console()
    if not console.is_terminal:  # logs and pipes: keep the table on one row per family
        console = Console(width=max(console.width, 132))
    families = check_families(cfg.families or FAMILIES, "families", EvalError)
    reward_model = is_reward_model(cfg.model.name_or_path)
    check_modes(cfg, reward_model)
    torch.manual_seed(cfg.seed)
    model = tokenizer = None
    if not reward_model:
        tokenizer = load_tokenizer(cfg.model)
        model = load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    start = time.time()

    if cfg.strategies:
        report = evaluate_prompting(cfg, model, tokenizer, families, console)
    else:
        report = EvalReport({}, {"strategies": [], "seed": cfg.seed, "tasks_version": TASKS_VERSION,
                                 **(_model_settings(model) if model is not None else _versions())})
    loaded: dict[str, tuple[Any, Any]] = {}  # reference and win-rate models, by folder: one copy if the same
    if cfg.preference_data:
        report.sections["reward_model"] = evaluate_reward_model(cfg, console)
    if cfg.reference:
        report.sections["kl"] = evaluate_kl(cfg, model, tokenizer, loaded, console)
    if cfg.win_rate_against:
        report.sections["win_rate"] = evaluate_win_rate(cfg, model, tokenizer, loaded, console, run_dir)
    extra = {"model": resolve_model_path(cfg.model.name_or_path), "tokenizer": cfg.model.tokenizer,
             "dtype_requested": cfg.model.dtype, "chat_template_override": cfg.model.chat_template,
             "posttrain_version": posttrain.__version__, "seconds": round(time.time() - start, 1)}
    path = write_report(report, run_dir, extra)
    console.print(f"results: {path}")
    return report
