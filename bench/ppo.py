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
  saved once; both score the same (prompt, response) token sequences with it. The critic is a separate
  value model initialised from it for both (TRL's only way; posttrain ``critic=<rm folder>``): the JSON
  compares the same algorithm. posttrain's default value head on the policy (``critic=head``, one
  backbone for actor and critic) is a different algorithm, timed and printed on a line of its own.
- Prompts: the world's task prompts (train split), rendered with the chat template, the same ones in
  the same order-independent set for both (each samples its own batches from them).
- Episodes per step: 64 (PPO: 64 prompts x 1 sample; RLOO/GRPO: 16 prompts x 4 samples), responses of
  at most 32 new tokens sampled at temperature 1 and stopped at eos, 4 PPO epochs (RLOO/GRPO: 2
  iterations) per batch, each epoch one optimizer update of 4 micro-batches of 16 (gradient
  accumulation), KL coefficient 0.05, k1 KL estimator.
- Reward input: posttrain runs with ``reward_input=ids``: the reward model scores the rollout's own
  tokens, as TRL does (posttrain's default, ``text``, re-renders the response text through the reward
  model's chat template, which gives other tokens: here the policy's responses end in ``<|endoftext|>``
  where the template closes the turn with ``<|im_end|>``, and the scores differ by up to 1.1).
- Cross-check, before timing: one shared rollout (8 prompts with responses sampled once from the
  policy, saved with the assets) is scored by both sides' own code: posttrain's reward function and
  reference log-probs, against TRL 1.12's
  ``get_reward`` on its truncated query-response ids and its reference ``forward`` (1e-4).
  ``--perturb`` has TRL's side divide the reference logits by temperature 0.7 (a setting that does not
  match): the bench must then stop with a non-zero exit.
- Measured, in each trial's own process (``--threads`` torch threads, default 1): episodes (rollout +
  scoring + update) per CPU-second of the process, and per wall-clock second beside it, from the end
  of the first step to the end of the last, with the rate's relative standard error from the spread
  of the steps; and peak memory: the peak resident set size (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size before any model is loaded (after the imports),
  so the models, optimizer states and activations of the run are all counted. CPU time is the speed
  measure because on a shared machine wall time swings with other users' load. MFU: the model FLOPs of
  an episode (generation, reference, old log-probs, values, reward, and the updates of actor and
  critic) at the full 32 response tokens, over the matmul peak at the same threads: an upper bound
  for both sides, as responses that stop early at eos do less work.
- Trials alternate the frameworks, in the reverse order every other round; medians over the rounds.
  The last line is one JSON object ``{"bench": "ppo", "speed_ratio": ..., "memory_ratio": ..., "mfu":
  ..., "peer_mfu": ...}``: posttrain PPO with the separate critic / TRL 1.12 PPO. RLOO and GRPO ratios
  (against TRL 1.16) are printed above it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import Shape, check, matmul_peak, medians, peak_mb, rates, reset_peak, schedule, step_clock  # noqa: E402

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
    # One rollout for the cross-check: the first prompt of each family, a response sampled from the policy.
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(folder / "policy", dtype=torch.float32)
    rows = list(range(0, len(ids), PROMPTS_PER_FAMILY))
    torch.manual_seed(0)
    responses = []
    for row in rows:
        out = policy.generate(torch.tensor([ids[row]]), do_sample=True, max_new_tokens=RESPONSE_LENGTH, top_k=0,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        responses.append(out[0, len(ids[row]):].tolist())
    (folder / "rollout.json").write_text(json.dumps({"rows": rows, "responses": responses}))


# --------------------------------------------------------------------------- measuring


def measured(ends: list[tuple[float, float]], base: int) -> dict:
    """Episodes per wall and per CPU second after step 1, their noise, and the peak memory in MB."""
    r = rates(ends, [EPISODES] * len(ends))
    return {"episodes_per_s": r["per_s"], "episodes_per_cpu_s": r["per_cpu_s"], "noise": r["noise"],
            "peak_mb": peak_mb(base), "steps": len(ends)}


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
            f"critic={critic}", f"rewards=[{assets / 'rm'}]", "reward_input=ids"])
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
        reward = reward_function(reward_sources(cfg.rewards, cfg.reward_weights, "cpu"), prompts, tokenizer)
        # on_step: after each step's update, as TRL's on_step_end
        train(ctx, cfg, model, reference, tokenizer, prompts, reward, on_step=lambda step, stats: ends.append(step_clock()))
        result = measured(ends, base)
        ctx.metrics.close()
    return result


