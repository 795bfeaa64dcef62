"""Rollouts for RL on language models: sample responses to prompts, keep them as padded tensors.

Sampling is :func:`posttrain.generation.hf.generate_padded` (batched, KV cache, temperature /
top-p, stop at eos, max new tokens), asked for the log-prob of every sampled token at the sampling
temperature; its padded tensors, on the model's device, become one :class:`Rollout`: each row is

    [left padding | prompt | response | right padding]      (B, P + R)

so the prompts end, and the responses start, at the same column ``P`` (as in generation, where
every row continues from the last column), and every response-level tensor of
``posttrain.rl.math`` is the (B, R) slice from column P on. Position ids count real tokens from
each row's first one (:attr:`Rollout.position_ids`), as ``generate`` numbers them; the trainer's
forward (``posttrain.models.value``) runs each row from column 0 without its left padding, which
numbers the tokens the same way, so it sees what the sampler saw; their log-probs differ only by
float rounding (KV-cached incremental decoding vs one full pass), and that difference is what
RL recipes log as ``rollout/logp_diff``.

With ``samples_per_prompt = k`` each prompt is sampled k times and its rows are contiguous
(``[p0 s0, p0 s1, ..., p1 s0, ...]``), the grouping that RLOO / GRPO advantages expect.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from posttrain.generation.hf import generate_padded


@dataclass
class Rollout:
    """Sampled responses to prompts, padded into tensors (shapes: B rows, P prompt columns, R response columns)."""

    input_ids: torch.Tensor
    """(B, P + R) long: left-padded prompt, then right-padded response; padding holds the pad id
    (never searched for)."""
    attention_mask: torch.Tensor
    """(B, P + R) bool, True on real prompt and response tokens."""
    response_mask: torch.Tensor
    """(B, R) bool, True on real response tokens (the stop token included when the policy chose it)."""
    rollout_token_logps: torch.Tensor
    """(B, R) float32 log-prob of each response token under the sampling policy, as the sampler
    computed it; 0 on padding."""
    prompt_index: torch.Tensor
    """(B,) long: which prompt (index into the prompts given to :func:`sample_rollouts`) each row answers."""
    finished: torch.Tensor
    """(B,) bool: the response ended with a stop token (False: it ran into max_new_tokens)."""
    prompt_width: int
    """P, the column where every response starts."""
    texts: list[str]
    """Each response decoded without special tokens."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> torch.Tensor:
        """(B, R) long response token ids (padding holds the pad id)."""
        return self.input_ids[:, self.prompt_width:]

    @property
    def response_length(self) -> int:
        """R, the number of response columns."""
        return self.input_ids.shape[1] - self.prompt_width

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long, real response tokens per row."""
        return self.response_mask.sum(dim=1)

    @property
    def position_ids(self) -> torch.Tensor:
        """(B, P + R) long, real tokens numbered from 0 in each row, as ``generate`` numbers them."""
        return (self.attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def model_inputs(self) -> dict:
        """Keyword arguments for ``ActorCritic.forward`` (and any model that takes the same)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "response_start": self.prompt_width, "response_length": self.response_length}

    def select(self, rows: Sequence[int] | torch.Tensor) -> "Rollout":
        """The rollout of ``rows`` only, with columns that are padding in every kept row removed."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        picked = replace(
            self,
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index], rollout_token_logps=self.rollout_token_logps[index],
            prompt_index=self.prompt_index[index.to(self.prompt_index.device)],
            finished=self.finished[index.to(self.finished.device)],
            texts=[self.texts[i] for i in index.tolist()],
        )
        return picked.compact()

    def compact(self) -> "Rollout":
        """The same rollout without all-padding columns on the left of the prompts or the right of the responses."""
        real_prompt = self.attention_mask[:, :self.prompt_width].any(dim=0)
        first = int(real_prompt.float().argmax()) if bool(real_prompt.any()) else self.prompt_width - 1
        last = int(self.response_mask.any(dim=0).nonzero().max()) + 1 if bool(self.response_mask.any()) else 1
        columns = slice(first, self.prompt_width + last)
        return replace(self, input_ids=self.input_ids[:, columns], attention_mask=self.attention_mask[:, columns],
                       response_mask=self.response_mask[:, :last],
                       rollout_token_logps=self.rollout_token_logps[:, :last], prompt_width=self.prompt_width - first)

    def to(self, device: torch.device | str) -> "Rollout":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


def collate_rollout(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    token_logps: Sequence[Sequence[float]], finished: Sequence[bool], texts: Sequence[str],
                    prompt_index: Sequence[int], pad_id: int) -> Rollout:
    """Pad prompts (left) and completions (right) of each row into a :class:`Rollout` (on the CPU):
    for completions sampled elsewhere (another engine, a saved batch).

    Row i is ``prompt_ids[i]`` followed by ``completions[i]`` (at least one token each) with
    ``token_logps[i]`` (one per completion token).
    """
    if not len(prompt_ids) == len(completions) == len(token_logps) == len(finished) == len(texts) == len(prompt_index):
        raise ValueError("collate_rollout: prompt_ids, completions, token_logps, finished, texts and prompt_index "
                         "must have one entry per row")
    for row, (p, c, lp) in enumerate(zip(prompt_ids, completions, token_logps)):
        if not p or not c or len(lp) != len(c):
            raise ValueError(f"collate_rollout: row {row} has {len(p)} prompt tokens, {len(c)} completion tokens "
                             f"and {len(lp)} log-probs; each row needs a prompt, a completion, and one log-prob per "
                             f"completion token")
    B, P, R = len(prompt_ids), max(len(p) for p in prompt_ids), max(len(c) for c in completions)
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.bool)
    logps = torch.zeros((B, R), dtype=torch.float32)
    for row, (p, c, lp) in enumerate(zip(prompt_ids, completions, token_logps)):
        input_ids[row, P - len(p):P] = torch.as_tensor(list(p), dtype=torch.long)
        input_ids[row, P:P + len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        attention_mask[row, P - len(p):P + len(c)] = True
        logps[row, :len(c)] = torch.as_tensor(list(lp), dtype=torch.float32)
    return Rollout(input_ids=input_ids, attention_mask=attention_mask, response_mask=attention_mask[:, P:].clone(),
                   rollout_token_logps=logps, prompt_index=torch.as_tensor(list(prompt_index), dtype=torch.long),
                   finished=torch.as_tensor(list(finished), dtype=torch.bool), prompt_width=P, texts=list(texts))


def sample_rollouts(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, samples_per_prompt: int = 1,
                    max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
                    stop_at_eos: bool = True, seed: int | None = None,
                    prompt_keys: Sequence[int] | None = None) -> Rollout:
    """Sample ``samples_per_prompt`` responses to each prompt (token ids, e.g. chat-rendered) with
    :func:`posttrain.generation.generate`; the rollout's rows are grouped by prompt.

    The policy whose log-probs are kept is ``softmax(logits / temperature)``, the distribution the
    tokens are drawn from when ``top_p`` is 1 (nucleus sampling draws from a truncation of it, so
    with top_p < 1 PPO's ratios are slightly off-policy; keep 1 for training). Reproducible for
    the same prompts, ``batch_size`` and ``seed``. With ``prompt_keys`` (one int per prompt, e.g. its
    index in the dataset) each response is drawn from its own generator, seeded by (seed, key,
    sample number): it does not depend on ``batch_size`` or on the other prompts, so processes
    that split a step's prompts sample what one process would. ``temperature=0`` decodes greedily
    (for evaluation; the log-probs are then at temperature 1). The rollout stays on the model's
    device, padded as generation left it (:func:`posttrain.generation.hf.generate_padded`): no
    per-row lists between sampling and the loss.
    """
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be at least 1, got {samples_per_prompt}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy, for evaluation), got {temperature}")
    rows = [i for i in range(len(prompt_ids)) for _ in range(samples_per_prompt)]
    row_seeds = None
    if prompt_keys is not None:
        if len(prompt_keys) != len(prompt_ids):
            raise ValueError(f"prompt_keys has {len(prompt_keys)} entries for {len(prompt_ids)} prompts")
        row_seeds = [zlib.crc32(f"{seed}-{prompt_keys[i]}-{j}".encode())
                     for i in range(len(prompt_ids)) for j in range(samples_per_prompt)]
    out = generate_padded(model, tokenizer, [prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, batch_size=batch_size, stop_at_eos=stop_at_eos,
                          seed=seed, return_logps=True, logps_temperature=temperature or 1.0, row_seeds=row_seeds,
                          pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return Rollout(input_ids=torch.cat([out.prompt_ids, out.completion_ids], dim=1),
                   attention_mask=torch.cat([out.prompt_mask, out.completion_mask], dim=1),
                   response_mask=out.completion_mask, rollout_token_logps=out.token_logps,
                   prompt_index=torch.tensor(rows, dtype=torch.long, device=out.prompt_ids.device),
                   finished=out.finished, prompt_width=out.prompt_ids.shape[1], texts=out.texts)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout of the rows of ``parts``, in order (e.g. every process's share of a step), re-padded
    to the widest prompt and response; ``prompt_index`` keeps each part's own numbering."""
    width_p = max(p.prompt_width for p in parts)
    width_r = max(p.response_length for p in parts)

    def widen(t: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (left, right), value=value)

    return Rollout(
        input_ids=torch.cat([widen(p.input_ids, width_p - p.prompt_width, width_r - p.response_length, pad_id)
                             for p in parts]),
        attention_mask=torch.cat([widen(p.attention_mask, width_p - p.prompt_width, width_r - p.response_length,
                                        False) for p in parts]),
        response_mask=torch.cat([widen(p.response_mask, 0, width_r - p.response_length, False) for p in parts]),
        rollout_token_logps=torch.cat([widen(p.rollout_token_logps, 0, width_r - p.response_length, 0.0)
                                       for p in parts]),
        prompt_index=torch.cat([p.prompt_index for p in parts]), finished=torch.cat([p.finished for p in parts]),
        prompt_width=width_p, texts=[t for p in parts for t in p.texts])


def by_length(rollout: Rollout, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ordered by prompt + response length: cut into micro-batches, similar lengths share
    one and there is little padding. The gradient of a minibatch is the sum over its micro-batches,
    so how its rows are grouped changes nothing else."""
    lengths = rollout.attention_mask[rows.to(rollout.attention_mask.device)].sum(dim=1).cpu()
    return rows[torch.argsort(lengths, descending=True, stable=True)]


def token_logps(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at ``token_ids``: (B, R, V), (B, R) -> (B, R) float32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
