"""Prompts to roll out from, and the reward over them.

A :class:`PromptSet` holds chat-rendered prompt token ids with their messages and records; a
:data:`RewardFn` scores a rollout of some of its prompts: the weighted sum of the reward sources
(``posttrain.scorers``: reward models, Python functions, the world's gold reward), each logged on
its own, plus the world's gold reward where the prompts are the world's tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from posttrain.errors import TrainingError
from posttrain.rl.rollout import Rollout
from posttrain.scorers import load_scorer, world_gold

RewardFn = Callable[[Sequence[int], Rollout], dict[str, torch.Tensor]]
"""(prompt index of each row, rollout) -> {"score": (B,) proxy reward, optionally "gold": (B,), and
"reward/<source>": (B,) per source}."""


@dataclass
class PromptSet:
    """Prompts to roll out from: token ids (chat-rendered), their messages, and their records."""

    ids: list[list[int]]
    messages: list[list[dict]]
    records: list[Any]
    """What reward functions may need beyond the messages: world TaskExamples, or data records."""

    def __len__(self) -> int:
        return len(self.ids)


def encode_prompts(tokenizer, messages: list[list[dict]], records: list, max_tokens: int, say: Callable[[str], None],
                   what: str) -> PromptSet:
    """Render each prompt with the chat template (ready for the assistant's turn); prompts longer
    than ``max_tokens`` are dropped and counted."""
    keep = PromptSet([], [], [])
    for m, record in zip(messages, records):
        text = tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            keep.ids.append(ids), keep.messages.append(m), keep.records.append(record)
    if len(keep) < len(messages):
        say(f"{what}: dropped {len(messages) - len(keep)} of {len(messages)} prompts longer than "
            f"data.max_length={max_tokens} tokens")
    if not keep.ids:
        raise TrainingError(f"{what}: no prompt left (every one is longer than data.max_length={max_tokens})")
    return keep


def reward_sources(specs: Sequence[str], weights: Sequence[float], device: str) -> list[tuple[str, float, Callable]]:
    """(name, weight, scoring function) of every reward spec (``posttrain.scorers.load_scorer``: a
    reward-model folder, 'module:function' or world_gold), each loaded once; no weights: 1 each."""
    if not specs:
        raise TrainingError("rewards is empty: name reward-model folders, 'module:function' rewards, or world_gold")
    weights = list(weights) or [1.0] * len(specs)
    if len(weights) != len(specs):
        raise TrainingError(f"reward_weights has {len(weights)} entries for {len(specs)} rewards")
    names = [Path(spec.rstrip("/")).name if Path(spec).exists() else spec for spec in specs]
    return [(name, w, load_scorer(spec, device)) for name, spec, w in zip(names, specs, weights)]


def reward_function(sources: list[tuple[str, float, Callable]], prompts: PromptSet, ids_from=None) -> RewardFn:
    """The weighted sum of the sources on ``prompts``, plus the gold reward where they are the world's.

    ``ids_from`` (the policy's tokenizer): reward models score each rollout row's own tokens, the prompt
    and the response as sampled up to its stop token (TRL's PPO does so), not the response text re-rendered
    through their chat template; Python functions still get the text. The reward models must then share
    the policy's vocabulary (checked here)."""
    has_gold = bool(prompts.records) and all(getattr(r, "kind", None) == "task" for r in prompts.records)  # world tasks
    if ids_from is not None:
        for name, _, fn in sources:
            if hasattr(fn, "score_ids") and fn.tokenizer.get_vocab() != ids_from.get_vocab():
                raise TrainingError(f"reward_input=ids: the reward model {name} has another vocabulary than the policy, "
                                    f"so the policy's token ids mean other text to it; use reward_input=text")

    def reward(rows: Sequence[int], rollout: Rollout) -> dict[str, torch.Tensor]:
        p, rec = [prompts.messages[i] for i in rows], [prompts.records[i] for i in rows]
        if ids_from is not None:
            sequences, masks = rollout_sequences(rollout)
        out = {f"reward/{name}": (fn.score_ids(sequences, response_masks=masks) if ids_from is not None
                                  and hasattr(fn, "score_ids") else fn(p, rollout.texts, rec)).float()
               for name, _, fn in sources}
        out["score"] = sum(w * s for (_, w, _), s in zip(sources, out.values()))
        if has_gold:
            out["gold"] = world_gold(p, rollout.texts, rec).float()
        return out

    return reward


def rollout_sequences(rollout: Rollout) -> tuple[list[list[int]], list[list[bool]]]:
    """Each row's real tokens (prompt, then response up to its stop token; no padding) and its response mask."""
    ids, keep = rollout.input_ids.cpu(), rollout.attention_mask.cpu().bool()
    width = rollout.prompt_width
    return ([row[m].tolist() for row, m in zip(ids, keep)],
            [[False] * int(m[:width].sum()) + [True] * int(m[width:].sum()) for m in keep])
