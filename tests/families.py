"""Tiny random-weight models of real model families as plain Hugging Face folders, and small data files.

Each family keeps what makes it itself where posttrain touches it: its config class and architecture
quirks (sliding windows, logit soft-capping, tied or untied heads, a vocabulary padded past the
tokenizer, dropout left at the family default: GPT-2 and OPT train with 0.1), its special tokens
(which of bos/eos/pad/unk exist, what they are, where their ids sit), whether its tokenizer writes
bos by itself, the stop ids of its generation_config, and its chat template copied verbatim from the
real model's tokenizer_config.json (GPT-2, GPT-NeoX and OPT ship none). Nothing is downloaded:
vocabularies are small byte-level BPEs trained here on ``TEXT`` (the real Mistral, Gemma and Phi-3
tokenizers are SentencePiece BPEs with byte fallback; everything else about their tokens is kept),
weights are random, every forward takes milliseconds.

    from families import FAMILIES, build_family, family_dirs, family_models
    from families import write_chats, write_preferences, write_prompts

``family_models`` is the session fixture of ``family_dirs``; a test module that imports it can ask for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _from_json(text: str) -> str:
    """A string as written inside a JSON (or Python) string literal, decoded: the chat templates below
    are pasted exactly as their sources write them, escapes included, so each is verbatim."""
    return json.loads('"' + text + '"')


# --- chat templates, verbatim ---------------------------------------------------------------------

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json "chat_template", as copied in
# YJiangcm/WebR Meta-Llama-3-8B-Instruct/tokenizer_config.json (the same text is in
# openvinotoolkit/openvino.genai tests/python_tests/tokenizer_configs.py, with bos <|begin_of_text|>,
# eos <|eot_id|>, no pad, no unk).
LLAMA3_TEMPLATE = _from_json(
    r"""{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}""")

# Qwen/Qwen2-7B-Instruct tokenizer_config.json "chat_template" (bos none, eos <|im_end|>, pad
# <|endoftext|>, unk none), from openvinotoolkit/openvino.genai tests/python_tests/tokenizer_configs.py.
QWEN2_TEMPLATE = _from_json(
    r"""{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}""")

# mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json "chat_template" as the repository ships it
# today (bos <s>, eos </s>, unk <unk>, no pad), from openvinotoolkit/openvino.genai
# tests/python_tests/tokenizer_configs.py; guidance-ai/guidance guidance/chat.py quotes the same text
# from Mistral-7B-Instruct-v0.2/tokenizer_config.json#L42. A system message is folded into the first
# [INST]; any other role, or turns that do not alternate, raise.
MISTRAL_TEMPLATE = _from_json(
    r"""{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n""")

# google/gemma-7b-it and google/gemma-2-*-it tokenizer_config.json "chat_template" (bos <bos>, eos
# <eos>, pad <pad>, unk <unk>, additional <start_of_turn> <end_of_turn>), from the Gemma 2 tokenizer
# copied in HakunaMatata888/gemma2-poem tokenizer_config.json. A system message raises.
GEMMA_TEMPLATE = _from_json(
    r"""{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}""")

# google/gemma-3-*-it tokenizer_config.json "chat_template" (bos <bos>, eos <eos>, pad <pad>), as quoted
# from it in ShishirPatil/gorilla berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/gemma.py.
# A system message becomes a prefix of the first user turn.
GEMMA3_TEMPLATE = _from_json(
    r"""{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n""")

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json "chat_template" (bos <s>, eos <|endoftext|>, pad
# <|endoftext|>, unk <unk>), from openvinotoolkit/openvino.genai tests/python_tests/tokenizer_configs.py;
# guidance-ai/guidance guidance/chat.py quotes the same text from its tokenizer_config.json#L119.
# Without a generation prompt it ends the conversation with eos.
PHI3_TEMPLATE = _from_json(
    r"""{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}""")


# --- families -------------------------------------------------------------------------------------

HIDDEN, LAYERS, HEADS, HEAD_DIM, FFN, POSITIONS = 32, 2, 4, 8, 64, 512


@dataclass(frozen=True)
class Family:
    """What a family's folder holds besides random weights."""

    name: str
    model_type: str
    """config.model_type of the saved folder."""
    config: Callable[..., Any]
    """``config(vocab_size, ids) -> PretrainedConfig``; ``ids`` maps token text to id."""
    leading_tokens: tuple[str, ...]
    """Special tokens at ids 0, 1, ... (where the real vocabulary has them first)."""
    trailing_tokens: tuple[str, ...]
    """Special tokens appended after the learned vocabulary (where the real one has them last)."""
    bos: str | None
    eos: str | None
    pad: str | None
    unk: str | None
    adds_bos: bool
    """The tokenizer writes bos before every encoded text by itself (its post-processor)."""
    chat_template: str | None
    generation_eos: tuple[str, ...] = ()
    """generation_config.eos_token_id when it lists more than eos (stop at the end of a turn too), as the real
    generation_config.json does: Llama 3 [128001, 128009], Qwen2 [151645, 151643], Gemma 2 [1, 107], Gemma 3
    [1, 106], Phi-3 [32000, 32001, 32007]. Gemma 2's and Gemma 3's config.json list them as eos_token_id too."""
    vocab_multiple: int = 0
    """Rows of the embedding rounded up to this multiple, past the tokenizer (0: exactly the tokenizer)."""


def _llama3(vocab, ids):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=POSITIONS,
                       rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=ids["<|begin_of_text|>"],
                       eos_token_id=ids["<|eot_id|>"], pad_token_id=None)


def _qwen2(vocab, ids):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=POSITIONS,
                       tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       pad_token_id=ids["<|endoftext|>"])


