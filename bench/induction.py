"""How many training tokens the world's base-model architecture needs before it copies from its context.

    python bench/induction.py                 # 2500 steps, about 30 min on one CPU core
    python bench/induction.py --steps 400     # a smoke run

Few-shot and chain-of-thought prompting help only a model with induction heads (Olsson et al. 2022):
one that predicts a string better the second time it appears. This bench takes the architecture of
``configs/pretrain/world.yaml`` (a 4-layer Llama, hidden 192, 4 heads, the world's 2048-token
tokenizer), initialises it randomly and trains it on text made *only* of copying: 512-token rows of
random spans (spelled letters or any tokens, 5-15 long), each followed by 0-20 random tokens and then
repeated 1-``--repeats`` times. Every ``--eval-every`` steps it prints the training loss and
:func:`posttrain.evaluation.copying.copying_gain` (nats per token gained on a random letter span's
second appearance; ``posttrain eval`` prints the same number for any checkpoint). Induction forms as
a phase change: the gain stays under 1 nat, then rises to several within a few hundred steps.

The question it answers for the world: the base model's pretraining budget (1000 steps of 8 x 512
tokens, issue 3's 10 minutes) is smaller than the tokens the phase change takes even on pure copying
data, so a corpus where copying is a minority of the text cannot grow induction heads in that budget.

The last line is one JSON object: ``{"bench": "induction", "steps_to_gain_1": ..., "steps_to_gain_3":
..., "final_gain": ..., "tokens_per_step": ...}`` (null where the gain was never reached).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def copying_rows(rng: random.Random, letters: list[int], vocab: list[int], rows: int, seq_len: int,
                 repeats: int) -> torch.Tensor:
    """``rows`` sequences of spans, filler, and the span again (1 to ``repeats`` times)."""
    out = []
    for _ in range(rows):
        ids: list[int] = []
        while len(ids) < seq_len:
            pool = letters if rng.random() < 0.5 else vocab
            span = [rng.choice(pool) for _ in range(rng.randint(5, 15))]
            filler = [rng.choice(vocab) for _ in range(rng.randint(0, 20))]
            ids += span + filler + span * rng.randint(1, repeats)
        out.append(ids[:seq_len])
    return torch.tensor(out)


def first_step(history: list[tuple[int, float]], threshold: float) -> int | None:
    return next((step for step, gain in history if gain >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=4, help="most times a span is said again")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(ROOT / "configs/pretrain/world.yaml"),
                        help="pretrain config whose arch section gives the model shape")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from posttrain.evaluation.copying import copying_gain
    from posttrain.models.tiny import tiny_llama
    from posttrain.world import base_model_path

    tokenizer = AutoTokenizer.from_pretrained(base_model_path())
    letters = [tokenizer.encode(f" {c}", add_special_tokens=False) for c in "abcdefghijklmnopqrstuvwxyz"]
    if any(len(ids) != 1 for ids in letters):
        raise SystemExit("the world tokenizer should hold every spelled letter (' a' ... ' z') as one token")
    letters = [ids[0] for ids in letters]
    vocab = sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids))
    arch = yaml.safe_load(Path(args.config).read_text())["arch"]
    model = tiny_llama(len(tokenizer), hidden_size=arch["hidden_size"], num_layers=arch["num_layers"],
                       num_heads=arch["num_heads"], intermediate_size=arch.get("intermediate_size"),
                       max_positions=max(arch.get("max_positions", 1024), args.seq_len), seed=args.seed,
                       tie_word_embeddings=arch.get("tie_word_embeddings", True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    rng = random.Random(f"induction-bench:{args.seed}")
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {arch}; "
          f"{args.batch_size} x {args.seq_len} tokens per step, lr {args.lr}")

    history, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = copying_rows(rng, letters, vocab, args.batch_size, args.seq_len, args.repeats)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            score = copying_gain(model, tokenizer)
            model.train()
            history.append((step, score.gain))
            print(f"step {step:5d}  tokens {step * args.batch_size * args.seq_len / 1e6:5.1f}M  loss {loss.item():.3f}  "
                  f"copying gain {score.gain:+.2f} nats/token  ({time.perf_counter() - start:.0f}s)", flush=True)
    print(json.dumps({"bench": "induction", "steps_to_gain_1": first_step(history, 1.0),
                      "steps_to_gain_3": first_step(history, 3.0), "final_gain": round(history[-1][1], 3),
                      "tokens_per_step": args.batch_size * args.seq_len}))


if __name__ == "__main__":
    main()
