"""Chat rendering against the tokenizer's own template: ids, loss masks, overflow handling."""

from __future__ import annotations

import copy
import logging

import pytest

from conftest import TINY_TEXT
from posttrain.data.chat import (
    ChatTemplateError,
    ExampleTooLongError,
    ensure_chat_template,
    render_chat,
    render_prompt_response,
    token_mask_from_char_spans,
    tokenize_conversations,
)
from posttrain.data.config import DataConfig
from posttrain.data.templates import CHAT_TEMPLATES, LLAMA2_TEMPLATE

SYSTEM = {"role": "system", "content": "Answer in capitals."}

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is the capital of Zorbia?"},
        {"role": "assistant", "content": "The capital of Zorbia is Quell."},
    ],
    "system_two_turns": [
        SYSTEM,
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "HELLO."},
        {"role": "user", "content": "Add 12 and 7."},
        {"role": "assistant", "content": "19"},
    ],
    "three_turns": [
        {"role": "user", "content": "Sort these words: pear, apple, fig."},
        {"role": "assistant", "content": "Sorted: apple, fig, pear."},
        {"role": "user", "content": "In French?"},
        {"role": "assistant", "content": "Café au lait,\nplease."},  # multi-byte char, inner newline
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "OK, I WILL ANSWER IN CAPITALS."},
    ],
}

# What each template writes right after an assistant message's content, up to the end of its turn
# (trailing newline excluded): this end-of-turn marker is trained with the content.
END_MARKER = {"chatml": "<|im_end|>", "llama2": " </s>", "zephyr": "</s>"}


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer):
    """One tokenizer per template; Llama-2 and Zephyr share a BPE with <s>, </s>, <unk>."""
    from posttrain.models.tiny import train_bpe_tokenizer

    base = train_bpe_tokenizer(TINY_TEXT, vocab_size=400, special_tokens=["<s>", "</s>", "<unk>"], chat_template=None)
    base.eos_token, base.pad_token = "</s>", "<unk>"
    out = {"chatml": tiny_tokenizer}
    for name in ("llama2", "zephyr"):
        tok = copy.deepcopy(base)
        assert ensure_chat_template(tok, name) == []
        out[name] = tok
    return out


def masked_runs(tokenizer, ids, mask):
    """Decoded text of each maximal run of masked tokens."""
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def expected_turn(tokenizer, template, content):
    """What the masked tokens of one assistant turn decode to: content + end marker, preceded by
    the template's space when the tokenizer fuses it with the first word (Llama-2's ``" The"``)."""
    lead = ""
    if template == "llama2":
        first = tokenizer(" " + content, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0]
        lead = " " if first[1] > 1 else ""
    return lead + content + END_MARKER[template]


@pytest.mark.parametrize("template", ["chatml", "llama2", "zephyr"])
@pytest.mark.parametrize("conv", list(CONVERSATIONS))
def test_ids_equal_apply_chat_template_and_mask_decodes_to_assistant_turns(tokenizers, template, conv):
    tok, messages = tokenizers[template], CONVERSATIONS[conv]
    reference = tok.apply_chat_template(messages)["input_ids"]
    contents = [m["content"] for m in messages if m["role"] == "assistant"]

    ex = render_chat(tok, messages, loss_on="assistant")
    assert ex.input_ids == reference
    assert masked_runs(tok, ex.input_ids, ex.loss_mask) == [expected_turn(tok, template, c) for c in contents]

    last = render_chat(tok, messages, loss_on="last_assistant")
    assert last.input_ids == reference
    assert masked_runs(tok, last.input_ids, last.loss_mask) == [expected_turn(tok, template, contents[-1])]

    everything = render_chat(tok, messages, loss_on="all")
    assert everything.input_ids == reference and all(everything.loss_mask)


def test_llama2_space_fused_with_first_word_is_trained_and_lone_space_is_not(tokenizers):
    """Both sides of the straddling rule occur in the conversations above."""
    tok = tokenizers["llama2"]
    assert expected_turn(tok, "llama2", "The capital of Zorbia is Quell.").startswith(" The")
    assert expected_turn(tok, "llama2", "Café au lait,\nplease.").startswith("Café")


