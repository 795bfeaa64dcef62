"""Which examples each process trains on at each step: a deterministic function of seed, epoch and rank.

Every epoch is a fresh permutation of the example indices drawn from ``(seed, epoch)`` alone, so
a resumed run finds the exact batches it has not seen yet from ``(epoch, batch_in_epoch)``; no
iterator state needs saving. A *global batch* (one optimizer step) holds
``batch_size * grad_accum * world_size`` examples; process ``rank`` takes a disjoint slice of
it, so 2 processes x batch 4 train on exactly the examples of 1 process x batch 8.

**Group by length** (padded batching, not packing): :class:`LengthGroupedSampler` orders each epoch
so that a global batch holds examples of similar length, and sorts each global batch by length before
splitting it into micro-batches, as ``transformers``' ``group_by_length`` does, so padding is short.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

from posttrain.errors import UserError


@lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> tuple[int, ...]:
    """The order in which epoch ``epoch`` visits the examples."""
    if not shuffle:
        return tuple(range(num_examples))
    return tuple(np.random.default_rng([seed, epoch]).permutation(num_examples).tolist())


class NotEnoughDataError(UserError, ValueError):
    """Fewer usable examples than one optimizer step takes; the message says how many and what to change."""


def require_one_step(num_examples: int, batch_size: int, grad_accum: int = 1, world_size: int = 1,
                     what: str = "examples", batch_setting: str = "train.batch_size") -> None:
    """Raise :class:`NotEnoughDataError` unless ``num_examples`` fill at least one global batch."""
    needed = batch_size * grad_accum * world_size
    if num_examples >= needed:
        return
    why = ("no usable " + what + " are left: the data is empty, or every record was skipped (data.skip_invalid) "
           "or dropped (data.overflow=drop, data.max_length); the counts by reason are printed above"
           if num_examples == 0 else f"only {num_examples} usable {what}")
    raise NotEnoughDataError(
        f"{why}, but one optimizer step takes {needed} ({batch_setting} {batch_size} x train.grad_accum "
        f"{grad_accum} x {world_size} processes). Add data, or lower {batch_setting}"
        + (f" to {num_examples // (grad_accum * world_size)} or less" if num_examples >= grad_accum * world_size else
           "" if num_examples == 0 else " and train.grad_accum") + ".")


@dataclass(frozen=True)
class StepSampler:
    """Splits each epoch into global batches, each global batch into this process's micro-batches.

    The tail of an epoch that does not fill a global batch is left out of that epoch (a
    different tail every epoch, since the order changes); ``dropped_per_epoch`` says how many.
    """

    num_examples: int
    """Examples in the dataset."""
    batch_size: int
    """Examples per micro-batch on each process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    world_size: int = 1
    """Processes training together."""
    rank: int = 0
    """This process."""
    seed: int = 0
    """Seed of the data order."""
    shuffle: bool = True
    """Shuffle every epoch; False keeps the data order (for debugging)."""

    def __post_init__(self):
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size ({self.batch_size}) and grad_accum ({self.grad_accum}) must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        require_one_step(self.num_examples, self.batch_size, self.grad_accum, self.world_size)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_examples - self.steps_per_epoch * self.global_batch

    def micro_batches(self, epoch: int, index: int) -> list[list[int]]:
        """This process's ``grad_accum`` micro-batches (example indices) of global batch ``index``."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} outside epoch of {self.steps_per_epoch} batches")
        order = epoch_order(self.num_examples, self.seed, epoch, self.shuffle)
        start = index * self.global_batch
        step_ids = np.asarray(order[start:start + self.global_batch])
        # (grad_accum, world_size, batch_size): micro-batch k of rank r is step_ids[k, r].
        grid = step_ids.reshape(self.grad_accum, self.world_size, self.batch_size)
        return [grid[k, self.rank].tolist() for k in range(self.grad_accum)]

    def iterate(self, epoch: int = 0, index: int = 0) -> Iterator[tuple[int, int, list[list[int]]]]:
        """(epoch, batch index, micro-batches) from position (epoch, index) on, without end."""
        while True:
            if index >= self.steps_per_epoch:
                epoch, index = epoch + 1, 0
            yield epoch, index, self.micro_batches(epoch, index)
            index += 1


@lru_cache(maxsize=4)
def length_grouped_order(lengths: tuple[int, ...], seed: int, epoch: int, group_size: int,
                         mega_batches: int = 50) -> tuple[int, ...]:
    """An epoch order in which each run of ``group_size`` examples has similar lengths.

    The epoch's shuffled order (:func:`epoch_order`) is cut into mega-batches of
    ``mega_batches * group_size`` examples, each sorted by decreasing length, so a group (one
    global batch) is randomly drawn yet short on padding; the groups are then shuffled, so long
    and short steps alternate through the epoch.
    """
    order = np.asarray(epoch_order(len(lengths), seed, epoch, True))
    lens = np.asarray(lengths)
    mega = max(1, mega_batches) * group_size
    chunks = [order[i:i + mega] for i in range(0, len(order), mega)]
    # Stable sort (mergesort) keeps ties in the shuffled order, so the result is deterministic.
    grouped = np.concatenate([c[np.argsort(-lens[c], kind="mergesort")] for c in chunks])
    n_groups = len(grouped) // group_size
    groups = grouped[: n_groups * group_size].reshape(n_groups, group_size)
    perm = np.random.default_rng([seed, epoch, 1]).permutation(n_groups)
    return tuple(np.concatenate([groups[perm].reshape(-1), grouped[n_groups * group_size:]]).tolist())


@dataclass(frozen=True)
class LengthGroupedSampler(StepSampler):
    """A :class:`StepSampler` whose global batches hold examples of similar length (for padded batching).

    Each step's examples are also sorted by length before being dealt into micro-batches and
    processes, so every micro-batch is padded to a length close to its own examples'.
    """

    lengths: tuple[int, ...] = ()
    """Tokens of each example, in dataset order."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.lengths) != self.num_examples:
            raise ValueError(f"lengths has {len(self.lengths)} entries for {self.num_examples} examples")

    def micro_batches(self, epoch: int, index: int) -> list[list[int]]:
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} outside epoch of {self.steps_per_epoch} batches")
        order = length_grouped_order(self.lengths, self.seed, epoch, self.global_batch) if self.shuffle \
            else tuple(range(self.num_examples))
        step_ids = sorted(order[index * self.global_batch:(index + 1) * self.global_batch],
                          key=lambda i: -self.lengths[i])
        # Contiguous slices of the sorted step: micro-batch k of rank r holds neighbours in length.
        grid = np.asarray(step_ids).reshape(self.grad_accum, self.world_size, self.batch_size)
        return [grid[k, self.rank].tolist() for k in range(self.grad_accum)]
