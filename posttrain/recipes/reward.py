"""Reward modeling from human comparisons: a scalar head on the SFT model, trained so that preferred
responses score higher.

    posttrain reward --config configs/reward/world.yaml

As in InstructGPT (Ouyang et al. 2022, §3.5) and Llama 2 (Touvron et al. 2023, §3.2.2): the
reward model is the SFT model with its LM head replaced by a scalar head
(``posttrain.models.reward``), read at each response's last real token. Losses
(``posttrain.losses.reward``, chosen by ``loss``):

- ``bradley_terry``: -log sigmoid(r_w - r_l) per pair (optionally + ``center_coef`` * (r_w + r_l)^2);
- ``margin``: Llama 2's -log sigmoid(r_w - r_l - m(strength)) with the 4-point strength of each pair;
- ``all_pairs``: InstructGPT's K-wise loss, every pair of a ranking of K from one forward per response;
- ``plackett_luce``: the likelihood of the whole ranking.

``likelihood: true`` adds a learned ``alpha`` x the response's mean token log-prob under the
backbone's own (tied) LM head to the score (``posttrain.models.reward``): a small model's last
token may not know whether an answer is right, its LM head does.

Batches: a micro-batch is ``train.batch_size`` comparisons (pairs, or rankings of K); all their
responses, chosen and rejected alike, go through the model in **one forward**: packed in a single
row with each comparison's prompt once and every response continuing from it, attention per
response (``packing``: no padding, no repeated prompt; ``posttrain.data.packing.SharedPrefixBatch``),
or padded. The loss is
normalized per pair (per ranking) over the whole step (``posttrain.training.loop``).

Data: preference and/or ranking records from ``data.train`` (``posttrain.data.readers``); the
held-out pairs are ``data.eval`` or ``eval_fraction`` of the training prompts. With ``data.train``
empty, the embedded world's simulated annotators label candidate responses and/or the starting
model's samples on the ``world.aspect`` (overall, helpfulness or safety: Llama 2's two models).

After training the scores are standardized on a reference set (``normalize``: the starting model's
sampled responses to training prompts, by default) and the final folder holds the plain HF model,
the tokenizer and ``reward_normalization.json``. Held-out accuracy is logged at each evaluation;
the final report (accuracy, by strength, calibration, and for the world the agreement with gold
and the gold-reward oracle's accuracy on the same labels) goes to ``run_dir/eval/reward.json``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from posttrain.data.chat import render_prompt_response
from posttrain.data.comparisons import Comparison, collate_comparisons, comparison_records, responses_of
from posttrain.data.errors import location_of
from posttrain.data.labelling import response_pools
from posttrain.data.readers import read_from_config
from posttrain.evaluation.reward import (flat_metrics, reward_report, summary_line, within_prompt_correlation,
                                         write_report)
from posttrain.generation.best_of_n import sample_responses
from posttrain.losses.reward import RANKING_LOSSES
from posttrain.models.attention import packing_kept
from posttrain.models.export import export_model
from posttrain.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from posttrain.models.reward import (
    NORMALIZATION_FILE, RewardModel, RewardNormalization, RewardScorer, as_dicts, ensure_distinct_pad,
    fit_normalization, load_reward_model,
)
from posttrain.recipes.config import RewardConfig
from posttrain.training.loop import (
    RunContext, TrainingError, epoch_sampler, evaluate, fit, prepare_training, refuse_fsdp, setup_run, shard,
    units_per_s,
)
from posttrain.training.steps import comparison_loss_fn, count_comparisons
from posttrain.training.sampler import require_one_step
from posttrain.scorers import world_gold_aspect
from posttrain.world.annotators import Annotator, AnnotatorConfig, annotate
from posttrain.world.entities import make_world
from posttrain.world.tasks import TRAIN_FAMILIES, check_families, make_tasks

collate = collate_comparisons  # the name tests take from this recipe


def make_loss_fn(cfg: RewardConfig, loss: str | None = None):
    """The configured comparison loss (:func:`posttrain.training.steps.comparison_loss_fn`)."""
    return comparison_loss_fn(loss or cfg.loss, cfg.margin_table, cfg.center_coef)


# --- data -----------------------------------------------------------------------------------

def is_ranking_loss(cfg: RewardConfig) -> bool:
    return cfg.loss in RANKING_LOSSES


def tokenize_comparisons(tokenizer, records: list, cfg: RewardConfig, ctx: RunContext, what: str) -> list[Comparison]:
    """Render every response with its prompt; apply data.max_length / data.overflow (counted and reported).

    A reward is read at the last token, so ``truncate`` keeps the *end* of a long sequence (the
    response) and cuts the start of the prompt; ``drop`` drops the whole comparison.
    """
    limit, out, cut, dropped = cfg.data.max_length, [], 0, 0
    for index, record in enumerate(records):
        prompt = as_dicts(record.prompt)
        rendered = [render_prompt_response(tokenizer, prompt, as_dicts(r)) for r in responses_of(record)]
        seqs, masks = [r.input_ids for r in rendered], [r.loss_mask for r in rendered]
        if cfg.loss == "margin" and getattr(record, "strength", None) is None:
            raise TrainingError(f"{location_of(record, index)}: no preference strength, which loss=margin needs (1-4 "
                                f"on every pair); use loss=bradley_terry, or add strengths to the data")
        if any(len(s) > limit for s in seqs):
            if cfg.data.overflow == "error":
                raise TrainingError(f"{location_of(record, index)}: a response of {max(map(len, seqs))} tokens with its "
                                    f"prompt, more than data.max_length={limit}; raise it or set data.overflow")
            if cfg.data.overflow == "drop":
                dropped += 1
                continue
            cut += 1
            seqs, masks = [s[-limit:] for s in seqs], [m[-limit:] for m in masks]
        p_chosen = record.meta.get("p_chosen") if cfg.loss == "soft_bradley_terry" else None
        if p_chosen is not None and not (isinstance(p_chosen, (int, float)) and 0.0 <= p_chosen <= 1.0):
            raise TrainingError(f"{location_of(record, index)}: meta.p_chosen={p_chosen!r} is not a probability; "
                                f"loss=soft_bradley_terry reads it as the chance the chosen response is better")
        out.append(Comparison(seqs, getattr(record, "strength", None), masks, p_chosen))
    if cut or dropped:
        ctx.print(f"{what}: {len(records)} comparisons; {cut} cut to data.max_length={limit} from the left "
                  f"(prompt start), {dropped} dropped as longer than it")
    return out


def split_by_prompt(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded share of the distinct prompts, with every record of those prompts."""
    key = lambda r: json.dumps(as_dicts(r.prompt), sort_keys=True)  # noqa: E731
    prompts = sorted({key(r) for r in records})
    random.Random(f"reward-split:{seed}").shuffle(prompts)
    held = set(prompts[:round(fraction * len(prompts))])
    return [r for r in records if key(r) not in held], [r for r in records if key(r) in held]


