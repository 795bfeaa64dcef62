"""Reward models in the embedded world: agreement with gold against the gold-reward oracle on the same
noisy labels, normalization measured on the SFT model's own responses, and best-of-n on the SFT model.

Starts from the session's world SFT model (the ``world_sft`` fixture, a few minutes once per session).
For development only, ``POSTTRAIN_DEV_SFT=<finished SFT run dir>`` (e.g. /work/shared-sft) makes this
module use that run's ``final/`` instead of training one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.recipes.config import RewardConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reward" / "world.yaml"
BEST_OF = (1, 4, 16)
BEST_OF_PROMPTS = 6
"""Held-out prompts per trained family for best-of-n (48 prompts x 16 samples)."""


@pytest.fixture(scope="module")
def sft_final(world_sft) -> Path:
    return world_sft / "final"


@pytest.fixture(scope="module")
def world_rm(sft_final, tmp_path_factory) -> Path:
    """configs/reward/world.yaml (default annotator noise, fixed seed) at test size; returns its run dir."""
    from posttrain.recipes.reward import reward

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("reward") / "world"
    cfg = load_config(RewardConfig, CONFIG, [
        f"model.name_or_path={sft_final}", f"train.run_dir={run_dir}", "train.progress=false",
        "train.tensorboard=false", "train.save_every=0", "train.eval_every=0", "train.epochs=2",
        "world.examples=64", "world.eval_examples=32", "norm_prompts=48", "agreement_prompts=6"])
    reward(cfg)
    return run_dir


def test_world_reward_model_reaches_90_percent_of_the_gold_oracle(world_rm):
    # With the config's likelihood feature and two epochs of these 1024 pairs: 0.924 of the oracle here
    # (seed 0; 0.914 and 0.905 with seeds 1 and 2); one epoch reaches only 0.883 on the SFT model of
    # today's base. A last-token head alone stays at 0.84: it learns length, refusals and rules, but not
    # whether a fact or a sum is right, which the SFT model's own likelihood of the answer tokens tells.
    report = json.loads((world_rm / "eval" / "reward.json").read_text())
    summary = (f"accuracy {report['accuracy']:.3f}, oracle {report['oracle_accuracy']:.3f}, "
               f"gold agreement {report['gold']['agreement']:.3f}, by strength {report.get('accuracy_by_strength')}")
    assert report["accuracy"] >= 0.9 * report["oracle_accuracy"], summary


def test_world_reward_model_learns_the_annotators_preferences(world_rm):
    report = json.loads((world_rm / "eval" / "reward.json").read_text())
    strength = report["accuracy_by_strength"]
    summary = f"accuracy {report['accuracy']:.3f} oracle {report['oracle_accuracy']:.3f} by strength {strength}"
    assert report["pairs"] >= 400 and 0.7 < report["oracle_accuracy"] < 0.95, summary
    assert report["accuracy"] > 0.6 and report["gold"]["agreement"] > 0.65, summary
    # Clear preferences are learned better than near-ties (Llama 2, Table 8).
    assert strength["4"]["accuracy"] > strength["1"]["accuracy"] + 0.1, summary
    assert report["calibration"]["ece"] < 0.1, summary


def test_world_reward_model_ranks_the_sft_models_own_samples(world_rm):
    """Within-prompt correlation with gold of its scores of the SFT model's samples, per family."""
    from posttrain.world.tasks import TRAIN_FAMILIES

    agreement = json.loads((world_rm / "eval" / "reward.json").read_text())["sample_agreement"]
    assert agreement["samples_per_prompt"] == 4 and set(agreement["families"]) == set(TRAIN_FAMILIES)
    overall = agreement["all"]
    assert overall["prompts"] + overall["tied"] == 6 * len(TRAIN_FAMILIES)
    assert overall["correlation"] > 2 * overall["se"] > 0, agreement


def test_world_normalization_is_saved_and_standardizes_the_sft_responses(world_rm, sft_final):
    from posttrain.generation.best_of_n import sample_responses
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.models.reward import NORMALIZATION_FILE, RewardScorer
    from posttrain.world.entities import make_world
    from posttrain.world.tasks import TRAIN_FAMILIES, make_tasks

    norm = json.loads((world_rm / "final" / NORMALIZATION_FILE).read_text())
    assert norm["count"] == 48 and norm["std"] > 0 and "sampled from" in norm["reference"]
    # Fresh SFT responses to other prompts (another seed) come out near mean 0, std 1.
    world = make_world(0)
    prompts = [e.messages for f in TRAIN_FAMILIES for e in make_tasks(world, 0, f, "train", 150)[100:108]]
    cfg = ModelConfig(name_or_path=str(sft_final))
    tokenizer = load_tokenizer(cfg)
    responses = [s[0] for s in sample_responses(load_causal_lm(cfg, for_training=False, tokenizer=tokenizer),
                                                tokenizer, prompts, 1, 64, seed=123)]
    scores = RewardScorer.from_pretrained(world_rm / "final", device="cpu").score(prompts, responses, batch_size=32)
    assert abs(float(scores.mean())) < 0.4 and 0.6 < float(scores.std()) < 1.5, (scores.mean(), scores.std())


@pytest.fixture(scope="module")
def best_of_n_curves(world_rm, sft_final) -> dict[str, list[float]]:
    """Mean gold reward of the best of the first n of 16 samples, selected by gold and by the reward model."""
    from posttrain.generation.best_of_n import sample_responses, score_samples, select_best
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.models.reward import RewardScorer
    from posttrain.scorers import world_gold
    from posttrain.world.entities import make_world
    from posttrain.world.tasks import TRAIN_FAMILIES, make_tasks

    world = make_world(0)
    examples = [e for f in TRAIN_FAMILIES for e in make_tasks(world, 0, f, "heldout", BEST_OF_PROMPTS)]
    prompts = [e.messages for e in examples]
    cfg = ModelConfig(name_or_path=str(sft_final))
    tokenizer = load_tokenizer(cfg)
    policy = load_causal_lm(cfg, for_training=False, tokenizer=tokenizer)
    samples = sample_responses(policy, tokenizer, prompts, max(BEST_OF), max_new_tokens=48, seed=0)
    gold = score_samples(world_gold, prompts, samples, records=examples)
    learned = score_samples(RewardScorer.from_pretrained(world_rm / "final", device="cpu"), prompts, samples)
    return {name: [float(gold.gather(1, select_best(sel, n)[:, None]).mean()) for n in BEST_OF]
            for name, sel in (("gold", gold), ("reward_model", learned))}


def test_best_of_n_by_the_gold_reward_rises_with_n(best_of_n_curves):
    curve = best_of_n_curves["gold"]
    assert curve[0] < curve[1] < curve[2], best_of_n_curves


@pytest.mark.xfail(strict=False, reason=(
    "issue 5 blocked on the reward model's strength: it ranks the SFT model's own samples with within-prompt "
    "correlation 0.42 to gold, so best-of-4 beats best-of-1 but best-of-16 finds near-misses it scores high (a wrong "
    "fact or digit: mean gold 0.744, 0.791, 0.773 for n = 1, 4, 16; by gold 0.744, 0.827, 0.850); sampling at "
    "temperature 0.7, picking by the SFT model's likelihood, or training on SFT samples too give the same"))
def test_best_of_n_by_the_reward_model_rises_with_n(best_of_n_curves):
    curve = best_of_n_curves["reward_model"]
    assert curve[0] < curve[1] < curve[2], best_of_n_curves
