"""Config sections for loading models and adapters."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a LoRA adapter (peft) instead of all weights; merged into the base on export."""
    r: int = 16
    """Rank of the LoRA update matrices."""
    alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, e.g. [q_proj, v_proj]; 'all-linear' adapts every linear layer but the LM head."""


@dataclass
class ModelConfig:
    name_or_path: str = "world"
    """Local Hugging Face folder or hub name of the model; 'world' is the embedded world's base model."""
    tokenizer: str | None = None
    """Tokenizer folder or hub name if it differs from the model's."""
    dtype: str = "auto"
    """Weights dtype: auto (fp32 on CPU and MPS, bf16 on CUDA GPUs that support it, else fp16), float32, bfloat16 or float16."""
    device: str = "auto"
    """Device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust its authors."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers (eager, sdpa, flash_attention_2); None lets transformers choose."""
    chat_template: str | None = None
    """Chat template to use instead of the tokenizer's: a name (chatml, llama2, zephyr), a .jinja file or the template text; ChatML if the tokenizer has none."""
    dropout: float | None = None
    """Dropout probability of every dropout in the model while it trains (attention, residual, embedding); None keeps the checkpoint's own. The reward, DPO and PPO recipes default to 0: dropout makes the policy differ from its reference and from the policy that sampled, so the first DPO loss would not be ln 2 nor the first PPO ratio 1."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter settings."""