def file_records(cfg: RewardConfig, ctx: RunContext, tokenizer) -> tuple[list, list]:
    """(training records, held-out preference pairs) from data.train / data.eval."""
    result = read_from_config(cfg.data, "train", tokenizer, world=cfg.world)
    ctx.print(result.report.summary())
    records = result.expect("preference", "ranking")
    if cfg.data.eval:
        held = read_from_config(cfg.data, "eval", tokenizer, world=cfg.world).expect("preference", "ranking")
    else:
        records, held = split_by_prompt(records, cfg.eval_fraction, cfg.train.seed)
        ctx.print(f"held out {len(held)} records ({cfg.eval_fraction:.0%} of the prompts) for evaluation")
    return records, comparison_records(held, ranking=False)


# --- the world's annotators -------------------------------------------------------------------

def uses_world(cfg: RewardConfig) -> bool:
    return cfg.data.train in ([], ["world:preferences"])


def world_families(cfg: RewardConfig) -> list[str]:
    w = cfg.world
    families = list(w.families) or [f for f in TRAIN_FAMILIES if not (w.aspect == "helpfulness" and f == "harmful")]
    return check_families(families, "world.families", TrainingError)


def world_responses(cfg: RewardConfig, examples: list, lm, tokenizer, split: str) -> dict[str, list[str]] | None:
    """None (the world's candidate responses), or samples of the starting model ``lm`` (plus the candidates)."""
    w = cfg.world
    if w.responses == "candidates":
        return None
    samples = sample_responses(lm, tokenizer, [e.messages for e in examples], w.samples_per_prompt,
                               w.sample_max_tokens, seed=cfg.train.seed + (split == "heldout"))
    pools = response_pools(examples if w.responses == "both" else None, samples, len(examples))
    return {e.id: pool for e, pool in zip(examples, pools)}


