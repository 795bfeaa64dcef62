"""`posttrain demo`: the post-training journey on the embedded world, one stage after another.

Each stage writes its own folder under ``run_dir`` and a ``stage.json`` when it has finished;
a rerun skips finished stages and reuses what they wrote, so an interrupted demo continues
where it stopped. The stages:

1. ``world``     — the world's entities, corpus statistics, task suite and simulated-annotator
                   preference files (pairs with 4-point strength, rankings, unpaired labels);
2. ``base``      — the base model: the shipped one, or pretrained here with ``pretrain: true``;
3. ``prompting`` — what the base model does before any fine-tuning: zero-shot, few-shot,
                   chain of thought and log-prob multiple choice, per task family;
4. ``sft``       — instruction fine-tuning on the world's tasks, then the same evaluation;
5. ``reward``    — reward models trained on the simulated annotators' comparisons;
6. ``dpo``       — DPO from the SFT model on its own samples ranked by the world's judge;
7. ``ppo``       — PPO from the SFT model against the reward model, KL-penalized;
8. ``overoptimization`` — PPO with a small KL coefficient: the proxy reward rises while gold
                   peaks and falls (plotted against sqrt(KL), as Gao et al. 2023);
9. ``final``     — every model on the same held-out prompts, and the SFT model's best of n
                   samples by the reward model: gold reward, exact match, gold win-rate against
                   SFT (raw and length-controlled), KL to SFT.

``summary.json`` and ``summary.md`` in ``run_dir`` gather every stage's numbers; ``report.html``
shows them with plots, and every exported model gets a model card.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

from rich.console import Console

from posttrain.config import load_config
from posttrain.evaluation.policy import gold_by_family, sampled_kl
from posttrain.evaluation.run import evaluate_suite, results_table, write_report
from posttrain.evaluation.winrate import GoldJudge, compare_answers, generate_answers
from posttrain.files import write_json_atomic
from posttrain.models.card import world_data_sources, write_model_card
from posttrain.generation.best_of_n import best_of_n
from posttrain.models.config import ModelConfig
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.reward import RewardScorer
from posttrain.recipes.config import DPOConfig, DemoConfig, PPOConfig, PretrainConfig, RewardConfig, SFTConfig
from posttrain.recipes.dpo import dpo
from posttrain.recipes.ppo import ppo
from posttrain.recipes.pretrain import pretrain
from posttrain.recipes.reward import reward
from posttrain.recipes.sft import sft
from posttrain.report import build_report, overoptimization_curve
from posttrain.training.metrics import read_metrics
from posttrain.world import base_model_path, generate_corpus, make_world
from posttrain.world.annotators import AnnotatorConfig, write_preference_files
from posttrain.world.answers import solved
from posttrain.world.tasks import FAMILIES, HELDOUT_FAMILIES, make_tasks, write_tasks

console = Console(stderr=True, soft_wrap=True)


@dataclass
class Stage:
    name: str
    title: str
    run: Callable[[DemoConfig, Path, dict[str, Any]], dict[str, Any]]
    """(config, stage folder, results of earlier stages) -> this stage's results (JSON-able)."""


# --- stages ----------------------------------------------------------------------------------

def _configs(kind: str) -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / kind


def _recipe_config(cfg: DemoConfig, config_cls: type, kind: str, overrides: list[str], name: str = ""):
    """configs/<kind>/<name>.yaml (default: tiny.yaml with quick, else world.yaml) with the demo's
    seed and the given overrides."""
    path = _configs(kind) / f"{name or ('tiny' if cfg.quick else 'world')}.yaml"
    return load_config(config_cls, path if path.exists() else None,
                       [f"train.seed={cfg.seed}", "train.tensorboard=false", *overrides])


