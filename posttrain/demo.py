"""`posttrain demo`: the post-training journey on the embedded world, one stage after another.

Each stage writes its own folder under ``run_dir`` and a ``stage.json`` when it has finished;
a rerun skips finished stages and reuses what they wrote, so an interrupted demo continues
where it stopped. The stages so far:

1. ``world``     — the world's entities, corpus statistics, task suite and simulated-annotator
                   preference files (pairs with 4-point strength, rankings, unpaired labels);
2. ``base``      — the base model: the shipped one, or pretrained here with ``pretrain: true``;
3. ``prompting`` — what the base model does before any fine-tuning: zero-shot, few-shot,
                   chain of thought and log-prob multiple choice, per task family;
4. ``sft``       — instruction fine-tuning on the world's tasks, then the same evaluation.

``summary.json`` and ``summary.md`` in ``run_dir`` gather every stage's numbers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from posttrain.recipes.config import DemoConfig

console = Console(stderr=True, soft_wrap=True)


@dataclass
class Stage:
    name: str
    title: str
    run: Callable[[DemoConfig, Path, dict[str, Any]], dict[str, Any]]
    """(config, stage folder, results of earlier stages) -> this stage's results (JSON-able)."""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- stages ----------------------------------------------------------------------------------

def stage_world(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    from posttrain.world import generate_corpus, make_world
    from posttrain.world.annotators import AnnotatorConfig, write_preference_files
    from posttrain.world.tasks import FAMILIES, HELDOUT_FAMILIES, make_tasks, write_tasks

    world = make_world(cfg.seed)
    corpus = generate_corpus(cfg.seed, 0.2 if cfg.quick else 1.0)
    n = 20 if cfg.quick else 200
    tasks = {}
    for family in FAMILIES:
        for split in ("train", "heldout"):
            examples = make_tasks(world, cfg.seed, family, split, n)
            write_tasks(examples, out / "tasks" / f"{family}.{split}.jsonl")
            tasks[f"{family}.{split}"] = len(examples)
    train_examples = [ex for f in FAMILIES if f not in HELDOUT_FAMILIES
                      for ex in make_tasks(world, cfg.seed, f, "train", 10 if cfg.quick else 50)]
    files = write_preference_files(out / "preferences", train_examples, AnnotatorConfig(seed=cfg.seed))
    counts = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in files.items()}
    console.print(f"  {len(world.entities)} entities, {len(world.facts())} facts; corpus "
                  f"{len(corpus)} documents ({sum(map(len, corpus)) / 1e6:.2f} MB); "
                  f"{len(FAMILIES)} task families ({', '.join(HELDOUT_FAMILIES)} held out); "
                  + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return {"entities": len(world.entities), "facts": len(world.facts()), "corpus_documents": len(corpus),
            "tasks": tasks, "annotations": counts, "files": {k: str(v) for k, v in files.items()}}


def stage_base(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    if not cfg.pretrain:
        from posttrain.world import base_model_path

        path = base_model_path()
        console.print(f"  using the shipped base model {path} (pretrain=true trains one here)")
        return {"model": str(path), "source": "shipped"}
    from posttrain.config import load_config
    from posttrain.recipes.config import PretrainConfig
    from posttrain.recipes.pretrain import pretrain

    root = Path(__file__).resolve().parent.parent / "configs" / "pretrain"
    name = "tiny.yaml" if cfg.quick else "world.yaml"
    overrides = [f"train.run_dir={out / 'run'}", f"train.seed={cfg.seed}", f"world_seed={cfg.seed}"]
    pcfg = load_config(PretrainConfig, root / name if (root / name).exists() else None, overrides)
    final = pretrain(pcfg)
    return {"model": str(final), "source": f"pretrained with configs/pretrain/{name}"}


def _evaluate(cfg: DemoConfig, model_path: str, out: Path, chat: bool) -> dict[str, Any]:
    from posttrain.evaluation.run import evaluate_suite, results_table, write_report
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer

    mcfg = ModelConfig(name_or_path=model_path)
    tokenizer = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False)
    strategies = ("zero_shot",) if chat else ("zero_shot", "few_shot", "cot", "mc")
    report = evaluate_suite(model, tokenizer, strategies=strategies, n=cfg.eval_n, seed=cfg.seed, chat=chat,
                            max_prompt_tokens=256)
    write_report(report, out)
    console.print(results_table(report))
    return {family: {column: round(100 * cell.accuracy, 1) for column, cell in cols.items()}
            for family, cols in report.cells.items()}


def stage_prompting(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": _evaluate(cfg, done["base"]["model"], out, chat=False)}


def stage_sft(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    from posttrain.config import load_config
    from posttrain.recipes.config import SFTConfig
    from posttrain.recipes.sft import sft

    root = Path(__file__).resolve().parent.parent / "configs" / "sft"
    name = "tiny.yaml" if cfg.quick else "world.yaml"
    overrides = [f"train.run_dir={out / 'run'}", f"train.seed={cfg.seed}", f"model.name_or_path={done['base']['model']}"]
    scfg = load_config(SFTConfig, root / name if (root / name).exists() else None, overrides)
    final = sft(scfg)
    return {"model": str(final), "accuracy": _evaluate(cfg, str(final), out / "eval", chat=True)}


STAGES = [
    Stage("world", "world: entities, corpus, tasks, annotated preferences", stage_world),
    Stage("base", "base model", stage_base),
    Stage("prompting", "prompting the base model (zero-shot, few-shot, CoT, multiple choice)", stage_prompting),
    Stage("sft", "instruction fine-tuning (SFT) and its evaluation", stage_sft),
]


def _available(stage: Stage) -> bool:
    """Stages whose recipe is not part of this installation are skipped (and said so)."""
    if stage.name == "sft":
        import importlib.util

        return importlib.util.find_spec("posttrain.recipes.sft") is not None
    return True


# --- the run -----------------------------------------------------------------------------------

def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    started = time.time()
    for i, stage in enumerate(STAGES, 1):
        out = root / stage.name
        marker = out / "stage.json"
        console.rule(f"[bold]{i}/{len(STAGES)} {stage.title}")
        if cfg.stages and stage.name not in cfg.stages:
            console.print("  skipped (not in demo.stages)")
            continue
        if not _available(stage):
            console.print("  not available yet in this version")
            continue
        if marker.exists():
            done[stage.name] = json.loads(marker.read_text(encoding="utf-8"))["results"]
            console.print(f"  finished earlier, reusing {out}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        results = stage.run(cfg, out, done)
        _write_json(marker, {"stage": stage.name, "seconds": round(time.time() - t0, 1), "results": results})
        done[stage.name] = results
        console.print(f"  done in {time.time() - t0:.0f}s")
    _write_json(root / "summary.json", done)
    (root / "summary.md").write_text(summary_markdown(done), encoding="utf-8")
    console.rule(f"demo finished in {time.time() - started:.0f}s: {root / 'summary.md'}")
    return done


def summary_markdown(done: dict[str, Any]) -> str:
    """One table of accuracy per task family and stage/strategy."""
    columns: list[tuple[str, str]] = []
    for stage in ("prompting", "sft"):
        for cols in done.get(stage, {}).get("accuracy", {}).values():
            for column in cols:
                if (stage, column) not in columns:
                    columns.append((stage, column))
    families = list(done.get("prompting", {}).get("accuracy", {}))
    lines = ["# posttrain demo", "", "Exact match / multiple-choice accuracy (%) on held-out examples.", "",
             "| family | " + " | ".join(f"{'base' if s == 'prompting' else s} {c}" for s, c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for family in families:
        cells = [done.get(s, {}).get("accuracy", {}).get(family, {}).get(c) for s, c in columns]
        lines.append(f"| {family} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"
