"""One registry of scorers: what PPO maximizes, what labels DPO's sampled pairs, what best-of-n picks by,
what a win-rate judge compares with.

A scorer (:class:`Scorer`) is a callable ``scorer(prompts, responses, records=None) -> (B,) float
tensor`` on the CPU: ``prompts[i]`` is a list of {"role", "content"} messages, ``responses[i]`` the
response text, and ``records[i]`` what the prompt came from (a world TaskExample, a data record),
for scorers that need more than the text (the world's gold reward needs the task).
:class:`posttrain.models.reward.RewardScorer` (a trained reward model), ``FunctionScorer`` and
``CombinedScorer`` (Llama 2's helpfulness + safety) are scorers. :func:`load_scorer` makes one
from a config string:

- a registered name (:data:`SCORERS`): ``world_gold``, the embedded world's gold reward, and
  ``world_gold:<aspect>`` for one of its parts (helpfulness, correctness, rule, safety, brevity);
- a folder: a reward model (``posttrain reward``'s export), scored with its saved normalization;
- ``module:function``: a Python function ``fn(prompts, responses)`` (or ``fn(prompts, responses,
  records)``) returning numbers, imported from the working directory first, as ``python -m`` does.

:func:`as_scorer` adapts a Python object: such a function, or anything with a
``.score(prompts, responses)`` method. :func:`task_lookup` finds the world's task of a prompt, for
callers that hold prompts only (a win-rate judge).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from posttrain.errors import TrainingError
from posttrain.world.gold import GOLD_ASPECTS, gold_rewards
from posttrain.world.tasks import TaskExample


@runtime_checkable
class Scorer(Protocol):
    """``(prompts, responses, records=None) -> (B,)`` rewards (float32; the gold reward float64, exact for ranking)."""

    def __call__(self, prompts: Sequence, responses: Sequence[str], records: Sequence | None = None) -> torch.Tensor:
        ...


def world_gold_aspect(aspect: str = "total") -> Scorer:
    """The embedded world's gold reward (``aspect``: total, in [0, 1], or one of its parts) of each
    response to its TaskExample (``records``)."""
    if aspect not in GOLD_ASPECTS:
        raise ValueError(f"unknown gold aspect {aspect!r}; choose one of {', '.join(GOLD_ASPECTS)}")

    def score(prompts: Sequence, responses: Sequence[str], records: Sequence | None = None) -> torch.Tensor:
        if records is None or not all(isinstance(r, TaskExample) for r in records):
            raise TrainingError("world_gold scores the embedded world's task prompts only; train on the world's "
                                "prompts (leave data.train empty), or use a reward model or a function of your own")
        return torch.tensor([getattr(s, aspect) for s in gold_rewards(records, responses)], dtype=torch.float64)

    return score


world_gold = world_gold_aspect("total")
"""The embedded world's gold reward (total, in [0, 1])."""

SCORERS: dict[str, Scorer] = {"world_gold": world_gold,
                              **{f"world_gold:{a}": world_gold_aspect(a) for a in GOLD_ASPECTS if a != "total"}}
"""Scorers known by name."""


def task_lookup(examples: Sequence[TaskExample]) -> Callable[[Sequence], list[TaskExample]]:
    """prompts -> the TaskExample each prompt is (matched by its messages); a prompt that is none of
    ``examples`` is a KeyError."""
    by_prompt = {json.dumps(e.messages, sort_keys=True): e for e in examples}

    def lookup(prompts: Sequence) -> list[TaskExample]:
        found = []
        for prompt in prompts:
            messages = [m if isinstance(m, dict) else m.to_dict() for m in prompt]
            key = json.dumps(messages, sort_keys=True)
            if key not in by_prompt:
                raise KeyError(f"prompt {messages[-1]['content'][:60]!r} is not one of the {len(by_prompt)} task "
                               f"examples given")
            found.append(by_prompt[key])
        return found

    return lookup


def python_function(spec: str) -> Callable:
    """``module:function`` imported as ``python -m`` would: the working directory comes first on the path."""
    module, _, name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        raise TrainingError(f"rewards: cannot import module '{e.name}' of {spec!r}: looked for {module.replace('.', '/')}.py "
                            f"(or a package) in the working directory {os.getcwd()} and on sys.path; run from the "
                            f"folder that holds it, or add that folder to PYTHONPATH") from None
    except AttributeError:
        raise TrainingError(f"rewards: module '{module}' has no function '{name}' ({spec!r})") from None
    if not callable(fn):
        raise TrainingError(f"rewards: {spec!r} is not a function")
    return fn


def as_scorer(obj: Any) -> Scorer:
    """A :class:`Scorer` from a scorer object (RewardScorer, FunctionScorer, CombinedScorer: returned
    as it is), a Python function ``fn(prompts, responses[, records])`` returning a tensor (its dtype
    kept: the world's gold reward is float64) or numbers, or an object with a ``.score(prompts,
    responses)`` method."""
    method = getattr(obj, "score", None)
    if callable(obj) and callable(method):
        return obj
    if callable(method):
        return lambda prompts, responses, records=None: torch.as_tensor(method(prompts, responses)).float().cpu()
    if not callable(obj):
        raise TypeError(f"a scorer is a callable (prompts, responses) -> rewards or has a .score method; got {type(obj)}")
    takes_records = "records" in inspect.signature(obj).parameters

    def score(prompts, responses, records=None):
        values = obj(prompts, responses, records=records) if takes_records else obj(prompts, responses)
        if isinstance(values, torch.Tensor) and values.is_floating_point():
            return values.cpu()
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)

    return score


def load_scorer(spec: str, device: str = "cpu") -> Scorer:
    """The scorer a config string names: a registered name, a reward-model folder or ``module:function``."""
    if spec in SCORERS:
        return SCORERS[spec]
    if ":" in spec and not Path(spec).exists():
        return as_scorer(python_function(spec))
    from posttrain.models.reward import RewardScorer  # deferred: transformers (~9 s), needed only for a reward model

    return RewardScorer.from_pretrained(spec, device=device, batch_size=64)