# --------------------------------------------------------------------------- TRL


class _StepTimes:
    """A TrainerCallback (built lazily: transformers is imported in the worker) recording step ends."""

    def __new__(cls, ends: list[tuple[float, float]]):
        from transformers import TrainerCallback

        class StepTimes(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ends.append(step_clock())

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
    return measured(ends, base)


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
    return measured(ends[epochs - 1::epochs], base)


# --------------------------------------------------------------------------- cross-check


def posttrain_check(assets: Path) -> dict:
    """posttrain's reward scores and reference log-probs of the shared rollout, by its own code."""
    import torch

    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.models.value import response_logits
    from posttrain.rl.prompts import PromptSet, reward_function, reward_sources
    from posttrain.rl.rollout import collate_rollout, token_logps

    data, shared = json.loads((assets / "prompts.json").read_text()), json.loads((assets / "rollout.json").read_text())
    cfg = ModelConfig(name_or_path=str(assets / "policy"), device="cpu", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    reference = load_causal_lm(cfg, for_training=False, tokenizer=tokenizer)
    rows, responses = shared["rows"], shared["responses"]
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]  # as generation decodes them
    rollout = collate_rollout([data["ids"][i] for i in rows], responses, [[0.0] * len(r) for r in responses],
                              [tokenizer.eos_token_id in r for r in responses], texts, list(range(len(rows))),
                              tokenizer.pad_token_id)
    prompts = PromptSet([data["ids"][i] for i in rows], [data["messages"][i] for i in rows], [None] * len(rows))
    with torch.no_grad():
        logits, _ = response_logits(reference, **rollout.model_inputs())
        ref = token_logps(logits, rollout.response_ids).masked_fill(~rollout.response_mask, 0.0)
        score = reward_function(reward_sources([str(assets / "rm")], [], "cpu"), prompts, tokenizer)(
            list(range(len(rows))), rollout)
    return {"scores": score["score"].tolist(), "ref_logps": ref.tolist()}


def trl_check(assets: Path, perturb: bool) -> dict:
    """TRL 1.12's PPO code on the shared rollout: ``get_reward`` on its truncated query-response ids and the
    reference ``forward`` (run with bench/.venv-trl112/bin/python)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo.ppo_trainer import forward, truncate_response
    from trl.experimental.utils import first_true_indices, get_reward  # noqa: F401
    from trl.trainer.utils import selective_log_softmax

    data, shared = json.loads((assets / "prompts.json").read_text()), json.loads((assets / "rollout.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(assets / "policy", padding_side="left")
    ref = AutoModelForCausalLM.from_pretrained(assets / "policy", dtype=torch.float32).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id
    queries = tokenizer.pad({"input_ids": [data["ids"][i] for i in shared["rows"]]}, return_tensors="pt")["input_ids"]
    width = max(len(r) for r in shared["responses"])
    response = torch.tensor([r + [pad] * (width - len(r)) for r in shared["responses"]])
    context_length = queries.shape[1]
    query_response = torch.cat([queries, response], 1)
    temperature = 0.7 if perturb else 1.0
    with torch.no_grad():  # as PPOTrainer.train's rollout phase computes them
        ref_logits = forward(ref, query_response, pad).logits[:, context_length - 1:-1] / (temperature + 1e-7)
        ref_logps = selective_log_softmax(ref_logits, response).masked_fill(response == pad, 0.0)
        postprocessed = truncate_response(tokenizer.eos_token_id, pad, response)
        _, score, _ = get_reward(rm, torch.cat([queries, postprocessed], 1), pad, context_length)
    return {"scores": score.tolist(), "ref_logps": ref_logps.tolist()}


def cross_check(assets: Path, perturb: bool) -> None:
    import numpy as np

    ours = trial(Path(sys.executable), "posttrain-check", "ppo", assets, 0, "head", 1)
    theirs = trial(TRL112_PYTHON, "trl-check", "ppo", assets, 0, "head", 1, perturb)
    gaps = {k: float(np.abs(np.array(ours[k]) - np.array(theirs[k])).max()) for k in ("scores", "ref_logps")}
    check(max(gaps.values()) < 1e-4, f"one shared rollout of {len(ours['scores'])} episodes: reward scores and reference "
          f"log-probs, posttrain vs TRL 1.12: largest differences {gaps['scores']:.1e} and {gaps['ref_logps']:.1e} "
          f"(1e-4 allowed)")


# --------------------------------------------------------------------------- model FLOPs


def episode_flops(assets: Path, algorithm: str, critic: str) -> float:
    """Model FLOPs of one episode at the full response length (see the module docstring): the policy's
    generation, old and reference log-probs (forwards), values and reward (forwards of the critic and the
    reward model), and the updates (forward + backward) of the actor, and of a separate critic."""
    from transformers import AutoModelForCausalLM

    shape = Shape.of(AutoModelForCausalLM.from_pretrained(assets / "policy"))
    prompts = json.loads((assets / "prompts.json").read_text())["ids"]
    n = sum(len(p) for p in prompts) / len(prompts) + RESPONSE_LENGTH
    _, _, epochs = rl_shape(algorithm)
    head = 2 * shape.hidden * shape.vocab * RESPONSE_LENGTH  # the LM head's forward at the response
    forwards = 3 * (2 * shape.params * n + head) + 2 * shape.params * n  # generation, old, reference; the reward
    if algorithm == "ppo":
        forwards += 2 * shape.params * n * (critic != "head")  # the critic's values
    separate = algorithm == "ppo" and critic != "head"
    updates = epochs * (6 * shape.params * n * (2 if separate else 1) + 3 * head)  # the critic has no LM head
    return forwards + updates


# --------------------------------------------------------------------------- driver


def worker(opts) -> None:
    import torch

    torch.set_num_threads(opts.threads)
    assets = Path(opts.assets)
    if opts.worker == "posttrain-check":
        result = posttrain_check(assets)
    elif opts.worker == "trl-check":
        result = trl_check(assets, opts.perturb)
    elif opts.worker == "posttrain":
        result = run_posttrain(opts.algorithm, opts.critic if opts.critic == "head" else str(assets / "rm"), assets,
                               opts.steps)
    elif opts.algorithm == "ppo":
        result = run_trl_ppo(assets, opts.steps)
    else:
        result = run_trl_critic_free(opts.algorithm, assets, opts.steps)
    print("RESULT " + json.dumps(result), flush=True)


def trial(python: Path, who: str, algorithm: str, assets: Path, steps: int, critic: str, threads: int,
          perturb: bool = False) -> dict:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", who, "--algorithm", algorithm,
           "--assets", str(assets), "--steps", str(steps), "--critic", critic, "--threads", str(threads)]
    out = subprocess.run(cmd + ["--perturb"] * perturb, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{who} {algorithm} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


RUNS = {"ppo": [("posttrain-critic", "rm"), ("trl", "rm"), ("posttrain-head", "head")],
        "rloo": [("posttrain", "head"), ("trl", "head")], "grpo": [("posttrain", "head"), ("trl", "head")]}
"""The trials of each algorithm: (name, critic). PPO's posttrain-critic is the same algorithm as TRL's (a
separate value model from the reward model, whatever the critic argument says for TRL: it has no other);
posttrain-head (a value head on the policy) is posttrain's default and a different algorithm."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps per trial, one round, PPO only")
    parser.add_argument("--steps", type=int, default=6, help="rollout batches per trial (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--algorithms", default="ppo,rloo,grpo")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--check-only", action="store_true", help="run the cross-check and stop")
    parser.add_argument("--perturb", action="store_true", help="a mismatched setting on TRL's side: the check must fail")
    parser.add_argument("--worker", choices=["posttrain", "trl", "posttrain-check", "trl-check"], help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", default="ppo", help=argparse.SUPPRESS)
    parser.add_argument("--critic", default="head", help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)
    if opts.quick:
        opts.steps, opts.rounds, opts.algorithms = 3, 1, "ppo"
    algorithms = opts.algorithms.split(",")
    if not TRL112_PYTHON.exists():
        sys.exit(f"TRL 1.12 (the last release with a PPO trainer, and the cross-check's reference) is not installed at "
                 f"{TRL112_PYTHON}; create it as the docstring of {__file__} shows")
    here = Path(sys.executable)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(tmp)
        prepare_assets(assets)
        print(f"{len(json.loads((assets / 'prompts.json').read_text())['ids'])} prompts; {opts.steps} steps x "
              f"{EPISODES} episodes per trial, {opts.rounds} round(s); {opts.threads} torch thread(s); load "
              f"{os.getloadavg()[0]:.2f} at the start", flush=True)
        cross_check(assets, opts.perturb)
        if opts.check_only:
            return
        peak = matmul_peak(opts.threads)["per_cpu_s"]
        print(f"fp32 matmul peak at {opts.threads} thread(s): {peak / 1e9:.0f} GFLOP per CPU-s", flush=True)
        flops = {f"{a}/{name}": episode_flops(assets, a, critic) for a in algorithms for name, critic in RUNS[a]}
        trials = [(a, name, critic) for a in algorithms for name, critic in RUNS[a]]
        for round_, (algorithm, name, critic) in schedule(trials, opts.rounds):
            who = "trl" if name == "trl" else "posttrain"
            python = TRL112_PYTHON if who == "trl" and algorithm == "ppo" else here
            r = trial(python, who, algorithm, assets, opts.steps, critic, opts.threads)
            results.setdefault(f"{algorithm}/{name}", []).append(r)
            print(f"round {round_ + 1} {algorithm:5s} {name:17s} {r['episodes_per_cpu_s']:6.2f} episodes per CPU-s "
                  f"({r['episodes_per_s']:5.2f} wall, noise {r['noise']:.1%})  peak {r['peak_mb']:7.1f} MB  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    report(results, algorithms, flops, peak)


def report(results: dict[str, list[dict]], algorithms: list[str], flops: dict[str, float], peak: float) -> None:
    med = {key: medians(runs) for key, runs in results.items()}
    mfu = {key: m["episodes_per_cpu_s"] * flops[key] / peak for key, m in med.items()}
    print(f"\nmedians (episodes per CPU-s, per wall-s, peak MB, MFU at most); load {os.getloadavg()[0]:.2f} at the end:")
    for key, m in med.items():
        print(f"  {key:24s} {m['episodes_per_cpu_s']:7.2f} {m['episodes_per_s']:7.2f} {m['peak_mb']:7.1f} {mfu[key]:6.1%}")

    def ratios(ours: str, theirs: str) -> tuple[float, float, float]:
        return (med[ours]["episodes_per_cpu_s"] / med[theirs]["episodes_per_cpu_s"],
                med[ours]["peak_mb"] / med[theirs]["peak_mb"], med[ours]["episodes_per_s"] / med[theirs]["episodes_per_s"])

    for algorithm in algorithms:
        ours = f"{algorithm}/posttrain-critic" if algorithm == "ppo" else f"{algorithm}/posttrain"
        speed, memory, wall = ratios(ours, f"{algorithm}/trl")
        trl = "TRL 1.12 PPOTrainer" if algorithm == "ppo" else f"TRL 1.16 {algorithm.upper()}Trainer"
        same = ", both with a separate critic initialised from the reward model" if algorithm == "ppo" else ""
        print(f"{algorithm}: speed ratio {speed:.2f} ({wall:.2f} by wall clock), memory ratio {memory:.2f} (vs {trl}{same})")
    if "ppo" in algorithms:
        speed, memory, wall = ratios("ppo/posttrain-head", "ppo/trl")
        print(f"a different algorithm: posttrain PPO with its default value head on the policy (one backbone for actor "
              f"and critic) vs TRL's separate value model: speed ratio {speed:.2f} ({wall:.2f} by wall clock), memory "
              f"ratio {memory:.2f}")
        speed, memory, _ = ratios("ppo/posttrain-critic", "ppo/trl")
        print(json.dumps({"bench": "ppo", "speed_ratio": round(speed, 3), "memory_ratio": round(memory, 3),
                          "mfu": round(mfu["ppo/posttrain-critic"], 3), "peer_mfu": round(mfu["ppo/trl"], 3)}))


if __name__ == "__main__":
    main()
