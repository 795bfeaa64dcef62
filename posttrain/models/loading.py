"""Load tokenizers and causal LMs from a local Hugging Face folder or a hub name.

One place decides how a model is loaded, so every recipe loads the same way:

- names go through :func:`resolve_model_path` ("world" is the embedded world's base model);
- weights come from safetensors only (``.bin`` files are pickles and can run code);
- ``trust_remote_code`` is off unless the config turns it on;
- device and dtype come from :func:`resolve_device` / :func:`resolve_dtype`;
- LoRA (peft) is applied when ``cfg.lora.enabled``; a folder holding a peft adapter is loaded
  on top of its base model.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import constants, try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.config import ConfigError
from posttrain.data.chat import ensure_chat_template
from posttrain.models.lora import apply_lora

if TYPE_CHECKING:
    import torch

    from posttrain.models.config import ModelConfig

logger = logging.getLogger("posttrain.models")

WORLD = "world"
"""``name_or_path`` that stands for the embedded world's shipped base model."""

ADDED_TOKENS = "_posttrain_added_tokens"
"""Attribute listing the ids of the tokens :func:`load_tokenizer` added (ChatML markers): untrained, even
where a model's embedding has rows for them already (vocabularies padded to a multiple, GPT-NeoX, Qwen2)."""
BORROWED_PAD = "_posttrain_borrowed_pad"
"""Attribute set on a tokenizer whose pad token is its eos, lent by :func:`load_tokenizer` because it had
none: exports (``posttrain.models.export``) save the tokenizer without it, as it came."""
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


class ModelLoadError(ConfigError):
    """A model or tokenizer that cannot be loaded; the message says which and what to do."""


# --------------------------------------------------------------------------- device and dtype


def resolve_device(name: str = "auto") -> "torch.device":
    """The torch device for ``name``: auto (the current CUDA device if there is one, else cpu),
    cpu, cuda, cuda:N or mps.

    "auto" never picks mps: several kernels are still missing or slow there, so ask for it by name.
    Under ``accelerate`` each process has already set its current CUDA device, so "auto" gives
    every process its own GPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"model.device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {name!r} asked for, but torch sees no CUDA GPU; use device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device: {name!r} asked for, but MPS is not available here; use device=cpu or auto")
    return device


def resolve_dtype(name: str, device: "torch.device | str") -> "torch.dtype":
    """The weights dtype for ``name`` on ``device``.

    auto: float32 on CPU and MPS (bf16 matmuls are many times slower on most CPUs); bfloat16 on
    CUDA GPUs that support it (Ampere and newer); float16 on older CUDA GPUs. Training all
    weights in float16 without loss scaling is unstable: prefer LoRA (adapters stay float32) or
    dtype=float32 with ``train.mixed_precision=fp16`` there.
    Explicit names: float32/fp32, bfloat16/bf16, float16/fp16.
    """
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"model.dtype: unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[name])


# --------------------------------------------------------------------------- names and folders


def resolve_model_path(name_or_path: str) -> str:
    """A local folder (absolute path) or a hub name for ``name_or_path``.

    "world" is the embedded world's base model. An existing folder wins over a hub name of the
    same spelling. Something that can only be a path (absolute, ``./``, ``~``, more than one
    ``/``) and does not exist is an error here; a possible hub name ("org/name") is returned
    as is and checked when it is loaded.
    """
    if name_or_path == WORLD:
        try:  # looked up at call time (tests point it at a tiny model)
            from posttrain.world import base_model_path
        except ImportError:
            raise ModelLoadError(
                "model.name_or_path: 'world' names the embedded world's base model, but this install "
                "has no posttrain.world.base_model_path; pass a local model folder or a hub name instead"
            ) from None
        return str(base_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ModelLoadError(f"model.name_or_path: {name_or_path} is a file; expected a Hugging Face model folder")
    if not _could_be_hub_name(name_or_path) or Path(name_or_path.split("/")[0]).expanduser().is_dir():
        # Path-like: absolute, ./, ~, deeper than org/name, or its first part is a local folder ("runs/sft").
        raise ModelLoadError(
            f"model.name_or_path: no folder at {path.resolve()}; check the path (a hub name has the form "
            f"'org/name' and no local folder of that name)"
        )
    if _hub_offline() and not _in_hub_cache(name_or_path):
        raise ModelLoadError(
            f"model.name_or_path: '{name_or_path}' is not a local folder, and HF_HUB_OFFLINE is set while it is "
            f"not in the local hub cache; pass the path of a downloaded model folder"
        )
    return name_or_path


def _in_hub_cache(repo_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or isinstance(
            try_to_load_from_cache(repo_id, "tokenizer_config.json"), str)
    except Exception:  # an invalid repo id
        return False


def _could_be_hub_name(name: str) -> bool:
    return (
        not name.startswith((".", "/", "~", "\\"))
        and name.count("/") <= 1
        and "\\" not in name
        and all(part for part in name.split("/"))
    )


def _hub_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _not_loadable(what: str, name: str, error: Exception) -> ModelLoadError:
    """Turn transformers' error for a hub name into one that says what to do."""
    if _hub_offline():
        reason = (
            f"'{name}' is neither a local folder nor reachable on the hub: HF_HUB_OFFLINE=1 and it is not "
            "in the local hub cache. Pass the path of a downloaded model folder"
        )
    else:
        reason = f"'{name}' is not a local folder and could not be loaded from the hub ({error})"
    return ModelLoadError(f"{what}: {reason}.")


