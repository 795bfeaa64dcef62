"""Export the world's task families as lm-evaluation-harness tasks, so lm-eval can score any checkpoint.

Each exported task is a YAML config plus a local JSONL file (``dataset_path: json``), loadable with
``lm_eval --include_path <folder>`` (or ``TaskManager(include_path=<folder>)``) and no network:

- **multiple choice** (``<prefix>_<family>_mc``, ``output_type: multiple_choice``): every
  document holds the exact context ``posttrain eval`` scores (the plain "Q: ...\\nA:" text or the
  chat template's rendering, solved shots included when ``mc_shots`` > 0) and the same
  continuations, the full answer of each option (``choice_answers``). Plain contexts end in "A:"
  and lm-eval's ``target_delimiter: " "`` adds the space posttrain puts before each option; chat
  contexts end in the template's assistant header and the options follow with no delimiter.
  lm-eval's ``acc`` (highest summed log-prob, first on ties) is posttrain's ``mc_sum`` column.
  Its ``acc_norm`` divides by characters, not tokens, so it is *not* ``mc_norm``.
- **generation** (``<prefix>_<family>_gen``, ``output_type: generate_until``): the zero-shot
  prompt, greedy decoding up to the end of the answer's line (plain) or of the assistant's turn
  (chat), and ``acc`` from posttrain's own answer checker
  (:func:`posttrain.world.answers.solved`, through a ``utils.py`` beside the YAML; that task
  needs posttrain installed where lm-eval runs).

Two differences from posttrain's arithmetic, neither of which changes ``acc``: lm-eval encodes
context + continuation together and splits at the context's length (posttrain encodes them apart;
the world tokenizer splits at "A:" and at newlines either way), and it moves a context's trailing
whitespace into the continuation, so in chat format it also scores the newline after
"<|im_start|>assistant": the same log-prob for every option of a document, so the choice is the same.

Shots are written into each context (drawn per example, as ``posttrain eval`` draws them), so run
lm-eval with ``num_fewshot`` 0 (the task sets it). The JSONL path in each YAML is absolute: export
again after moving the folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from posttrain.errors import UserError
from posttrain.evaluation.prompting import build_prompt, select_shots
from posttrain.files import write_jsonl_atomic, write_text_atomic
from posttrain.models.config import ModelConfig
from posttrain.models.loading import load_tokenizer
from posttrain.world.entities import make_world
from posttrain.world.tasks import FAMILIES, TASKS_VERSION, TaskExample, check_families, make_tasks

KINDS = ("mc", "gen")
"""Task kinds: multiple choice by log-prob, and greedy generation scored by posttrain's checker."""
LM_EVAL_VERSION = "0.4.13"
"""The lm-eval release these configs are tested with (tests/test_lm_eval.py)."""

UTILS_PY = '''"""posttrain's answer checker for the generate_until tasks exported here (needs posttrain installed)."""

import json

from posttrain.evaluation.prompting import completion_answer
from posttrain.world.answers import solved
from posttrain.world.tasks import TaskExample


def process_results(doc, results):
    example = TaskExample.from_dict(json.loads(doc["example"]))
    text = results[0]
    # As posttrain eval reads them: a chat reply whole, a plain completion up to its first newline.
    answer = text.strip() if doc["chat"] else completion_answer(text)
    return {"acc": float(solved(example, answer))}
'''


@dataclass(frozen=True)
class ExportedTask:
    name: str
    """lm-eval task name."""
    family: str
    kind: str
    """mc or gen."""
    yaml_path: Path
    data_path: Path
    n: int
    """Documents in the JSONL file."""


def template_sha256(tokenizer) -> str | None:
    """SHA-256 of the tokenizer's chat template (None without one): names the template in reports."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None


def mc_document(example: TaskExample, shots: Sequence[TaskExample] = (), chat: bool = False,
                tokenizer=None) -> dict[str, Any]:
    """One multiple-choice document: the context and continuations of ``posttrain eval``'s mc columns
    (:func:`posttrain.evaluation.run.evaluate_multiple_choice`), the gold option's index in ``label``."""
    if not example.choices:
        raise ValueError(f"{example.id} has no choices; multiple choice needs examples with choices")
    strategy = "few_shot" if shots else "zero_shot"
    context = build_prompt(example, strategy, list(shots), chat, tokenizer)
    return {"id": example.id, "family": example.family, "context": context,
            "choices": list(example.choice_answers), "label": example.choices.index(example.target),
            "target": example.target}


