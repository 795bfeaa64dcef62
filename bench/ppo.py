"""posttrain PPO / RLOO / GRPO against TRL: same policy, reward model, prompts, response length and batch.

    python bench/ppo.py                  # PPO vs TRL 1.12's PPOTrainer, RLOO and GRPO vs TRL 1.16; a few minutes
    python bench/ppo.py --quick          # smoke run: 3 steps per trial, one round, PPO only
    python bench/ppo.py --algorithms ppo --rounds 3

TRL 1.16 (the release installed beside posttrain) has no PPO trainer; the last release with one
is 1.12.0 (``trl.experimental.ppo.PPOTrainer``), which runs from its own virtual environment:

    python3 -m venv bench/.venv-trl112
    bench/.venv-trl112/bin/pip install torch==2.13.0
    bench/.venv-trl112/bin/pip install trl==1.12.0 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0

What is compared
- Policy: the embedded world's shipped base model (a 2.2M-parameter Llama, vocab 2048), fp32 on the
  CPU, no gradient checkpointing; the reference is a frozen copy of it for both.
- Reward model: the same base model with a seeded random scalar head (``LlamaForSequenceClassification``),
  saved once; both score the same (prompt, response) token sequences with it. TRL's PPO value model is
  initialised from it (TRL's way); posttrain's default is a value head on the policy (``critic=head``),
  and a separate critic initialised from the reward model (``critic=<rm>``) is timed as well.
- Prompts: the world's task prompts (train split), rendered with the chat template, the same ones in
  the same order-independent set for both (each samples its own batches from them).
- Episodes per step: 64 (PPO: 64 prompts x 1 sample; RLOO/GRPO: 16 prompts x 4 samples), responses of
  at most 32 new tokens sampled at temperature 1 and stopped at eos, 4 PPO epochs (RLOO/GRPO: 2
  iterations) per batch, each epoch one optimizer update of 4 micro-batches of 16 (gradient
  accumulation), KL coefficient 0.05, k1 KL estimator.
- Measured, in each trial's own process (``--threads`` torch threads, default 1): episodes (rollout +
  scoring + update) per CPU-second of the process, and per wall-clock second beside it, from the end
  of the first step to the end of the last; and peak memory: the peak resident set size (``VmHWM``,
  reset through ``/proc/self/clear_refs``) minus the resident size before any model is loaded (after
  the imports), so the models, optimizer states and activations of the run are all counted. CPU time
  is the speed measure because on a shared machine wall time swings with other users' load.
- Trials alternate posttrain / TRL, in rounds; medians are reported. The last line is one JSON object
  ``{"bench": "ppo", "speed_ratio": ..., "memory_ratio": ...}``: posttrain PPO (default critic) / TRL
  1.12 PPO. RLOO and GRPO ratios (against TRL 1.16) are printed above it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.sft import _status, reset_peak  # noqa: E402  (memory probes shared by every bench)

TRL112_PYTHON = ROOT / "bench" / ".venv-trl112" / "bin" / "python"

PROMPTS_PER_FAMILY = 64
RESPONSE_LENGTH = 32
EPISODES = 64
MICRO_BATCH = 16
KL_COEF = 0.05
LR = 1e-5


# --------------------------------------------------------------------------- shared assets


def prepare_assets(folder: Path) -> None:
    """policy/ (the world base model), rm/ (base + seeded scalar head) and prompts.json, written once."""
    import shutil

    import torch

    sys.path.insert(0, str(ROOT))
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_tokenizer
    from posttrain.models.reward import load_reward_model
    from posttrain.world import base_model_path
    from posttrain.world.entities import make_world
    from posttrain.world.tasks import TRAIN_FAMILIES, make_tasks

    shutil.copytree(base_model_path(), folder / "policy")
    cfg = ModelConfig(name_or_path=str(folder / "policy"), device="cpu", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    rm = load_reward_model(cfg, tokenizer, for_training=False)
    rm.save_pretrained(folder / "rm")
    tokenizer.save_pretrained(folder / "rm")
    world = make_world(0)
    tasks = [t for f in TRAIN_FAMILIES for t in make_tasks(world, 0, f, "train", PROMPTS_PER_FAMILY)]
    messages = [list(t.messages) for t in tasks]
    ids = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"] for m in messages]
    (folder / "prompts.json").write_text(json.dumps({"messages": messages, "ids": ids}))


# --------------------------------------------------------------------------- measuring


def step_end() -> tuple[float, float]:
    """(wall clock, this process's CPU time) now."""
    return time.perf_counter(), time.process_time()


def rates(step_ends: list[tuple[float, float]], episodes_per_step: int, peak: int) -> dict:
    """Episodes per wall second and per CPU second from the end of step 1 (one-time allocations
    excluded) to the end of the last, and the peak memory in MB."""
    episodes = episodes_per_step * (len(step_ends) - 1)
    wall = step_ends[-1][0] - step_ends[0][0]
    cpu = step_ends[-1][1] - step_ends[0][1]
    return {"episodes_per_s": episodes / wall, "episodes_per_cpu_s": episodes / cpu, "peak_mb": peak / 2**20,
            "steps": len(step_ends)}


def rl_shape(algorithm: str) -> tuple[int, int, int]:
    """(prompts per step, samples per prompt, epochs) of ``algorithm``."""
    return (EPISODES, 1, 4) if algorithm == "ppo" else (EPISODES // 4, 4, 2)


# --------------------------------------------------------------------------- posttrain


def run_posttrain(algorithm: str, critic: str, assets: Path, steps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from posttrain.config import load_config
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.models.value import ActorCritic, ValueHead, load_critic
    from posttrain.recipes.config import PPOConfig
    from posttrain.rl.loop import train
    from posttrain.rl.prompts import PromptSet, reward_function, reward_sources
    from posttrain.training.loop import setup_run

    prompts_per_step, k, epochs = rl_shape(algorithm)
    data = json.loads((assets / "prompts.json").read_text())
    ends: list[tuple[float, float]] = []
    base = reset_peak()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(PPOConfig, None, [
            f"train.run_dir={run_dir}", f"train.max_steps={steps}", f"train.batch_size={MICRO_BATCH}",
            f"train.grad_accum={EPISODES // MICRO_BATCH}", f"train.lr={LR}", "train.warmup_steps=0",
            "train.save_every=0", "train.tensorboard=false", "train.progress=false", "model.device=cpu",
            f"model.name_or_path={assets / 'policy'}", f"algorithm={algorithm}", f"prompts_per_step={prompts_per_step}",
            f"samples_per_prompt={k}", f"ppo_epochs={epochs}", f"max_new_tokens={RESPONSE_LENGTH}",
            f"generation_batch_size={EPISODES}", f"kl_coef={KL_COEF}", "eval_examples=0",
            f"critic={critic}", f"rewards=[{assets / 'rm'}]"])
        ctx = setup_run(cfg)
        tokenizer = load_tokenizer(cfg.model)
        policy = load_causal_lm(cfg.model, tokenizer=tokenizer)
        policy.generation_config.eos_token_id = tokenizer.eos_token_id  # stop where TRL stops: at eos only
        reference = load_causal_lm(cfg.model, for_training=False, tokenizer=tokenizer)
        if algorithm != "ppo":
            model = ActorCritic(policy)
        elif critic == "head":
            model = ActorCritic(policy, ValueHead(policy.config.hidden_size))
        else:
            model = ActorCritic(policy, critic=load_critic(critic, torch.float32, torch.device("cpu")))
        prompts = PromptSet(data["ids"], data["messages"], [None] * len(data["ids"]))
        reward = reward_function(reward_sources(cfg.rewards, cfg.reward_weights, "cpu"), prompts)
        # on_step: after each step's update, as TRL's on_step_end
        train(ctx, cfg, model, reference, tokenizer, prompts, reward, on_step=lambda step, stats: ends.append(step_end()))
        peak = _status("VmHWM") - base
        ctx.metrics.close()
    return rates(ends, EPISODES, peak)


# --------------------------------------------------------------------------- TRL


class _StepTimes:
    """A TrainerCallback (built lazily: transformers is imported in the worker) recording step ends."""

    def __new__(cls, ends: list[tuple[float, float]]):
        from transformers import TrainerCallback

        class StepTimes(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(step_end())

        return StepTimes()


def run_trl_ppo(assets: Path, steps: int) -> dict:
    """TRL 1.12's experimental PPOTrainer (run with bench/.venv-trl112/bin/python)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    data = json.loads((assets / "prompts.json").read_text())
    ends: list[tuple[float, float]] = []
    base = reset_peak()
    tokenizer = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, dtype=torch.float32)
    dataset = Dataset.from_dict({"input_ids": data["ids"]})
    with tempfile.TemporaryDirectory() as out_dir:
        args = PPOConfig(
            output_dir=out_dir, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=EPISODES // MICRO_BATCH,
            num_mini_batches=1, num_ppo_epochs=4, total_episodes=EPISODES * steps, response_length=RESPONSE_LENGTH,
            stop_token="eos", temperature=1.0, kl_coef=KL_COEF, kl_estimator="k1", learning_rate=LR,
            local_rollout_forward_batch_size=EPISODES, num_sample_generations=0, bf16=False, fp16=False, use_cpu=True,
            gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
            seed=0, missing_eos_penalty=None)
        trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=rm,
                             value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(4)),
                             callbacks=[_StepTimes(ends)])
        trainer.train()
    return rates(ends, EPISODES, _status("VmHWM") - base)


def run_trl_critic_free(algorithm: str, assets: Path, steps: int) -> dict:
    """TRL 1.16's RLOOTrainer / GRPOTrainer (the main environment)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if algorithm == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer

    data = json.loads((assets / "prompts.json").read_text())
    prompts_per_step, k, epochs = rl_shape(algorithm)
    ends: list[tuple[float, float]] = []
    base = reset_peak()
    tokenizer = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32)
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, dtype=torch.float32)
    rm_tokenizer = AutoTokenizer.from_pretrained(assets / "rm", padding_side="right")
    dataset = Dataset.from_dict({"prompt": data["messages"]})
    with tempfile.TemporaryDirectory() as out_dir:
        args = Config(
            output_dir=out_dir, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=EPISODES // MICRO_BATCH,
            num_generations=k, max_completion_length=RESPONSE_LENGTH, temperature=1.0, top_k=0, top_p=1.0,
            num_iterations=epochs, beta=KL_COEF, learning_rate=LR, max_steps=steps * epochs, bf16=False, fp16=False,
            use_cpu=True, gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=10**6,
            disable_tqdm=True, seed=0, log_completions=False)
        trainer = Trainer(model=policy, reward_funcs=rm, args=args, train_dataset=dataset, processing_class=tokenizer,
                          reward_processing_classes=rm_tokenizer, callbacks=[_StepTimes(ends)])
        trainer.train()
    # One optimizer step per iteration: a batch of EPISODES episodes every `epochs` steps.
    return rates(ends[epochs - 1::epochs], EPISODES, _status("VmHWM") - base)


# --------------------------------------------------------------------------- driver


def worker(opts) -> None:
    import torch

    torch.set_num_threads(opts.threads)
    assets = Path(opts.assets)
    if opts.worker == "posttrain":
        result = run_posttrain(opts.algorithm, opts.critic if opts.critic == "head" else str(assets / "rm"), assets,
                               opts.steps)
    elif opts.algorithm == "ppo":
        result = run_trl_ppo(assets, opts.steps)
    else:
        result = run_trl_critic_free(opts.algorithm, assets, opts.steps)
    print("RESULT " + json.dumps(result), flush=True)


def trial(python: Path, who: str, algorithm: str, assets: Path, steps: int, critic: str, threads: int) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", who, "--algorithm", algorithm,
           "--assets", str(assets), "--steps", str(steps), "--critic", critic, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{who} {algorithm} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per trial, one round, PPO only")
    parser.add_argument("--steps", type=int, default=6, help="rollout batches per trial (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--algorithms", default="ppo,rloo,grpo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--worker", choices=["posttrain", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", default="ppo", help=argparse.SUPPRESS)
    parser.add_argument("--critic", default="head", help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)
    if opts.quick:
        opts.steps, opts.rounds, opts.algorithms = 3, 1, "ppo"
    algorithms = opts.algorithms.split(",")
    if "ppo" in algorithms and not TRL112_PYTHON.exists():
        sys.exit(f"TRL 1.12 (the last release with a PPO trainer) is not installed at {TRL112_PYTHON}; create it "
                 f"as the docstring of {__file__} shows")
    here = Path(sys.executable)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(tmp)
        prepare_assets(assets)
        print(f"{len(json.loads((assets / 'prompts.json').read_text())['ids'])} prompts; {opts.steps} steps x "
              f"{EPISODES} episodes per trial, {opts.rounds} round(s); load {os.getloadavg()[0]:.2f} at the start",
              flush=True)
        for round_ in range(opts.rounds):
            for algorithm in algorithms:
                runs = [("posttrain", here, "head"), ("trl", TRL112_PYTHON if algorithm == "ppo" else here, "head")]
                if algorithm == "ppo":
                    runs.insert(1, ("posttrain-critic", here, "rm"))
                for name, python, critic in runs:
                    who = "trl" if name == "trl" else "posttrain"
                    r = trial(python, who, algorithm, assets, opts.steps, critic, opts.threads)
                    results.setdefault(f"{algorithm}/{name}", []).append(r)
                    print(f"round {round_ + 1} {algorithm:5s} {name:17s} {r['episodes_per_cpu_s']:6.2f} episodes per CPU-s "
                          f"({r['episodes_per_s']:5.2f} wall)  peak {r['peak_mb']:7.1f} MB", flush=True)
    report(results, algorithms)


def report(results: dict[str, list[dict]], algorithms: list[str]) -> None:
    def median(key: str, field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    print(f"\nmedians (episodes per CPU-s, per wall-s, peak MB); load {os.getloadavg()[0]:.2f} at the end:")
    for key in results:
        print(f"  {key:24s} {median(key, 'episodes_per_cpu_s'):7.2f} {median(key, 'episodes_per_s'):7.2f} "
              f"{median(key, 'peak_mb'):7.1f}")

    def ratios(ours: str, theirs: str) -> tuple[float, float, float]:
        return (median(ours, "episodes_per_cpu_s") / median(theirs, "episodes_per_cpu_s"),
                median(ours, "peak_mb") / median(theirs, "peak_mb"),
                median(ours, "episodes_per_s") / median(theirs, "episodes_per_s"))

    for algorithm in algorithms:
        speed, memory, wall = ratios(f"{algorithm}/posttrain", f"{algorithm}/trl")
        trl = "TRL 1.12 PPOTrainer" if algorithm == "ppo" else f"TRL 1.16 {algorithm.upper()}Trainer"
        print(f"{algorithm}: speed ratio {speed:.2f} ({wall:.2f} by wall clock), memory ratio {memory:.2f} (vs {trl})")
    if "ppo" in algorithms:
        speed, memory, wall = ratios("ppo/posttrain-critic", "ppo/trl")
        print(f"ppo with a separate critic from the reward model, as TRL: speed ratio {speed:.2f} ({wall:.2f} by wall "
              f"clock), memory ratio {memory:.2f}")
        speed, memory, _ = ratios("ppo/posttrain", "ppo/trl")
        print(json.dumps({"bench": "ppo", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3)}))


if __name__ == "__main__":
    main()
