"""posttrain DPO against TRL's DPOTrainer on a tiny model, where what is not the model costs the most.

    python bench/dpo_small.py             # 3 alternating rounds, a few minutes on 2 CPU cores
    python bench/dpo_small.py --quick     # one round on 1,200 pairs, one epoch

The case (issue 24, point 6): an enumerable preference problem. 6 prompts (chat messages), each with
6 one-word candidate answers ranked by a hidden score; 12,000 pairs drawn from the 6 x 15 distinct
(better, worse) pairs, written once as JSONL in the conversational layout both libraries read
(``prompt``/``chosen``/``rejected`` as message lists). The model is a randomly initialised 2-layer
Llama, hidden 32, with a word-level tokenizer and the ChatML template, saved once as a plain HF folder.
Both train 3 epochs, batch ``--batch-size`` pairs, the same lr, warmup and cosine floor, AdamW (0.9,
0.95), no weight decay, clipping 1.0, sigmoid loss, beta 0.1, fp32 on the CPU, 1 thread, the reference
precomputed before training (posttrain ``reference=precompute``, TRL ``precompute_ref_log_probs=True``),
each side's own logging defaults.

Measured: each side is one process from start to exported model: ``posttrain dpo`` with overrides,
against ``python bench/dpo_small.py trl-child ...`` (load the model, the JSONL through ``datasets``,
``DPOTrainer``, ``train``, ``save_model``). Both start cold: a fresh run folder for posttrain (its
reference log-probs and prepared data caches live there), a fresh ``HF_DATASETS_CACHE`` for TRL (where
its tokenized dataset and reference log-probs are cached). The order alternates over rounds; medians
are reported. The breakdown comes from when each line of a side's log arrives: ``to_data_s`` (start to the
pairs ready: imports, model load, reading and, for posttrain, tokenizing them; TRL tokenizes in its trainer's
constructor, with the reference pass, ``data_prep_and_ref_s``), the reference pass, training per epoch. Sanity: each exported model's accuracy at
preferring the better answer on the 90 distinct pairs, by the DPO implicit reward
(policy minus initial log-ratio of chosen over rejected), so both sides did equal work.

The last line is one JSON object ``{"bench": "dpo_small", "wall_ratio": posttrain / TRL, ...}``;
``run_small`` returns the same dict (``bench/dpo.py`` prints it as its second line).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOPICS = {  # prompt words -> the 6 candidate answers
    "name a colour you like": ["red", "green", "blue", "yellow", "purple", "orange"],
    "name a fruit you like": ["apple", "pear", "plum", "cherry", "grape", "mango"],
    "name an animal you like": ["cat", "dog", "horse", "otter", "owl", "fox"],
    "name a number you like": ["one", "two", "three", "four", "five", "six"],
    "name a tool you like": ["hammer", "saw", "drill", "wrench", "pliers", "chisel"],
    "name a city you like": ["paris", "rome", "oslo", "lima", "cairo", "tokyo"],
}
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DEFAULTS = dict(pairs=12_000, epochs=3, batch_size=64, lr=1e-3, warmup_steps=10, beta=0.1, rounds=3, threads=1,
                seed=0)


# --------------------------------------------------------------------------- the case


def ranking(seed: int) -> dict[str, list[str]]:
    """Each prompt's candidates, best first (a hidden score per word)."""
    rng = random.Random(seed)
    return {prompt: rng.sample(words, len(words)) for prompt, words in TOPICS.items()}


def distinct_pairs(seed: int) -> list[tuple[str, str, str]]:
    """The 6 x 15 (prompt, better, worse) pairs."""
    return [(p, ranked[i], ranked[j]) for p, ranked in ranking(seed).items()
            for i in range(len(ranked)) for j in range(i + 1, len(ranked))]