@pytest.mark.parametrize("template", ["chatml", "llama2", "zephyr"])
def test_generation_prompt_is_rendered_and_not_trained(tokenizers, template):
    tok = tokenizers[template]
    messages = CONVERSATIONS["system_two_turns"][:-1]  # ends with a user turn
    ex = render_chat(tok, messages, add_generation_prompt=True)
    assert ex.input_ids == tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert masked_runs(tok, ex.input_ids, ex.loss_mask) == [expected_turn(tok, template, "HELLO.")]
    closed = tok.apply_chat_template(messages)["input_ids"]
    assert ex.input_ids[: len(closed)] == closed
    assert len(ex) > len(closed) or template == "llama2"  # Llama-2's template has no generation prompt
    assert not any(ex.loss_mask[len(closed) - 1:])  # the last user turn and the header are prompt


def test_token_mask_rule_on_hand_made_offsets():
    # text "ab cd|ef" with span [3, 5) = "cd" and span [6, 8) = "ef"
    offsets = [(0, 2), (2, 4), (4, 5), (5, 6), (6, 7), (6, 7), (7, 9), (9, 10)]
    #           "ab"   " c" straddles start  "d"  "|" out  multi-byte char twice  "f?" straddles end  after
    spans = [(3, 5), (6, 8)]
    assert token_mask_from_char_spans(offsets, spans) == [False, True, True, False, True, True, True, False]
    # touching a boundary is not overlapping
    assert token_mask_from_char_spans([(0, 3), (3, 5), (5, 6)], [(3, 5)]) == [False, True, False]
    assert token_mask_from_char_spans([(0, 3)], []) == [False]


@pytest.mark.parametrize("template", ["chatml", "llama2", "zephyr"])
def test_prompt_response_split(tokenizers, template):
    tok = tokenizers[template]
    prompt = CONVERSATIONS["system_two_turns"][:4]  # ends with "Add 12 and 7."
    chosen = render_prompt_response(tok, prompt, [{"role": "assistant", "content": "The answer is 19."}])
    rejected = render_prompt_response(tok, prompt, [{"role": "assistant", "content": "Café au lait,\nplease."}])
    prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    for pr, content in ((chosen, "The answer is 19."), (rejected, "Café au lait,\nplease.")):
        full = prompt + [{"role": "assistant", "content": content}]
        assert pr.input_ids == tok.apply_chat_template(full)["input_ids"]
        assert pr.input_ids[: pr.response_start] == prompt_ids
        text = tok.apply_chat_template(full, tokenize=False)
        assert tok.decode(pr.input_ids[pr.response_start:]) == text[len(prompt_text):]
        assert not any(pr.loss_mask[: pr.response_start])
        assert masked_runs(tok, pr.input_ids, pr.loss_mask) == [expected_turn(tok, template, content)]


