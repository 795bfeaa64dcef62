"""The reference policy of preference training, and its log-probs computed once and cached.

DPO and its relatives compare the policy's log-probs with a frozen reference's (Rafailov et al.
2023). The reference here is, in order of preference (:class:`ReferencePolicy`):

- the policy itself with its LoRA adapter disabled (``posttrain.models.lora.disabled_adapter``):
  no second copy of the weights;
- a second model held in memory, scoring every micro-batch (``live``);
- nothing in memory at all: every training and held-out sequence is scored once before training
  (:func:`precompute_reference`), and the (N, 2) table is cached on disk as safetensors under a key of
  (reference weights, tokenized data, dtype, length limits), so a rerun or a resume finds it and
  skips the pass (:func:`cached_reference`). The starting policy is the reference, so that pass runs
  on the policy before its first update, and no second model is loaded.

Tables are indexed like the datasets and have two columns: chosen and rejected (pairs), or
completion and KL row (unpaired examples, KTO).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import load_file, save_file

from posttrain.data.chat import PromptResponse
from posttrain.data.preference import PreferenceBatch, PreferenceExample, UnpairedExample, collate_examples
from posttrain.models.logps import SequenceLogps, sequence_inputs
from posttrain.models.lora import disabled_adapter, is_peft_model
from posttrain.models.wrappers import transformers_model
from posttrain.training.loop import TrainingError

if TYPE_CHECKING:
    from posttrain.training.loop import RunContext


def weights_fingerprint(lm: torch.nn.Module) -> str:
    """A hash of the weights the reference computes with (a LoRA adapter's own weights left out, so
    the disabled-adapter policy and the plain base model agree): per tensor its name, shape, dtype,
    float64 sum and sum of squares, and a strided sample of its values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(transformers_model(lm).state_dict().items()):
        if "lora_" in name or "token_adapter" in name:
            continue
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 1024)][:1024].double().cpu()
        stats = torch.stack([flat.double().sum(), flat.double().square().sum()]).cpu()
        digest.update(f"{name.replace('.base_layer', '')}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes() + stats.numpy().tobytes())
    return digest.hexdigest()


def rows_of(example: PreferenceExample | UnpairedExample) -> list[PromptResponse]:
    """The sequences of an example, in table-column order: chosen and rejected, or completion and KL row."""
    if isinstance(example, PreferenceExample):
        return [example.chosen, example.rejected]
    return [example.example] + ([example.kl] if example.kl is not None else [])


def data_fingerprint(examples: list) -> str:
    """A hash of the tokenized sequences and response masks, in order (covers template, length limits, ...)."""
    digest = hashlib.sha256()
    for example in examples:
        for row in rows_of(example):
            digest.update(torch.tensor(row.input_ids, dtype=torch.int64).numpy().tobytes())
            digest.update(bytes(row.loss_mask) + b"|")
    return digest.hexdigest()


def column_logps(batch, scorer) -> torch.Tensor:
    """(B, 2) log-probs under ``scorer`` of a batch's two sequence groups: chosen and rejected, or
    completion and KL row (0 when there are no KL rows: then unused)."""
    if isinstance(batch, PreferenceBatch):
        return torch.stack(batch.split(scorer(**sequence_inputs(batch))), dim=1)
    first = scorer(**sequence_inputs(batch))
    kl = scorer(**sequence_inputs(batch.kl)) if batch.kl is not None else torch.zeros_like(first)
    return torch.stack([first, kl], 1)


@torch.no_grad()
def score_examples(ctx: "RunContext", scorer, examples: list, pad_id: int, batch_size: int,
                   packed: bool = False) -> torch.Tensor:
    """(N, 2) reference log-probs of every example; processes share the work and exchange results."""
    mine = list(range(len(examples)))[ctx.rank::ctx.world_size]
    out = torch.zeros(len(examples), 2)
    for start in range(0, len(mine), batch_size):
        ids = mine[start:start + batch_size]
        batch = collate_examples([examples[i] for i in ids], pad_id, packed=packed).to(ctx.device)
        out[ids] = column_logps(batch, scorer).float().cpu()
    if ctx.world_size > 1:
        parts: list = [None] * ctx.world_size
        torch.distributed.all_gather_object(parts, (mine, out[mine]))
        for ids, values in parts:
            out[ids] = values
    return out


def cached_reference(ctx: "RunContext", scorer, datasets: dict[str, list], pad_id: int, folder: Path,
                     key_parts: dict, batch_size: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """(N, 2) reference log-probs of each dataset, from the cache in ``folder``, or computed by
    ``scorer`` now (``batch_size`` examples at a time, ``packed`` or padded) and cached.

    ``key_parts``: what the log-probs depend on besides the data (the reference's weights, dtype,
    length limits...); the data's fingerprint and size are added to each dataset's key."""
    out = {}
    for name, examples in datasets.items():
        if not examples:
            out[name] = torch.zeros(0, 2)
            continue
        parts = {**key_parts, "data": data_fingerprint(examples), "rows": len(examples), "version": 1}
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
        path = folder / f"{key}.safetensors"
        if path.exists():
            out[name] = load_file(path)["logps"]
            ctx.print(f"reference log-probs of {len(examples)} {name} examples: reused {path}")
            continue
        out[name] = score_examples(ctx, scorer, examples, pad_id, batch_size, packed)
        if ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"logps": out[name].contiguous()}, tmp, metadata={k: str(v) for k, v in parts.items()})
            os.replace(tmp, path)  # atomic: a killed run never leaves half a cache file
            ctx.print(f"reference log-probs of {len(examples)} {name} examples: computed, cached in {path}")
        ctx.accelerator.wait_for_everyone()
    return out


