"""Direct preference optimization and its relatives: learn from comparisons with no reward model and no RL.

    posttrain dpo --config configs/dpo/world.yaml

DPO (Rafailov et al. 2023) writes the reward in terms of the policy, r = beta * log(pi / pi_ref)
+ beta * log Z(x), so the partition function cancels in the Bradley-Terry likelihood of a pair
and preference learning becomes classification of (chosen, rejected) log-ratio differences. The
loss is chosen by ``loss`` among the pure functions of ``posttrain.losses.dpo`` (DPO, cDPO, IPO,
SimPO, ORPO, KTO; each cites its paper and equation); ``nll_weight`` adds the chosen responses'
NLL to a pairwise loss (DPO+NLL, Pang et al. 2024), without which the chosen likelihood tends to
fall along with the rejected one's (on the world's near-identical pairs, a lot).

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

Data: preference files (``data.train``), or the embedded world (``data.train`` empty): prompts of
its task families, responses sampled from the policy and/or the world's candidate responses,
ranked by its simulated annotators, its gold reward or a reward model (``labeler``), and paired
best against worst (``pairing``). In the world the run also reports the held-out gold reward and
the gold win-rate against the starting policy, greedy and sampled (``run_dir/world_gold.json``
has them per family).

Iterative DPO (``rounds`` > 1): each round takes new prompts, samples responses from the current
policy, labels pairs of them, and trains on the new pairs from the last round's model, which is
also the round's reference (``round_reference``); Llama 2's iterative rounds (Touvron et al. 2023,
§3.2) and iterative DPO (Xu et al. 2023, "Some things are more cringe than others"). Round k
lives in ``run_dir/round-k``; the last round's model is ``run_dir/final``; ``run_dir/rounds.json``
summarizes them. Finished rounds are skipped when a run is started again.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from posttrain.config import save_config
from posttrain.data.labelling import Ranker, annotator_ranker, label_pairs, response_pools, score_ranker
from posttrain.data.records import Preference
from posttrain.data.preference import (
    PreferenceBatch, UnpairedBatch, collate_examples, preferences_to_unpaired, tokenize_preferences,
    tokenize_unpaired,
)
from posttrain.data.readers import read_from_config, read_records
from posttrain.data.writers import write_jsonl
from posttrain.evaluation.policy import gold_win_rates, policy_answers, sampled_kl_scored
from posttrain.files import write_json_atomic
from posttrain.generation import stop_at_end_of_turn
from posttrain.generation.best_of_n import sample_responses
from posttrain.losses.dpo import PairLogps, PreferenceLoss, UnpairedLogps, chosen_nll, kto_reference_point, resolve_loss
from posttrain.models.attention import packing_kept
from posttrain.models.loading import load_causal_lm, load_tokenizer
from posttrain.models.logps import SequenceLogps, sequence_inputs
from posttrain.recipes.config import DPOConfig
from posttrain.scorers import Scorer, as_scorer, load_scorer
from posttrain.training import reference as reference_lib
from posttrain.training.loop import (
    RunContext, TrainingError, evaluate, finish_run, fit, prepare_training, setup_run, shard, total_steps,
    units_per_s,
)
from posttrain.training.reference import column_logps, precompute_reference
from posttrain.training.reference import score_examples, weights_fingerprint  # noqa: F401 - imported from here by tests
from posttrain.training.sampler import StepSampler
from posttrain.training.sharding import gathered_root
from posttrain.world.annotators import Annotator, AnnotatorConfig, make_preferences
from posttrain.world.entities import make_world
from posttrain.world.tasks import TRAIN_FAMILIES, check_families, make_tasks

# Names tests take from this recipe; the pieces are the library's.
collate, columns, inputs = collate_examples, column_logps, sequence_inputs

# --- losses ------------------------------------------------------------------------------------------

@dataclass
class Micro:
    """A micro-batch and the reference log-probs of its rows, when they were precomputed."""

    batch: PreferenceBatch | UnpairedBatch
    reference: torch.Tensor | None = None
    """(B, 2): chosen and rejected (pairs) or completion and KL row (unpaired) reference log-probs."""


def configured_loss(cfg: DPOConfig) -> tuple[PreferenceLoss, dict[str, Any]]:
    """The loss function the config names and its hyperparameters."""
    try:
        return resolve_loss(cfg.loss)
    except ValueError as e:
        raise TrainingError(f"loss: {e}") from None


def uses_reference(cfg: DPOConfig) -> bool:
    return configured_loss(cfg)[0].reference


Reference = Callable[[Micro], torch.Tensor]
"""micro-batch -> its (B, 2) reference log-probs (precomputed, or scored now)."""


def make_loss_fn(cfg: DPOConfig, reference: Reference | None):
    """``(model, micro) -> (loss summed over pairs or examples, metrics summed likewise)`` for train_step."""
    loss_of, hyper = configured_loss(cfg)

    def pair_loss(model, micro: Micro):
        batch = micro.batch
        chosen, rejected = batch.split(model(**sequence_inputs(batch)))  # one forward for both halves
        lengths = batch.split(batch.response_lengths())
        ref = reference(micro).unbind(1) if loss_of.reference else (None, None)
        loss, metrics = loss_of(PairLogps(chosen, rejected, *ref, *lengths), **hyper)
        if cfg.nll_weight:
            nll = chosen_nll(chosen, lengths[0])
            loss = loss + cfg.nll_weight * nll
            metrics["nll"] = nll.detach()
        n = batch.num_pairs
        return loss * n, {k: v * n for k, v in metrics.items()}

    def unpaired_loss(model, micro: Micro):
        batch, n = micro.batch, micro.batch.num_examples
        policy = model(**sequence_inputs(batch))
        ref = reference(micro)
        z0 = 0.0
        if batch.kl is not None:
            with torch.no_grad():  # z0 carries no gradient (KTO §4.1), so its rows need no graph
                z0 = kto_reference_point(model(**sequence_inputs(batch.kl)), ref[:, 1])
        loss, metrics = loss_of(UnpairedLogps(policy, ref[:, 0], batch.desirable, z0), **hyper)
        return loss * n, {k: torch.as_tensor(v) * n for k, v in metrics.items()}

    return unpaired_loss if loss_of.unpaired else pair_loss


def count_units(micro: Micro) -> int:
    batch = micro.batch
    return batch.num_pairs if isinstance(batch, PreferenceBatch) else batch.num_examples


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


class ReferencePolicy(reference_lib.ReferencePolicy):
    """This run's reference (:class:`posttrain.training.reference.ReferencePolicy`), as its config says:
    ``reference_model`` or the starting policy, held live or precomputed."""

    def __init__(self, cfg: DPOConfig, policy: SequenceLogps, tokenizer):
        super().__init__(policy, partial(load_reference_lm, cfg, tokenizer), cfg.reference_model,
                         live=cfg.reference == "live" and uses_reference(cfg))


def reference_tables(cfg: DPOConfig, ctx: RunContext, ref: ReferencePolicy, datasets: dict[str, list],
                     pad_id: int) -> dict[str, torch.Tensor] | None:
    """Precomputed (N, 2) reference log-probs per dataset, cached in ``reference_cache``; None when
    the reference scores live or the loss needs none."""
    if not uses_reference(cfg) or cfg.reference == "live":
        return None
    folder = Path(cfg.reference_cache or ctx.run_dir / "reference_logps")
    settings = {"max_length": cfg.data.max_length, "overflow": cfg.data.overflow}
    return precompute_reference(ctx, ref, datasets, pad_id, folder, settings, 2 * cfg.train.batch_size, cfg.packing)


# --- data ----------------------------------------------------------------------------------------

def make_ranker(cfg: DPOConfig, prompts: list, pools: list[list[str]], examples: list | None,
                scorer: Scorer | None) -> Ranker:
    """The configured labeler's ranker (a scorer passed in Python wins): the world's annotators, or the
    rewards of its gold reward or of a reward model."""
    if scorer is None and cfg.labeler == "annotator":
        w = cfg.world
        return annotator_ranker(Annotator(AnnotatorConfig(w.noise_temperature, w.length_bias, w.annotator_seed)),
                                examples, w.aspect)
    if scorer is None and cfg.labeler == "reward_model" and not cfg.reward_model:
        raise TrainingError("labeler=reward_model needs reward_model=<folder of a trained reward model>")
    if scorer is None:
        scorer = load_scorer(cfg.reward_model if cfg.labeler == "reward_model" else "world_gold")
    return score_ranker(scorer, prompts, pools, examples)


def world_examples(cfg: DPOConfig, split: str, round_index: int = 1) -> list:

    w = cfg.world
    families = check_families(w.families or TRAIN_FAMILIES, "world.families", TrainingError)
    world, n = make_world(w.seed), (w.examples if split == "train" else w.eval_examples)
    first = (round_index - 1) * n if split == "train" else 0  # each round gets new prompts
    return [e for f in families for e in make_tasks(world, w.seed, f, split, first + n)[first:]]


def sampled_pairs(cfg: DPOConfig, ctx: RunContext, lm, tokenizer, prompts: list, examples: list | None,
                  scorer: Scorer | None, round_index: int, with_candidates: bool) -> list[Preference]:
    """Responses sampled from ``lm`` (plus the world's candidates), labelled in pairs."""
    w = cfg.world
    sampled = w.responses != "candidates" or examples is None
    samples = None
    if sampled:
        samples = sample_responses(lm, tokenizer, prompts, w.samples_per_prompt, w.sample_max_tokens,
                                   temperature=cfg.sample_temperature, seed=cfg.train.seed * 1000 + round_index)
    # Not the worked solutions: the policy answers directly, and gold scores brevity against the
    # direct answer, so a chosen chain of thought would teach a style that costs reward.
    pools = response_pools(examples if with_candidates else None, samples, len(prompts), skip_kinds=("cot",))
    metas = [{"task_id": e.id, "family": e.family} if examples else {} for e in (examples or prompts)]
    rank = make_ranker(cfg, prompts, pools, examples, scorer)
    records, ties = label_pairs(prompts, pools, rank, cfg.pairing, w.pairs_per_prompt,
                                cfg.train.seed * 1000 + round_index, metas)
    sources = [f"{w.samples_per_prompt} policy samples"] * sampled + ["the world's candidates"] * with_candidates
    ctx.print(f"round {round_index}: {len(records)} pairs from {len(prompts)} prompts ({' + '.join(sources)} each, "
              f"labelled by {'a scorer' if scorer else cfg.labeler}); {ties} tied pairs skipped")
    return records


def round_records(cfg: DPOConfig, ctx: RunContext, lm, tokenizer, scorer: Scorer | None,
                  round_index: int) -> tuple[list, list]:
    """(training records, held-out records) of this round, saved in run_dir so a resume reuses them."""

    saved = ctx.run_dir / "pairs.jsonl"
    if saved.exists():
        train = read_records(saved, "preference").expect("preference")
    elif cfg.data.train and round_index == 1:
        train = read_from_config(cfg.data, "train", tokenizer).records
    elif cfg.data.train:
        records = read_from_config(cfg.data, "train", tokenizer).records
        prompts = list({json.dumps(r.as_dicts() if r.kind == "prompt" else [m.to_dict() for m in r.prompt]): None
                        for r in records})
        if scorer is None and cfg.labeler != "reward_model":
            raise TrainingError(f"round {round_index} labels sampled responses to data.train's prompts, which needs "
                                "labeler=reward_model (with reward_model=...) or a scorer passed to dpo()")
        train = sampled_pairs(cfg, ctx, lm, tokenizer, [json.loads(p) for p in prompts], None, scorer, round_index,
                              False)
    else:
        examples = world_examples(cfg, "train", round_index)
        with_candidates = cfg.world.responses in ("candidates", "both")
        train = sampled_pairs(cfg, ctx, lm, tokenizer, [e.messages for e in examples], examples, scorer,
                              round_index, with_candidates)
    if ctx.is_main and not saved.exists():
        write_jsonl(train, saved)
    return train, held_out_records(cfg, tokenizer)


def held_out_records(cfg: DPOConfig, tokenizer) -> list:
    if cfg.data.eval:
        return read_from_config(cfg.data, "eval", tokenizer).records
    if cfg.data.train:
        return []

    w = cfg.world
    annotator = Annotator(AnnotatorConfig(w.noise_temperature, w.length_bias, w.annotator_seed + 1))
    return make_preferences(world_examples(cfg, "heldout"), annotator, w.pairs_per_prompt)


def tokenize(cfg: DPOConfig, ctx: RunContext, tokenizer, records: list, what: str) -> list:
    kinds, loss = {r.kind for r in records}, configured_loss(cfg)[0]
    if loss.unpaired:
        unpaired = [r for r in records if r.kind == "unpaired"]
        unpaired += preferences_to_unpaired([r for r in records if r.kind == "preference"])
        examples, report = tokenize_unpaired(tokenizer, unpaired, cfg.data.max_length, cfg.data.overflow)
    elif kinds - {"preference"}:
        raise TrainingError(f"{what}: loss {loss.name} trains on preference records (prompt, chosen, rejected), "
                            f"but the data holds {sorted(kinds - {'preference'})} records; use loss.name=kto for "
                            "unpaired data")
    else:
        examples, report = tokenize_preferences(tokenizer, records, cfg.data.max_length, cfg.data.overflow)
    if records:
        ctx.print(f"{what}: {report.summary()}")
    return examples


# --- evaluation ------------------------------------------------------------------------------------

def kl_prompts(cfg: DPOConfig, held_out: list) -> list:
    """Held-out prompts (message dicts) for the KL measurement."""
    if cfg.kl_prompts <= 0:
        return []
    prompts = {json.dumps([m.to_dict() for m in r.prompt]): None for r in held_out}
    if not prompts and not cfg.data.train:
        prompts = {json.dumps(e.messages): None for e in world_examples(cfg, "heldout")}
    picked = [json.loads(p) for p in prompts]
    random.Random(f"dpo-kl:{cfg.train.seed}").shuffle(picked)
    return picked[:cfg.kl_prompts]


def world_answers(cfg: DPOConfig, lm, tokenizer, examples: list) -> dict[str, dict[str, list[str]]]:
    """The policy's greedy and sampled answers to held-out world examples (the same settings for the
    starting policy and the trained one)."""
    return policy_answers(lm, tokenizer, examples, cfg.world.sample_max_tokens, seed=cfg.train.seed + 7)


def world_gold(cfg: DPOConfig, lm, tokenizer, baseline: dict) -> dict:
    """Held-out gold reward, greedy and sampled, and the gold win-rate against the starting policy's answers."""
    examples = world_examples(cfg, "heldout")
    return gold_win_rates(examples, world_answers(cfg, lm, tokenizer, examples), baseline)


def starting_answers(cfg: DPOConfig, lm, tokenizer, top_dir: Path, is_main: bool) -> dict:
    """The starting policy's held-out answers (world), made once and kept in run_dir/baseline.json."""
    path = top_dir / "baseline.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    answers = world_answers(cfg, lm, tokenizer, world_examples(cfg, "heldout"))
    if is_main:
        write_json_atomic(path, answers)
    return answers


# --- the run ---------------------------------------------------------------------------------------

def check_config(cfg: DPOConfig) -> None:
    if cfg.rounds < 1:
        raise TrainingError(f"rounds={cfg.rounds}: at least one round is needed")
    if cfg.model.lora.enabled and cfg.round_reference == "initial" and cfg.rounds > 1:
        raise TrainingError("round_reference=initial with LoRA: each round merges its adapter, so the disabled "
                            "adapter is the previous round's model; use round_reference=previous or full fine-tuning")
    loss = configured_loss(cfg)[0]
    if cfg.nll_weight and loss.unpaired:
        raise TrainingError(f"nll_weight adds the chosen responses' NLL to a pairwise loss; {loss.name} has no chosen "
                            "responses (set nll_weight=0)")


def train_round(cfg: DPOConfig, scorer: Scorer | None = None, round_index: int = 1, top_dir: Path | None = None) -> dict:
    """One DPO run on this round's pairs; returns its final evaluation (and writes run_dir/final)."""

    ctx = setup_run(cfg)
    tc, top_dir = cfg.train, top_dir or Path(cfg.train.run_dir)
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    lm = load_causal_lm(cfg.model, tokenizer=tokenizer)
    stop_at_end_of_turn(lm, tokenizer)
    cfg = prepare_attention(cfg, lm, ctx)
    baseline = None if cfg.data.train else starting_answers(cfg, lm, tokenizer, top_dir, ctx.is_main)
    train_records, eval_records = round_records(cfg, ctx, lm, tokenizer, scorer, round_index)
    train_set = tokenize(cfg, ctx, tokenizer, train_records, "train")
    eval_set = tokenize(cfg, ctx, tokenizer, eval_records, "eval")
    if tc.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    model = SequenceLogps(lm, cfg.lm_head_chunk)
    ref = ReferencePolicy(cfg, model, tokenizer)
    tables = reference_tables(cfg, ctx, ref, {"train": train_set, "eval": eval_set}, tokenizer.pad_token_id) or {}
    train_table, eval_table = tables.get("train"), tables.get("eval")
    # Precomputed log-probs ride in the micro-batch; otherwise the reference scores it now.
    loss_fn = make_loss_fn(cfg, lambda micro: micro.reference if micro.reference is not None
                           else column_logps(micro.batch, ref))
    pad = tokenizer.pad_token_id

    def micro_of(examples: list, ids: list[int], table: torch.Tensor | None) -> Micro:
        batch = collate_examples([examples[i] for i in ids], pad, ids, cfg.packing).to(ctx.device)
        return Micro(batch, None if table is None else table[ids].to(ctx.device))

    sampler = StepSampler(len(train_set), tc.batch_size, tc.grad_accum, ctx.world_size, ctx.rank, tc.seed)
    total = total_steps(tc, sampler.steps_per_epoch)
    if sampler.dropped_per_epoch:
        ctx.print(f"{sampler.dropped_per_epoch} of {len(train_set)} examples do not fill the last global batch of "
                  f"{sampler.global_batch} and are left out of each epoch (a different tail every epoch)")
    model, optimizer, scheduler = prepare_training(ctx, model, total)
    held_out_prompts = kl_prompts(cfg, eval_records)
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
        if held_out_prompts and uses_reference(cfg) and ctx.runs_model_work:
            with gathered_root(model):
                scores.update(sampled_kl_scored(policy, ref, tokenizer, held_out_prompts, cfg.kl_max_tokens,
                                                cfg.train.seed))
        if baseline is not None and ctx.runs_model_work:
            with gathered_root(model):
                gold = world_gold(cfg, policy.lm, tokenizer, baseline)
            if ctx.is_main:
                write_json_atomic(ctx.run_dir / "world_gold.json", {"step": step, **gold})  # per family too
            gold.pop("families")
            scores.update(gold)
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
    check_config(cfg)
    scorer = None if scorer is None else as_scorer(scorer)
    if cfg.rounds == 1:
        summary = train_round(cfg, scorer)
        write_summary(Path(cfg.train.run_dir), [summary])
        return Path(cfg.train.run_dir) / "final"

    top = Path(cfg.train.run_dir)
    top.mkdir(parents=True, exist_ok=True)
    save_config(cfg, top / "config.yaml")
    final, summaries, start = top / "final", [], cfg.model.name_or_path
    for k in range(1, cfg.rounds + 1):
        round_dir = top / f"round-{k}"
        done = final if k == cfg.rounds else round_dir / "final"
        round_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, run_dir=str(round_dir)),
            model=dataclasses.replace(cfg.model, name_or_path=start),
            reference_model=cfg.model.name_or_path if cfg.round_reference == "initial" else cfg.reference_model)
        if done.exists():
            summaries.append(json.loads((round_dir / "summary.json").read_text(encoding="utf-8")))
        else:
            summaries.append(train_round(round_cfg, scorer, k, top))
            write_json_atomic(round_dir / "summary.json", summaries[-1])
            if k == cfg.rounds:
                shutil.move(str(round_dir / "final"), str(final))
        start = str(done)
    write_summary(top, summaries)
    return final


def write_summary(top: Path, summaries: list[dict]) -> None:
    write_json_atomic(top / "rounds.json", summaries)