def world_records(cfg: RewardConfig, tokenizer, ctx: RunContext) -> tuple[list, list]:
    """(training records, held-out pairs) labeled by the world's simulated annotators."""
    w, world = cfg.world, make_world(cfg.world.seed)
    lm = None if w.responses == "candidates" else load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
    out = []
    for split, n, offset in (("train", w.examples, 0), ("heldout", w.eval_examples, 1)):
        examples = [e for f in world_families(cfg) for e in make_tasks(world, w.seed, f, split, n)]
        annotator = Annotator(AnnotatorConfig(w.noise_temperature, w.length_bias, w.annotator_seed + offset))
        ranking = split == "train" and is_ranking_loss(cfg)
        out.append(annotate(examples, annotator, w.aspect, ranking, w.pairs_per_prompt, w.ranking_k,
                            world_responses(cfg, examples, lm, tokenizer, split)))
    ctx.print(f"world ({w.aspect}, {w.responses}, noise {w.noise_temperature}): {len(out[0])} training "
              f"{'rankings' if is_ranking_loss(cfg) else 'pairs'}, {len(out[1])} held-out pairs")
    return out[0], out[1]


def sample_agreement(cfg: RewardConfig, scorer: RewardScorer, tokenizer) -> dict:
    """Per family, the within-prompt correlation with gold of the model's scores of the starting
    model's own samples (agreement_samples per held-out prompt, temperature 1)."""
    w, world = cfg.world, make_world(cfg.world.seed)
    examples = [e for f in world_families(cfg) for e in make_tasks(world, w.seed, f, "heldout", cfg.agreement_prompts)]
    lm = load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
    samples = sample_responses(lm, tokenizer, [e.messages for e in examples], cfg.agreement_samples,
                               w.sample_max_tokens, seed=cfg.train.seed + 2)
    repeated = [e for e in examples for _ in range(cfg.agreement_samples)]
    responses = [r for rs in samples for r in rs]
    scores = scorer.score([e.messages for e in repeated], responses, batch_size=32, normalize=False).tolist()
    gold = world_gold_aspect("total" if w.aspect == "overall" else w.aspect)(None, responses, repeated).tolist()
    families = {}
    for family in dict.fromkeys(e.family for e in examples):
        rows = [i for i, e in enumerate(repeated) if e.family == family]
        families[family] = within_prompt_correlation([scores[i] for i in rows], [gold[i] for i in rows],
                                                     [repeated[i].id for i in rows])
    return {"samples_per_prompt": cfg.agreement_samples, "model": cfg.model.name_or_path,
            "all": within_prompt_correlation(scores, gold, [e.id for e in repeated]), "families": families}


# --- normalization ----------------------------------------------------------------------------

def reference_set(cfg: RewardConfig, records: list, tokenizer) -> tuple[list, list[str], str]:
    """(prompts, responses, description) the exported scores are standardized on."""
    prompts = list({json.dumps(as_dicts(r.prompt), sort_keys=True): as_dicts(r.prompt) for r in records}.values())
    random.Random(f"reward-norm:{cfg.train.seed}").shuffle(prompts)
    prompts = prompts[:cfg.norm_prompts]
    if cfg.normalize == "data":
        chosen = {json.dumps(as_dicts(r.prompt), sort_keys=True): as_dicts(responses_of(r)[0])[-1]["content"]
                  for r in records}
        responses = [chosen[json.dumps(p, sort_keys=True)] for p in prompts]
        return prompts, responses, f"{len(prompts)} training prompts with their preferred responses"
    if is_reward_folder(cfg.model.name_or_path):
        raise TrainingError(f"normalize=sft_samples samples the starting model, but {cfg.model.name_or_path} is a "
                            f"reward model, not the SFT model; use normalize=data or none")
    lm = load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
    samples = sample_responses(lm, tokenizer, prompts, 1, cfg.norm_max_new_tokens, seed=cfg.train.seed)
    return prompts, [s[0] for s in samples], (f"{len(prompts)} training prompts with responses sampled from "
                                              f"{cfg.model.name_or_path} (temperature 1)")


def is_reward_folder(name_or_path: str) -> bool:
    """Whether a local model folder holds a sequence-classification (reward) model."""
    config = Path(resolve_model_path(name_or_path)) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def measure_normalization(cfg: RewardConfig, scorer: RewardScorer, records: list, tokenizer) -> RewardNormalization:
    if cfg.normalize == "none":
        return RewardNormalization(reference="none: raw scores")
    prompts, responses, description = reference_set(cfg, records, tokenizer)
    return fit_normalization(scorer.score(prompts, responses, batch_size=32, normalize=False), description)


# --- the run ----------------------------------------------------------------------------------