def stage_world(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
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
        path = base_model_path()
        console.print(f"  using the shipped base model {path} (pretrain=true trains one here)")
        return {"model": str(path), "source": "shipped"}
    final = pretrain(_recipe_config(cfg, PretrainConfig, "pretrain", [f"train.run_dir={out / 'run'}",
                                                                     f"world.seed={cfg.seed}"]))
    return {"model": str(final), "source": f"pretrained with configs/pretrain/{'tiny' if cfg.quick else 'world'}.yaml"}


def _evaluate(cfg: DemoConfig, model_path: str, out: Path, chat: bool) -> dict[str, Any]:
    mcfg = ModelConfig(name_or_path=model_path)
    tokenizer = load_tokenizer(mcfg)
    model = load_causal_lm(mcfg, for_training=False)
    strategies = ("zero_shot",) if chat else ("zero_shot", "few_shot", "cot", "mc")
    report = evaluate_suite(model, tokenizer, strategies=strategies, n=cfg.eval_n, seed=cfg.seed, chat=chat,
                            max_prompt_tokens=512)
    write_report(report, out)
    console.print(results_table(report))
    return {family: {column: round(100 * cell.accuracy, 1) for column, cell in cols.items()}
            for family, cols in report.cells.items()}


def stage_prompting(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": _evaluate(cfg, done["base"]["model"], out, chat=False)}


def stage_sft(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    final = sft(_recipe_config(cfg, SFTConfig, "sft", [f"train.run_dir={out / 'run'}",
                                                         f"model.name_or_path={done['base']['model']}"]))
    return {"model": str(final), "accuracy": _evaluate(cfg, str(final), out / "eval", chat=True)}


def stage_reward(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    """The reward model PPO optimizes (the annotators' overall preference) and, by demo.reward_models,
    Llama 2's separate helpfulness and safety models, each evaluated on held-out annotated pairs."""
    models = {}
    for name in cfg.reward_models:
        overrides = [f"train.run_dir={out / name / 'run'}", f"model.name_or_path={done['sft']['model']}"]
        if cfg.quick:
            overrides += ["world.examples=40", "world.eval_examples=20", "norm_prompts=16"]
        final = reward(_recipe_config(cfg, RewardConfig, "reward", overrides,
                                      "world" if name == "overall" else f"world-{name}"))
        report = json.loads((out / name / "run" / "eval" / "reward.json").read_text(encoding="utf-8"))
        models[name] = {"model": str(final), **{k: v for k, v in report.items() if isinstance(v, (int, float))}}
        console.print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in models[name].items() if k != "model"))
    return {"models": models}


def stage_dpo(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    overrides = [f"train.run_dir={out / 'run'}", f"model.name_or_path={done['sft']['model']}"]
    overrides += [f"world.examples={20 if cfg.quick else cfg.dpo_prompts}", f"world.families=[{','.join(cfg.dpo_families)}]"]
    final = dpo(_recipe_config(cfg, DPOConfig, "dpo", overrides))
    summary = json.loads((out / "run" / "rounds.json").read_text(encoding="utf-8"))[-1]
    return {"model": str(final), **{k: v for k, v in summary.items() if isinstance(v, (int, float))}}


def _rlhf_overrides(out: Path, done: dict[str, Any], steps: int) -> list[str]:
    """PPO from the SFT model against the overall reward model (also its critic's start) for ``steps``."""
    rm = done["reward"]["models"]["overall"]["model"]
    return [f"train.run_dir={out / 'run'}", f"model.name_or_path={done['sft']['model']}", f"rewards=[{rm}]",
            f"critic={rm}", f"train.max_steps={steps}"]


def stage_ppo(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    final = ppo(_recipe_config(cfg, PPOConfig, "ppo", _rlhf_overrides(out, done, 4 if cfg.quick else cfg.ppo_steps)))
    hacking = out / "run" / "reward_hacking.json"
    return {"model": str(final), **(json.loads(hacking.read_text(encoding="utf-8")) if hacking.exists() else {})}


def stage_overoptimization(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    """PPO again with a small KL coefficient (configs/ppo/world-small-beta.yaml) for longer: the proxy
    reward keeps rising while gold peaks and falls (Gao et al. 2023); the report plots both against sqrt(KL)."""
    if cfg.overoptimization_steps <= 0:
        console.print("  skipped (demo.overoptimization_steps=0)")
        return {}
    overrides = _rlhf_overrides(out, done, 2 if cfg.quick else cfg.overoptimization_steps)
    ppo(_recipe_config(cfg, PPOConfig, "ppo", overrides, "tiny" if cfg.quick else "world-small-beta"))
    curve = overoptimization_curve(read_metrics(out / "run" / "metrics.jsonl"))
    if not curve["step"]:
        return {}
    peak = max(range(len(curve["gold"])), key=curve["gold"].__getitem__)
    return {"gold_start": curve["gold"][0], "gold_peak": curve["gold"][peak], "gold_end": curve["gold"][-1],
            "sqrt_kl_at_gold_peak": curve["sqrt_kl"][peak], "sqrt_kl_end": curve["sqrt_kl"][-1],
            "proxy_start": curve["proxy"][0], "proxy_end": curve["proxy"][-1]}


def stage_final(cfg: DemoConfig, out: Path, done: dict[str, Any]) -> dict[str, Any]:
    """Every model of the journey on the same held-out world prompts: gold reward (per family),
    exact match, response length, gold win-rate against the SFT model, KL to the SFT model."""
    world = make_world(cfg.seed)
    examples = [e for f in FAMILIES for e in make_tasks(world, cfg.seed, f, "heldout", cfg.final_n)]
    prompts = [e.messages for e in examples]
    paths = {name: done[name]["model"] for name in ("base", "sft", "dpo", "ppo") if name in done}
    sft_mcfg = ModelConfig(name_or_path=paths["sft"])
    tokenizer = load_tokenizer(sft_mcfg)
    sft_model = load_causal_lm(sft_mcfg, for_training=False)
    answers, gold, accuracy, kl = {}, {}, {}, {}

    def measure(name: str, texts: list[str]) -> None:
        answers[name], gold[name] = texts, gold_by_family(examples, texts)
        accuracy[name] = {f: round(100 * fmean(solved(e, a) for e, a in zip(examples, texts) if e.family == f), 1)
                          for f in FAMILIES}

    for name, path in paths.items():
        model = sft_model if name == "sft" else load_causal_lm(ModelConfig(name_or_path=path), for_training=False)
        measure(name, generate_answers(model, tokenizer, prompts, cfg.final_max_tokens, batch_size=64))
        if name in ("dpo", "ppo"):
            kl[name] = sampled_kl(model, sft_model, tokenizer, prompts[::cfg.kl_every], cfg.final_max_tokens, cfg.seed)
        console.print(f"  {name}: gold {gold[name]['mean']:.3f}, exact match {fmean(accuracy[name].values()):.1f}%"
                      + (f", KL to SFT {kl[name]['kl_k1']:.2f}" if name in kl else ""))
    n = (min(cfg.best_of_n, 2) if cfg.quick else cfg.best_of_n) if "reward" in done else 0
    if n > 0:  # inference-time RLHF: the SFT model's best of n samples by the reward model
        scorer = RewardScorer.from_pretrained(done["reward"]["models"]["overall"]["model"], device="cpu")
        picked = best_of_n(sft_model, tokenizer, prompts, scorer, n, cfg.final_max_tokens, seed=cfg.seed)
        measure("best_of_n", [r.response for r in picked])
        console.print(f"  best-of-{n} (SFT samples, reward model): gold {gold['best_of_n']['mean']:.3f}, "
                      f"exact match {fmean(accuracy['best_of_n'].values()):.1f}%")
    judge, lengths = GoldJudge(examples), lambda a: len(tokenizer(a)["input_ids"])
    wins = {name: compare_answers(judge, prompts, answers[name], answers["sft"], length=lengths).summary()
            for name in answers if name != "sft"}
    write_json_atomic(out / "answers.json", {"examples": [e.id for e in examples], "answers": answers})
    return {"models": paths, "best_of_n": n, "gold": {k: {"mean": v["mean"], "families": v["families"]} for k, v in gold.items()},
            "win_rate_vs_sft": wins, "kl_to_sft": {k: v["kl_k1"] for k, v in kl.items()}, "kl": kl,
            "mean_length": {k: fmean(map(lengths, v)) for k, v in answers.items()}, "accuracy": accuracy,
            "held_out_prompts": len(examples)}


STAGES = [
    Stage("world", "world: entities, corpus, tasks, annotated preferences", stage_world),
    Stage("base", "base model", stage_base),
    Stage("prompting", "prompting the base model (zero-shot, few-shot, CoT, multiple choice)", stage_prompting),
    Stage("sft", "instruction fine-tuning (SFT) and its evaluation", stage_sft),
    Stage("reward", "reward models from the annotators' comparisons", stage_reward),
    Stage("dpo", "DPO from the SFT model", stage_dpo),
    Stage("ppo", "PPO against the reward model, KL-penalized to the SFT model", stage_ppo),
    Stage("overoptimization", "over-optimization: PPO with a small KL coefficient, proxy vs gold", stage_overoptimization),
    Stage("final", "every model on the same held-out prompts: gold reward, win-rate, KL", stage_final),
]


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
        if marker.exists():
            done[stage.name] = json.loads(marker.read_text(encoding="utf-8"))["results"]
            console.print(f"  finished earlier, reusing {out}")
            continue
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        results = stage.run(cfg, out, done)
        write_json_atomic(marker, {"stage": stage.name, "seconds": round(time.time() - t0, 1), "results": results})
        done[stage.name] = results
        console.print(f"  done in {time.time() - t0:.0f}s")
    write_json_atomic(root / "summary.json", done)
    (root / "summary.md").write_text(summary_markdown(done), encoding="utf-8")
    write_model_cards(root, done, cfg.seed)
    report = build_report(root)
    console.rule(f"demo finished in {time.time() - started:.0f}s: {report}")
    return done


CARD_DATA = {"sft": ("tasks", "corpus"), "reward": ("preferences",), "dpo": ("tasks", "preferences"), "ppo": ("tasks",)}
"""The world's data each stage's model was trained on (rehearsal mixes the corpus into SFT)."""


def write_model_cards(root: Path, done: dict[str, Any], seed: int) -> None:
    """A model card (README.md) beside every model the demo exported, with its scores."""
    final = done.get("final", {})
    exported = [(s, s, root / s / "run", done[s]["model"]) for s in ("sft", "dpo", "ppo") if s in done]
    exported += [("reward", f"{name} reward model", root / "reward" / name / "run", info["model"])
                 for name, info in done.get("reward", {}).get("models", {}).items()]
    for stage, name, run, model in exported:
        base = done["base"]["model"] if stage == "sft" else done["sft"]["model"]
        scores = ({k: v for k, v in done["reward"]["models"][name.split()[0]].items() if k != "model"} if stage == "reward"
                  else {"held-out gold reward": final.get("gold", {}).get(stage, {}).get("mean"),
                        "exact match by family (%)": final.get("accuracy", {}).get(stage),
                        "gold win-rate vs SFT": final.get("win_rate_vs_sft", {}).get(stage, {}).get("win_rate"),
                        "KL to SFT": final.get("kl_to_sft", {}).get(stage)})
        write_model_card(model, base_model=base, data=world_data_sources(seed, CARD_DATA[stage]),
                         training_config=run / "config.yaml" if (run / "config.yaml").exists() else None, stage=stage, name=f"posttrain demo: {name}",
                         scores={k: v for k, v in scores.items() if v is not None})


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
