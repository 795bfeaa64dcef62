"""Sampling backends. The default runs ``transformers``' ``generate`` batched with a KV cache."""

from posttrain.generation.hf import (
    GenerationOutput,
    eos_token_ids,
    generate,
    generate_chat,
    neutral_generation_config,
    stop_at_end_of_turn,
)

__all__ = ["GenerationOutput", "eos_token_ids", "generate", "generate_chat", "neutral_generation_config",
           "stop_at_end_of_turn"]