def build_model(cfg: RewardConfig, tokenizer, ctx: RunContext | None = None) -> tuple[RewardModel, RewardConfig]:
    """The SFT model with a new scalar head (or a reward model to train further), ready to train, and
    the config to train it with: packing is turned off (and the log says why) for a model whose
    attention cannot read packed rows that share each prompt."""
    hf = load_reward_model(cfg.model, tokenizer)
    # Attention per response over its prompt, or padded batches when the model cannot take packed rows.
    if cfg.packing and not packing_kept(hf, shared_prefix=True, say=ctx.print if ctx else print):
        cfg = dataclasses.replace(cfg, packing=False)
    if cfg.train.gradient_checkpointing:
        hf.gradient_checkpointing_enable()
    try:
        return RewardModel(hf, cfg.likelihood, cfg.likelihood_init), cfg
    except ValueError as e:
        raise TrainingError(f"likelihood: {e}") from None


def finish(cfg: RewardConfig, ctx: RunContext, hf, tokenizer, records: list, held_out: list, step: int) -> Path:
    """Measure the normalization, write the held-out report, export ``run_dir/final`` with both."""
    out = ctx.run_dir / "final"
    if ctx.is_main:
        scorer = RewardScorer(hf, tokenizer)
        scorer.normalization = measure_normalization(cfg, scorer, records, tokenizer)
        ctx.print(f"normalization: mean {scorer.normalization.mean:.4f}, std {scorer.normalization.std:.4f} "
                  f"over {scorer.normalization.reference}")
        if held_out:
            report = reward_report(scorer, held_out)
            if uses_world(cfg) and cfg.agreement_samples > 0 and not is_reward_folder(cfg.model.name_or_path):
                report["sample_agreement"] = sample_agreement(cfg, scorer, tokenizer)
            write_report(report, ctx.run_dir / "eval" / "reward.json")
            ctx.metrics.log(step, flat_metrics(report))
            ctx.print(summary_line(report))
        export_model(hf, tokenizer, out, extra_files={NORMALIZATION_FILE: scorer.normalization.to_json()})
        ctx.print(f"final reward model written to {out}")
    ctx.metrics.close()
    ctx.accelerator.wait_for_everyone()
    return out


def reward(cfg: RewardConfig) -> Path:
    """Train, checkpoint, normalize, evaluate and export ``run_dir/final``; return its path."""
    ctx = setup_run(cfg)
    tc = cfg.train
    refuse_fsdp(ctx, "the reward recipe", "its normalization and report score on the main process alone")
    if cfg.center_coef and is_ranking_loss(cfg):
        raise TrainingError(f"center_coef applies to the pairwise losses; loss={cfg.loss} has no centering term")
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    ensure_distinct_pad(tokenizer)  # so plain transformers scores the exported model's sequences as posttrain does
    world_only = uses_world(cfg)  # the annotators label candidates (and samples)
    records, held_out = world_records(cfg, tokenizer, ctx) if world_only else file_records(cfg, ctx, tokenizer)
    train_data = tokenize_comparisons(tokenizer, comparison_records(records, is_ranking_loss(cfg)), cfg, ctx, "train")
    eval_data = tokenize_comparisons(tokenizer, held_out, dataclasses.replace(cfg, loss="bradley_terry"), ctx, "eval")
    require_one_step(len(train_data), tc.batch_size, tc.grad_accum, ctx.world_size, "comparisons")
    model, cfg = build_model(cfg, tokenizer, ctx)

    sampler, total = epoch_sampler(ctx, len(train_data), "comparisons")
    model, optimizer, scheduler = prepare_training(ctx, model, total)
    loss_fn, eval_loss_fn = make_loss_fn(cfg), make_loss_fn(cfg, "bradley_terry")
    batch = lambda items: collate_comparisons(items, tokenizer.pad_token_id, cfg.packing,  # noqa: E731
                                              cfg.likelihood).to(ctx.device)

    def evaluate_at(step: int) -> dict:
        if not eval_data:
            return {}
        mine = shard(eval_data, ctx)
        batches = (batch(mine[i:i + tc.batch_size]) for i in range(0, len(mine), tc.batch_size))
        scores = evaluate(ctx, model, batches, eval_loss_fn, count_comparisons)
        ctx.metrics.log(step, {"eval_loss": scores["loss"], "eval_accuracy": scores["accuracy"]})
        return scores

    state = fit(ctx, model, optimizer, scheduler, sampler, total, lambda ids: batch([train_data[i] for i in ids]),
                loss_fn, count_comparisons, description="reward", throughput=units_per_s("comparisons_per_s"),
                progress=lambda result: {"acc": result.metrics.get("accuracy", 0.0)}, evaluate_at=evaluate_at)
    trained = ctx.accelerator.unwrap_model(model)
    trained.store_likelihood_coef()
    if trained.likelihood_coef is not None:
        ctx.print(f"likelihood feature: alpha {float(trained.likelihood_coef.detach()):.4f}")
    return finish(cfg, ctx, trained.model, tokenizer, records, held_out, state.step)
