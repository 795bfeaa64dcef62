"""Runs several recipes, one after the other, inside the processes of one ``torchrun`` launch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_driver.py jobs.json

``jobs.json`` is a list of ``{"recipe": "reward" | "dpo" | "ppo" | "sft", "args": [key=value, ...]}``;
each job is run as ``posttrain <recipe> key=value ...`` would run it. One launch for all of them
pays the cost of starting the processes and importing transformers once (tests/test_distributed.py).
Also holds the reward functions those tests' PPO runs use (``distributed_driver:short_answers``).
"""

from __future__ import annotations

import json
import sys


def short_answers(prompts, responses):
    """1 for an empty answer, falling with each character."""
    return [1.0 / (1.0 + len(r)) for r in responses]


def letter_count(prompts, responses):
    """How many times the letter a appears (a second source, weighted in)."""
    return [float(r.count("a")) for r in responses]


def run_job(recipe: str, args: list[str]):
    from posttrain.config import load_config
    from posttrain.recipes import config as configs

    if recipe == "reward":
        from posttrain.recipes.reward import reward as run
        cls = configs.RewardConfig
    elif recipe == "dpo":
        from posttrain.recipes.dpo import dpo as run
        cls = configs.DPOConfig
    elif recipe == "ppo":
        from posttrain.recipes.ppo import ppo as run
        cls = configs.PPOConfig
    elif recipe == "sft":
        from posttrain.recipes.sft import sft as run
        cls = configs.SFTConfig
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    return run(load_config(cls, None, list(args)))


def main(path: str) -> None:
    import torch

    torch.set_num_threads(1)
    for job in json.loads(open(path, encoding="utf-8").read()):
        run_job(job["recipe"], job["args"])


if __name__ == "__main__":
    main(sys.argv[1])
