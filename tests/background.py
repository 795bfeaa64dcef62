"""Fixtures too long to wait for, made by a background process while the rest of the suite runs.

    python tests/background.py <root> <job> [<job> ...]

tests/conftest.py starts this once collection shows that a selected test needs one of :data:`JOBS`,
moves those tests to the end of the run, and gives the main process's torch one thread, so that the
two cores serve two lanes: the background jobs, one after the other, and every other test. Each job
writes ``<root>/<job>/``, then ``<root>/<job>.done``, or ``<root>/<job>.failed`` with its traceback;
:func:`result` waits for that. The jobs:

- ``world_sft``: configs/sft/world.yaml on the shipped base model (the starting point of the reward
  model, DPO, PPO and live-server tests), with held-out exact match in ``eval/``;
- ``rlaif_world``: the simulated annotators' pairs and the same pairs labelled by the world's judge
  (``posttrain label``), and a reward model on each from the world SFT model (tests/test_label.py);
- ``synth_world``: the data sets of tests/test_synth.py's world comparisons, made by the simulated
  teacher, and the six SFT runs on them (``runs/<name>/``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORLD_SFT_EVAL_N = 100
"""Held-out examples per family scored at the end of the shared world SFT run (``world_sft``)."""
DATE = "2026-12-07"
SINGLE_TURN = ("fact_lookup", "arithmetic", "multistep_arithmetic", "reverse", "sorting", "summarization", "harmful")
"""The trained families whose prompts are one instruction: self-instruct's (chat_rule is multi-turn, GAtt's)."""
TRAIN_FAMILIES = (*SINGLE_TURN[:-1], "chat_rule", SINGLE_TURN[-1])
"""posttrain.world.tasks.TRAIN_FAMILIES, spelled out (this module imports nothing of posttrain at the top)."""
SI_SIZE = 416
"""Self-instruct instructions kept, and gold demonstrations: 52 per trained family."""
SUMS = ("arithmetic", "multistep_arithmetic")
EVAL_N = 200
"""Held-out examples per family in every world evaluation of tests/test_synth.py."""


def train_sft(config: Path | None, overrides: list[str]) -> Path:
    from posttrain.config import load_config
    from posttrain.recipes.config import SFTConfig
    from posttrain.recipes.sft import sft

    return sft(load_config(SFTConfig, config, overrides))


def world_sft(out: Path) -> None:
    train_sft(REPO / "configs" / "sft" / "world.yaml", [
        f"train.run_dir={out}", "train.progress=false", "train.tensorboard=false", "samples=0",
        "train.eval_every=0", "train.save_every=0", f"eval_exact_match={WORLD_SFT_EVAL_N}"])


def run_synth(out: Path, method: str, *overrides: str, cache: Path | None = None) -> tuple[list[dict], dict]:
    """``posttrain synth <method>`` writing ``out/<method>.jsonl``: (records as written, report)."""
    from posttrain.config import load_config
    from posttrain.synth.config import SynthConfig
    from posttrain.synth.run import output_paths, synth

    cfg = load_config(SynthConfig, None, [f"method={method}", f"output={out / method}.jsonl",
                                          f"cache_dir={cache or out / 'cache'}", "progress=false", f"date={DATE}",
                                          *overrides])
    data, report = output_paths(cfg)
    assert synth(cfg) == data
    return [json.loads(line) for line in data.read_text().splitlines()], json.loads(report.read_text())


def sft_on(data: Path, run: Path, steps: int, families=()) -> None:
    """configs/sft/world.yaml from the base model on ``data`` only; run/eval holds held-out exact
    match of ``families`` when given."""
    train_sft(REPO / "configs" / "sft" / "world.yaml", [
        f"data.train=[{data}]", f"train.run_dir={run}", "train.progress=false", "train.tensorboard=false",
        "samples=0", "train.eval_every=0", "train.save_every=0", f"train.max_steps={steps}", "train.batch_size=16",
        "train.warmup_steps=10", "rehearsal=0", "source_epochs={}", "world.eval_examples=0",
        f"eval_exact_match={EVAL_N if families else 0}", f"eval_families=[{','.join(families)}]"])


def synth_world(root: Path) -> None:
    from posttrain.files import write_jsonl_atomic
    from posttrain.world.tasks import task_examples

    cache, runs = root / "cache", root / "runs"
    # self-instruct: 10 seed tasks per trained family (chat_rule's are multi-turn: self-instruct skips them), the
    # paper's ROUGE-L filter at 0.7; as many gold demonstrations, spread over every trained family
    rows, _ = run_synth(root / "si", "self-instruct", "world.examples=10", f"world.families=[{','.join(TRAIN_FAMILIES)}]",
                        f"self_instruct.instructions={SI_SIZE}", cache=cache)
    gold = task_examples(0, TRAIN_FAMILIES, "train", len(rows) // len(TRAIN_FAMILIES))
    write_jsonl_atomic(root / "gold" / "gold.jsonl",
                       ({"messages": [*e.as_dicts(), {"role": "assistant", "content": e.answer}]} for e in gold))
    # GAtt against plain multi-turn data: the same dialogues, the same teacher
    chats = ["world.examples=300", "world.families=[chat_rule]"]
    run_synth(root / "ghost", "gatt", *chats, cache=cache)
    run_synth(root / "plain", "gatt", *chats, "gatt.attach=false", cache=cache)
    # Orca 2: a step-by-step strategy prompt, erased from the records, against no strategy prompt
    sums = ["world.examples=150", f"world.families=[{','.join(SUMS)}]"]
    run_synth(root / "erased", "distill", *sums, "distill.strategy=step_by_step", cache=cache)
    run_synth(root / "direct", "distill", *sums, cache=cache)
    sft_on(root / "si" / "self-instruct.jsonl", runs / "si", 150, TRAIN_FAMILIES)
    sft_on(root / "gold" / "gold.jsonl", runs / "gold", 150, TRAIN_FAMILIES)
    sft_on(root / "ghost" / "gatt.jsonl", runs / "ghost", 60)
    sft_on(root / "plain" / "gatt.jsonl", runs / "plain", 60)
    sft_on(root / "erased" / "distill.jsonl", runs / "erased", 60, SUMS)
    sft_on(root / "direct" / "distill.jsonl", runs / "direct", 60, SUMS)


def world_sft_folder(root: Path) -> Path:
    """The world SFT run a job starts from: POSTTRAIN_DEV_SFT, or this background's world_sft job."""
    import os

    return Path(os.environ.get("POSTTRAIN_DEV_SFT") or root / "world_sft")