def as_record(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def write_case(root: Path, pairs: int, seed: int) -> tuple[Path, Path]:
    """(model folder, pairs.jsonl) under ``root``, written once."""
    model_dir, data = root / "model", root / f"pairs-{pairs}-{seed}.jsonl"
    if not data.exists():
        rng, distinct = random.Random(seed + 1), distinct_pairs(seed)
        with open(data, "w") as f:
            for _ in range(pairs):
                f.write(json.dumps(as_record(*rng.choice(distinct))) + "\n")
    if not (model_dir / "config.json").exists():
        write_model(model_dir, seed)
    return model_dir, data


def write_model(path: Path, seed: int) -> None:
    """A word-level tokenizer (ChatML markers as special tokens) and a random 2-layer Llama, hidden 32."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for p, answers in TOPICS.items() for w in p.split() + answers} | {"user", "assistant", "system"})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["<|unk|>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0],
                                        pad_token=SPECIALS[1], unk_token="<|unk|>",
                                        additional_special_tokens=SPECIALS[2:])
    tokenizer.chat_template = CHATML
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).float().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


# --------------------------------------------------------------------------- the two sides


def child_env(threads: int, extra: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    return {**env, **(extra or {})}


def timed(cmd: list[str], env: dict) -> tuple[float, list[tuple[float, str]]]:
    """Run ``cmd``; (wall seconds, [(seconds since start, line)] of its stdout and stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
    wall = time.perf_counter() - start
    if proc.wait() != 0:
        raise SystemExit(f"{cmd[0]} {cmd[1]} failed:\n" + "\n".join(line for _, line in lines[-40:]))
    return wall, lines


def posttrain_cmd(opts, model_dir: Path, data: Path, run_dir: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("posttrain")), "dpo", f"model.name_or_path={model_dir}",
            "model.device=cpu", "model.dtype=float32", f"data.train=[{data}]", f"train.run_dir={run_dir}",
            f"train.epochs={opts.epochs}", f"train.batch_size={opts.batch_size}", f"train.lr={opts.lr}",
            f"train.warmup_steps={opts.warmup_steps}", "train.min_lr_ratio=0.1", "train.weight_decay=0.0",
            "train.max_grad_norm=1.0", f"train.seed={opts.seed}", "train.save_every=0", "train.tensorboard=false",
            "train.progress=false", f"loss={{name: sigmoid, beta: {opts.beta}}}", "reference=precompute",
            "kl_prompts=0"]  # packing left at its default (true)


def first(lines, needle: str) -> float | None:
    return next((t for t, line in lines if needle in line), None)


def posttrain_breakdown(lines, steps_per_epoch: int) -> dict:
    """Phases from when posttrain's log lines arrive."""
    tokenized = first(lines, "train: tokenized")
    ref = first(lines, "reference log-probs of")
    steps = [(int(line.split("step ")[1].split("/")[0]), t) for t, line in lines if " step " in line and "/" in line]
    epoch = None
    if len(steps) >= 2:
        (s0, t0), (s1, t1) = steps[0], steps[-1]
        epoch = (t1 - t0) / (s1 - s0) * steps_per_epoch if s1 > s0 else None
    return {"to_data_s": tokenized,  # imports, model load, reading and preparing the pairs
            "ref_pass_s": None if None in (ref, tokenized) else ref - tokenized, "epoch_s": epoch,
            "after_train_s": lines[-1][0] - steps[-1][1] if steps else None}


def trl_cmd(opts, model_dir: Path, data: Path, out_dir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "trl-child", "--model", str(model_dir), "--data", str(data),
            "--out", str(out_dir), "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size),
            "--lr", str(opts.lr), "--warmup-steps", str(opts.warmup_steps), "--beta", str(opts.beta),
            "--seed", str(opts.seed)]


def trl_child(opts) -> None:
    """TRL's side, as a user writes it: model, JSONL through datasets, DPOTrainer, train, save_model.
    Prints a timestamped line at each phase for the breakdown."""
    start = time.perf_counter()
    mark = lambda what: print(f"@ {time.perf_counter() - start:.3f} {what}", flush=True)  # noqa: E731
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    mark("imported")
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    dataset = load_dataset("json", data_files=opts.data, split="train")
    mark("read")

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark("train begins")

        def on_epoch_end(self, args, state, control, **kwargs):
            mark("epoch ends")

    args = DPOConfig(
        output_dir=opts.out, per_device_train_batch_size=opts.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=opts.epochs, learning_rate=opts.lr, warmup_steps=opts.warmup_steps,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, adam_beta1=0.9,
        adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, beta=opts.beta,
        loss_type=["sigmoid"], precompute_ref_log_probs=True, precompute_ref_batch_size=2 * opts.batch_size,
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        seed=opts.seed)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Marks()])
    mark("trainer built")  # tokenized, and the reference pass done
    trainer.train()
    trainer.save_model(opts.out)
    mark("saved")


def trl_breakdown(lines) -> dict:
    marks = {}
    for _, line in lines:
        if line.startswith("@ "):
            _, t, what = line.split(" ", 2)
            marks.setdefault(what, []).append(float(t))
    ends = marks.get("epoch ends", [])
    begin = marks.get("train begins", [None])[0]
    epoch = (ends[-1] - begin) / len(ends) if ends and begin is not None else None
    return {"to_data_s": marks["read"][0], "data_prep_and_ref_s": marks["trainer built"][0] - marks["read"][0],
            "epoch_s": epoch, "after_train_s": marks["saved"][0] - ends[-1] if ends else None}


# --------------------------------------------------------------------------- sanity