def _is_adapter_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def check_safetensors_folder(path: str | Path) -> None:
    """Raise unless the local model folder ``path`` holds its weights as safetensors.

    ``.bin``/``.pt`` checkpoints are pickles, which can run code when loaded, so they are refused;
    the message shows the one-line conversion.
    """
    path = Path(path)
    names = [p.name for p in path.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise ModelLoadError(
            f"model.name_or_path: {path} holds its weights as pickle files ({', '.join(pickles[:3])}), which "
            "posttrain does not load because unpickling can run code. If you trust the file, convert it once:\n"
            "  python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}-safetensors')\"\n"
            f"and point model.name_or_path at {path}-safetensors"
        )
    raise ModelLoadError(f"model.name_or_path: {path} holds no model weights (expected model.safetensors)")


# --------------------------------------------------------------------------- tokenizer


def load_tokenizer(cfg: "ModelConfig", data_format: str = "auto"):
    """The tokenizer of ``cfg.tokenizer`` (or of the model), ready for batching and chat.

    - pad token: when the tokenizer has none, eos is used as pad. Padding is always located
      with the attention mask, so pad == eos is harmless inside posttrain; the borrowed pad is
      marked (:data:`BORROWED_PAD`) and left out of exported tokenizers.
    - chat template: ``posttrain.data.chat.ensure_chat_template`` applies ``cfg.chat_template``, or
      raw text (``data_format``, the recipe's ``data.format``: raw, or auto for a tokenizer that ships
      no template), or ChatML (chat for a tokenizer that ships none).
    """
    name = cfg.tokenizer or cfg.name_or_path
    where = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    path = resolve_model_path(name)
    if Path(path).is_dir() and _is_adapter_folder(Path(path)) and not (Path(path) / "tokenizer_config.json").exists():
        path = resolve_model_path(_adapter_base(Path(path)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        if Path(path).is_dir():
            raise ModelLoadError(f"{where}: cannot read a tokenizer from {path}: {e}") from None
        raise _not_loadable(where, name, e) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"{where}: the tokenizer of {path} has neither a pad nor an eos token; add a pad token to it "
                "(tokenizer.add_special_tokens({'pad_token': ...}) and resize the model's embeddings) first"
            )
        tokenizer.pad_token = tokenizer.eos_token
        setattr(tokenizer, BORROWED_PAD, True)
    _apply_chat_template(tokenizer, cfg.chat_template, data_format)
    return tokenizer


def _apply_chat_template(tokenizer, override: str | None, data_format: str = "auto") -> None:
    try:
        added = ensure_chat_template(tokenizer, override, data_format)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    setattr(tokenizer, ADDED_TOKENS, tokenizer.convert_tokens_to_ids(added))


# --------------------------------------------------------------------------- model


def load_causal_lm(cfg: "ModelConfig", for_training: bool = True, tokenizer=None):
    """An ``AutoModelForCausalLM`` for ``cfg``, on ``cfg.device`` in ``cfg.dtype``.

    for_training=True: train mode; a fresh LoRA adapter is added when ``cfg.lora.enabled`` (only
    the adapter is trainable then). for_training=False (reference, reward, generation-only
    models): eval mode, every parameter frozen, no adapter.

    Pass the ``tokenizer`` from :func:`load_tokenizer` when it may have gained tokens (ChatML
    markers added by ``ensure_chat_template``): the embeddings then grow to match, and with LoRA
    the new rows are trained too (peft ``trainable_token_indices``), so the markers are learnable.

    A folder holding a peft adapter (adapter_config.json, no config.json) is loaded on top of its
    base model; training continues that adapter when ``cfg.lora.enabled`` (its own r/alpha/targets
    are kept), otherwise it is merged into the base.
    """
    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if Path(path).is_dir() and _is_adapter_folder(Path(path)):
        model = _load_adapter_folder(cfg, Path(path), dtype, for_training)
    else:
        model = _load_base(cfg, path, dtype)
        new_token_ids = fit_embeddings(model, tokenizer) if tokenizer is not None else []
        if for_training and cfg.lora.enabled:
            model = apply_lora(model, cfg.lora, trainable_token_ids=new_token_ids)
    model.to(device)
    if for_training:
        set_dropout(model, cfg.dropout)
        model.train()
        if dtype == torch.float16 and not cfg.lora.enabled:
            warnings.warn(
                "training every weight in float16 is unstable without loss scaling; use dtype=float32 with "
                "train.mixed_precision=fp16, or LoRA", stacklevel=2,
            )
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def set_dropout(model, p: float | None) -> None:
    """Set every dropout probability of ``model`` to ``p`` (None: leave the checkpoint's).

    Covers ``nn.Dropout`` modules (GPT-2's residual, embedding and attention dropout) and the float
    ``*dropout*`` attributes that attention and decoder modules pass to their functional dropout (Llama's
    ``attention_dropout``, OPT's ``dropout``), and the config's matching fields, so a model saved from
    here records what it trained with. LoRA's own dropout (``model.lora.dropout``) is left alone.
    """
    if p is None:
        return
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.dropout: {p} is not a probability in [0, 1)")
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        for attr, value in vars(module).items():
            if "dropout" in attr and isinstance(value, float) and not isinstance(value, bool):
                setattr(module, attr, p)
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    for config in configs.values():
        for key, value in config.to_dict().items():
            if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
                setattr(config, key, p)


def fit_embeddings(model, tokenizer) -> list[int]:
    """Grow the model's embeddings (and tied LM head) to ``len(tokenizer)``; return the ids of the tokens
    the model has never been trained on: the new rows, and the tokens :func:`load_tokenizer` added that
    fell in rows the model already had (a vocabulary padded past its tokenizer).

    New rows are drawn around the mean of the old ones (transformers' mean resizing): untrained.
    A model with at least as many rows as the tokenizer has tokens is not resized.
    """
    rows = model.get_input_embeddings().num_embeddings
    spare = [i for i in getattr(tokenizer, ADDED_TOKENS, []) if i < rows]
    if len(tokenizer) <= rows:
        return spare
    new_ids = spare + list(range(rows, len(tokenizer)))
    model.resize_token_embeddings(len(tokenizer))
    logger.warning(
        "the tokenizer has %d tokens the model has no embedding for (%s); added them, untrained",
        len(new_ids), ", ".join(tokenizer.convert_ids_to_tokens(new_ids[:5])),
    )
    return new_ids


def _load_base(cfg: "ModelConfig", path: str, dtype: "torch.dtype"):
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True, trust_remote_code=cfg.trust_remote_code)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    local = Path(path).is_dir()
    if local:
        check_safetensors_folder(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        if local:
            raise ModelLoadError(f"model.name_or_path: cannot load a causal LM from {path}: {e}") from None
        if not _hub_offline() and "safetensors" in str(e):
            raise ModelLoadError(
                f"model.name_or_path: hub model '{path}' has no safetensors weights, and posttrain loads no "
                "pickle (.bin) checkpoints; download it, convert it with save_pretrained, and pass the folder"
            ) from None
        raise _not_loadable("model.name_or_path", path, e) from None


def _adapter_base(path: Path) -> str:
    base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"model.name_or_path: {path}/adapter_config.json names no base_model_name_or_path")
    return base


def _load_adapter_folder(cfg: "ModelConfig", path: Path, dtype: "torch.dtype", for_training: bool):
    check_safetensors_folder(path)
    base = _load_base(cfg, resolve_model_path(_adapter_base(path)), dtype)
    keep_adapter = for_training and cfg.lora.enabled
    from peft import PeftModel  # deferred: light imports for runs without LoRA

    model = PeftModel.from_pretrained(base, str(path), is_trainable=keep_adapter)
    return model if keep_adapter else model.merge_and_unload()
