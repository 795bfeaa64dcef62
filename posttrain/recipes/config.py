"""Config classes of every recipe, defined once: YAML files, CLI overrides and --help come from here.

Sections shared by recipes (model, data, train) live beside the code that reads them;
algorithm settings are kept apart from infrastructure settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from posttrain.data.config import DataConfig
from posttrain.models.config import ModelConfig
from posttrain.synth.config import SynthConfig, TeacherConfig  # noqa: F401  (SynthConfig: the synth command's)
from posttrain.training.config import TrainConfig


def _judge_defaults() -> TeacherConfig:
    """A judge's sampling: greedy, and a short reply (one letter, or a rating)."""
    return TeacherConfig(temperature=0.0, max_tokens=16)


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
    eval_n: int = 40
    """Held-out examples per task family in the prompting and SFT evaluations (the demo's budget; 200 resolves 5-point differences, 40 about 20: `posttrain eval` measures with more)."""
    dpo_prompts: int = 100
    """Training prompts per task family for the DPO stage (as configs/dpo/world.yaml; with 30, DPO lost gold on classification and reverse)."""
    dpo_families: list[str] = field(default_factory=lambda: ["fact_lookup", "reverse", "uppercase", "sorting", "classification", "summarization", "chat_rule", "harmful"])
    """Task families of the DPO stage's prompts. The sums are left out: the world's best candidate for them is the bare answer, which the gold reward ranks above the worked solution SFT taught (brevity), so DPO unlearns the working and arithmetic falls from 100% to 25%."""
    ppo_steps: int = 15
    """Rollout batches of the PPO stage (configs/ppo/world.yaml runs 30)."""
    overoptimization_steps: int = 40
    """Rollout batches of the over-optimization stage (PPO with configs/ppo/world-small-beta.yaml's small KL coefficient); 0 skips it."""
    stages: list[str] = field(default_factory=list)
    """Run only these stages (world, base, prompting, sft, reward, dpo, ppo, overoptimization, final); empty runs them all."""
    reward_models: list[str] = field(default_factory=lambda: ["overall"])
    """Reward models to train: overall (the one PPO optimizes; always needed), helpfulness and safety (Llama 2's pair, configs/reward/world-<name>.yaml)."""
    final_n: int = 20
    """Held-out prompts per task family in the final comparison of every model."""
    final_max_tokens: int = 256
    """Longest answer in tokens in the final comparison and its KL samples (worked sums need about 200)."""
    best_of_n: int = 16
    """The final stage also answers with the best of this many SFT samples (temperature 1) by the reward model (inference-time RLHF); 0 leaves it out."""
    kl_every: int = 2
    """The KL to the SFT model is measured on every kl_every-th final prompt."""


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
class WorldConfig:
    """The embedded world (posttrain.world) where a recipe reads it: task examples, prompts, corpus."""

    seed: int = 0
    """Seed of the world: its entities, corpus and task examples."""
    families: list[str] = field(default_factory=list)
    """Task families to take examples from; empty: every trained family (posttrain.world.tasks.TRAIN_FAMILIES)."""
    examples: int = 1000
    """Training examples (prompts, for ppo and dpo) per family, from its train split."""
    eval_examples: int = 250
    """Held-out examples per family, from its held-out split (sft: its eval loss; reward, dpo: held-out pairs; contamination: world:heldout; ppo counts its evaluation prompts with eval_examples)."""


@dataclass
class WorldCorpusConfig(WorldConfig):
    """The world with its pretraining corpus."""

    corpus_mb: float = 4.0
    """Megabytes of the world's pretraining corpus (pretrain: its training text; sft: rehearsal text; contamination: world:corpus, 0 meaning the shipped base model's corpus)."""
    eval_corpus_mb: float = 0.2
    """pretrain: megabytes of held-out world text (a separate stream of documents) to evaluate on when data.train and data.eval are empty; 0: no evaluation."""
    corpus_weights: dict[str, float] = field(default_factory=dict)
    """Relative weights of some of the corpus' document kinds, e.g. {copying: 20, recall: 20} (the others keep theirs; see posttrain.world.corpus.DOCUMENTS); empty: the defaults."""

    def problems(self) -> list[tuple[str, str]]:
        from posttrain.world.corpus import DOCUMENTS  # the world package: when a config is built, not for --help

        unknown = sorted(set(self.corpus_weights) - set(DOCUMENTS))
        if unknown:
            return [("corpus_weights", f"unknown document kind(s) {', '.join(unknown)}; the kinds are "
                                       f"{', '.join(DOCUMENTS)}")]
        negative = sorted(k for k, w in self.corpus_weights.items() if w < 0)
        return [("corpus_weights", f"{', '.join(negative)}: weights must be >= 0")] if negative else []


