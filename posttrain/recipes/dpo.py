"""Direct preference optimization and its relatives: learn from comparisons with no reward model and no RL.

    posttrain dpo --config configs/dpo/world.yaml

DPO (Rafailov et al. 2023) writes the reward in terms of the policy, r = beta * log(pi / pi_ref)
+ beta * log Z(x), so the partition function cancels in the Bradley-Terry likelihood of a pair
and preference learning becomes classification of (chosen, rejected) log-ratio differences. The
loss is ``loss: {name: ..., <hyperparameters>}`` from the registry of ``posttrain.losses.dpo`` (DPO,
cDPO, IPO, SimPO, ORPO, KTO; pure functions of log-probs, each citing its paper and equation;
``posttrain dpo --help`` lists them); one micro-batch's step is ``posttrain.training.steps``.
``nll_weight`` adds the chosen responses' NLL to a pairwise loss (DPO+NLL, Pang et al. 2024),
without which the chosen likelihood tends to fall along with the rejected one's (on the world's
near-identical pairs, a lot).

Efficiency:

- **One forward per micro-batch**: the B chosen and B rejected sequences go through the model
  together, either (``packing``) in one row with no padding and each pair's prompt once,
  [prompt, chosen, rejected] pair after pair, each response continuing from its prompt and
  attending to it and to itself only (``posttrain.data.preference.collate_shared_prompt``), or
  padded into (2B, T). Only the positions that predict a response token go through the LM head
  (``posttrain.models.logps.SequenceLogps``). Log-probs are those of each sequence scored alone, in
  either layout (up to float rounding).
- **Reference log-probs computed once** (``reference=precompute``): before training, the reference
  scores every training and held-out sequence and the (N, 2) table is cached on disk as
  safetensors under a key of (reference weights, tokenized data, dtype); a rerun or a resume finds
  it and skips the pass (``posttrain.training.reference``). The starting policy is the reference,
  so the pass runs on the policy itself before its first update: no second model is loaded.
- **LoRA**: the reference is the same model with its adapter disabled
  (``posttrain.models.lora.disabled_adapter``), live or precomputed; never a second copy.

Metrics: the loss, implicit rewards of chosen and rejected (beta * log pi/pi_ref), reward accuracy
and margin, chosen/rejected log-probs (per step, and on held-out pairs at each evaluation), and
KL(policy || reference) on held-out prompts from sampled responses (k1 and k3 estimates).

Data: preference files and/or ``world:preferences`` (``data.train``), or the world's prompts
(``data.train`` empty or ``[world:prompts]``): prompts of its task families, responses sampled
from the policy and/or the world's candidate responses, ranked by its simulated annotators, its
gold reward or a reward model (``labeler``, through ``posttrain.scorers``), and paired best against
worst (``pairing``; ``posttrain.data.labelling``). In the world the run also reports the held-out gold reward and
the gold win-rate against the starting policy, greedy and sampled (``run_dir/world_gold.json``
has them per family).

Iterative DPO (``rounds`` > 1): each round takes new prompts, samples responses from the current
policy, labels pairs of them, and trains on the new pairs from the last round's model, which is
also the round's reference (``round_reference``); Llama 2's iterative rounds (Touvron et al. 2023,
§3.2) and iterative DPO (Xu et al. 2023, "Some things are more cringe than others"). Round k
lives in ``run_dir/round-k``; the last round's model is ``run_dir/final``; ``run_dir/rounds.json``
summarizes them (``posttrain.training.rounds``). Finished rounds are skipped when a run is started again.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from posttrain.config import save_config
from posttrain.data.labelling import annotator_ranker, sample_and_label, score_ranker
from posttrain.data.preference import collate_examples, tokenize_for_loss
from posttrain.data.readers import DataError, read_from_config, read_records
from posttrain.data.writers import write_jsonl
from posttrain.evaluation.policy import GoldAgainstStart, kl_prompt_sample, sampled_kl_scored
from posttrain.files import write_json_atomic
from posttrain.generation import stop_at_end_of_turn
from posttrain.losses.dpo import PreferenceLoss, resolve_loss
from posttrain.models.attention import packing_kept
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.logps import SequenceLogps
from posttrain.recipes.config import DPOConfig
from posttrain.scorers import Scorer, as_scorer, load_scorer
from posttrain.training.loop import (
    RunContext, TrainingError, epoch_sampler, evaluate, finish_run, fit, prepare_training, setup_run, shard,
    units_per_s,
)
from posttrain.training.reference import ReferencePolicy, column_logps, precompute_reference
from posttrain.training.rounds import run_rounds
from posttrain.training.sharding import gathered_root
from posttrain.training.steps import Micro, count_units, preference_loss_fn
from posttrain.world.annotators import Annotator, AnnotatorConfig, make_preferences
from posttrain.world.tasks import task_examples


# --- reference log-probs ------------------------------------------------------------------------

def prepare_attention(cfg: DPOConfig, lm, ctx: RunContext | None = None) -> DPOConfig:
    """Packed batches need attention within each sequence, each response over its prompt and itself:
    posttrain's segment attention replaces sdpa/eager (padded and generation calls go to the model's
    own). A model that cannot take it gets padded batches instead (the returned config), said once."""

    if not cfg.packing or packing_kept(lm, shared_prefix=True, say=ctx.print if ctx else print):
        return cfg
    return dataclasses.replace(cfg, packing=False)


def load_reference_lm(cfg: DPOConfig, tokenizer):

    ref_cfg = dataclasses.replace(cfg.model, name_or_path=cfg.reference_model or cfg.model.name_or_path,
                                  lora=dataclasses.replace(cfg.model.lora, enabled=False))
    lm = load_causal_lm(ref_cfg, for_training=False, tokenizer=tokenizer)
    prepare_attention(cfg, lm)
    return lm


def reference_tables(cfg: DPOConfig, ctx: RunContext, ref: ReferencePolicy | None, datasets: dict[str, list],
                     pad_id: int) -> dict[str, torch.Tensor] | None:
    """Precomputed (N, 2) reference log-probs per dataset, cached in ``reference_cache``; None when
    the reference scores live or the loss needs none."""
    if ref is None or cfg.reference == "live":
        return None
    folder = Path(cfg.reference_cache or ctx.run_dir / "reference_logps")
    settings = {"max_length": cfg.data.max_length, "overflow": cfg.data.overflow}
    return precompute_reference(ctx, ref, datasets, pad_id, folder, settings, 2 * cfg.train.batch_size, cfg.packing)


# --- data ----------------------------------------------------------------------------------------

def make_ranker(cfg: DPOConfig, prompts: list, examples: list | None, scorer: Scorer | None) -> Callable:
    """pools -> the configured labeler's ranker (a scorer passed in Python wins): the world's annotators,
    or the rewards of its gold reward or of a reward model."""
    w = cfg.world
    if scorer is None and cfg.labeler == "annotator":
        annotator = Annotator(AnnotatorConfig(w.noise_temperature, w.length_bias, w.annotator_seed))
        return lambda pools: annotator_ranker(annotator, examples, w.aspect)
    if scorer is None and cfg.labeler == "judge":
        from posttrain.synth.label import judge_ranker
        from posttrain.synth.prompts import JUDGE
        from posttrain.synth.teachers import cached_teacher

        teaching = cached_teacher(cfg.judge, f"{cfg.train.run_dir}/judge-cache", w.seed)
        return lambda pools: judge_ranker(teaching, JUDGE, prompts, pools)
    if scorer is None and cfg.labeler == "reward_model" and not cfg.reward_model:
        raise TrainingError("labeler=reward_model needs reward_model=<folder of a trained reward model>")
    if scorer is None:
        scorer = load_scorer(cfg.reward_model if cfg.labeler == "reward_model" else "world_gold")
    return lambda pools: score_ranker(scorer, prompts, pools, examples)


def on_world_prompts(cfg: DPOConfig) -> bool:
    """Whether the run makes its pairs from the world's prompts (data.train empty or [world:prompts])."""
    return cfg.data.train in ([], ["world:prompts"])


