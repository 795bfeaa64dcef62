"""kill -9 in the middle of a run, then `train.resume=auto`, equals the run never interrupted (issue 21).

Every recipe (SFT, reward model, DPO, PPO with a value head, GRPO) runs once uninterrupted, and once
in a forked child (it inherits the imported libraries, so no 10-second start) that sends itself
SIGKILL right after logging step 3, past the step-2 checkpoint: no handler, no flush, no clean-up
runs, exactly as with ``kill -9``. The same command then resumes in this process; its metrics and its
exported weights must equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from families import write_chats, write_preferences, write_prompts
from posttrain.config import load_config
from posttrain.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, KILL_AFTER = 5, 3
COMMON = [f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_checkpoints=0", "train.progress=false",
          "train.tensorboard=false", "train.warmup_steps=1", "train.lr=1e-3"]


def short_answers(prompts, responses):
    return [1.0 / (1.0 + len(r)) for r in responses]


def recipe(name: str, model, data, run_dir):
    """(run function, config overrides) of recipe ``name`` on the tiny model."""
    base = [f"model.name_or_path={model}", f"train.run_dir={run_dir}", *COMMON]
    if name == "sft":
        from posttrain.recipes.config import SFTConfig
        from posttrain.recipes.sft import sft
        return lambda a: sft(load_config(SFTConfig, None, a)), [
            *base, f"data.train=[{data['chats']}]", "train.batch_size=4", "samples=0"]
    if name == "reward":
        from posttrain.recipes.config import RewardConfig
        from posttrain.recipes.reward import reward
        return lambda a: reward(load_config(RewardConfig, None, a)), [
            *base, f"data.train=[{data['prefs']}]", "train.batch_size=4", "normalize=data", "train.eval_every=2"]
    if name == "dpo":
        from posttrain.recipes.config import DPOConfig
        from posttrain.recipes.dpo import dpo
        return lambda a: dpo(load_config(DPOConfig, None, a)), [
            *base, f"data.train=[{data['prefs']}]", "train.batch_size=4", "kl_prompts=0"]
    from posttrain.recipes.config import PPOConfig
    from posttrain.recipes.ppo import ppo
    algorithm = ["algorithm=grpo", "samples_per_prompt=2", "prompts_per_step=2"] if name == "grpo" else []
    return lambda a: ppo(load_config(PPOConfig, None, a)), [
        *base, f"data.train=[{data['prompts']}]", "train.batch_size=4", "prompts_per_step=4", "max_new_tokens=6",
        "rewards=[test_kill_resume:short_answers]", *algorithm]


def killed_after(step: int, run, args) -> int:
    """Run ``run(args)`` in a forked child that SIGKILLs itself once ``step`` is logged; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: die by SIGKILL right after logging `step`
        try:
            from posttrain.training.metrics import MetricsLogger

            log = MetricsLogger.log

            def log_then_die(self, at, metrics):
                log(self, at, metrics)
                if at >= step:
                    os.kill(os.getpid(), signal.SIGKILL)

            MetricsLogger.log = log_then_die
            run(args)
        finally:
            os._exit(3)  # reached only if the run ended before `step`, or raised
    _, status = os.waitpid(pid, 0)
    return status


def curve(run_dir, key="loss"):
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    return {"chats": write_chats(root / "chats.jsonl", 32), "prefs": write_preferences(root / "prefs.jsonl", 32),
            "prompts": write_prompts(root / "prompts.jsonl", 16)}


@pytest.mark.parametrize("name", ["sft", "reward", "dpo", "ppo", "grpo"])
def test_kill_9_then_resume_equals_the_uninterrupted_run(name, tiny_model_dir, data, tmp_path, capfd):
    run, args = recipe(name, tiny_model_dir, data, tmp_path / "whole")
    run(args)
    killed_dir = tmp_path / "killed"
    run, killed_args = recipe(name, tiny_model_dir, data, killed_dir)
    torch.manual_seed(1234)  # whatever the parent's generators hold, the run seeds its own
    status = killed_after(KILL_AFTER, run, killed_args)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    assert max(curve(killed_dir)) == KILL_AFTER and not (killed_dir / "final").exists()
    capfd.readouterr()
    run(killed_args)  # train.resume=auto: from the step-2 checkpoint
    assert f"resumed from {killed_dir / 'checkpoints' / 'step-000002'}" in capfd.readouterr().err.replace("\n", "")
    whole, resumed = curve(tmp_path / "whole"), curve(killed_dir)
    assert sorted(resumed) == sorted(whole) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in whole], [whole[s] for s in whole], rtol=0, atol=1e-6)
    a, b = weights(tmp_path / "whole" / "final"), weights(killed_dir / "final")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