def implicit_accuracy(initial: Path, trained: Path, seed: int) -> float:
    """Share of the 90 distinct pairs whose DPO implicit reward prefers the better answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(initial)
    pairs = distinct_pairs(seed)
    rows, starts = [], []
    for prompt, *answers in pairs:
        head = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True))["input_ids"]
        for answer in answers:  # the answer and <|im_end|>, as both sides train them
            rows.append(head + tokenizer(f"{answer}<|im_end|>")["input_ids"])
            starts.append(len(head))
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[t >= s and t < len(r) for t in range(width)] for r, s in zip(rows, starts)])
    attention = torch.tensor([[t < len(r) for t in range(width)] for r in rows])

    def logps(path: Path) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].log_softmax(-1)
        token = logits.gather(-1, ids[:, 1:, None])[..., 0]
        return (token * mask[:, 1:]).sum(-1).view(len(pairs), 2)

    margin = logps(trained) - logps(initial)
    return float((margin[:, 0] > margin[:, 1]).float().mean())


# --------------------------------------------------------------------------- the bench


def run_small(opts: argparse.Namespace | dict | None = None, **kwargs) -> dict:
    """Time both sides ``rounds`` times, alternating; return medians, breakdowns and accuracies."""
    opts = {**DEFAULTS, **(vars(opts) if isinstance(opts, argparse.Namespace) else opts or {}), **kwargs}
    opts = argparse.Namespace(**opts)
    steps_per_epoch = -(-opts.pairs // opts.batch_size)
    walls: dict[str, list[float]] = {"posttrain": [], "trl": []}
    breakdowns: dict[str, list[dict]] = {"posttrain": [], "trl": []}
    accuracy = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, data = write_case(root, opts.pairs, opts.seed)
        print(f"dpo_small: {opts.pairs} pairs over 6 prompts x 6 one-word answers, 2-layer Llama hidden 32, "
              f"{opts.epochs} epochs of batch {opts.batch_size}, lr {opts.lr}, {opts.threads} thread(s), "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
        for r in range(opts.rounds):
            order = ["posttrain", "trl"] if r % 2 == 0 else ["trl", "posttrain"]
            for who in order:
                out = root / f"{who}-{r}"
                if who == "posttrain":
                    wall, lines = timed(posttrain_cmd(opts, model_dir, data, out), child_env(opts.threads))
                    parts, final = posttrain_breakdown(lines, steps_per_epoch), out / "final"
                else:
                    wall, lines = timed(trl_cmd(opts, model_dir, data, out),
                                        child_env(opts.threads, {"HF_DATASETS_CACHE": str(root / f"hf-{r}")}))
                    parts, final = trl_breakdown(lines), out
                walls[who].append(wall)
                breakdowns[who].append(parts)
                if r == 0:
                    accuracy[who] = implicit_accuracy(model_dir, final, opts.seed)
                shown = "  ".join(f"{k} {v:.2f}" for k, v in parts.items() if v is not None)
                print(f"round {r + 1} {who:9s} wall {wall:6.2f} s  ({shown})  load {os.getloadavg()[0]:.1f}",
                      flush=True)
    med = {who: statistics.median(w) for who, w in walls.items()}
    parts = {who: {k: statistics.median(b[k] for b in bs if b[k] is not None)
                   for k in bs[0] if any(b[k] is not None for b in bs)} for who, bs in breakdowns.items()}
    return {"bench": "dpo_small", "wall_ratio": med["posttrain"] / med["trl"], "posttrain_s": med["posttrain"],
            "trl_s": med["trl"], "posttrain_parts": parts["posttrain"], "trl_parts": parts["trl"],
            "accuracy": accuracy, "walls": walls, "pairs": opts.pairs, "epochs": opts.epochs,
            "batch_size": opts.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    child = sub.add_parser("trl-child", help="(internal) TRL's side of one trial")
    for name in ("model", "data", "out"):
        child.add_argument(f"--{name}", required=True)
    for name in ("epochs", "batch-size", "warmup-steps", "seed"):
        child.add_argument(f"--{name}", type=int, required=True)
    for name in ("lr", "beta"):
        child.add_argument(f"--{name}", type=float, required=True)
    parser.add_argument("--quick", action="store_true", help="one round on 1,200 pairs, one epoch")
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--pairs", type=int, default=DEFAULTS["pairs"])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"])
    opts = parser.parse_args()
    if opts.command == "trl-child":
        return trl_child(opts)
    if opts.quick:
        opts.rounds, opts.pairs, opts.epochs = 1, 1200, 1
    result = run_small({k: v for k, v in vars(opts).items() if k not in ("command", "quick")})
    for who in ("posttrain", "trl"):
        shown = "  ".join(f"{k} {v:.2f}" for k, v in result[f"{who}_parts"].items())
        print(f"{who:9s} median wall {result[f'{who}_s']:6.2f} s  ({shown})  "
              f"implicit-reward accuracy {result['accuracy'][who]:.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
