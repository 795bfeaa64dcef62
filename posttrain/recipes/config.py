"""Config classes of every recipe, defined once: YAML files, CLI overrides and --help come from here.

Sections shared by recipes (model, data, train) live beside the code that reads them;
algorithm settings are kept apart from infrastructure settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.data.config import DataConfig
from posttrain.models.config import ModelConfig
from posttrain.training.config import TrainConfig


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"
    """Where every stage writes its run directory and the demo its report; finished stages are reused."""
    seed: int = 0
    """Seed of the world and of every stage."""
    quick: bool = False
    """Tiny sizes everywhere: a smoke test of the whole journey in a few minutes."""
    pretrain: bool = False
    """Pretrain the base model here (configs/pretrain/world.yaml) instead of using the shipped one."""
    eval_n: int = 100
    """Held-out examples per task family in each evaluation (200 resolves 5-point differences, 100 about 7)."""
    stages: list[str] = field(default_factory=list)
    """Run only these stages (world, base, prompting, sft); empty runs them all."""


@dataclass
class ArchConfig:
    hidden_size: int = 256
    """Width of the residual stream."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must be divisible by it)."""
    intermediate_size: int = 0
    """Width of the SwiGLU feed-forward layer; 0 means 4 * hidden_size."""
    max_positions: int = 2048
    """Context length written into the model config (RoPE learns no positions, so it may exceed seq_len)."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the output projection (saves vocab * hidden parameters)."""


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to continue pretraining (when from_scratch is false) and/or whose tokenizer to use (tokenizer: model)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Text documents: JSONL/Parquet with a "text" field or .txt files (blank-line separated); the embedded world's corpus when train is empty."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/pretrain"))
    """Optimization, schedule, checkpoints and logging."""
    from_scratch: bool = True
    """Initialise a new Llama-style model of size `arch` instead of loading model.name_or_path's weights."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Size of the new model when from_scratch is true (its vocabulary is the tokenizer's)."""
    seq_len: int = 256
    """Tokens per training sequence: documents are joined with eos and cut into chunks of this length."""
    tokenizer: Literal["train", "model"] = "train"
    """train: fit a byte-level BPE on the training documents; model: use the tokenizer of model.tokenizer / model.name_or_path."""
    vocab_size: int = 4096
    """Vocabulary size of the BPE trained when tokenizer is 'train' (special tokens included)."""
    split_digits: bool = True
    """With a trained BPE, put every digit in its own token, so numbers are learned digit by digit."""
    world_seed: int = 0
    """Seed of the embedded world whose corpus is used when data.train is empty."""
    world_size_mb: float = 4.0
    """Megabytes of the world's training corpus to generate when data.train is empty."""
    world_eval_mb: float = 0.2
    """Megabytes of held-out world text (a separate stream of documents) to evaluate on when data.train and data.eval are empty; 0: no evaluation."""


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to evaluate; 'world' is the embedded world's shipped base model."""
    run_dir: str = "runs/eval"
    """Where results.json, predictions.jsonl and config.yaml are written."""
    seed: int = 0
    """Seed of the world, its task suite and the few-shot draws."""
    families: list[str] = field(default_factory=list)
    """Task families to evaluate (rows of the table); empty means all of posttrain.world.tasks.FAMILIES."""
    strategies: list[str] = field(default_factory=lambda: ["zero_shot", "few_shot", "cot", "zero_shot_cot", "mc"])
    """Columns: zero_shot, few_shot, cot, zero_shot_cot, and mc (log-prob multiple choice, summed and length-normalized)."""
    n_per_family: int = 200
    """Examples per family; about 200 puts a 5-point difference outside noise (50 only resolves ~7+ points)."""
    shots: int = 3
    """Solved examples in few_shot and cot prompts, drawn per example from the family's train split."""
    mc_shots: int = 0
    """Solved examples before multiple-choice prompts (0: zero-shot)."""
    split: Literal["heldout", "train"] = "heldout"
    """Which split of each family to evaluate on."""
    prompt_format: Literal["plain", "chat"] = "plain"
    """plain: the corpus' "Q: ...\\nA:" text, for base models; chat: the same turns through the tokenizer's chat template."""
    max_prompt_tokens: int = 256
    """Longest prompt in tokens (the base model's training context); shots are dropped, farthest first, to fit."""
    batch_size: int = 32
    """Prompts per generation / scoring batch (results do not depend on it)."""
    max_new_tokens: int = 128
    """Cap on generated tokens; each cell generates its longest canonical solution plus a margin, up to this."""


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to fine-tune ('world': the embedded world's base model); model.lora.enabled trains a LoRA adapter instead of every weight."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=512))
    """Conversations (messages, Alpaca, ShareGPT or prompt/completion records); each data.train entry is one source of the mixture. Empty train: the embedded world's task data."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/sft", lr=1e-4))
    """Optimization, schedule, checkpoints and logging; a micro-batch is train.batch_size examples, packed or padded."""
    packing: bool = True
    """Padding-free packing: the micro-batch's examples side by side, positions restarting per example, no attention across them. False pads each micro-batch to its longest example."""
    pack_length: int = 0
    """0: each micro-batch is one row and attention runs per example (flash attention's varlen kernels, or posttrain's per-example sdpa). N > 0: rows of N tokens (at least the longest example) with transformers' block-diagonal mask."""
    group_by_length: bool = True
    """Without packing: batch examples of similar length together (less padding); each step still draws its examples at random."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Share of each weighted source in the mixture's examples, by source name (a data.train entry, or a world task family)."""
    source_epochs: dict[str, float] = field(default_factory=dict)
    """Passes over a source per epoch of the mixture (0.5: a seeded half, 2: twice), by source name; sources in neither map give one pass."""
    rehearsal: float = 0.0
    """Pretraining text mixed in, in loss tokens per instruction loss token (0.5: half as many), so SFT does not erase pretraining; 0 turns it off."""
    rehearsal_data: list[str] = field(default_factory=list)
    """Text files (JSONL/Parquet with a "text" field, or .txt) to rehearse; empty: the embedded world's pretraining corpus."""
    rehearsal_length: int = 128
    """Tokens per rehearsal chunk (documents are joined with eos and cut into chunks, every token a target)."""
    rehearsal_world_mb: float = 1.0
    """Megabytes of the world's corpus to draw rehearsal chunks from, when rehearsal_data is empty."""
    world_seed: int = 0
    """Seed of the embedded world whose task data is used when data.train is empty."""
    world_families: list[str] = field(default_factory=list)
    """World task families to train on; empty: every family except the held-out ones (posttrain.world.tasks.TRAIN_FAMILIES)."""
    world_examples: int = 1000
    """Training examples per world family (from its train split)."""
    renderings: dict[str, float] = field(default_factory=lambda: {"zero_shot": 1.0})
    """Shares of the forms each task example is taught in: zero_shot, few_shot (solved examples as earlier turns), cot (step-by-step reasoning when asked) and options (the choices offered in the question), as FLAN 2022 mixed them."""
    few_shot_k: int = 2
    """Solved examples before the question in few_shot renderings."""
    eval_examples: int = 16
    """World held-out examples per family for the eval loss (every family, held-out families included)."""
    samples: int = 4
    """Held-out prompts answered greedily at each evaluation and written to metrics.jsonl and the log."""
    sample_max_tokens: int = 48
    """Longest generated sample, in tokens."""
    eval_exact_match: int = 0
    """World only: held-out examples per family scored by exact match (chat, zero-shot) after training, into run_dir/eval; 0 skips it."""
    lm_head_chunk: int = 0
    """Score target tokens through the LM head this many at a time, recomputing each chunk in backward (saves memory with large vocabularies); 0: all at once."""