def _mistral(vocab, ids):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM,
                         max_position_embeddings=POSITIONS, sliding_window=8, tie_word_embeddings=False,
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=None)


def _gemma(vocab, ids):
    from transformers import GemmaConfig

    return GemmaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HEAD_DIM,
                       max_position_embeddings=POSITIONS, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                       pad_token_id=ids["<pad>"])


def _gemma2(vocab, ids):
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM,
                        query_pre_attn_scalar=HEAD_DIM, max_position_embeddings=POSITIONS, sliding_window=8,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, bos_token_id=ids["<bos>"],
                        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], pad_token_id=ids["<pad>"])


def _gemma3(vocab, ids):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HEAD_DIM,
                            query_pre_attn_scalar=HEAD_DIM, max_position_embeddings=POSITIONS, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"], bos_token_id=ids["<bos>"],
                            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], pad_token_id=ids["<pad>"])


def _phi3(vocab, ids):
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=POSITIONS,
                      original_max_position_embeddings=POSITIONS, sliding_window=8, tie_word_embeddings=False,
                      bos_token_id=ids["<s>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])


def _gpt2(vocab, ids):
    from transformers import GPT2Config

    eot = ids["<|endoftext|>"]
    return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
                      bos_token_id=eot, eos_token_id=eot)


def _gpt_neox(vocab, ids):
    from transformers import GPTNeoXConfig

    eot = ids["<|endoftext|>"]
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, rotary_pct=0.25, max_position_embeddings=POSITIONS,
                         use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=eot, eos_token_id=eot)


