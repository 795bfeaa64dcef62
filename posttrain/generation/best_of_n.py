"""Best-of-n (rejection sampling): sample n responses per prompt, keep the one the reward likes best.

As inference, best-of-n trades compute for quality without training (Nakano et al. 2021, WebGPT
§5; Stiennon et al. 2020): its expected reward rises with n, and the KL from the policy is at most
``log n - (n - 1) / n``. As data, the kept responses are SFT targets for the policy's next round:
Llama 2's rejection-sampling fine-tuning (Touvron et al. 2023, §3.2.3) and RAFT (Dong et al. 2023).

The reward is any scorer (``posttrain.scorers``): a trained reward model, Llama 2's helpfulness +
safety combination, a Python function, or the world's gold reward (to check; it needs each
prompt's task as its record).
:func:`best_of_n` samples ``n`` responses once; :func:`select_best` then answers for every
smaller n from the first n samples, so a curve over n compares nested sets of the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.data.records import Conversation, Message
from posttrain.data.writers import write_jsonl
from posttrain.generation.hf import generate_chat
from posttrain.models.reward import as_dicts
from posttrain.scorers import as_scorer


@dataclass
class BestOfN:
    """One prompt's samples, their rewards and the kept response."""

    prompt: list[dict[str, str]]
    samples: list[str]
    """The n sampled responses, in sampling order."""
    scores: list[float]
    """Reward of each sample."""
    best: int
    """Index of the kept sample (highest reward; the earliest on ties)."""

    @property
    def response(self) -> str:
        return self.samples[self.best]

    @property
    def score(self) -> float:
        return self.scores[self.best]


def sample_responses(policy, tokenizer, prompts: Sequence[Sequence[Any]], n: int, max_new_tokens: int = 64,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                     batch_size: int = 64) -> list[list[str]]:
    """``n`` sampled replies to each chat prompt (``[prompt][sample]``), reproducible for a ``seed``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature <= 0:
        raise ValueError(f"best-of-n samples: temperature must be > 0 (got {temperature}); greedy gives n equal answers")
    conversations = [as_dicts(p) for p in prompts for _ in range(n)]
    outputs = generate_chat(policy, tokenizer, conversations, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, seed=seed, batch_size=batch_size)
    texts = [o.text.strip() for o in outputs]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def select_best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P,) index of the best of the first ``n`` samples of each prompt; scores (P, N) with N >= n."""
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"n={n} needs 1 <= n <= {scores.shape[1]} samples per prompt")
    return scores[:, :n].argmax(dim=1)  # argmax returns the first maximum: the earliest sample on ties


def score_samples(scorer: Any, prompts: Sequence[Sequence[Any]], samples: list[list[str]],
                  records: Sequence[Any] | None = None) -> torch.Tensor:
    """(P, n) rewards of ``samples[p][i]`` as replies to ``prompts[p]`` (whose record is ``records[p]``)
    by ``scorer`` (anything :func:`posttrain.scorers.as_scorer` takes)."""
    n = len(samples[0]) if samples else 0
    if any(len(s) != n for s in samples):
        raise ValueError("every prompt needs the same number of samples")
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s]
    flat_records = None if records is None else [r for r, s in zip(records, samples) for _ in s]
    flat = as_scorer(scorer)(flat_prompts, [r for s in samples for r in s], flat_records)
    return flat.reshape(len(samples), n)


def best_of_n(policy, tokenizer, prompts: Sequence[Sequence[Any]], scorer, n: int, max_new_tokens: int = 64,
              temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
              records: Sequence[Any] | None = None) -> list[BestOfN]:
    """Sample ``n`` replies per prompt from ``policy``, score them with ``scorer``, keep the best."""
    samples = sample_responses(policy, tokenizer, prompts, n, max_new_tokens, temperature, top_p, seed, batch_size)
    scores = score_samples(scorer, prompts, samples, records)
    best = select_best(scores, n)
    return [BestOfN(as_dicts(p), s, sc.tolist(), int(b)) for p, s, sc, b in zip(prompts, samples, scores, best)]


def rejection_sampling_data(results: Sequence[BestOfN], path: str | Path, min_score: float | None = None) -> dict[str, int]:
    """Write the kept responses as SFT conversations (JSONL, ``posttrain sft`` reads them).

    ``min_score`` drops prompts whose best response still scores below it (counted, not silent).
    Each record's meta holds the kept score, n and the sample's index. Returns {"written", "dropped"}.
    """
    kept = [r for r in results if min_score is None or r.score >= min_score]
    records = [Conversation([Message(m["role"], m["content"]) for m in r.prompt] + [Message("assistant", r.response)],
                            {"reward": r.score, "n": len(r.samples), "sample": r.best}) for r in kept]
    write_jsonl(records, path)
    return {"written": len(kept), "dropped": len(results) - len(kept)}
