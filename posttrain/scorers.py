"""One registry of scorers: what PPO maximizes, what labels DPO's sampled pairs, what best-of-n picks by.

A scorer is ``score(prompts, responses, records) -> (B,) float tensor`` on the CPU: ``prompts[i]``
is a list of {"role", "content"} messages, ``responses[i]`` the response text, and ``records[i]``
what the prompt came from (a world TaskExample, a data record), for scorers that need more than the
text (the world's gold reward needs the task). :func:`load_scorer` makes one from a config string:

- a registered name (:data:`SCORERS`): ``world_gold``, the embedded world's gold reward;
- a folder: a reward model (``posttrain reward``'s export), scored with its saved normalization;
- ``module:function``: a Python function ``fn(prompts, responses)`` (or ``fn(prompts, responses,
  records)``) returning numbers, imported from the working directory first, as ``python -m`` does.

:func:`as_scorer` adapts a Python object: such a function, or anything with a
``.score(prompts, responses)`` method (e.g. :class:`posttrain.models.reward.RewardScorer`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from posttrain.errors import TrainingError
from posttrain.world.gold import gold_rewards
from posttrain.world.tasks import TaskExample

Scorer = Callable[[Sequence, Sequence[str], Sequence], torch.Tensor]
"""(prompts, responses, records) -> (B,) rewards (float32; the gold reward float64, exact for ranking)."""


def world_gold(prompts: Sequence, responses: Sequence[str], records: Sequence) -> torch.Tensor:
    """The embedded world's gold reward (total, in [0, 1]) of each response to its TaskExample."""
    if not all(isinstance(r, TaskExample) for r in records):
        raise TrainingError("world_gold scores the embedded world's task prompts only; train on the world's prompts "
                            "(leave data.train empty), or use a reward model or a function of your own")
    return torch.tensor([s.total for s in gold_rewards(records, responses)], dtype=torch.float64)


SCORERS: dict[str, Scorer] = {"world_gold": world_gold}
"""Scorers known by name."""


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
    """A :data:`Scorer` from a Python function ``fn(prompts, responses[, records])`` or an object with a
    ``.score(prompts, responses)`` method."""
    method = getattr(obj, "score", None)
    if callable(method):
        return lambda prompts, responses, records=None: torch.as_tensor(method(prompts, responses)).float().cpu()
    if not callable(obj):
        raise TypeError(f"a scorer is a callable (prompts, responses) -> rewards or has a .score method; got {type(obj)}")
    takes_records = "records" in inspect.signature(obj).parameters

    def score(prompts, responses, records=None):
        values = obj(prompts, responses, records=records) if takes_records else obj(prompts, responses)
        return torch.as_tensor([float(v) for v in values], dtype=torch.float32)

    return score


def load_scorer(spec: str, device: str = "cpu") -> Scorer:
    """The scorer a config string names: a registered name, a reward-model folder or ``module:function``."""
    if spec in SCORERS:
        return SCORERS[spec]
    if ":" in spec and not Path(spec).exists():
        return as_scorer(python_function(spec))
    from posttrain.models.reward import RewardScorer  # deferred: transformers (~9 s), needed only for a reward model

    model = RewardScorer.from_pretrained(spec, device=device)
    return lambda prompts, responses, records=None: model.score(prompts, responses, batch_size=64).float().cpu()