@dataclass
class WorldSFTConfig(WorldCorpusConfig):
    """The world with its corpus and the demonstrators who write its SFT answers."""

    flawed: float = 0.0
    """Share of demonstrations written by careless demonstrators, each with one flaw (posttrain.world.demonstrators): padded, breaking the system rule, complying with a harmful request, or wrong. 0: every answer canonical (clean demonstrations, the upper reference)."""
    flaws: dict[str, float] = field(default_factory=dict)
    """Relative weights of the flaws (verbose, rule_breaking, unsafe, wrong) among those an example allows; empty: equal."""

    def problems(self) -> list[tuple[str, str]]:
        from posttrain.world.demonstrators import FLAWS  # the world package: when a config is built, not for --help

        problems = super().problems()
        if not 0.0 <= self.flawed <= 1.0:
            problems.append(("flawed", f"{self.flawed}: a share in [0, 1]"))
        unknown = sorted(set(self.flaws) - set(FLAWS))
        if unknown or any(w < 0 for w in self.flaws.values()):
            problems.append(("flaws", f"{self.flaws}: give non-negative weights of {', '.join(FLAWS)}"))
        return problems


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to continue pretraining (when from_scratch is false) and/or whose tokenizer to use (tokenizer: model)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Text documents: JSONL/Parquet with a "text" field or .txt files (blank-line separated), or world:corpus (the embedded world's corpus, world.corpus_mb of it; the default when train is empty, held out against its separate held-out stream)."""
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
    world: WorldCorpusConfig = field(default_factory=WorldCorpusConfig)
    """The embedded world whose corpus is the training text when data.train is empty (world.seed, world.corpus_mb, world.eval_corpus_mb, world.corpus_weights)."""
    copying_probe: bool = True
    """At each evaluation also log eval_copying_gain: nats per token a random letter span gains on its second appearance (posttrain.evaluation.copying), the sign of induction heads that few-shot prompting needs; about 0 without them."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "world_seed": "world.seed", "world_size_mb": "world.corpus_mb", "world_eval_mb": "world.eval_corpus_mb"}


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
    max_prompt_tokens: int = 512
    """Longest prompt in tokens (the world base model's training context); shots are dropped, farthest first, to fit."""
    batch_size: int = 32
    """Prompts per generation / scoring batch (results do not depend on it)."""
    max_new_tokens: int = 128
    """Cap on generated tokens; each cell generates its longest canonical solution plus a margin, up to this."""
    system: Literal["keep", "merge", "drop"] = "keep"
    """System turns of preference_data records: keep them, merge their text into the first user turn (for chat templates that refuse a system role, e.g. Gemma's), or drop them (as the reward model's data.system)."""
    preference_data: list[str] = field(default_factory=list)
    """Comparisons to score the model on as a reward model (a `posttrain reward` folder; set strategies: [] for it): preference/ranking files (any posttrain record format; a ranking counts as every pair it implies) and/or world (the world's held-out annotated pairs). Reports accuracy, by strength, calibration, and agreement with gold for world; empty: skipped."""
    preference_examples: int = 50
    """preference_data=world: held-out prompts per family of `families` (empty: the trained families), 2 annotated pairs each, annotator noise 0.1 and seed seed + 1 (posttrain reward's held-out pairs with its defaults)."""
    prompts: str = "world"
    """Prompts of the KL and win-rate evaluations: world (held-out prompts of `families`, spread evenly) or a JSONL file of {"prompt": ...} or {"messages": [...]} records (a conversation's last assistant turns are dropped)."""
    reference: str = ""
    """Model folder to measure KL(model || reference) against, on the model's samples at temperature 1 (k1 and k3 estimates); it must share the model's tokenizer. Empty: skipped."""
    kl_prompts: int = 64
    """Prompts (of `prompts`) whose sampled responses measure the KL."""
    kl_max_tokens: int = 64
    """Longest sampled response for the KL, in tokens (the KL is that of the first kl_max_tokens tokens)."""
    win_rate_against: str = ""
    """Model folder whose greedy answers the model's greedy answers are judged against: win-rate (ties half) with its 95% interval and the length-controlled win-rate. Empty: skipped."""
    win_rate_prompts: int = 64
    """Prompts (of `prompts`) both models answer for the win-rate."""
    win_rate_max_tokens: int = 128
    """Longest answer in tokens in the win-rate; answers cut there are counted."""
    judge: Literal["gold", "reward_model", "llm"] = "gold"
    """Who says which answer is better: gold (the world's gold reward; prompts=world only), reward_model or llm (judge_model; the LLM is asked both orders and the two readings averaged)."""
    judge_model: str = ""
    """Reward-model folder (judge=reward_model) or causal-LM folder (judge=llm)."""


@dataclass
class ContaminationConfig:
    train: list[str] = field(default_factory=lambda: ["world:sft", "world:corpus"])
    """Training data: files of any posttrain record format (JSONL/Parquet/text, world task files too), world:sft (the world's instruction-tuning examples) and/or world:corpus (its pretraining corpus)."""
    eval: list[str] = field(default_factory=lambda: ["world:heldout"])
    """Evaluation sets, each reported on its own: files (world task files or records), world:heldout (one set per family's held-out split) or world:sft (the training examples themselves, a check that reads 100%)."""
    n: int = 8
    """Words per n-gram (GPT-3 used 13; 8 catches shorter copies)."""
    threshold: float = 0.0
    """An example is contaminated when the share of its distinct n-grams found in training is above this (0: any shared n-gram)."""
    worst: int = 5
    """Most overlapping examples listed per set."""
    skip_invalid: bool = False
    """Skip (and count) invalid records in data files instead of stopping at the first."""
    world: WorldCorpusConfig = field(default_factory=lambda: WorldCorpusConfig(corpus_mb=0.0))
    """The embedded world the world: sources name: world.families of world:heldout and world:sft (empty: every family; world:sft every trained family), world.examples per family in world:sft (as posttrain sft's), world.eval_examples in world:heldout (the first ones, so any smaller evaluation is covered), world.corpus_mb of world:corpus (0: the corpus the shipped base model was pretrained on)."""
    run_dir: str = "runs/contamination"
    """Where contamination.json and config.yaml are written."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "world_seed": "world.seed", "world_families": "world.families", "world_examples": "world.examples",
        "world_eval_examples": "world.eval_examples", "world_corpus_mb": "world.corpus_mb"}


@dataclass
class LmEvalExportConfig:
    out_dir: str = "runs/lm-eval-tasks"
    """Folder that receives one YAML task config and one JSONL file per task, a group YAML and a README."""
    families: list[str] = field(default_factory=list)
    """World task families to export; empty: all of posttrain.world.tasks.FAMILIES (multiple choice only for families with choices)."""
    kinds: list[str] = field(default_factory=lambda: ["mc"])
    """Task kinds: mc (multiple_choice by log-prob: lm-eval's acc is `posttrain eval`'s mc_sum) and/or gen (generate_until, zero-shot, greedy, scored by posttrain's answer checker)."""
    split: Literal["heldout", "train"] = "heldout"
    """Which split of each family to export."""
    n_per_family: int = 200
    """Examples per family (the first n, as `posttrain eval` takes them)."""
    seed: int = 0
    """Seed of the world, its task suite and the few-shot draws."""
    mc_shots: int = 0
    """Solved examples written into each multiple-choice context (as `posttrain eval`'s mc_shots); lm-eval's num_fewshot must stay 0."""
    prompt_format: Literal["plain", "chat"] = "plain"
    """plain: the corpus' "Q: ...\\nA:" text; chat: the prompt rendered by the chat template of `model`."""
    model: str = "world"
    """Model (or tokenizer) folder whose chat template renders chat prompts and counts generation budgets; 'world' is the shipped base model."""
    prefix: str = "posttrain_world"
    """Task names are <prefix>_<family>_<kind>; the group of them all is <prefix>."""


@dataclass
class CompareConfig:
    models: list[str] = field(default_factory=list)
    """Checkpoints to compare (HF folders, 'world' for the shipped base model), e.g. [runs/sft/final, runs/dpo/final]; the first is the baseline every other is judged against."""
    names: list[str] = field(default_factory=list)
    """Column names of the models, in order; empty: each folder's name (made unique)."""
    run_dir: str = "runs/compare"
    """Where compare.html, compare.json and config.yaml are written."""
    prompts: str = "world"
    """world: held-out task prompts of the embedded world; otherwise a JSONL file of {"prompt": ...} or {"messages": [...]} records (a conversation's last assistant turns are dropped)."""
    families: list[str] = field(default_factory=list)
    """World task families to take prompts from (prompts=world); empty: every family (posttrain.world.tasks.FAMILIES)."""
    n: int = 24
    """Prompts compared: world prompts are spread evenly over the families; from a file, its first n (0: all)."""
    seed: int = 0
    """Seed of the world (its prompts) and of sampling when temperature > 0."""
    max_new_tokens: int = 128
    """Longest answer in tokens; answers cut there are counted."""
    temperature: float = 0.0
    """0: greedy answers; > 0: sampled at this temperature (seeded)."""
    batch_size: int = 16
    """Prompts per generation (and judge) batch; greedy answers do not depend on it."""
    judge: Literal["auto", "gold", "reward_model", "llm", "teacher", "none"] = "auto"
    """Who says which answer is better: gold (the world's gold reward), reward_model or llm (judge_model folder), teacher (any chat model through judge_teacher: an OpenAI-compatible server or API, a local folder, the world's judge; asked both orders), none; auto: gold for world prompts, none for a file."""
    judge_teacher: TeacherConfig = field(default_factory=_judge_defaults)
    """judge=teacher: the judge model (kind, model, base_url, ...; see `posttrain synth --help`); its verdicts are cached under run_dir/judge-cache."""
    judge_model: str = ""
    """Reward-model folder (judge=reward_model) or causal-LM folder (judge=llm)."""
    judge_template: str = ""
    """LLM judge question with {question}, {answer_a} and {answer_b} (other braces doubled); empty: posttrain.evaluation.winrate.DEFAULT_JUDGE_TEMPLATE."""
    judge_combine: Literal["average", "agree"] = "average"
    """LLM judge, asked both orders: average P(better) over the two orders, or a tie where the orders disagree."""
    judge_max_answer_tokens: int = 0
    """LLM judge: cut answers longer than this many tokens in the judge prompt (counted); 0: no cut."""
    device: str = "auto"
    """Device of the models and the judge: auto, cpu, cuda, cuda:1, mps."""
    dtype: str = "auto"
    """Weights dtype: auto, float32, bfloat16 or float16."""
    show_chars: int = 80
    """Characters of each answer shown in the terminal table (compare.html shows them whole)."""


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to fine-tune ('world': the embedded world's base model); model.lora.enabled trains a LoRA adapter instead of every weight."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=512))
    """Conversations (messages, Alpaca, ShareGPT or prompt/completion records) and/or world:sft (the embedded world's task examples, one source per family, rendered as renderings says; the default when train is empty); each data.train entry is one source of the mixture."""
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
    world: WorldSFTConfig = field(default_factory=lambda: WorldSFTConfig(examples=1000, eval_examples=16, corpus_mb=1.0))
    """The embedded world, when data.train is empty: task examples of world.families (empty: every family except the held-out ones), world.examples per family, their answers written by demonstrators of whom world.flawed are careless, world.eval_examples held-out ones per family for the eval loss (every family, held-out families included), and world.corpus_mb of its corpus to draw rehearsal chunks from when rehearsal_data is empty."""
    renderings: dict[str, float] = field(default_factory=lambda: {"zero_shot": 1.0})
    """Shares of the forms each task example is taught in: zero_shot, few_shot (solved examples as earlier turns), cot (step-by-step reasoning when asked), worked (reasoning unasked) and options (the choices offered in the question), as FLAN 2022 mixed them."""
    family_renderings: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per world family, shares of forms that replace renderings for that family, e.g. {arithmetic: {worked: 1.0}} to answer sums with their column working unasked."""
    few_shot_k: int = 2
    """Solved examples before the question in few_shot renderings."""
    samples: int = 4
    """Held-out prompts answered greedily at each evaluation and written to metrics.jsonl and the log."""
    sample_max_tokens: int = 48
    """Longest generated sample, in tokens."""
    eval_exact_match: int = 0
    """Held-out examples per world task family scored by exact match (chat, zero-shot) after training, into run_dir/eval, for a model of the world trained on its tasks or on data made from them (posttrain synth); 0 skips it."""
    eval_families: list[str] = field(default_factory=list)
    """World task families scored by eval_exact_match; empty: every family."""
    eval_max_new_tokens: int = 256
    """Longest answer generated for eval_exact_match, in tokens (a worked multi-step sum is ~180)."""
    lm_head_chunk: int = 0
    """Score target tokens through the LM head this many at a time, recomputing each chunk in backward (saves memory with large vocabularies); 0: all at once."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "world_seed": "world.seed", "world_families": "world.families", "world_examples": "world.examples",
        "eval_examples": "world.eval_examples", "rehearsal_world_mb": "world.corpus_mb"}


@dataclass
class WorldPreferenceConfig(WorldConfig):
    """The world with its simulated annotators: prompts, responses and who prefers which."""

    aspect: Literal["overall", "helpfulness", "safety"] = "overall"
    """What the simulated annotators judge: the gold total, its helpfulness part (correctness, rule, brevity) or its safety part; Llama 2 trains one reward model per aspect."""
    families: list[str] = field(default_factory=list)
    """Task families whose prompts are annotated; empty: every trained family (posttrain.world.tasks.TRAIN_FAMILIES), less harmful for the helpfulness aspect."""
    examples: int = 200
    """Prompts per family, from its train split."""
    eval_examples: int = 50
    """Prompts per family from its held-out split, annotated into held-out pairs (accuracy, calibration, agreement with gold)."""
    pairs_per_prompt: int = 2
    """Annotated pairs per prompt, for the pairwise losses (and the held-out pairs)."""
    ranking_k: int = 4
    """Responses ranked per prompt, for the ranking losses."""
    responses: Literal["candidates", "samples", "both"] = "candidates"
    """Responses compared: the world's candidates of known kinds (correct, worked, wrong, verbose, rule-breaking, refusal, unsafe), samples of the starting model (model.name_or_path, temperature 1), or both."""
    samples_per_prompt: int = 4
    """Samples of the starting model per prompt, when responses includes samples."""
    sample_max_tokens: int = 64
    """Longest sampled response, in tokens."""
    noise_temperature: float = 0.1
    """Annotators' Bradley-Terry temperature on the gold score (posttrain.world.annotators): higher is noisier."""
    length_bias: float = 0.0
    """Gold points the annotators add per word of a response (verbosity bias)."""
    annotator_seed: int = 0
    """Seed of the annotators' draws (the held-out pairs use the next seed)."""


@dataclass
class LabelConfig:
    """`posttrain label`: AI feedback (RLAIF): a judge model labels preference pairs, asked in both orders."""

    inputs: list[str] = field(default_factory=lambda: ["world:preferences"])
    """Pairs to label: preference records, or rankings (every pair they imply), in any layout posttrain reads, or world:preferences. Labels they already have are only compared with the judge's (and with gold, in the world)."""
    split: Literal["train", "heldout"] = "train"
    """The split world:preferences reads."""
    output: str = "runs/label/labels.jsonl"
    """The preference JSONL to write; the report goes beside it (<name>.report.json)."""
    cache_dir: str = "runs/synth/cache"
    """Every verdict is kept here: a rerun, or a run resumed after a crash, asks the judge nothing twice."""
    judge: TeacherConfig = field(default_factory=_judge_defaults)
    """The judge: the world's simulated one (kind=world), a local HF folder, or any OpenAI-compatible server (see `posttrain synth --help` for every teacher field)."""
    mode: Literal["pairwise", "rubric"] = "pairwise"
    """pairwise: the judge compares the two responses, in both orders; rubric: it rates each response alone from 1 to 10 against `rubric`, and the higher rating is chosen."""
    template: str = ""
    """The pairwise judge prompt, with {conversation}, {a} and {b}; empty: posttrain.synth.prompts.JUDGE (asks for one letter, A or B)."""
    rubric: str = ""
    """What a good response is, for mode=rubric; empty: posttrain.synth.prompts.DEFAULT_RUBRIC (correct and helpful, harmless, following instructions, concise)."""
    votes: int = 1
    """Verdicts per order (use a judge temperature above 0 for more than one); the soft label p_chosen is the share of all 2 x votes verdicts that pick the chosen response."""
    ties: Literal["drop", "keep"] = "drop"
    """Pairs whose verdicts split evenly (pairwise with one vote: the two orders disagree, the judge's position bias; rubric: equal ratings): drop them (counted), or keep them with p_chosen 0.5 in their input order."""
    license: str = ""
    """License of the labels; empty: the judge's (judge.license)."""
    date: str = ""
    """Date stamped into each record's provenance (YYYY-MM-DD); empty: today."""
    progress: bool = True
    """Show a progress bar while the judge works."""
    world: WorldPreferenceConfig = field(default_factory=WorldPreferenceConfig)
    """The embedded world, where inputs name world:preferences (and the world judge's world)."""


@dataclass
class RewardConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(dropout=0.0))
    """Starting point: an SFT causal LM folder (its LM head is replaced by a new scalar head) or a reward-model folder to train further; model.lora.enabled trains a LoRA adapter and the head."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=512))
    """Preference records (prompt, chosen, rejected, optional strength 1-4) and/or rankings (prompt, responses best first), or world:preferences (the world's candidate responses labelled by its simulated annotators, see world; alone, or with train empty, also rankings and the model's samples as world says)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/reward", lr=5e-5, max_steps=-1, epochs=1))
    """Optimization, schedule, checkpoints and logging; a micro-batch is train.batch_size pairs (or rankings), all their responses scored in one forward."""
    loss: Literal["bradley_terry", "soft_bradley_terry", "margin", "all_pairs", "plackett_luce"] = "bradley_terry"
    """bradley_terry: -log sigmoid(r_w - r_l); soft_bradley_terry: its cross-entropy against each pair's soft label meta.p_chosen (posttrain label's share of the judge's verdicts; 1 where a pair has none); margin: minus Llama 2's margin for the pair's strength; all_pairs: InstructGPT's K-wise loss over every pair of a ranking; plackett_luce: likelihood of the whole ranking."""
    margin_table: Literal["small", "large"] = "small"
    """Llama 2's margins by strength 1-4 for the margin loss: small (0, 1/3, 2/3, 1) or large (0, 1, 2, 3)."""
    center_coef: float = 0.0
    """Weight of the penalty mean((r_w + r_l)^2) that keeps rewards centred at 0 (pairwise losses); 0 turns it off."""
    packing: bool = True
    """Score a micro-batch's responses packed in one row, each comparison's prompt once and every response continuing from it (no padding, no repeated prompt); false pads them to the longest."""
    likelihood: bool = False
    """Add alpha x the response's mean token log-prob under the backbone's own LM head (its tied input embeddings) to the last-token score, alpha learned: lets a small backbone tell a right answer from a wrong one, which its last token alone may not (posttrain.models.reward). Needs tie_word_embeddings."""
    likelihood_init: float = 1.0
    """Starting alpha of the likelihood feature (a reward-model folder that has one keeps its own)."""
    eval_fraction: float = 0.05
    """Share of the training prompts held out for accuracy when data.eval is empty (file data only)."""
    normalize: Literal["sft_samples", "data", "none"] = "sft_samples"
    """Reference set the exported scores are standardized on: the starting model's own responses to training prompts (sampled), the data's responses, or none (raw scores)."""
    norm_prompts: int = 128
    """Training prompts in the normalization reference set."""
    norm_max_new_tokens: int = 64
    """Longest sampled reference response, in tokens."""
    agreement_samples: int = 4
    """World only: responses sampled from the starting model per held-out prompt, on which the final report measures the within-prompt correlation of the reward model's scores with gold, per family (how well it ranks the policy's own answers, as best-of-n and RL need); 0 skips it."""
    agreement_prompts: int = 25
    """World only: held-out prompts per family for that correlation."""
    world: WorldPreferenceConfig = field(default_factory=WorldPreferenceConfig)
    """The embedded world's preference data, used when data.train is empty."""


@dataclass
class PPOConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(dropout=0.0))
    """Policy to train, usually the SFT model; with model.lora.enabled only an adapter is trained and the same model with the adapter disabled is the reference (no second copy of the weights)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=256))
    """Prompts: prompt records ({"prompt": [messages]}), conversations (everything before the last assistant turn is the prompt) and/or world:prompts (the embedded world's task prompts, which world_gold scores; the default when train is empty, held out against the world's held-out prompts). data.max_length is the longest prompt in tokens: longer ones are dropped and counted."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/ppo", lr=1e-5, max_steps=100, batch_size=16, warmup_steps=0, min_lr_ratio=1.0, save_every=25))
    """A step is one rollout batch (sample, score, then ppo_epochs passes over it); max_steps, log_every, eval_every and save_every count these. Each pass goes through the batch in optimizer updates of batch_size x grad_accum episodes per process; warmup_steps and the cosine schedule count optimizer updates."""
    algorithm: Literal["ppo", "rloo", "grpo"] = "ppo"
    """ppo: critic, GAE and KL-penalized token rewards; rloo: leave-one-out baseline over samples_per_prompt samples, KL in the sequence reward; grpo: group-normalized scores, k3 KL in the loss."""
    rewards: list[str] = field(default_factory=list)
    """Reward sources, summed with reward_weights: reward-model folders (scored with their saved normalization), Python functions 'module:function' (imported from the working directory first, as python -m does) called as fn(prompts, responses) -> list of floats, where prompts[i] is a list of {"role", "content"} messages and responses[i] the response text (or fn(prompts, responses, records) to see the prompt records), or world_gold, the embedded world's gold reward."""
    reward_weights: list[float] = field(default_factory=list)
    """Weight of each entry of rewards; empty: 1 for each."""
    reward_input: Literal["text", "ids"] = "text"
    """What a reward model reads: text (the prompt messages and the response text, rendered through its own chat template, as it was trained) or ids (the rollout's own tokens, prompt and response as sampled up to the stop token, as TRL's PPO scores them: no decoding and re-tokenizing; the reward model must share the policy's vocabulary). Python functions always get the text."""
    prompts_per_step: int = 16
    """Prompts sampled per rollout batch on each process."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt (k); rloo and grpo need at least 2."""
    max_new_tokens: int = 48
    """Longest response in tokens; responses that reach it without a stop token are counted (response/finished)."""
    temperature: float = 1.0
    """Sampling temperature; the policy trained is softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling; keep 1.0 for training (top-p samples from a truncated policy, so PPO's ratios are slightly off)."""
    generation_batch_size: int = 64
    """Prompts per generation batch; the rollouts do not depend on it (each response is drawn from a seed of its own: step, prompt, sample)."""
    ppo_epochs: int = 4
    """Passes over each rollout batch, in shuffled minibatches of train.batch_size x train.grad_accum episodes."""
    kl_coef: float = 0.05
    """beta, the weight of the KL penalty to the reference (the initial one when kl_target is set)."""
    kl_target: float = 0.0
    """0: beta stays kl_coef; > 0: Ziegler et al.'s adaptive controller steers the measured KL (nats per response) toward this target."""
    kl_horizon: int = 10000
    """Episodes over which the adaptive controller corrects a KL error."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward: k1 (log ratio, unbiased, the classic choice) or k3 (low variance, never negative); grpo always uses k3 in its loss."""
    reward_clip: float = 0.0
    """Clip each sequence's score to [-reward_clip, reward_clip] before the KL penalty; 0: no clipping."""
    whiten_rewards: bool = False
    """Whiten each rollout batch's scores (mean 0, std 1) before the KL penalty is subtracted, as Llama 2 does (ppo and rloo; grpo normalizes per group anyway). Gives a fresh value head (critic=head) targets on a unit scale; note that beta then weighs the KL against scores in batch standard deviations."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of responses that reach max_new_tokens without a stop token."""
    gamma: float = 1.0
    """ppo: discount of GAE."""
    lam: float = 0.95
    """ppo: lambda of GAE (bias-variance trade-off of the advantage estimates)."""
    clip_eps: float = 0.2
    """Ratio clipping of the policy loss (ppo, rloo, grpo)."""
    value_clip_eps: float = 0.2
    """ppo: clipping of the value loss around the values at rollout time."""
    vf_coef: float = 0.1
    """ppo: weight of the value loss."""
    value_lr: float = 1e-3
    """ppo: learning rate of the value head (a new layer, it must move faster than the policy's weights; a separate critic's backbone uses train.lr); 0: train.lr."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0: none; entropy is logged either way)."""
    whiten_advantages: bool = True
    """Normalize advantages to mean 0 and std 1 over the batch (ppo: per token; rloo: per sequence; grpo normalizes per group itself)."""
    critic: str = "head"
    """ppo's value function: head (a value head on the policy's last hidden states, shared backbone) or a folder for a separate critic: a reward model (its score layer starts the head, as in InstructGPT) or a causal LM (head starts at zero)."""
    world: WorldConfig = field(default_factory=lambda: WorldConfig(examples=500))
    """The embedded world, when data.train is empty: world.examples training prompts per family of world.families (empty: posttrain.world.tasks.TRAIN_FAMILIES), from their train split; eval_examples held-out ones per family."""
    eval_examples: int = 32
    """Held-out prompts per world family (or the first of data.eval) answered and scored at each evaluation; 0: no evaluation."""
    eval_temperature: float = 0.0
    """Decoding of the evaluation answers: 0 is greedy; > 0 samples (seeded)."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "world_seed": "world.seed", "world_families": "world.families", "world_examples": "world.examples"}


@dataclass
class DPOConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(dropout=0.0))
    """Policy to train, usually an SFT model folder (e.g. runs/sft-world/final); with model.lora.enabled only an adapter is trained and the same model with the adapter disabled is the reference (no second copy of the weights)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=512))
    """Preference records (prompt, chosen, rejected); for loss.name=kto unpaired records (prompt, completion, label) or preferences, split into a desirable chosen and an undesirable rejected. world:preferences gives the world's annotated candidate pairs; train empty or [world:prompts]: pairs made from the world's prompts each round (see world)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/dpo", lr=5e-6, max_steps=-1, epochs=1, warmup_steps=10, min_lr_ratio=0.1))
    """Optimization, schedule, checkpoints and logging; a micro-batch is train.batch_size pairs, whose chosen and rejected sequences go through one forward pass together."""
    loss: str | dict[str, Any] = field(default_factory=lambda: {"name": "sigmoid", "beta": 0.1})
    """The preference loss and its hyperparameters, one mapping: {name: cdpo, beta: 0.1, label_smoothing: 0.1}, or a name alone (loss=ipo); a hyperparameter left out takes the loss's default. Losses (posttrain.losses.dpo, listed below with their parameters): sigmoid (DPO), cdpo, ipo, simpo and orpo (reference-free), kto (unpaired desirable/undesirable examples)."""
    nll_weight: float = 0.0
    """DPO+NLL (Pang et al. 2024; TRL's rpo_alpha): add this weight times the chosen responses' per-token NLL to a pairwise loss (sigmoid, cdpo, ipo, simpo), so their likelihood rises rather than falling with the rejected ones'; 0: the loss alone."""
    sample_temperature: float = 1.0
    """Temperature of the responses sampled from the policy to make new pairs (world and iterative rounds); below 1 keeps them near the policy's mode."""
    reference: Literal["precompute", "live"] = "precompute"
    """precompute: the reference log-probs of every training and held-out sequence are computed once before training and cached on disk (reruns and resumes reuse them); live: the reference scores every batch (the LoRA-disabled policy, or a second copy of the model in memory)."""
    reference_model: str = ""
    """Reference policy folder; empty: the starting policy (model.name_or_path). With LoRA the reference is always the policy with its adapter disabled, so this must stay empty."""
    reference_cache: str = ""
    """Folder of cached reference log-probs (safetensors), keyed by the reference's weights, the tokenized data and the dtype; empty: run_dir/reference_logps. Several runs may share one folder."""
    packing: bool = True
    """Padding-free: a micro-batch's pairs in one row, each pair's prompt once with chosen and rejected continuing from it (each response attends to its prompt and itself; posttrain.data.packing; needs sdpa or eager attention); false pads the 2 x batch_size sequences to the longest. Same log-probs either way."""
    lm_head_chunk: int = 0
    """Score response tokens through the LM head this many at a time, recomputing each chunk in backward (saves memory with large vocabularies); 0: all at once."""
    rounds: int = 1
    """Iterative (online) DPO: rounds of sampling responses from the current policy, labelling pairs of them (labeler) and training on the new pairs, each round starting from the last one's model (Llama 2's iterative rounds; Xu et al. 2023). 1: one pass on data.train or the world's pairs."""
    labeler: Literal["annotator", "gold", "reward_model", "judge"] = "annotator"
    """Who labels pairs of sampled responses: the world's simulated annotators (world.noise_temperature), the world's gold reward, reward_model, or judge (AI feedback: a judge model comparing every two responses of a prompt in both orders, as `posttrain label` does). A scorer passed in Python (dpo(cfg, scorer=...)) replaces it."""
    reward_model: str = ""
    """Reward-model folder (posttrain reward's export) for labeler=reward_model."""
    judge: TeacherConfig = field(default_factory=_judge_defaults)
    """The judge for labeler=judge: the world's simulated one, a local HF folder, or any OpenAI-compatible server; its verdicts are cached under run_dir/judge-cache."""
    pairing: Literal["best_worst", "random"] = "best_worst"
    """Pairs made from each prompt's sampled responses: best_worst, the labeler's best against its worst (one pair per prompt, as iterative DPO does); random, world.pairs_per_prompt random pairs each ordered by the labeler."""
    round_reference: Literal["previous", "initial"] = "previous"
    """Reference of each round: the model the round starts from (previous), or the first round's starting policy (initial; not with LoRA)."""
    world: WorldPreferenceConfig = field(default_factory=lambda: WorldPreferenceConfig(responses="both", examples=50, eval_examples=25))
    """The embedded world, when data.train is empty: prompts of its task families (world.examples new ones per family each round), responses sampled from the policy and/or the world's candidates, labelled by labeler; held-out prompts measure gold reward and win-rate against the starting policy."""
    kl_prompts: int = 64
    """Held-out prompts whose responses, sampled from the policy at temperature 1, measure KL(policy || reference) (k1 and k3 estimates) at each evaluation; 0 skips it."""
    kl_max_tokens: int = 64
    """Longest response sampled for the KL measurement, in tokens."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "beta": "loss.beta", "label_smoothing": "loss.label_smoothing", "simpo_gamma": "loss.gamma",
        "orpo_lambda": "loss.lam", "kto_desirable_weight": "loss.desirable_weight",
        "kto_undesirable_weight": "loss.undesirable_weight"}
    """Keys that live in the loss mapping now, for the error that names the new place."""

    def __post_init__(self) -> None:
        # The loss as one full mapping (its defaults filled in), so a run's config.yaml shows every
        # hyperparameter; a mistake is left for problems() to report where the config came from.
        from posttrain.losses.dpo import resolve_loss  # torch: imported when a DPO config is built, not for --help

        try:
            loss, hyper = resolve_loss(self.loss)
        except ValueError:
            return
        self.loss = {"name": loss.name, **hyper}

    def problems(self) -> list[tuple[str, str]]:
        from posttrain.losses.dpo import resolve_loss  # torch, as in __post_init__

        try:
            loss = resolve_loss(self.loss)[0]
        except ValueError as e:
            return [("loss", str(e))]
        problems = []
        if self.rounds < 1:
            problems.append(("rounds", f"{self.rounds}: at least one round is needed"))
        if self.model.lora.enabled and self.round_reference == "initial" and self.rounds > 1:
            problems.append(("round_reference", "initial with LoRA: each round merges its adapter, so the disabled "
                             "adapter is the previous round's model; use round_reference=previous or full fine-tuning"))
        if self.nll_weight and loss.unpaired:
            problems.append(("nll_weight", f"adds the chosen responses' NLL to a pairwise loss; {loss.name} has no "
                             "chosen responses (set nll_weight=0)"))
        return problems

    @staticmethod
    def help_lines() -> list[str]:
        from posttrain.losses.dpo import loss_help  # torch: the dpo command's help only

        return loss_help()