def test_ensure_chat_template(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    from posttrain.models.tiny import train_bpe_tokenizer

    tok = copy.deepcopy(tokenizers["llama2"])
    assert ensure_chat_template(tok) == [] and tok.chat_template == LLAMA2_TEMPLATE  # its own is kept

    path = tmp_path / "mine.jinja"
    path.write_text(CHAT_TEMPLATES["zephyr"], encoding="utf-8")
    assert ensure_chat_template(tok, str(path)) == [] and tok.chat_template == CHAT_TEMPLATES["zephyr"]

    with pytest.raises(ValueError, match="chatml, llama2, zephyr"):
        ensure_chat_template(tok, "vicuna")

    # a tokenizer with no template reads raw text by default (data.format=auto), nothing added
    bare = train_bpe_tokenizer(TINY_TEXT, vocab_size=300, special_tokens=["<s>", "</s>"], chat_template=None)
    size = len(bare)
    assert ensure_chat_template(copy.deepcopy(bare)) == [] and len(bare) == size
    # asked for chat (data.format=chat), it gets ChatML and the markers as special tokens
    assert ensure_chat_template(bare, data_format="chat") == ["<|im_start|>", "<|im_end|>"]
    assert len(bare) == size + 2 and bare.chat_template == CHAT_TEMPLATES["chatml"]
    messages = CONVERSATIONS["single"]
    ex = render_chat(bare, messages)
    assert ex.input_ids.count(bare.convert_tokens_to_ids("<|im_start|>")) == 2
    assert masked_runs(bare, ex.input_ids, ex.loss_mask) == [messages[1]["content"] + "<|im_end|>"]
    assert ensure_chat_template(bare, "chatml") == []  # idempotent

    # the template travels with the saved tokenizer
    bare.save_pretrained(tmp_path / "exported")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert reloaded.chat_template == CHAT_TEMPLATES["chatml"]
    assert render_chat(reloaded, messages) == ex


def test_template_that_rewrites_earlier_turns_is_refused(tokenizers):
    tok = copy.deepcopy(tokenizers["chatml"])
    tok.chat_template = "{% for m in messages %}{% if loop.last %}FINAL {% endif %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="message 1"):
        render_chat(tok, CONVERSATIONS["system_two_turns"][1:])
    assert all(render_chat(tok, CONVERSATIONS["system_two_turns"][1:], loss_on="all").loss_mask)


class _Record:
    """Stands in for a data record: anything with ``as_dicts()``."""

    def __init__(self, messages):
        self.messages = messages

    def as_dicts(self):
        return self.messages


def _overflow_conversations():
    fits = CONVERSATIONS["single"]
    longer = fits + [{"role": "user", "content": "And the capital of Quell? " * 3},
                     {"role": "assistant", "content": "Quell has no capital. " * 3}]
    late_answer = [{"role": "user", "content": "What is the capital of Zorbia? " * 6}, {"role": "assistant", "content": "Quell."}]
    no_answer = [{"role": "user", "content": "Hello!"}]
    return [fits, _Record(longer), late_answer, no_answer]


def test_overflow_truncate_counts_and_logs(tokenizers, caplog):
    tok = tokenizers["chatml"]
    convs = _overflow_conversations()
    fits = render_chat(tok, convs[0])
    cfg = DataConfig(max_length=len(fits), overflow="truncate")
    with caplog.at_level(logging.INFO, logger="posttrain.data"):
        examples, report = tokenize_conversations(tok, convs, cfg)
    # the longer conversation starts with the fitting one, so truncation leaves exactly it
    assert [(e.input_ids, e.loss_mask) for e in examples] == [(fits.input_ids, fits.loss_mask)] * 2
    assert len(render_chat(tok, convs[2])) > cfg.max_length
    assert (report.seen, report.kept, report.truncated) == (4, 2, 1)
    assert (report.dropped_too_long, report.dropped_truncated_no_loss, report.dropped_no_loss) == (0, 1, 1)
    assert report.tokens == 2 * len(fits) and report.loss_tokens == 2 * fits.num_loss_tokens
    assert report.summary() in caplog.text
    assert "1 truncated to max_length=" in report.summary() and "1 with no loss tokens left after truncation" in report.summary()


def test_overflow_drop_and_error(tokenizers):
    tok = tokenizers["chatml"]
    convs = _overflow_conversations()
    max_length = len(render_chat(tok, convs[0]))
    examples, report = tokenize_conversations(tok, convs, DataConfig(max_length=max_length, overflow="drop"))
    assert len(examples) == 1 and report.kept == 1 and report.truncated == 0
    assert (report.dropped_too_long, report.dropped_truncated_no_loss, report.dropped_no_loss) == (2, 0, 1)

    longer = len(render_chat(tok, convs[1].as_dicts()))
    with pytest.raises(ExampleTooLongError, match=rf"record 1 .*{longer} tokens.*max_length={max_length}.*overflow"):
        tokenize_conversations(tok, convs, DataConfig(max_length=max_length, overflow="error"))


def test_last_assistant_mode_in_dataset(tokenizers):
    tok = tokenizers["zephyr"]
    examples, report = tokenize_conversations(tok, [CONVERSATIONS["three_turns"]], DataConfig(loss_on="last_assistant"))
    assert masked_runs(tok, examples[0].input_ids, examples[0].loss_mask) == ["OK, I WILL ANSWER IN CAPITALS.</s>"]
    assert report.loss_tokens == examples[0].num_loss_tokens