def gen_document(example: TaskExample, chat: bool = False, tokenizer=None) -> dict[str, Any]:
    """One generation document: the zero-shot prompt, and the example itself (JSON) for the checker."""
    return {"id": example.id, "family": example.family,
            "context": build_prompt(example, "zero_shot", [], chat, tokenizer), "target": example.target,
            "chat": chat, "example": json.dumps(example.to_dict(), sort_keys=True)}


def generation_budget(tokenizer, examples: Sequence[TaskExample], cap: int = 128) -> int:
    """Tokens to generate, as ``posttrain eval`` budgets a cell: the longest canonical solution (worked
    or direct) plus a quarter and four tokens, at most ``cap``."""
    longest = max(len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
                  for e in examples for text in (e.answer, e.cot) if text)
    return max(1, min(cap, math.ceil(longest * 1.25) + 4))


def _write_yaml(path: Path, config: dict[str, Any], extra_lines: Sequence[str] = ()) -> None:
    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper, value: str):
        # "\n" reads better double-quoted than as YAML's folded form.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, string)
    text = yaml.dump(config, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)
    write_text_atomic(path, text + "".join(f"{line}\n" for line in extra_lines))


def _task_config(name: str, data_path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data_path.resolve())}},
            "test_split": "test", "doc_to_text": "context", "num_fewshot": 0,
            "metadata": {"version": 1.0, **metadata}}