def world_examples(cfg: DPOConfig, split: str, round_index: int = 1) -> list:
    w = cfg.world
    n = w.examples if split == "train" else w.eval_examples
    return task_examples(w.seed, w.families, split, n, (round_index - 1) * n if split == "train" else 0,
                         error=TrainingError)  # each round takes new prompts


def round_records(cfg: DPOConfig, ctx: RunContext, lm, tokenizer, scorer: Scorer | None,
                  round_index: int) -> tuple[list, list]:
    """(training records, held-out records) of this round, saved in run_dir so a resume reuses them.
    Round 1 on files trains on their pairs; later rounds, and the world, label pairs of sampled responses."""
    saved, w = ctx.run_dir / "pairs.jsonl", cfg.world
    if saved.exists():
        return read_records(saved, "preference").expect("preference"), held_out_records(cfg, tokenizer)
    examples = None
    if not on_world_prompts(cfg):
        train = read_from_config(cfg.data, "train", tokenizer, world=cfg.world).records
        prompts = [json.loads(p) for p in dict.fromkeys(
            json.dumps(r.as_dicts() if r.kind == "prompt" else [m.to_dict() for m in r.prompt]) for r in train)
            ] if round_index > 1 else []
        if round_index > 1 and scorer is None and cfg.labeler not in ("reward_model", "judge"):
            raise TrainingError(f"round {round_index} labels sampled responses to data.train's prompts, which needs "
                                "labeler=reward_model (with reward_model=...), labeler=judge, or a scorer passed to dpo()")
    else:
        examples = world_examples(cfg, "train", round_index)
        prompts = [e.messages for e in examples]
    if prompts:
        candidates = examples is not None and w.responses in ("candidates", "both")
        train, how = sample_and_label(
            lm, tokenizer, prompts, examples, make_ranker(cfg, prompts, examples, scorer),
            samples_per_prompt=w.samples_per_prompt, max_new_tokens=w.sample_max_tokens,
            temperature=cfg.sample_temperature, seed=cfg.train.seed * 1000 + round_index,
            sample=w.responses != "candidates" or examples is None, candidates=candidates, pairing=cfg.pairing,
            pairs_per_prompt=w.pairs_per_prompt)
        ctx.print(f"round {round_index}: {how} (labelled by {'a scorer' if scorer else cfg.labeler})")
    if ctx.is_main:
        write_jsonl(train, saved)
    return train, held_out_records(cfg, tokenizer)