class ReferencePolicy:
    """Where the reference log-probs come from: the LoRA-disabled policy, a second model in memory
    (live without LoRA), or a model loaded for the moment (precomputed runs, to measure KL).

    ``load_lm``: loads the reference model (plain, no adapter, ready for the batches' layout);
    ``reference_model``: the reference's name when it is not the starting policy ("" when it is);
    ``live``: hold a copy in memory that scores every micro-batch (a LoRA policy needs none)."""

    def __init__(self, policy: SequenceLogps, load_lm: Callable[[], torch.nn.Module], reference_model: str = "",
                 live: bool = False):
        self.policy, self.load_lm, self.reference_model = policy, load_lm, reference_model
        self.lora = is_peft_model(policy.lm)
        if self.lora and reference_model:
            raise TrainingError("reference_model is set but the policy has a LoRA adapter, whose disabled "
                                "adapter is the reference; leave reference_model empty or turn LoRA off")
        self.copy = SequenceLogps(load_lm()) if live and not self.lora else None

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.copy is not None:
            return self.copy(**kwargs)
        if not self.lora:
            raise RuntimeError("no reference in memory: use ReferencePolicy.loaded()")
        with disabled_adapter(self.policy.lm):
            return self.policy(**kwargs)

    def loaded(self) -> "ReferencePolicy | SequenceLogps":
        """Something that scores with the reference: self, or a freshly loaded copy (free it after use)."""
        if self.copy is not None or self.lora:
            return self
        device = next(self.policy.parameters()).device
        return SequenceLogps(self.load_lm()).to(device)


def precompute_reference(ctx: "RunContext", ref: ReferencePolicy, datasets: dict[str, list], pad_id: int, folder: Path,
                         key_parts: dict, batch_size: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """Precomputed (N, 2) reference log-probs per dataset (:func:`cached_reference`; ``key_parts``
    beside the reference's weights and dtype). The starting policy is the reference unless
    ``ref.reference_model`` names another: then it is loaded for the pass."""
    if ref.reference_model and not ref.lora:
        scorer = ref.loaded()
        key_model = scorer.lm
    else:  # the starting policy is the reference: score with it before its first update
        scorer = ref if ref.lora else ref.policy
        key_model = ref.policy.lm
    was_training = ref.policy.training
    ref.policy.eval()
    dtype = str(next(ref.policy.parameters()).dtype)
    key = {"model": weights_fingerprint(key_model), "dtype": dtype, **key_parts}
    tables = cached_reference(ctx, scorer, datasets, pad_id, folder, key, batch_size, packed)
    ref.policy.train(was_training)
    return tables
