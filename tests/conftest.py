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