def train_reward(sft: Path, run: Path, data: Path) -> None:
    from posttrain.config import load_config
    from posttrain.recipes.config import RewardConfig
    from posttrain.recipes.reward import reward

    reward(load_config(RewardConfig, REPO / "configs" / "reward" / "world.yaml", [
        f"model.name_or_path={sft / 'final'}", f"train.run_dir={run}", "train.progress=false",
        "train.tensorboard=false", "train.save_every=0", "train.eval_every=0", "train.epochs=2",
        f"data.train=[{data}]", "data.eval=[world:preferences]", "world.eval_examples=32", "norm_prompts=48"]))


def rlaif_world(root: Path, sft: Path | None = None) -> None:
    """The simulated annotators' pairs (64 prompts per trained family, 2 pairs each), the same pairs
    labelled by the world's judge (posttrain label), and a reward model from the world SFT model on each."""
    from posttrain.config import load_config
    from posttrain.data.writers import write_jsonl
    from posttrain.recipes.config import LabelConfig
    from posttrain.synth.label import label
    from posttrain.world.source import world_records

    cfg = load_config(LabelConfig, None, [f"inputs=[{root / 'human.jsonl'}]", f"output={root / 'rlaif.jsonl'}",
                                          f"cache_dir={root / 'cache'}", "progress=false", f"date={DATE}",
                                          "world.examples=64"])
    write_jsonl(world_records("world:preferences", cfg.world, "train"), root / "human.jsonl")
    label(cfg)
    sft = sft or world_sft_folder(root.parent)
    train_reward(sft, root / "runs" / "human", root / "human.jsonl")
    train_reward(sft, root / "runs" / "rlaif", root / "rlaif.jsonl")


JOBS = {"world_sft": world_sft, "rlaif_world": rlaif_world, "synth_world": synth_world}
"""Every background job, by the name of the fixture that returns its folder, in the order they run."""
NEEDS = {"rlaif_world": "world_sft"}
"""Jobs that start from another job's result."""


def with_needs(jobs: list[str]) -> list[str]:
    """``jobs`` and the jobs they start from, in :data:`JOBS` order."""
    import os

    wanted = set(jobs) | {NEEDS[j] for j in jobs if j in NEEDS and not os.environ.get("POSTTRAIN_DEV_SFT")}
    return [j for j in JOBS if j in wanted]


def needs_base_model() -> str | None:
    """Why the world's jobs cannot run (the base model is not shipped), or None."""
    try:
        from posttrain.world import base_model_path

        base_model_path()
    except (ImportError, FileNotFoundError) as e:
        return f"the world's base model is not shipped: {e}"
    return None


class Background:
    """The background process of a session and where it writes."""

    def __init__(self, root: Path, jobs: list[str]):
        self.root, self.jobs = root, jobs
        self.log = root / "background.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, __file__, str(root), *jobs], stdout=log,
                                            stderr=subprocess.STDOUT)

    def result(self, job: str) -> Path:
        """The job's folder once it is done; the job's traceback (or the log's tail) when it failed."""
        import pytest

        while not (self.root / f"{job}.done").exists():
            failed = self.root / f"{job}.failed"
            if failed.exists():
                pytest.fail(f"background job {job} failed:\n{failed.read_text()[-6000:]}", pytrace=False)
            if self.process.poll() is not None and not (self.root / f"{job}.done").exists():
                pytest.fail(f"the background process ended (status {self.process.returncode}) before {job} was "
                            f"done:\n{self.log.read_text()[-6000:]}", pytrace=False)
            time.sleep(0.5)
        return self.root / job

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def main(root: str, jobs: list[str]) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)
    failed = False
    for job in jobs:
        out = Path(root) / job
        if job in NEEDS and (Path(root) / f"{NEEDS[job]}.failed").exists():
            (Path(root) / f"{job}.failed").write_text(f"not run: {NEEDS[job]}, which it starts from, failed")
            continue
        try:
            JOBS[job](out)
        except Exception:  # the next jobs still run: their tests need not fail with this one's
            (Path(root) / f"{job}.failed").write_text(traceback.format_exc())
            traceback.print_exc()
            failed = True
            continue
        (Path(root) / f"{job}.done").write_text("")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
