"""Settings of `posttrain synth <method>`: the teacher, the inputs, and each method's knobs.

A light module (standard library only), so that `posttrain --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("self-instruct", "evol-instruct", "self-chat", "distill", "gatt")
"""Every data-making method `posttrain synth` runs."""


@dataclass
class WorldTeacherStyle:
    """How the embedded world's simulated teacher behaves: a strong but imperfect model of the world.

    It answers world tasks, writes new ones by recombining the world's entities and templates,
    rewrites, judges and plays a user, with the error rates below (each drawn per request, seeded
    by the request, so a rerun gives the same text)."""

    accuracy: float = 0.85
    """Share of benign world tasks it answers right when it answers directly."""
    cot_accuracy: float = 0.97
    """Share it answers right when a strategy prompt asks it to reason step by step (it then shows its working)."""
    refusal: float = 0.95
    """Share of harmful requests it refuses (the rest it complies with)."""
    rule_near: float = 0.97
    """Chance it keeps a system rule stated in the current user turn, or in the system prompt on the first turn."""
    rule_far: float = 0.35
    """Chance it keeps a system rule stated only in the system prompt on a later turn (models forget, Llama 2 §3.3)."""
    near_copy: float = 0.2
    """Share of the instructions it writes that are near copies of an example in its prompt."""
    malformed: float = 0.05
    """Share of list items it writes out of format (the similarity and format filters must catch these)."""
    evol_fail: float = 0.1
    """Share of rewrites that fail the way WizardLM's do: an unchanged prompt, or a copy of the rewriting prompt's words."""
    judge_noise: float = 0.15
    """As a judge: Bradley-Terry temperature on the gold difference of the two responses (the simulated human annotators' default is 0.1)."""
    position_bias: float = 0.1
    """As a judge: gold points it adds to whichever response it is shown first (LLM judges favour a position; asking both orders cancels it)."""


@dataclass
class TeacherConfig:
    """The chat model that writes the data: the world's simulated teacher, a local HF folder, or any
    OpenAI-compatible server (vLLM, `transformers serve`, a hosted API)."""

    kind: str = "world"
    """world (the simulated teacher of the embedded world), local (an HF folder, posttrain's batched KV-cached generation) or openai (any OpenAI-compatible endpoint, through the official client)."""
    model: str = ""
    """The model: the served model's name (openai), or a folder or hub id (local); unused for world."""
    base_url: str = ""
    """openai: the server's URL, e.g. http://127.0.0.1:8000/v1 for `vllm serve`; empty: $OPENAI_BASE_URL, else the OpenAI API."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: environment variable holding the API key (a local server accepts any; 'none' is sent when it is unset)."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    max_retries: int = 5
    """openai: retries of a request after a rate limit (429), a server error (5xx), a timeout or a lost connection, with exponential backoff."""
    timeout: float = 120.0
    """openai: seconds before a request is abandoned (and retried)."""
    batch_size: int = 32
    """local: prompts generated together in one batch."""
    temperature: float = 0.7
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens holding this much probability."""
    max_tokens: int = 256
    """Longest response in tokens; a response cut off here is dropped (reason: cut off)."""
    license: str = ""
    """License of the teacher's outputs, carried into every record and the model cards trained on them (an SPDX id, or the provider's terms); empty: Apache-2.0 for the world's teacher, 'unknown' otherwise."""
    world: WorldTeacherStyle = field(default_factory=WorldTeacherStyle)
    """world: the simulated teacher's accuracy and habits."""


@dataclass
class WorldInputConfig:
    """The embedded world as the input of a method (``inputs: [world:sft]``): its task examples."""

    seed: int = 0
    """Seed of the world (the simulated teacher knows the same world)."""
    families: list[str] = field(default_factory=list)
    """Task families to take examples from; empty: every trained family."""
    examples: int = 10
    """Examples per family from its train split (self-instruct: the seed tasks; distill, gatt, evol-instruct: the prompts)."""
    first: int = 0
    """Index of the first example taken (to take prompts that another run did not)."""


@dataclass
class SelfInstructConfig:
    """Self-instruct (Wang et al. 2022; Alpaca): seed tasks, generated instructions, a similarity filter, then answers."""

    instructions: int = 200
    """Instructions to keep before answering (the run stops earlier if max_requests is reached)."""
    in_prompt: int = 8
    """Example instructions shown in each generation prompt."""
    machine_in_prompt: int = 2
    """Of those, how many are earlier generated instructions (the paper: 2 of 8), once there are some."""
    per_request: int = 20
    """Length of the list each generation prompt asks for (examples included)."""
    similarity: float = 0.7
    """A new instruction is dropped when its ROUGE-L F with any kept instruction reaches this (the paper: 0.7); 1.0 keeps all but exact copies."""
    min_words: int = 3
    """Instructions with fewer words are dropped."""
    max_words: int = 150
    """Instructions with more words are dropped."""
    requests_per_round: int = 16
    """Generation prompts sent together before the kept pool is updated."""
    max_requests: int = 2000
    """Give up after this many generation prompts (a teacher that writes only copies would never stop)."""


@dataclass
class EvolInstructConfig:
    """Evol-Instruct (Xu et al. 2023, WizardLM): rewrite prompts into harder (in-depth) or new (in-breadth) ones."""

    rounds: int = 1
    """Evolution rounds: each round rewrites the previous round's surviving prompts."""
    in_depth: list[str] = field(default_factory=lambda: ["constraints", "deepen", "concretize", "reasoning"])
    """In-depth operations drawn from: constraints (add one), deepen, concretize, reasoning (ask for more steps)."""
    in_breadth: float = 0.2
    """Share of rewrites that are in-breadth (a new prompt of the same domain) rather than in-depth."""
    keep_original: bool = True
    """Also write the input prompts' own answers (WizardLM trains on the originals and every evolution)."""
    min_words: int = 80
    """Elimination rule 2: an answer holding 'sorry' and shorter than this many words marks a failed evolution."""


@dataclass
class SelfChatConfig:
    """Self-chat (Baize, UltraChat): the teacher plays both the user and the assistant, from a seed topic."""

    topics: list[str] = field(default_factory=list)
    """Seed topics; empty: the world's entities (people, cities, animals and products)."""
    conversations: int = 100
    """Conversations to write (topics are cycled)."""
    turns: int = 3
    """User turns per conversation (the user may end it earlier with [END])."""


@dataclass
class DistillConfig:
    """Distillation (Vicuna, OpenHermes; Orca 2): the teacher answers given prompts."""

    strategy: str = ""
    """System prompt the teacher answers under: step_by_step, recall_then_answer, direct, any other text (used as is), or empty (none)."""
    erase: bool = True
    """Prompt erasure (Orca 2): the strategy prompt is dropped from the training record, so the student learns to reason without being told how."""
    samples: int = 1
    """Answers per prompt (each a record)."""


@dataclass
class GattConfig:
    """Ghost attention (Llama 2, §3.3): multi-turn data that keeps a system instruction in every turn."""

    instructions: list[str] = field(default_factory=list)
    """Instructions to attach (one drawn per conversation); a conversation with its own system message keeps that one; empty: the world's system rules."""
    attach: bool = True
    """Attach the instruction to every user turn while sampling (GAtt); false samples with the instruction in the system prompt only (plain multi-turn data, the baseline)."""
    instruction_in: str = "system"
    """Where the training record keeps the instruction: system (a system message) or first_user (prepended to the first user turn)."""
    train_last_turn: bool = True
    """Train only the last assistant turn (loss_on=last_assistant, carried in each record's meta), as Llama 2 zeroes the loss of earlier turns."""


@dataclass
class SynthConfig:
    """`posttrain synth <method>`: make instruction data with a teacher."""

    method: str = ""
    """self-instruct, evol-instruct, self-chat, distill or gatt (the command's argument)."""
    inputs: list[str] = field(default_factory=lambda: ["world:sft"])
    """Input records: seed tasks (self-instruct), prompts (distill, gatt, evol-instruct) or, for self-chat, ignored in favour of self_chat.topics. Files in any layout posttrain reads, or world:sft."""
    output: str = ""
    """The JSONL file to write (conversations); empty: runs/synth/<method>.jsonl. The report goes beside it (<name>.report.json)."""
    cache_dir: str = "runs/synth/cache"
    """Every teacher response is kept here by (teacher, model, messages, sampling): a rerun, or a run resumed after a crash, sends nothing twice."""
    seed: int = 0
    """Seed of every random choice (which examples go into a prompt, which instruction a conversation gets)."""
    license: str = ""
    """License of the written data; empty: the teacher's (teacher.license)."""
    date: str = ""
    """Date stamped into each record's provenance (YYYY-MM-DD); empty: today. Fixing it makes reruns byte-identical."""
    progress: bool = True
    """Show a progress bar while the teacher works."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The model that writes the data."""
    world: WorldInputConfig = field(default_factory=WorldInputConfig)
    """The embedded world, where inputs name world:sft (and the world's teacher's world)."""
    self_instruct: SelfInstructConfig = field(default_factory=SelfInstructConfig)
    """self-instruct settings."""
    evol_instruct: EvolInstructConfig = field(default_factory=EvolInstructConfig)
    """evol-instruct settings."""
    self_chat: SelfChatConfig = field(default_factory=SelfChatConfig)
    """self-chat settings."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """distill settings."""
    gatt: GattConfig = field(default_factory=GattConfig)
    """gatt settings."""