def export_mc_task(examples: Sequence[TaskExample], out_dir: str | Path, name: str, *,
                   pool: Sequence[TaskExample] = (), shots: int = 0, seed: int = 0, chat: bool = False,
                   tokenizer=None, metadata: dict[str, Any] | None = None) -> ExportedTask:
    """Write ``<name>.yaml`` and ``<name>.jsonl``: a multiple_choice task over ``examples``, with
    ``shots`` solved examples per context drawn from ``pool`` as ``posttrain eval`` draws them."""
    out_dir = Path(out_dir)
    docs = [mc_document(ex, select_shots(ex, pool, shots, seed) if shots > 0 else [], chat, tokenizer)
            for ex in examples]
    data_path = out_dir / f"{name}.jsonl"
    write_jsonl_atomic(data_path, docs)
    config = {**_task_config(name, data_path, metadata or {}), "output_type": "multiple_choice",
              "doc_to_choice": "choices", "doc_to_target": "label",
              # posttrain scores " <option>" after a plain "A:", and the option itself after a chat header.
              "target_delimiter": "" if chat else " ",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                              {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    yaml_path = out_dir / f"{name}.yaml"
    _write_yaml(yaml_path, config)
    return ExportedTask(name, examples[0].family, "mc", yaml_path, data_path, len(docs))


def export_gen_task(examples: Sequence[TaskExample], out_dir: str | Path, name: str, *, tokenizer,
                    chat: bool = False, max_new_tokens: int = 128,
                    metadata: dict[str, Any] | None = None) -> ExportedTask:
    """Write ``<name>.yaml``, ``<name>.jsonl`` and ``utils.py``: a generate_until task (zero-shot, greedy)
    whose ``acc`` is posttrain's :func:`~posttrain.world.answers.solved`."""
    out_dir = Path(out_dir)
    docs = [gen_document(ex, chat, tokenizer) for ex in examples]
    data_path = out_dir / f"{name}.jsonl"
    write_jsonl_atomic(data_path, docs)
    (out_dir / "utils.py").write_text(UTILS_PY, encoding="utf-8")
    # Plain answers are one line; a chat reply ends with its turn (lm-eval adds the eos token itself).
    until = ["<|im_end|>"] if chat else ["\n"]
    config = {**_task_config(name, data_path, metadata or {}), "output_type": "generate_until",
              "doc_to_target": "target",
              "generation_kwargs": {"until": until, "do_sample": False,
                                    "max_gen_toks": generation_budget(tokenizer, examples, max_new_tokens)},
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    yaml_path = out_dir / f"{name}.yaml"
    _write_yaml(yaml_path, config, ["process_results: !function utils.process_results"])
    return ExportedTask(name, examples[0].family, "gen", yaml_path, data_path, len(docs))


def export_world_tasks(out_dir: str | Path, families: Sequence[str] = FAMILIES, kinds: Sequence[str] = ("mc",), *,
                       split: str = "heldout", n: int = 200, seed: int = 0, mc_shots: int = 0, chat: bool = False,
                       tokenizer=None, prefix: str = "posttrain_world",
                       world=None) -> tuple[list[ExportedTask], list[str]]:
    """Export world task families; returns (tasks written, "family kind: why" for each one not written).

    The examples are ``posttrain eval``'s: the first ``n`` of ``split``, shots from the train split.
    A group config ``<prefix>.yaml`` lists every task (lm-eval reports their mean too).
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown task kinds {bad}; use {', '.join(KINDS)}")
    if (chat or "gen" in kinds) and tokenizer is None:
        raise ValueError("chat prompts and generation budgets need the tokenizer of the model to be scored")
    world = world or make_world(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"posttrain_tasks_version": TASKS_VERSION, "seed": seed, "split": split, "n": n,
                "mc_shots": mc_shots, "prompt_format": "chat" if chat else "plain",
                "chat_template_sha256": template_sha256(tokenizer) if chat else None}
    tasks, skipped = [], []
    for family in families:
        examples = make_tasks(world, seed, family, split, n)
        for kind in kinds:
            name = f"{prefix}_{family}_{kind}"
            if kind == "mc" and not examples[0].choices:
                skipped.append(f"{family} mc: the family has no answer choices")
                continue
            if kind == "mc":
                pool = make_tasks(world, seed, family, "train") if mc_shots > 0 else []
                tasks.append(export_mc_task(examples, out_dir, name, pool=pool, shots=mc_shots, seed=seed, chat=chat,
                                            tokenizer=tokenizer, metadata=metadata))
            else:
                tasks.append(export_gen_task(examples, out_dir, name, tokenizer=tokenizer, chat=chat,
                                             metadata=metadata))
    if tasks:
        group = {"group": prefix, "task": [t.name for t in tasks],
                 "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
                 "metadata": {"version": 1.0}}
        _write_yaml(out_dir / f"{prefix}.yaml", group)
        (out_dir / "README.md").write_text(_readme(out_dir, prefix, tasks, skipped), encoding="utf-8")
    return tasks, skipped


def _readme(out_dir: Path, prefix: str, tasks: Sequence[ExportedTask], skipped: Sequence[str]) -> str:
    lines = [f"# {prefix}: posttrain world tasks for lm-evaluation-harness {LM_EVAL_VERSION}", "",
             "Score a checkpoint (offline; contexts already hold their shots, keep num_fewshot at 0):", "",
             "```bash",
             "HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=<model folder>,dtype=float32 \\",
             f"    --include_path {out_dir.resolve()} --tasks {prefix}",
             "```", "",
             "`acc` of an `_mc` task is `posttrain eval`'s `mc_sum` on the same examples; `acc` of a `_gen` task is "
             "its zero_shot accuracy (posttrain's answer checker, in utils.py).", "",
             "| task | kind | documents |", "|---|---|---|"]
    lines += [f"| {t.name} | {t.kind} | {t.n} |" for t in tasks]
    if skipped:
        lines += ["", "Not exported: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def run_export(cfg) -> list[ExportedTask]:
    """The `posttrain export-lm-eval` command."""
    families = check_families(cfg.families or FAMILIES, "export-lm-eval: families", UserError)
    bad = [k for k in cfg.kinds if k not in KINDS]
    if bad:
        raise UserError(f"export-lm-eval: kinds: unknown {bad}; use {', '.join(KINDS)}")
    chat = cfg.prompt_format == "chat"
    tokenizer = load_tokenizer(ModelConfig(name_or_path=cfg.model)) if (chat or "gen" in cfg.kinds) else None
    tasks, skipped = export_world_tasks(cfg.out_dir, families, cfg.kinds, split=cfg.split, n=cfg.n_per_family,
                                        seed=cfg.seed, mc_shots=cfg.mc_shots, chat=chat, tokenizer=tokenizer,
                                        prefix=cfg.prefix)
    console = Console()
    table = Table(title=f"lm-eval tasks in {cfg.out_dir}")
    for column in ("task", "kind", "documents"):
        table.add_column(column)
    for t in tasks:
        table.add_row(t.name, t.kind, str(t.n))
    console.print(table)
    for why in skipped:
        console.print(f"not exported: {why}")
    console.print(f"run: lm_eval --model hf --model_args pretrained=<model> --include_path {Path(cfg.out_dir).resolve()} "
                  f"--tasks {cfg.prefix}", soft_wrap=True)
    return tasks
