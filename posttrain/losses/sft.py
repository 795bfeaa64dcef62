"""Token log-probabilities and cross-entropy for causal language models, memory-aware.

Every post-training loss starts from per-token log-probs of target tokens:

* :func:`token_logps` gathers ``log softmax(logits)[label]`` from logits (B, T, V);
* :func:`linear_token_logps` does the same from the final hidden states and the LM head weight,
  so the full (B, T, V) logits never exist at once: the chunked cross-entropy to use when the
  vocabulary is large (128k-256k entries make logits the biggest tensor of the step);
* :func:`sum_logps` / :func:`mean_logps` reduce them to one number per sequence (DPO-family
  losses use sums; SimPO, ORPO and IPO-as-in-TRL use length-normalized means);
* :func:`sft_loss` is the token-level mean negative log-likelihood.

Alignment: ``logits[:, t]`` (or ``hidden_states[:, t]``) scores ``labels[:, t]``. Collated batches
(``posttrain.data.collate``) keep labels *unshifted*, aligned with input ids; pass them through
:func:`shift_labels` first, which shifts the labels rather than slicing the logits, so no copy of
the logits is made. Positions whose label is ``ignore_index`` get log-prob 0.

Memory: log-softmax runs in float32 over row chunks of ``chunk_size`` rows; under autograd each
chunk is recomputed in backward (activation checkpointing), so at most one chunk's (chunk, V)
float32 temporaries are alive at a time.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.rl.math import masked_mean, masked_sum

IGNORE_INDEX = -100
"""Label of positions that carry no loss (the value used by ``posttrain.data.collate``)."""


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Unshifted labels (B, T) -> next-token labels (B, T): out[:, t] = labels[:, t + 1], and
    the last position, which has no next token, is ``ignore_index``."""
    shifted = torch.full_like(labels, ignore_index)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def map_row_chunks(fn: Callable[..., torch.Tensor], chunk_size: int | None, *rows: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to row chunks of (N, ...) tensors, results concatenated along dim 0.

    With gradients enabled each chunk is checkpointed: its temporaries (e.g. (chunk, V) logits)
    are freed after the forward and recomputed in backward.
    """
    n = rows[0].shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(*rows)
    outputs = []
    for start in range(0, n, chunk_size):
        part = [r[start:start + chunk_size] for r in rows]
        outputs.append(checkpoint(fn, *part, use_reentrant=False) if torch.is_grad_enabled() else fn(*part))
    return torch.cat(outputs)


def _gather_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, V) logits, (N,) labels (all valid ids) -> (N,) float32 log-probs of the labels."""
    logits = logits.float()
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                temperature: float = 1.0, chunk_size: int | None = 1024) -> torch.Tensor:
    """Per-token log-probs ``log softmax(logits[b, t] / temperature)[labels[b, t]]``.

    Shapes: logits (B, T, V) any float dtype, labels (B, T) long, aligned (see module doc) ->
    (B, T) float32, 0 where ``labels == ignore_index``. ``temperature`` must match the one used
    for sampling when these are a rollout's log-probs (PPO's ratio is otherwise off).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    ignored = flat_labels == ignore_index
    safe_labels = torch.where(ignored, torch.zeros_like(flat_labels), flat_labels)

    def rows(chunk_logits: torch.Tensor, chunk_labels: torch.Tensor) -> torch.Tensor:
        # Upcast before scaling: dividing bf16 logits would round them first.
        return _gather_logps(chunk_logits.float() / temperature, chunk_labels)

    logps = map_row_chunks(rows, chunk_size, flat_logits, safe_labels)
    return torch.where(ignored, torch.zeros_like(logps), logps).view(labels.shape)


def linear_token_logps(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                       ignore_index: int = IGNORE_INDEX, chunk_size: int = 1024) -> torch.Tensor:
    """Per-token log-probs of ``labels`` under ``softmax(hidden_states @ lm_head_weight.T)``,
    computed ``chunk_size`` rows at a time so only (chunk_size, V) logits exist at once, in the
    forward and in the backward (a chunked, fused linear + cross-entropy).

    Shapes: hidden_states (B, T, H) (the model's final normed hidden states), lm_head_weight
    (V, H), labels (B, T) aligned -> (B, T) float32, 0 where ``labels == ignore_index``.
    For heads without bias, scaling or soft-capping (Llama, Qwen, Mistral); otherwise use logits.
    """
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat_labels = labels.reshape(-1)
    ignored = flat_labels == ignore_index
    safe_labels = torch.where(ignored, torch.zeros_like(flat_labels), flat_labels)

    def rows(chunk_hidden: torch.Tensor, chunk_labels: torch.Tensor) -> torch.Tensor:
        return _gather_logps(chunk_hidden @ lm_head_weight.T, chunk_labels)

    logps = map_row_chunks(rows, chunk_size, flat_hidden, safe_labels)
    return torch.where(ignored, torch.zeros_like(logps), logps).view(labels.shape)


def sum_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) token log-probs, (B, T) bool mask -> (B,) log-prob of each masked sequence."""
    return masked_sum(token_logps, mask, dim=-1)


def mean_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) token log-probs, (B, T) bool mask -> (B,) length-normalized (per-token mean) log-prob."""
    return masked_mean(token_logps, mask, dim=-1)


def sft_loss(policy_token_logps: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood averaged over every target token of the batch (the usual causal-LM
    cross-entropy; Ouyang et al. 2022 §3.5 SFT). Shapes: (B, T), (B, T) bool -> scalar.

    Token-level mean: long responses weigh more than short ones, as in ``F.cross_entropy``. To sum
    over tokens instead (``posttrain.training.loop`` wants sums), multiply by ``response_mask.sum()``.
    Metrics: ``nll`` (the loss, detached).
    """
    loss = -masked_mean(policy_token_logps, response_mask)
    return loss, {"nll": loss.detach()}
