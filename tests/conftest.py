"""Shared fixtures: a tiny tokenizer and Llama model built offline, once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of Zorbia? The capital of Zorbia is Quell.",
    "user assistant system Hello! How can I help you today?",
    "Add 12 and 7. The answer is 19.",
    "Answer in capitals. OK, I WILL ANSWER IN CAPITALS.",
    "Sort these words: pear, apple, fig. Sorted: apple, fig, pear.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from posttrain.models.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXT, vocab_size=400)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from posttrain.models.tiny import tiny_llama

    return tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A plain HF folder (safetensors + tokenizer + chat template) of a random tiny Llama."""
    from posttrain.models.tiny import tiny_llama

    path = tmp_path_factory.mktemp("tiny_model")
    model = tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.config.bos_token_id = tiny_tokenizer.bos_token_id
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(model.config, key))
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path


WORLD_SFT_EVAL_N = 100
"""Held-out examples per family scored at the end of the shared world SFT run (``world_sft``)."""


@pytest.fixture(scope="session")
def world_sft(tmp_path_factory):
    """configs/sft/world.yaml trained once per session on the shipped base model (a few minutes).

    Returns the run directory: ``final/`` is the exported chat model (the starting point of the
    reward-model, DPO and PPO world tests) and ``eval/results.json`` its held-out exact match per
    family. Skips when the world's base model is not shipped.
    """
    from pathlib import Path

    from posttrain.config import load_config
    from posttrain.recipes.config import SFTConfig

    try:
        from posttrain.world import base_model_path

        base_model_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"the world's base model is not shipped: {e}")
    from posttrain.recipes.sft import sft

    run_dir = tmp_path_factory.mktemp("world") / "sft"
    config = Path(__file__).resolve().parents[1] / "configs" / "sft" / "world.yaml"
    cfg = load_config(SFTConfig, config, [f"train.run_dir={run_dir}", "train.progress=false",
                                          "train.tensorboard=false", "samples=0", "train.eval_every=0",
                                          "train.save_every=0", f"eval_exact_match={WORLD_SFT_EVAL_N}"])
    sft(cfg)
    return run_dir
