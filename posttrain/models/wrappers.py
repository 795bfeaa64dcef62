"""The model inside the wrappers a training stack puts around it (DDP, torch.compile, peft)."""

from __future__ import annotations

from accelerate.utils import extract_model_from_parallel


def unwrap_model(model):
    """The model inside DDP / DataParallel / DeepSpeed / torch.compile wrappers (peft is kept)."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def transformers_model(model):
    """The transformers model itself: inside a peft wrapper (whose LoRA layers it holds) if there is one.

    DDP / compile wrappers are not looked through (this runs in every forward of the scorers, where
    the model is never wrapped); for a model that may be wrapped, use
    ``transformers_model(unwrap_model(model))``."""
    return model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