def _opt(vocab, ids):
    from transformers import OPTConfig

    return OPTConfig(vocab_size=vocab, hidden_size=HIDDEN, ffn_dim=FFN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN, max_position_embeddings=POSITIONS,
                     bos_token_id=ids["</s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])


# Ids: Llama 3, Qwen2 and GPT-2 keep their special tokens after the learned vocabulary, the others (partly)
# first. Bos: the Llama 3, Mistral, Gemma and OPT tokenizers write it before any encoded text (so chat
# text, whose template writes it too, must be encoded without special tokens); Qwen2 has none; GPT-2,
# GPT-NeoX and (here) Phi-3 add none. transformers loads the qwen2 folder as Qwen2Tokenizer (its own
# pre-tokenizer: digits one by one), the others as the generic tokenizers backend.
_FAMILIES = [
    Family("llama3", "llama", _llama3, (), ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                              "<|end_header_id|>", "<|eot_id|>"),
           bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, adds_bos=True,
           chat_template=LLAMA3_TEMPLATE, generation_eos=("<|end_of_text|>", "<|eot_id|>")),
    Family("qwen2", "qwen2", _qwen2, (), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
           bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, adds_bos=False,
           chat_template=QWEN2_TEMPLATE, generation_eos=("<|im_end|>", "<|endoftext|>"), vocab_multiple=64),
    Family("mistral", "mistral", _mistral, ("<unk>", "<s>", "</s>"), (),
           bos="<s>", eos="</s>", pad=None, unk="<unk>", adds_bos=True, chat_template=MISTRAL_TEMPLATE),
    Family("gemma", "gemma", _gemma, ("<pad>", "<eos>", "<bos>", "<unk>"), ("<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", adds_bos=True, chat_template=GEMMA_TEMPLATE),
    Family("gemma2", "gemma2", _gemma2, ("<pad>", "<eos>", "<bos>", "<unk>"), ("<start_of_turn>", "<end_of_turn>"),
           bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", adds_bos=True, chat_template=GEMMA_TEMPLATE,
           generation_eos=("<eos>", "<end_of_turn>")),
    Family("gemma3", "gemma3_text", _gemma3, ("<pad>", "<eos>", "<bos>", "<unk>"),
           ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"),
           bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", adds_bos=True, chat_template=GEMMA3_TEMPLATE,
           generation_eos=("<eos>", "<end_of_turn>")),
    Family("phi3", "phi3", _phi3, ("<unk>", "<s>", "</s>"),
           ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
           bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", adds_bos=False,
           chat_template=PHI3_TEMPLATE, generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"),
           vocab_multiple=64),
    Family("gpt2", "gpt2", _gpt2, (), ("<|endoftext|>",),
           bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", adds_bos=False,
           chat_template=None),
    Family("gpt_neox", "gpt_neox", _gpt_neox, ("<|endoftext|>", "<|padding|>"), (),
           bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", adds_bos=False,
           chat_template=None, vocab_multiple=64),
    Family("opt", "opt", _opt, ("<s>", "<pad>", "</s>", "<unk>"), (),
           bos="</s>", eos="</s>", pad="<pad>", unk="</s>", adds_bos=True, chat_template=None),
]

SPECS: dict[str, Family] = {f.name: f for f in _FAMILIES}
FAMILIES: tuple[str, ...] = tuple(SPECS)
"""Every family by name, the keys of ``family_dirs``."""

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of Zorbia? The capital of Zorbia is Quell.",
    "Hello! How can I help you today? I am a helpful assistant.",
    "What is 3 plus 4? 3 plus 4 is 7. What is 12 plus 7? 12 plus 7 is 19.",
    "Answer in capitals. OK, I WILL ANSWER IN CAPITALS. THE ANSWER IS 19.",
    "Sort these words: pear, apple, fig. Sorted: apple, fig, pear.",
    "It is 8, I think, since 3 and 5 make that. Thank you, that is right.",
    "user assistant system model question answer conversation turn",
    "Reverse the word cat: tac. Count the letters in apple: 5.",
] * 20
"""What the family tokenizers learn their merges from: the words of the data writers below."""

VOCAB_SIZE = 512


def build_tokenizer(family: str):
    """The family's tokenizer: a byte-level BPE with the family's special tokens, ids and bos behaviour."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(spec.leading_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.trailing_tokens])
    if spec.adds_bos:
        bos = spec.bos
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    named = {spec.bos, spec.eos, spec.pad, spec.unk}
    extra = [t for t in (*spec.leading_tokens, *spec.trailing_tokens) if t not in named]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos,
                                   pad_token=spec.pad, unk_token=spec.unk, additional_special_tokens=extra)
    if spec.chat_template is not None:
        fast.chat_template = spec.chat_template
    return fast


def build_family(name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Save a random tiny model of family ``name`` with its tokenizer at ``path``; return the path."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = SPECS[name]
    path = Path(path)
    tokenizer = build_tokenizer(name)
    ids = tokenizer.get_vocab()
    rows = len(tokenizer)
    if spec.vocab_multiple:
        rows = (rows // spec.vocab_multiple + 1) * spec.vocab_multiple  # always a few unused rows
    config = spec.config(rows, ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    generation = model.generation_config
    generation.bos_token_id = config.bos_token_id
    generation.pad_token_id = config.pad_token_id
    generation.eos_token_id = [ids[t] for t in spec.generation_eos] if spec.generation_eos else config.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def family_dirs(tmp_path_factory) -> dict[str, Path]:
    """{family: folder} for every family, built under a fresh pytest temporary folder (a second or two)."""
    from transformers.utils import logging as hf_logging

    root = tmp_path_factory.mktemp("families")
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # ten "Writing model shards" bars in every failure's captured output
    try:
        return {name: build_family(name, root / name) for name in FAMILIES}
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    """``family_dirs`` as a session fixture: ``from families import family_models`` in a test module."""
    return family_dirs(tmp_path_factory)


# --- data files -----------------------------------------------------------------------------------

SYSTEM = "Answer in capitals."


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _sum(i: int) -> tuple[int, int]:
    return i % 13, i % 7


def chat(i: int) -> list[dict[str, str]]:
    """Conversation ``i``: single-turn, single-turn after a system turn, two turns, two turns after a system
    turn, in turn (so every file of 4 or more rows has each kind)."""
    a, b = _sum(i)
    turns = [_msg("user", f"What is {a} plus {b}?"), _msg("assistant", f"{a} plus {b} is {a + b}.")]
    if i % 4 >= 2:
        turns += [_msg("user", "And plus 3?"), _msg("assistant", f"It is {a + b + 3}.")]
    if i % 2 == 1:
        turns = [_msg("system", SYSTEM), *turns]
    return turns


def prompt(i: int) -> list[dict[str, str]]:
    """Prompt ``i``: a user question, after a system turn for odd ``i``."""
    a, b = _sum(i)
    turns = [_msg("user", f"What is {a} plus {b}?")]
    return [_msg("system", SYSTEM), *turns] if i % 2 == 1 else turns


def _write(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_chats(path: str | os.PathLike, n: int = 16, offset: int = 0) -> Path:
    """``{"messages": [...]}`` lines: single- and multi-turn, with and without a system turn."""
    return _write([{"messages": chat(i)} for i in range(offset, offset + n)], path)


def write_preferences(path: str | os.PathLike, n: int = 16, offset: int = 0) -> Path:
    """``{"prompt", "chosen", "rejected", "strength"}`` lines, each side a message list; the chosen answer is
    the right sum, the rejected one a longer wrong sum."""
    rows = []
    for i in range(offset, offset + n):
        a, b = _sum(i)
        rows.append({"prompt": prompt(i), "chosen": [_msg("assistant", f"{a} plus {b} is {a + b}.")],
                     "rejected": [_msg("assistant", f"It is {a + b + 1}, I think, since {a} and {b} make that.")],
                     "strength": 1 + i % 4})
    return _write(rows, path)


def write_prompts(path: str | os.PathLike, n: int = 8, offset: int = 0) -> Path:
    """``{"prompt": [...]}`` lines for ppo, with and without a system turn."""
    return _write([{"prompt": prompt(i)} for i in range(offset, offset + n)], path)