def held_out_records(cfg: DPOConfig, tokenizer) -> list:
    if cfg.data.eval or not on_world_prompts(cfg):
        return read_from_config(cfg.data, "eval", tokenizer, world=cfg.world).records if cfg.data.eval else []
    w = cfg.world
    annotator = Annotator(AnnotatorConfig(w.noise_temperature, w.length_bias, w.annotator_seed + 1))
    return make_preferences(world_examples(cfg, "heldout"), annotator, w.pairs_per_prompt)


def tokenize(cfg: DPOConfig, ctx: RunContext, tokenizer, records: list, what: str, loss: PreferenceLoss) -> list:
    try:
        examples, report = tokenize_for_loss(tokenizer, records, loss.unpaired, cfg.data.max_length,
                                             cfg.data.overflow, loss.name)
    except DataError as e:
        raise TrainingError(f"{what}: {e}") from None
    if records:
        ctx.print(f"{what}: {report.summary()}")
    return examples


# --- the run ---------------------------------------------------------------------------------------

def train_round(cfg: DPOConfig, scorer: Scorer | None = None, round_index: int = 1, top_dir: Path | None = None) -> dict:
    """One DPO run on this round's pairs; returns its final evaluation (and writes run_dir/final)."""

    ctx = setup_run(cfg)
    tc, top_dir = cfg.train, top_dir or Path(cfg.train.run_dir)
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    lm = load_causal_lm(cfg.model, tokenizer=tokenizer)
    stop_at_end_of_turn(lm, tokenizer)
    cfg = prepare_attention(cfg, lm, ctx)
    gold = None if not on_world_prompts(cfg) else GoldAgainstStart(world_examples(cfg, "heldout"), lm, tokenizer,
                                                         cfg.world.sample_max_tokens, cfg.train.seed + 7,
                                                         top_dir / "baseline.json", ctx.is_main)
    train_records, eval_records = round_records(cfg, ctx, lm, tokenizer, scorer, round_index)
    loss, hyper = resolve_loss(cfg.loss)  # checked by cfg.problems()
    train_set = tokenize(cfg, ctx, tokenizer, train_records, "train", loss)
    eval_set = tokenize(cfg, ctx, tokenizer, eval_records, "eval", loss)
    if tc.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    model = SequenceLogps(lm, cfg.lm_head_chunk)
    ref = ReferencePolicy(model, partial(load_reference_lm, cfg, tokenizer), cfg.reference_model,
                          live=cfg.reference == "live") if loss.reference else None
    tables = reference_tables(cfg, ctx, ref, {"train": train_set, "eval": eval_set}, tokenizer.pad_token_id) or {}
    train_table, eval_table = tables.get("train"), tables.get("eval")
    # Precomputed log-probs ride in the micro-batch; otherwise the reference scores it now.
    loss_fn = preference_loss_fn(loss, hyper, lambda micro: micro.reference if micro.reference is not None
                                 else column_logps(micro.batch, ref), cfg.nll_weight)
    pad = tokenizer.pad_token_id

    def micro_of(examples: list, ids: list[int], table: torch.Tensor | None) -> Micro:
        batch = collate_examples([examples[i] for i in ids], pad, ids, cfg.packing).to(ctx.device)
        return Micro(batch, None if table is None else table[ids].to(ctx.device))

    sampler, total = epoch_sampler(ctx, len(train_set))
    model, optimizer, scheduler = prepare_training(ctx, model, total)
    prompts = [[m.to_dict() for m in r.prompt] for r in eval_records]
    if cfg.kl_prompts > 0 and not prompts and on_world_prompts(cfg):
        prompts = [e.messages for e in world_examples(cfg, "heldout")]
    held_out_prompts = kl_prompt_sample(prompts, cfg.kl_prompts, f"dpo-kl:{cfg.train.seed}")
    scores: dict = {}

    def run_eval(step: int) -> dict:
        nonlocal scores
        scores = {}
        if eval_set:
            mine = shard(list(range(len(eval_set))), ctx)
            batches = (micro_of(eval_set, mine[i:i + tc.batch_size], eval_table)
                       for i in range(0, len(mine), tc.batch_size))
            scores.update({f"eval_{k}": v for k, v in evaluate(ctx, model, batches, loss_fn, count_units).items()})
        policy = ctx.accelerator.unwrap_model(model)
        if held_out_prompts and ref is not None and ctx.runs_model_work:
            with gathered_root(model):
                scores.update(sampled_kl_scored(policy, ref, tokenizer, held_out_prompts, cfg.kl_max_tokens,
                                                cfg.train.seed))
        if gold is not None and ctx.runs_model_work:
            with gathered_root(model):
                against_start = gold(policy.lm, tokenizer)
            if ctx.is_main:
                write_json_atomic(ctx.run_dir / "world_gold.json", {"step": step, **against_start})  # per family too
            against_start.pop("families")
            scores.update(against_start)
        if scores:  # nothing held out: nothing to log
            ctx.metrics.log(step, scores)
            ctx.print(f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        return scores

    state = fit(ctx, model, optimizer, scheduler, sampler, total, lambda ids: micro_of(train_set, ids, train_table),
                loss_fn, count_units, description=f"dpo round {round_index}", throughput=units_per_s("pairs_per_s"),
                progress=lambda result: {"acc": result.metrics.get("rewards/accuracies", 0.0)}, evaluate_at=run_eval)
    if not scores:
        scores = run_eval(state.step)
    finish_run(ctx, ctx.accelerator.unwrap_model(model).lm, tokenizer)
    return {"round": round_index, "pairs": len(train_set), "steps": state.step, **scores}


def dpo(cfg: DPOConfig, scorer: Any = None) -> Path:
    """Train with the configured preference loss (``rounds`` of it for iterative DPO); return run_dir/final.

    ``scorer``: labels sampled pairs instead of ``labeler``, a callable ``(prompts, responses) ->
    rewards`` or any object with that ``.score`` method (e.g. ``posttrain.models.reward.RewardScorer``).
    """
    for key, problem in cfg.problems():  # as a config file's are (a config built in Python too)
        raise TrainingError(f"{key}: {problem}")
    scorer = None if scorer is None else as_scorer(scorer)
    top = Path(cfg.train.run_dir)
    if cfg.rounds == 1:
        summary = train_round(cfg, scorer)
        write_json_atomic(top / "rounds.json", [summary])
        return top / "final"
    top.mkdir(parents=True, exist_ok=True)
    save_config(cfg, top / "config.yaml")

    def one_round(k: int, start: str, round_dir: Path) -> dict:
        reference = cfg.model.name_or_path if cfg.round_reference == "initial" else cfg.reference_model
        return train_round(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(round_dir)),
                                               model=dataclasses.replace(cfg.model, name_or_path=start),
                                               reference_model=reference), scorer, k, top)

    return run_rounds(top, cfg.rounds, cfg.model.name_or_path, one_round)
