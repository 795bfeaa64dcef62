"""DPO in the embedded world: from the world SFT model, on pairs of its own samples and the world's
candidate responses ranked by the gold reward, best against worst (configs/dpo/world.yaml), DPO
raises the held-out gold reward and wins against the SFT model on held-out prompts, with the KL to
the reference measured.

To fit the test budget (about a minute and a half of one CPU core) the run covers the two task
families the SFT model never saw (uppercase, classification: 150 training prompts each, 40
held-out), where preference data has the most to teach; configs/dpo/world.yaml runs every family.

The SFT model is the session fixture ``world_sft`` (a few minutes, shared with the other world
tests). Development only: set ``POSTTRAIN_DEV_SFT`` to a finished ``posttrain sft --config
configs/sft/world.yaml`` run folder (one holding ``final/``) to use it instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.recipes.config import DPOConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dpo" / "world.yaml"


@pytest.fixture(scope="module")
def world_dpo(world_sft, tmp_path_factory) -> dict:
    from posttrain.recipes.dpo import dpo

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("world-dpo") / "run"
    cfg = load_config(DPOConfig, CONFIG, [
        f"model.name_or_path={world_sft / 'final'}", f"train.run_dir={run_dir}", "train.progress=false",
        "train.tensorboard=false", "train.save_every=0", "train.eval_every=0", "world.families=[uppercase,classification]",
        "world.examples=150", "world.eval_examples=40", "train.epochs=4", "kl_prompts=32"])
    try:
        dpo(cfg)
    finally:
        torch.set_num_threads(before)
    summary = json.loads((run_dir / "rounds.json").read_text())[0]
    families = json.loads((run_dir / "world_gold.json").read_text())["families"]
    return {**summary, "families": families}


def test_world_dpo_raises_gold_reward_and_beats_sft_on_held_out_prompts(world_dpo):
    s = world_dpo
    per_family = {f: round(v["gold"] - v["gold_start"], 3) for f, v in s["families"].items()}
    detail = f"summary {({k: v for k, v in s.items() if k != 'families'})}, greedy gold change by family {per_family}"
    # Greedy answers, as the SFT model is evaluated; the sampled ones are reported beside them.
    assert s["gold"] > s["gold_start"] and s["win_rate"] > 0.5, detail
    assert "gold_sampled" in s and "win_rate_sampled" in s


def test_world_dpo_reports_its_kl_to_the_reference(world_dpo):
    s = world_dpo
    assert s["kl_responses"] > 0
    # DPO moved the policy away from the SFT model (here a lot: it learned two new tasks), by a finite amount.
    assert math.isfinite(s["kl_k1"]) and math.isfinite(s["kl_k3"]) and s["kl_k1"] > 0 and s["kl_k3"] > 0, s
