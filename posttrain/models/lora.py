"""LoRA adapters through ``peft``: add one, merge it, or run the model with it switched off.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) learns ``W + (alpha / r) * B @ A`` with
``W`` frozen. Because ``W`` is untouched, the same model with its adapter disabled *is* the
reference policy of PPO and DPO: no second copy of the weights is needed.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Iterator

from posttrain.models.wrappers import unwrap_model

if TYPE_CHECKING:
    from posttrain.models.config import LoraConfig

ALL_LINEAR = "all-linear"


def is_peft_model(model) -> bool:
    """True when ``model`` (or the model inside a DDP/compile wrapper) carries a peft adapter."""
    if "peft" not in sys.modules:  # no adapter was made or loaded (peft is imported where one is: ~3 s)
        return False
    from peft import PeftModel

    return isinstance(unwrap_model(model), PeftModel)


def apply_lora(model, lora_cfg: "LoraConfig", trainable_token_ids: list[int] | None = None):
    """Wrap ``model`` in a fresh peft LoRA adapter; only the adapter's parameters stay trainable.

    ``target_modules == ["all-linear"]`` adapts every linear layer except the LM head (peft's
    "all-linear"); otherwise the listed module names (e.g. q_proj, v_proj) are adapted.
    ``trainable_token_ids``: rows of the input embedding (tied LM head included) trained as well,
    for tokens just added to the vocabulary, and the same rows of an untied LM head (GPT-NeoX): the
    model must learn to read and to write them; they are merged on export like the adapter.
    """
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = list(lora_cfg.target_modules)
    if not targets:
        raise ValueError("model.lora.target_modules is empty; list module names or use [all-linear]")
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else targets,
        task_type="CAUSAL_LM",
        bias="none",
        trainable_token_indices=_token_rows(model, trainable_token_ids) if trainable_token_ids else None,
    )
    return get_peft_model(model, peft_cfg)


def _token_rows(model, token_ids: list[int]) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices``: the rows in the input embedding, and in the LM head too when
    it is a weight of its own (untied)."""
    names = {id(module): name for name, module in model.named_modules()}
    embeddings = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embeddings[0].weight:
        embeddings.append(head)
    return {names[id(module)]: list(token_ids) for module in embeddings}


def merge_lora(model):
    """The plain transformers model with the adapter folded into its weights (``model`` is consumed:
    peft merges in place). A model without adapter is returned as it is. To keep training the
    peft model, merge a copy — :func:`posttrain.models.export.export_model` does that."""
    model = unwrap_model(model)
    return model.merge_and_unload() if is_peft_model(model) else model


@contextlib.contextmanager
def disabled_adapter(model) -> Iterator[None]:
    """Run ``model`` with its LoRA adapter switched off: its outputs are the base model's.

    Used as the reference policy (KL penalty in PPO, reference log-probs in DPO). A model with no
    adapter has no reference inside it, so it raises ``TypeError`` instead of silently returning
    the policy's own outputs (which would make every KL term zero); load a separate reference
    model in that case.
    """
    inner = unwrap_model(model)
    if not is_peft_model(inner):
        raise TypeError(
            f"disabled_adapter needs a peft (LoRA) model, got {type(inner).__name__}: without an adapter "
            "there is no reference policy inside the model; load the reference model separately"
        )
    with inner.disable_adapter():
        yield
