"""Config section for reading training data and turning it into token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Training data: JSONL or Parquet files, a `datasets` folder saved with save_to_disk, or a hub dataset name."""
    eval: list[str] = field(default_factory=list)
    """Held-out data, in the same forms as `train`."""
    layout: Literal["auto", "messages", "alpaca", "sharegpt", "prompt_completion", "preference", "ranking", "unpaired", "text", "prompt"] = "auto"
    """Record layout; auto detects it from the fields of each record (see posttrain/data/formats.py)."""
    format: Literal["auto", "chat", "raw"] = "auto"
    """How records become text: chat renders their messages with the model's chat template; raw joins prompt and completion as written, with the tokenizer's bos (if it adds one) before and eos after the completion, the loss on the completion (for base models: TL;DR, HH text, bandits). auto: chat when the tokenizer has a template, raw when it has none (model.chat_template=chatml asks for ChatML instead)."""
    split: str = "train"
    """Split to read from a `datasets` folder or hub dataset."""
    skip_invalid: bool = False
    """Skip bad records (counted and reported) instead of stopping at the first one with an error."""
    max_length: int = 1024
    """Longest example in tokens; longer ones are truncated or dropped, see `overflow`."""
    overflow: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with an example longer than max_length: truncate it, drop it (counted), or stop with an error."""
    system: Literal["keep", "merge", "drop"] = "keep"
    """System turns: keep them, merge their text into the first user turn (for chat templates that refuse a system role, e.g. Gemma's and Mistral's), or drop them."""
    loss_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    """Tokens that carry the loss: every assistant turn, only the last assistant turn, or every token."""
