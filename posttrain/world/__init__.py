"""The embedded world: a small synthetic universe with a known ground truth.

- :func:`make_world`: invented people, cities, animals and products and their facts (``entities``);
- :func:`generate_corpus`: the pretraining text about them (``corpus``), formats in ``formats``;
- :func:`world_tokenizer` and :func:`base_model_path`: the shipped byte-level BPE and the tiny
  Llama-style base model pretrained on the corpus (``assets/base``, see ``assets/README.md``);
- tasks, gold reward and simulated annotators build on these (``tasks`` and its neighbours).

Importing this package is light: no torch or transformers until a model or tokenizer is loaded.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.world.corpus import generate_corpus
from posttrain.world.entities import World, make_world
from posttrain.world.tokenizer import world_tokenizer

ASSETS_DIR = Path(__file__).parent / "assets"
"""Files shipped with the package: the base model folder and how it was made."""

REMAKE_COMMAND = "posttrain pretrain --config configs/pretrain/world.yaml"
"""The command that trains the shipped base model (then copy run_dir/final to assets/base)."""


def base_model_path() -> Path:
    """Folder of the shipped base model (safetensors, config, tokenizer, chat template) for `from_pretrained`."""
    path = ASSETS_DIR / "base"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the embedded world's base model is missing from {path}; remake it with "
            f"`{REMAKE_COMMAND}` and copy runs/pretrain-world/final there (see {ASSETS_DIR / 'README.md'})")
    return path


__all__ = ["World", "make_world", "generate_corpus", "world_tokenizer", "base_model_path", "ASSETS_DIR"]
