"""The path of one DPO pair and one PPO rollout through posttrain's modules, as a newcomer reads it.

    python bench/module_path.py [--out runs/module-path]

Runs a one-step DPO on a small preference file and a one-step PPO on a small prompt file (the
world's base model, CPU) under ``sys.setprofile`` and records, in call order, the posttrain module
of every posttrain function called from the read of the data to the loss (DPO: from reading the
file to the first preference loss; PPO: from reading the prompts to the first policy loss).
Consecutive calls in one module count once, and a stretch repeated at once (a loop over records or
batches) is kept once. Prints each path, the number of distinct modules, how
many times the path comes back into the recipe's module, and the modules it enters (in first-entry
order). Works on any commit of posttrain that has ``posttrain dpo`` / ``posttrain ppo`` with these
overrides, so the same script measures before and after a refactor (run it with PYTHONPATH set to
the other checkout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from posttrain.cli import _register, app

START = {"dpo": ("read_records",), "ppo": ("read_records", "read_from_config", "world_prompts", "file_prompts")}
END = {"dpo": ("dpo_loss",), "ppo": ("ppo_policy_loss",)}


def trace(command: str, args: list[str]) -> list[str]:
    """Module path from the first START call to the first END call of ``posttrain <command> args``."""
    path: list[str] = []
    state = {"on": False, "done": False}

    def profile(frame, event, arg):
        if event != "call" or state["done"]:
            return
        module = frame.f_globals.get("__name__", "")
        name = frame.f_code.co_name
        if not module.startswith("posttrain"):
            return
        if not state["on"] and name in START[command]:
            state["on"] = True
        if state["on"] and (not path or path[-1] != module):
            path.append(module)
        if state["on"] and name in END[command]:
            state["done"] = True

    _register()
    sys.setprofile(profile)
    try:
        app([command, *args], standalone_mode=False)
    finally:
        sys.setprofile(None)
    return path


def collapse_loops(path: list[str], longest: int = 16) -> list[str]:
    """The path with every immediately repeated stretch (a loop over records, tokens, batches) kept once."""
    changed = True
    while changed:
        changed = False
        for n in range(1, longest + 1):
            i = 0
            while i + 2 * n <= len(path):
                if path[i:i + n] == path[i + n:i + 2 * n]:
                    del path[i + n:i + 2 * n]
                    changed = True
                else:
                    i += 1
    return path


def summary(path: list[str], recipe: str) -> dict:
    path = collapse_loops(list(path))
    return {"steps": len(path), "modules": len(dict.fromkeys(path)),
            "recipe_reentries": sum(1 for i, m in enumerate(path) if m == recipe and i > 0 and path[i - 1] != recipe),
            "first_entries": list(dict.fromkeys(path)), "path": path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="write module_path.json here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    prompt = [{"role": "user", "content": "What is 2 plus 3?"}]
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"{5 + i}."}],
                                         "rejected": [{"role": "assistant", "content": f"{i}."}]}) + "\n"
                             for i in range(8)), encoding="utf-8")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for _ in range(8)), encoding="utf-8")
    common = ["model.name_or_path=world", "train.max_steps=1", "train.batch_size=4", "train.progress=false",
              "train.tensorboard=false", "train.save_every=0"]
    results = {
        "dpo": summary(trace("dpo", [*common, f"data.train=[{pairs}]", f"train.run_dir={tmp / 'dpo'}",
                                     "kl_prompts=0"]), "posttrain.recipes.dpo"),
        "ppo": summary(trace("ppo", [*common, f"data.train=[{prompts}]", f"train.run_dir={tmp / 'ppo'}",
                                     "rewards=[module_path:length_reward]",
                                     "prompts_per_step=4", "max_new_tokens=4", "ppo_epochs=1", "eval_examples=0"]),
                       "posttrain.recipes.ppo"),
    }
    for name, r in results.items():
        print(f"{name}: {r['steps']} steps through {r['modules']} modules, back into the recipe "
              f"{r['recipe_reentries']} times")
        print("  " + " -> ".join(m.removeprefix("posttrain.") for m in r["path"]))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "module_path.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def length_reward(prompts, responses):
    """A reward for the PPO trace: shorter is better."""
    return [-len(r) / 10 for r in responses]


if __name__ == "__main__":
    main()
