"""What one micro-batch costs, for each recipe that trains with :func:`posttrain.training.loop.fit`: the
loss, summed over the batch's units (the loop divides by the global count), and the units themselves.

- pretraining: next-token cross-entropy of fixed-length chunks (:func:`lm_loss_sum`, :func:`count_chunk_targets`);
- SFT: target-token NLL of a padded or packed batch (:func:`nll_sum`, :func:`count_targets`);
- reward models: a pairwise or ranking loss on every response's reward, one forward per batch
  (:func:`comparison_loss_fn`, :func:`count_comparisons`);
- preference optimization: a registered preference loss on the policy's and the reference's
  sequence log-probs (:class:`Micro`, :func:`preference_loss_fn`, :func:`count_units`).

The recipes and the benchmarks in bench/ train through these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from posttrain.data.collate import Batch
from posttrain.data.comparisons import ComparisonBatch
from posttrain.data.packing import PackedBatch
from posttrain.data.preference import PreferenceBatch, UnpairedBatch
from posttrain.losses.dpo import PairLogps, PreferenceLoss, UnpairedLogps, chosen_nll, kto_reference_point
from posttrain.losses.reward import (LLAMA2_MARGIN_LARGE, LLAMA2_MARGIN_SMALL, RANKING_LOSSES, bradley_terry_loss,
                                     margin_loss, soft_bradley_terry_loss)
from posttrain.models.logps import sequence_inputs

# --- pretraining ---------------------------------------------------------------------------


def lm_loss_sum(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Next-token cross-entropy summed over every target token of ``input_ids`` (B, T)."""
    logits = model(input_ids=input_ids).logits  # (B, T, V)
    # Position t predicts token t+1: the last position has no target, the first token is no target.
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="sum")
    return loss, {}


def count_chunk_targets(input_ids: torch.Tensor) -> int:
    return input_ids.shape[0] * (input_ids.shape[1] - 1)


# --- SFT -----------------------------------------------------------------------------------


def nll_sum(model: torch.nn.Module, batch: Batch | PackedBatch) -> tuple[torch.Tensor, dict]:
    """Summed target-token NLL of a padded or packed micro-batch (model: a :class:`TargetNLL`)."""
    return model(labels=batch.labels, **batch.model_inputs()), {}


def count_targets(batch: Batch | PackedBatch) -> int:
    return batch.num_target_tokens


def real_tokens(batch: Batch | PackedBatch) -> int:
    """Non-padding tokens, the throughput unit."""
    return batch.num_tokens if isinstance(batch, PackedBatch) else int(batch.attention_mask.sum())


def packed_row_length(pack_length: int, examples: Sequence) -> int | None:
    """Packed row width: None (the whole micro-batch in one row, attention per example) unless
    ``pack_length`` asks for rows, which are then at least as wide as the longest example."""
    return max(pack_length, max(len(e) for e in examples)) if pack_length else None


# --- reward models -------------------------------------------------------------------------

MARGIN_TABLES = {"small": LLAMA2_MARGIN_SMALL, "large": LLAMA2_MARGIN_LARGE}
"""Llama 2's margins by preference strength, by config name."""


def reward_grid(model: torch.nn.Module, batch: ComparisonBatch) -> torch.Tensor:
    """(B, K) raw rewards of every response (0 at padded slots), from one forward."""
    rewards = model(batch.sequences)  # (N,)
    return torch.zeros(batch.mask.shape, dtype=rewards.dtype, device=rewards.device).masked_scatter(batch.mask, rewards)


def comparison_loss_fn(loss: str, margin_table: str = "small", center_coef: float = 0.0):
    """(model, batch) -> (loss summed over the batch's comparisons, metrics summed likewise): ``loss`` is
    bradley_terry, soft_bradley_terry (on each pair's soft label), margin (Llama 2's ``margin_table``) or a
    ranking loss of :data:`RANKING_LOSSES`."""

    def loss_fn(model, batch: ComparisonBatch):
        grid = reward_grid(model, batch)
        n = grid.shape[0]
        if loss == "margin":
            value, metrics = margin_loss(grid[:, 0], grid[:, 1], batch.strength, MARGIN_TABLES[margin_table],
                                         center_coef)
        elif loss == "bradley_terry":
            value, metrics = bradley_terry_loss(grid[:, 0], grid[:, 1], center_coef)
        elif loss == "soft_bradley_terry":
            p = batch.p_chosen if batch.p_chosen is not None else torch.ones(n, device=grid.device)
            value, metrics = soft_bradley_terry_loss(grid[:, 0], grid[:, 1], p, center_coef)
        else:
            value, metrics = RANKING_LOSSES[loss](grid, batch.mask)
        return value * n, {k: v * n for k, v in metrics.items()}

    return loss_fn


def count_comparisons(batch: ComparisonBatch) -> int:
    return batch.mask.shape[0]


# --- preference optimization ---------------------------------------------------------------

@dataclass
class Micro:
    """A micro-batch and the reference log-probs of its rows, when they were precomputed."""

    batch: PreferenceBatch | UnpairedBatch
    reference: torch.Tensor | None = None
    """(B, 2): chosen and rejected (pairs) or completion and KL row (unpaired) reference log-probs."""


Reference = Callable[[Micro], torch.Tensor]
"""micro-batch -> its (B, 2) reference log-probs (precomputed, or scored now)."""


def preference_loss_fn(loss: PreferenceLoss, hyper: dict[str, Any], reference: Reference | None,
                       nll_weight: float = 0.0):
    """``(model, micro) -> (loss summed over pairs or examples, metrics summed likewise)`` for train_step:
    ``loss`` with its hyperparameters on the policy's (a SequenceLogps) log-probs of the micro-batch and,
    when the loss needs them, the reference's; ``nll_weight`` adds the chosen responses' NLL (DPO+NLL)."""

    def pair_loss(model, micro: Micro):
        batch = micro.batch
        chosen, rejected = batch.split(model(**sequence_inputs(batch)))  # one forward for both halves
        lengths = batch.split(batch.response_lengths())
        ref = reference(micro).unbind(1) if loss.reference else (None, None)
        value, metrics = loss(PairLogps(chosen, rejected, *ref, *lengths), **hyper)
        if nll_weight:
            nll = chosen_nll(chosen, lengths[0])
            value = value + nll_weight * nll
            metrics["nll"] = nll.detach()
        n = batch.num_pairs
        return value * n, {k: v * n for k, v in metrics.items()}

    def unpaired_loss(model, micro: Micro):
        batch, n = micro.batch, micro.batch.num_examples
        policy = model(**sequence_inputs(batch))
        ref = reference(micro)
        z0 = 0.0
        if batch.kl is not None:
            with torch.no_grad():  # z0 carries no gradient (KTO §4.1), so its rows need no graph
                z0 = kto_reference_point(model(**sequence_inputs(batch.kl)), ref[:, 1])
        value, metrics = loss(UnpairedLogps(policy, ref[:, 0], batch.desirable, z0), **hyper)
        return value * n, {k: torch.as_tensor(v) * n for k, v in metrics.items()}

    return unpaired_loss if loss.unpaired else pair_loss


def count_units(micro: Micro) -> int:
    """Pairs, or unpaired examples: what a preference loss averages over."""
    batch = micro.batch
    return batch.num_pairs if isinstance(batch, PreferenceBatch) else batch.num_examples
