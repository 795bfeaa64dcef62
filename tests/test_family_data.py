"""Family chat templates and tokenizers meet posttrain's data (issue 20): roles a template refuses,
templates that render a turn by what follows it, pad tokens of reward models and of exports, dropout."""

from __future__ import annotations

import json
import math

import pytest
import torch

from families import SPECS, build_tokenizer, write_chats

pytestmark = pytest.mark.usefixtures("one_thread")


def _read(path, tokenizer, **data):
    from posttrain.data.config import DataConfig
    from posttrain.data.readers import read_from_config

    return read_from_config(DataConfig(**data), [str(path)], tokenizer)


MISTRAL_V01_TEMPLATE = (  # Mistral-7B-Instruct-v0.1's: roles must alternate from the first message, so no system
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("family", ["gemma", "gemma2", "mistral_v01"])
def test_a_system_turn_the_template_refuses_is_a_file_line_error_a_counted_skip_or_merged(family, tmp_path):
    from posttrain.data.chat import render_chat
    from posttrain.data.readers import DataError

    tokenizer = build_tokenizer(family.removesuffix("_v01"))
    if family == "mistral_v01":
        tokenizer.chat_template = MISTRAL_V01_TEMPLATE
    path = write_chats(tmp_path / "chats.jsonl", n=4)  # lines 2 and 4 open with a system turn
    with pytest.raises(DataError) as error:
        _read(path, tokenizer)
    message = str(error.value)
    assert message.startswith(f"{path}:2: field 'messages': the model's chat template refuses this record")
    assert "data.system=merge" in message and "data.system=drop" in message

    skipped = _read(path, tokenizer, skip_invalid=True)
    assert len(skipped.records) == 2 and skipped.report.skipped["template_refused"] == 2
    assert skipped.locations == [f"{path}:1", f"{path}:3"]
    assert "skipped 2: 2 template_refused" in skipped.report.summary()

    merged = _read(path, tokenizer, system="merge")
    assert len(merged.records) == 4
    first = merged.records[1].as_dicts()
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[0]["content"].startswith("Answer in capitals.\n\nWhat is 1 plus 1?")
    example = render_chat(tokenizer, first)
    assert "Answer in capitals." in tokenizer.decode(example.input_ids)

    dropped = _read(path, tokenizer, system="drop")
    assert [m["role"] for m in dropped.records[1].as_dicts()] == ["user", "assistant"]
    assert "Answer in capitals." not in json.dumps(dropped.records[1].as_dicts())


def test_phi3_multi_turn_trains_each_turn_with_the_marker_the_text_goes_on_with():
    from posttrain.data.chat import render_chat

    tokenizer = build_tokenizer("phi3")  # closes only the conversation's last turn with eos
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."}]
    example = render_chat(tokenizer, turns)
    runs, current = [], []
    for token, trained in zip(example.input_ids + [None], example.loss_mask + [False]):
        if trained:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    assert runs == ["Hello.<|end|>", "Bye.<|end|>\n<|endoftext|>"]


def test_a_turn_rendered_by_what_follows_names_every_option_that_works():
    from posttrain.data.chat import ChatTemplateError, render_chat

    tokenizer = build_tokenizer("qwen2")
    # Like reasoning models' templates, which drop an earlier turn's thinking: earlier answers change.
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                               "[{{ m['content'] }}]{% else %}{{ m['content'] }}{% endif %}<|im_end|>{% endfor %}")
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."}]
    with pytest.raises(ChatTemplateError) as error:
        render_chat(tokenizer, turns)
    assert "data.loss_on=last_assistant" in str(error.value) and "data.loss_on=all" in str(error.value)
    last = render_chat(tokenizer, turns, loss_on="last_assistant")
    assert tokenizer.decode([t for t, m in zip(last.input_ids, last.loss_mask) if m]) == "Bye.<|im_end|>"


@pytest.mark.parametrize("family, expected", [("llama3", "<|pad|>"), ("mistral", "<unk>"), ("qwen2", "<|endoftext|>"),
                                              ("phi3", "<unk>"), ("gpt2", "<|pad|>"), ("opt", "<pad>")])
def test_reward_models_get_a_pad_no_sequence_ends_with(family, expected):
    from posttrain.models.loading import BORROWED_PAD
    from posttrain.models.reward import ensure_distinct_pad

    tokenizer = build_tokenizer(family)
    if tokenizer.pad_token is None:  # as posttrain.models.loading.load_tokenizer lends it
        tokenizer.pad_token = tokenizer.eos_token
        setattr(tokenizer, BORROWED_PAD, True)
    ensure_distinct_pad(tokenizer)
    assert tokenizer.pad_token == expected
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert not getattr(tokenizer, BORROWED_PAD, False)


def test_exports_keep_a_tokenizer_without_pad_without_pad(tmp_path):
    from families import build_family
    from transformers import AutoTokenizer

    from posttrain.models.config import ModelConfig
    from posttrain.models.export import export_model
    from posttrain.models.loading import load_causal_lm, load_tokenizer

    folder = build_family("llama3", tmp_path / "llama3")
    cfg = ModelConfig(name_or_path=str(folder))
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.pad_token == "<|eot_id|>"  # lent for batching inside posttrain
    out = export_model(load_causal_lm(cfg, tokenizer=tokenizer), tokenizer, tmp_path / "export")
    assert AutoTokenizer.from_pretrained(out).pad_token is None
    assert tokenizer.pad_token == "<|eot_id|>"  # the running tokenizer keeps it


def test_model_dropout_sets_every_dropout_of_gpt2_and_opt():
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import set_dropout

    for family in ("gpt2", "opt"):
        ids = build_tokenizer(family).get_vocab()
        config = SPECS[family].config(len(ids), ids)
        config.dropout = getattr(config, "dropout", 0.1) or 0.1  # OPT's default is 0.1 as well
        model = AutoModelForCausalLM.from_config(config).train()
        x = torch.randint(0, len(ids), (2, 12))
        assert not torch.equal(model(x).logits, model(x).logits)  # dropout on: two forwards differ
        set_dropout(model, 0.0)
        assert torch.equal(model(x).logits, model(x).logits), family
        assert all(v == 0.0 for k, v in model.config.to_dict().items()
                   if ("dropout" in k or k.endswith("pdrop")) and isinstance(v, float))
    with pytest.raises(Exception, match="model.dropout"):
        set_dropout(model, 1.5)
    assert math.isclose(0.0, 0.0)


def test_lora_trains_new_token_rows_of_an_untied_lm_head_too(tmp_path):
    from families import build_family

    from posttrain.models.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer

    folder = build_family("gpt_neox", tmp_path / "neox")  # untied input and output embeddings, no template
    cfg = ModelConfig(name_or_path=str(folder), lora=LoraConfig(enabled=True, r=4))
    tokenizer = load_tokenizer(cfg, "chat")  # ChatML asked for: two new special tokens
    model = load_causal_lm(cfg, tokenizer=tokenizer)
    new = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any("embed_in" in n for n in trainable) and any("lm_head" in n for n in trainable), trainable
    ids = torch.tensor([[new[0], 5, 6, new[1]]])
    model(input_ids=ids, labels=ids).loss.backward()
    head = next(p for n, p in model.named_parameters() if "lm_head" in n and p.requires_grad)
    assert head.grad is not None and float(head.grad.abs().sum()) > 0  # the head learns to write them
