"""Export a trained model as a plain Hugging Face folder that loads without posttrain.

The folder holds ``model.safetensors`` (LoRA merged in), ``config.json``,
``generation_config.json``, the tokenizer files and its chat template: plain
``AutoModelForCausalLM`` / ``AutoTokenizer`` / vLLM load it, and greedy ``model.generate``
stops at the same tokens as :func:`posttrain.generation.generate`.

The export is atomic: everything is written to a temporary folder beside ``out_dir`` and
renamed into place, so a crash leaves the old folder or the new one, never a half-written mix.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from posttrain.data.chat import is_raw
from posttrain.generation.hf import neutral_generation_config
from posttrain.models.loading import BORROWED_PAD
from posttrain.models.lora import is_peft_model
from posttrain.models.wrappers import unwrap_model

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"


def export_model(model, tokenizer, out_dir: str | os.PathLike, *, extra_files: dict[str, str] | None = None,
                 state_dict: dict | None = None) -> Path:
    """Write ``model`` + ``tokenizer`` to ``out_dir`` as a plain HF folder, atomically; returns its path.

    - DDP / DeepSpeed / torch.compile wrappers are removed first. Under FSDP or ZeRO-3 gather
      the full weights first and pass them as ``state_dict`` (keys as in ``model.state_dict()``;
      not for a peft model); call it on the main process only.
    - A peft model is merged on a deep copy (one extra copy of the weights, on the model's
      device), so the training model keeps its adapter and its weights bit for bit.
    - ``generation_config.json`` is :func:`posttrain.generation.neutral_generation_config`: the
      special token ids (every eos posttrain stops at) and nothing else, so plain greedy
      ``generate`` matches posttrain's; sampling defaults of the original model are not kept.
    - A pad token that posttrain lent a tokenizer that had none (its eos) is not saved, nor the raw-text
      template of ``data.format=raw`` (the folder is still a base model, read back as raw text).
    - ``extra_files`` maps relative file names to text (e.g. a README or the run's config.yaml).
    - An existing ``out_dir`` is replaced. Left-overs of a crashed export beside it
      (``.<name>.tmp-*`` folders) are removed, and a folder renamed aside but never replaced is
      put back first.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot export to {out}: it is a file, not a folder")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        _inside(out, name)  # refuse names that escape the folder before writing anything
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP_TAG}", dir=out.parent))
    try:
        _write_folder(model, tokenizer, tmp, extra_files, state_dict)
        _fsync_tree(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_folder(model, tokenizer, folder: Path, extra_files: dict[str, str], state_dict: dict | None = None) -> None:
    model = unwrap_model(model)
    # Merging a peft model in place would change the model still being trained; merge a copy.
    plain = copy.deepcopy(model).merge_and_unload() if is_peft_model(model) else model
    plain.save_pretrained(folder, state_dict=state_dict)
    # The config posttrain decodes with, so plain greedy `generate` gives posttrain's tokens.
    neutral_generation_config(model, tokenizer).save_pretrained(folder)
    if getattr(tokenizer, BORROWED_PAD, False) or is_raw(tokenizer):
        tokenizer = copy.deepcopy(tokenizer)
        if getattr(tokenizer, BORROWED_PAD, False):  # the pad posttrain lent it is not the user's
            tokenizer.pad_token = None
        if is_raw(tokenizer):  # raw text is no chat template: a base model stays one
            tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    for name, text in extra_files.items():
        target = _inside(folder, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    pickles = [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise RuntimeError(f"export wrote pickle files {pickles}; only safetensors are allowed")


def _inside(folder: Path, name: str) -> Path:
    target = (folder / name).resolve()
    if Path(name).is_absolute() or folder.resolve() not in target.parents:
        # e.g. "../x" or "/etc/x": the file would land outside the exported folder.
        raise ValueError(f"extra_files: {name!r} must be a relative path inside the export folder")
    return target


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk before the rename, so a power cut cannot publish empty files."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _swap_into_place(new: Path, out: Path) -> None:
    # POSIX cannot exchange two folders in one rename, so the old one is renamed aside first;
    # it is renamed back if the second rename fails, and found by _recover_interrupted after a crash.
    if not out.exists():
        os.replace(new, out)
        return
    aside = out.parent / f".{out.name}{_OLD_TAG}{uuid.uuid4().hex[:8]}"
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _recover_interrupted(out: Path) -> None:
    for path in out.parent.glob(f".{out.name}{_TMP_TAG}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in sorted(out.parent.glob(f".{out.name}{_OLD_TAG}*")):
        if out.exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.replace(path, out)
