"""Instruction-data mixtures: FLAN-style renderings, prompt templates, weights and epochs, rehearsal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from posttrain.data.chat import Example, render_chat
from posttrain.data.mixing import (
    COT_TRIGGER, PromptTemplate, Source, apply_templates, mix_sources, rehearsal_source, render_cot,
    render_few_shot, render_items, render_options, render_worked, render_zero_shot, source_counts, take, text_chunks,
)


@dataclass
class Item:
    messages: list
    answer: str
    cot: str | None = None
    choices: list | None = None


def _items(n, system=None):
    sys_turn = [{"role": "system", "content": system}] if system else []
    return [Item(sys_turn + [{"role": "user", "content": f"What is {i} + 1?"}], f"{i} + 1 = {i + 1}.",
                 f"One more than {i} is {i + 1}. So the answer is {i + 1}.", [str(i + 1), str(i), str(i + 2)])
            for i in range(n)]


def test_renderings():
    item, shots = _items(3, system="Answer in capitals.")[0], _items(3, system="Answer in capitals.")[1:]
    assert render_zero_shot(item) == item.messages + [{"role": "assistant", "content": item.answer}]
    few = render_few_shot(item, shots)
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert few[0]["content"] == "Answer in capitals."  # one system turn, first
    assert few[2]["content"] == shots[0].answer and few[-1]["content"] == item.answer
    assert few[-2] == item.messages[-1]
    cot = render_cot(item)
    assert cot[-1] == {"role": "assistant", "content": item.cot}
    assert cot[-2]["content"] == f"{item.messages[-1]['content']} {COT_TRIGGER}" and cot[0] == item.messages[0]
    assert item.messages[-1]["content"].endswith("?")  # the item itself is left as it was
    with pytest.raises(ValueError, match="no chain of thought"):
        render_cot(Item(item.messages, item.answer))
    worked = render_worked(item)
    assert worked == item.messages + [{"role": "assistant", "content": item.cot}]  # the question as asked
    with pytest.raises(ValueError, match="no chain of thought"):
        render_worked(Item(item.messages, item.answer))
    options = render_options(item)
    assert options[-2]["content"] == "What is 0 + 1? Is it 1, 0 or 2?" and options[-1]["content"] == item.answer
    with pytest.raises(ValueError, match="no choices"):
        render_options(Item(item.messages, item.answer))


def test_render_items_shares_and_shots():
    items = _items(400)
    shares = {"zero_shot": 0.4, "few_shot": 0.2, "cot": 0.2, "options": 0.2}
    rendered = render_items(items, shares, seed=1, shots=2)
    counts = Counter(r.rendering for r in rendered)
    assert abs(counts["zero_shot"] - 160) < 35 and all(abs(counts[f] - 80) < 25 for f in ("few_shot", "cot", "options"))
    for item, r in zip(items, rendered):
        # The item's own question is last (with the trigger for CoT), its answer follows.
        assert r.messages[-2]["content"].startswith(item.messages[-1]["content"])
        assert r.messages[-1]["content"] == (item.cot if r.rendering == "cot" else item.answer)
        if r.rendering == "few_shot":
            shot_questions = [m["content"] for m in r.messages[:-2] if m["role"] == "user"]
            assert len(shot_questions) == 2 and item.messages[-1]["content"] not in shot_questions
    again = render_items(items, shares, seed=1, shots=2)
    assert [r.messages for r in again] == [r.messages for r in rendered]
    assert [r.messages for r in render_items(items, {"zero_shot": 0.5, "few_shot": 0.5}, seed=2)] != \
        [r.messages for r in rendered]
    with pytest.raises(ValueError, match="unknown: chatty"):
        render_items(items, {"chatty": 1.0}, seed=0)
    # Items that cannot take a form fall back to zero-shot instead of failing.
    bare = [Item(i.messages, i.answer) for i in items[:50]]
    assert {r.rendering for r in render_items(bare, {"cot": 0.5, "worked": 0.2, "options": 0.3}, seed=0)} == {"zero_shot"}


def test_few_shot_keeps_the_system_rule_of_its_shots():
    items = _items(20, system="Answer in capitals.") + _items(20, system="End every answer with Over.")
    for item, r in zip(items, render_items(items, {"few_shot": 1.0}, seed=0, shots=3)):
        systems = [m["content"] for m in r.messages if m["role"] == "system"]
        assert systems == [item.messages[0]["content"]]


def test_few_shot_loss_only_on_the_last_answer(tiny_tokenizer):
    items = _items(4)
    messages = render_few_shot(items[0], items[1:3])
    example = render_chat(tiny_tokenizer, messages, loss_on="last_assistant")
    taught = tiny_tokenizer.decode([t for t, m in zip(example.input_ids, example.loss_mask) if m])
    assert taught.startswith(items[0].answer) and items[1].answer not in taught


def test_prompt_templates():
    templates = [PromptTemplate("Q: {question}", "{answer}"), PromptTemplate("Answer this: {question}", "{answer}")]
    records = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(50)]
    conversations = apply_templates(records, templates, seed=0)
    assert {c[0]["content"].split(" ")[0] for c in conversations} == {"Q:", "Answer"}  # both phrasings used
    assert all(c[1] == {"role": "assistant", "content": r["answer"]} for c, r in zip(conversations, records))
    assert apply_templates(records, templates, seed=0) == conversations
    with pytest.raises(KeyError, match="needs field 'question'"):
        templates[0].render({"answer": "x"})


def _source(name, n, loss_tokens=2, **kw):
    """n examples of 2 prompt tokens and ``loss_tokens`` targets; ids tell the examples apart."""
    return Source(name, [Example([7, i] + [i] * loss_tokens, [False, False] + [True] * loss_tokens)
                         for i in range(n)], **kw)


def test_take_gives_whole_passes_before_repeats():
    rng = np.random.default_rng(0)
    picked = take(10, 25, rng)
    counts = Counter(picked.tolist())
    assert len(picked) == 25 and set(counts.values()) <= {2, 3} and sum(v == 3 for v in counts.values()) == 5
    assert len(set(take(10, 7, np.random.default_rng(1)).tolist())) == 7  # a fraction never repeats


def test_source_counts_by_epochs_and_weights():
    a, b, c = _source("a", 100, epochs=2.0), _source("b", 40, weight=3.0), _source("c", 60, weight=1.0)
    # a: two passes; b and c share their combined 100 examples 3:1.
    assert source_counts([a, b, c]) == [200, 75, 25]
    assert source_counts([_source("d", 30), _source("e", 30, epochs=0.5)]) == [30, 15]
    with pytest.raises(ValueError, match="not both"):
        source_counts([Source("x", [], weight=1.0, epochs=1.0)])
    with pytest.raises(ValueError, match="weight 0"):
        source_counts([_source("x", 3, weight=0.0)])


def test_mix_sources_report():
    examples, origin, report = mix_sources([_source("a", 10, epochs=2.5), _source("b", 4, loss_tokens=5)], seed=0)
    assert len(examples) == 29 and origin == [0] * 25 + [1] * 4
    assert [(s.name, s.available, s.used) for s in report.sources] == [("a", 10, 25), ("b", 4, 4)]
    assert report.sources[0].epochs == 2.5
    assert report.loss_tokens == 25 * 2 + 4 * 5
    assert "a: 25 of 10 examples (2.50 epochs)" in report.summary()
    again, _, _ = mix_sources([_source("a", 10, epochs=2.5), _source("b", 4, loss_tokens=5)], seed=0)
    assert [e.input_ids for e in again] == [e.input_ids for e in examples]
    with pytest.raises(ValueError, match="unique"):
        mix_sources([_source("a", 2), _source("a", 2)], seed=0)


def test_rehearsal_chunks_and_token_ratio():
    docs = [list(range(10, 10 + n)) for n in (30, 45, 12)]
    chunks = text_chunks(docs, length=16, eos_id=0)
    stream = [t for d in docs for t in (*d, 0)]
    assert len(chunks) == len(stream) // 16
    assert [t for c in chunks for t in c.input_ids] == stream[:len(chunks) * 16]
    assert all(all(c.loss_mask) and len(c) == 16 for c in chunks)
    source = rehearsal_source(chunks, weight=0.5, instruction_loss_tokens=200)
    _, _, report = mix_sources([source], seed=0)
    # Half as many loss tokens as the instruction data, rounded up to whole chunks.
    assert report.loss_tokens == 7 * 16 and 100 <= report.loss_tokens < 100 + 16
    assert mix_sources([rehearsal_source(chunks, 0.0, 200)], seed=0)[2].loss_tokens == 0
    with pytest.raises(ValueError, match="no pretraining text"):
        rehearsal_source([], 0.5, 100)
