"""The embedded world's universe, corpus, tokenizer and shipped base model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest

from posttrain.world import base_model_path, formats as fm, generate_corpus, make_world
from posttrain.world.entities import (ATTRIBUTES, NUMBER_RANGES, REFERENCE_ATTRIBUTES, VOCABULARIES, fact_phrasings,
                                      fact_question, fact_sentence, num_question_variants)

SMALL_MB = 0.05


def digest(docs: list[str]) -> str:
    return hashlib.sha256("\x00".join(docs).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def world():
    return make_world(0)


def shipped_corpus_record() -> dict:
    return json.loads((base_model_path().parent / "corpus.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpus():
    """1 MB of the corpus in the shipped base model's mix of document kinds."""
    return generate_corpus(0, 1.0, weights=shipped_corpus_record().get("weights"))


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_corpus_and_other_seeds_differ():
    first = digest(generate_corpus(0, SMALL_MB))
    assert digest(generate_corpus(0, SMALL_MB)) == first
    assert digest(generate_corpus(1, SMALL_MB)) != first
    assert digest(generate_corpus(0, SMALL_MB, split="heldout")) != first
    assert make_world(0) == make_world(0) and make_world(0) != make_world(1)


def test_corpus_does_not_depend_on_the_hash_seed():
    code = ("import hashlib; from posttrain.world import generate_corpus; "
            f"print(hashlib.sha256(chr(0).join(generate_corpus(3, {SMALL_MB})).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed, "PATH": ""},
                              capture_output=True, text=True, check=True).stdout.strip() for seed in ("1", "2")}
    assert digests == {digest(generate_corpus(3, SMALL_MB))}


def test_corpus_size_follows_size_mb():
    for size in (0.02, 0.1):
        n_bytes = sum(len(d.encode("utf-8")) for d in generate_corpus(0, size))
        assert size * 1e6 <= n_bytes < size * 1e6 + 5_000


# --- the world -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "default", "large", 20])
def test_world_facts_are_consistent(size):
    w = make_world(5, size)
    names = [e.name for e in w.entities]
    assert len({n.lower() for n in names}) == len(names), "names must be unique, ignoring case"
    people = w.by_kind("person")
    assert len({p.name.split()[0] for p in people}) == len(people), "first names must be unique"
    vocab_words = {v.lower() for vocab in VOCABULARIES.values() for v in vocab}
    assert not any(n.lower() in vocab_words for n in names)
    for entity, attribute, value in w.facts():
        key = (entity.kind, attribute)
        if key in REFERENCE_ATTRIBUTES:
            assert w.get(value).kind == REFERENCE_ATTRIBUTES[key]
        elif key in VOCABULARIES:
            assert value in VOCABULARIES[key]
        else:
            lo, hi = NUMBER_RANGES[key]
            assert value.isdigit() and lo <= int(value) <= hi
    assert len(w.facts()) == sum(len(ATTRIBUTES[e.kind]) for e in w.entities)


def test_default_world_has_a_few_hundred_facts(world):
    assert 200 <= len(world.facts()) <= 400
    with pytest.raises(KeyError, match="no entity named"):
        world.get("Nobody Atall")


def test_fact_sentences_and_questions(world):
    for entity, attribute, value in world.facts():
        phrasings = fact_phrasings(entity, attribute)
        assert phrasings[0] == fact_sentence(entity, attribute)
        assert all(value.lower() in p.lower() and p.endswith(".") for p in phrasings)
        assert value in phrasings[0]
        assert len(set(phrasings)) == len(phrasings) >= 3
        questions = {fact_question(entity, attribute, v) for v in range(num_question_variants(entity.kind, attribute))}
        assert len(questions) >= 3 and all(q.endswith("?") for q in questions)
    tavi = world.by_kind("person")[0]
    assert fact_sentence(tavi, "home") == f"{tavi.name} lives in {tavi.attributes['home']}."
    with pytest.raises(KeyError, match="has no attribute"):
        fact_sentence(tavi, "river")


# --- shared formats --------------------------------------------------------------------------


def test_addition_steps_by_hand():
    assert fm.addition_steps(23, 48) == (
        "Ones: 3 + 8 = 11, write 1, carry 1. Tens: 2 + 4 + 1 = 7, write 7, carry 0. So 23 + 48 = 71.")
    assert fm.addition_steps(95, 7) == (
        "Ones: 5 + 7 = 12, write 2, carry 1. Tens: 9 + 0 + 1 = 10, write 0, carry 1. "
        "Hundreds: carry 1, write 1. So 95 + 7 = 102.")
    assert fm.sum_steps([4, 9, 6]) == (
        "First, 4 + 9. Ones: 4 + 9 = 13, write 3, carry 1. Tens: carry 1, write 1. So 4 + 9 = 13. "
        "Then, 13 + 6. Ones: 3 + 6 = 9, write 9, carry 0. Tens: 1 + 0 + 0 = 1, write 1, carry 0. So 13 + 6 = 19. "
        "So the answer is 19.")


def test_addition_steps_written_digits_spell_the_sum():
    for a, b in [(0, 0), (9, 9), (59, 9), (123, 877), (999, 1), (40, 305)]:
        steps = fm.addition_steps(a, b)
        written = re.findall(r"write (\d)", steps)
        assert int("".join(reversed(written))) == a + b
        assert steps.endswith(f"So {a} + {b} = {a + b}.")


def test_spelling_and_prompts():
    assert fm.spell("lamp") == "l a m p" and fm.unspell("l a m p") == "lamp"
    prompt = fm.qa_prompt([("What is 2 + 2?", "2 + 2 = 4.")], "What is 3 + 4?")
    assert prompt == "Q: What is 2 + 2?\nA: 2 + 2 = 4.\n\nQ: What is 3 + 4?\nA:"


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_states_every_fact_many_times(corpus, world):
    text = "\n".join(corpus)
    counts = [sum(text.count(p) for p in fact_phrasings(e, a)) for e, a, _ in world.facts()]
    assert min(counts) >= 5, f"a fact is stated only {min(counts)} times in 1 MB"


def test_corpus_has_every_document_kind_and_many_qa_blocks(corpus):
    text = "\n\n".join(corpus)
    for marker in ("TL;DR: ", "So the answer is ", "Ones: ", " is spelled ", " sorted is ", "Sentiment: ",
                   "\nassistant\n", "Name: ", "Town crier: "):
        assert marker in text, marker
    qa_docs = [d for d in corpus if d.count("\nA: ") >= 3]
    assert len(qa_docs) > len(corpus) / 4
    # Answers follow "A: " with exactly one space and take one line.
    assert not re.search(r"\nA:(?! \S)", text)
    assert all(block.count("\n") <= 1 for d in qa_docs for block in d.split("\n\n") if block.startswith("Q: "))


def test_document_weights_change_the_mix_and_recall_documents_repeat_their_spans():
    default = generate_corpus(0, 0.2)
    assert not any(d.startswith("Note: ") for d in default)  # recall documents are off by default
    mixed = generate_corpus(0, 0.2, weights={"recall": 40, "copying": 20})
    notes = [d for d in mixed if d.startswith("Note: ")]
    assert len(notes) > 20 and digest(mixed) != digest(default)
    for doc in notes:  # every note comes back after the others: only copying predicts it
        said = [line[len("Note: "):] for line in doc.split("\n") if line.startswith("Note: ")]
        again = [line[len("Note again: "):] for line in doc.split("\n") if line.startswith("Note again: ")]
        assert sorted(said) == sorted(again) and len(said) >= 2
    assert generate_corpus(0, 0.2, weights={"recall": 40, "copying": 20}) == mixed
    drills = [d for d in generate_corpus(0, 0.1, weights={"drill": 50}) if d.startswith("Drill\n")]
    assert len(drills) > 5
    for line in (line for d in drills for line in d.split("\n")[1:]):  # span. [other.] span. (span.)*
        parts = line.rstrip(".").split(". ")
        assert parts[-1] == parts[0] and len(parts) >= 2, line
    with pytest.raises(ValueError, match="unknown document kind.*recal"):
        generate_corpus(0, 0.2, weights={"recal": 1})


def test_in_context_threads_answer_in_one_format_that_only_their_examples_show():
    from posttrain.world.corpus import DOCUMENTS

    threads = generate_corpus(0, 0.1, weights={kind: float(kind == "in_context") for kind in DOCUMENTS})
    assert len(threads) > 20
    shapes = set()
    for doc in threads:
        answers = [block.split("\nA: ", 1)[1] for block in doc.split("\n\n")]
        assert len(answers) >= 4
        if len(set(answers)) == 1:
            shapes.add("one reply")
        elif all(a == a.upper() for a in answers):
            shapes.add("capitals")
        else:  # a tag or wrapper: every answer opens or ends the same way
            opening, ending = os.path.commonprefix(answers), os.path.commonprefix([a[::-1] for a in answers])
            assert opening or ending.lstrip("."), doc
            shapes.add("tag")
    assert shapes == {"one reply", "capitals", "tag"}


def test_a_config_names_document_kinds_that_exist():
    from posttrain.config import ConfigError, load_config
    from posttrain.recipes.config import PretrainConfig

    cfg = load_config(PretrainConfig, None, ["world.corpus_weights={recall: 30}"])
    assert cfg.world.corpus_weights == {"recall": 30.0}
    with pytest.raises(ConfigError, match="world.corpus_weights: unknown document kind.*copyng.*the kinds are"):
        load_config(PretrainConfig, None, ["world.corpus_weights={copyng: 3}"])
    with pytest.raises(ConfigError, match="story: weights must be >= 0"):
        load_config(PretrainConfig, None, ["world.corpus_weights={story: -1}"])


def test_corpus_holds_no_heldout_task_problem(corpus, world):
    from posttrain.world.tasks import split_keys

    text = "\n".join(corpus)
    held = {f: split_keys(f, world, 0)["heldout"] for f in
            ("fact_lookup", "arithmetic", "multistep_arithmetic", "sorting", "reverse", "uppercase", "classification")}
    sums = {tuple(k) for k in held["arithmetic"] + held["multistep_arithmetic"]}
    # Every sum outside a scratchpad's digit columns ("Tens: 2 + 4 + 1", "TENS: ..." in capitals): neither it nor
    # a step of it is held out.
    for match in re.finditer(r"(?<![\d])(?<![sS]: )(?<!\+ )\d+(?: \+ \d+)+(?![\d])", text):
        numbers = [int(x) for x in match.group().split(" + ")]
        assert tuple(numbers) not in sums, match.group()
        total = numbers[0]
        for n in numbers[1:]:
            assert (total, n) not in sums and (n, total) not in sums, match.group()
            total += n
    for key in held["sorting"]:
        assert f": {fm.comma_list([str(x) for x in key])}\n" not in text
    for word in held["reverse"] + held["uppercase"]:
        for form in (f"spelled {fm.spell(word)}.", f": {fm.spell(word)}\n", f"word {word} ", f"A: {fm.spell(word)}\n"):
            assert form not in text
    for name, attribute in held["fact_lookup"]:
        entity = world.get(name)
        for v in range(num_question_variants(entity.kind, attribute)):
            assert f"{fact_question(entity, attribute, v)}\n" not in text
    for key in held["classification"]:
        if key[0] == "name":
            assert f"Is {world.get(key[1]).mention} a person" not in text


def test_corpus_tells_no_heldout_story(corpus, world):
    from posttrain.world.tasks import FAMILY_SPECS, split_keys

    stories = {" ".join(d.split("\nTL;DR:")[0].split()) for d in corpus if "\nTL;DR:" in d}
    held = split_keys("summarization", world, 0)["heldout"]
    build = FAMILY_SPECS["summarization"].build
    held_texts = {build(world, key, 0, random.Random(0), [])["meta"]["story"] for key in held}
    assert len(stories) > 100 and not stories & held_texts


def test_heldout_facts_are_still_stated(corpus, world):
    from posttrain.world.tasks import split_keys

    text = "\n".join(corpus)
    for name, attribute in split_keys("fact_lookup", world, 0)["heldout"]:
        assert any(p in text for p in fact_phrasings(world.get(name), attribute))


def test_write_corpus_jsonl(tmp_path):
    from posttrain.world.corpus import write_corpus

    path = tmp_path / "corpus.jsonl"
    n = write_corpus(str(path), seed=0, size_mb=SMALL_MB)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == n and [json.loads(l)["text"] for l in lines] == generate_corpus(0, SMALL_MB)


# --- the tokenizer ---------------------------------------------------------------------------


def test_world_tokenizer_splits_digits_and_round_trips():
    from posttrain.world.tokenizer import build_world_tokenizer

    docs = generate_corpus(0, 0.2)
    tok = build_world_tokenizer(docs, vocab_size=600)
    ids = tok("What is 347 + 58?", add_special_tokens=False)["input_ids"]
    digit_tokens = [t for t in tok.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert digit_tokens == ["3", "4", "7", "5", "8"]
    for doc in docs[:50]:
        assert tok.decode(tok(doc, add_special_tokens=False)["input_ids"]) == doc
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# --- the shipped base model ------------------------------------------------------------------


def test_shipped_base_model_was_trained_on_todays_corpus():
    """The shipped model's corpus (recorded in assets/corpus.json) is what the code generates now.

    If this fails, the corpus or the task splits changed since the base model was made: remake it
    (assets/README.md), or held-out task problems may be in what it was trained on.
    """
    record = shipped_corpus_record()
    docs = generate_corpus(record["seed"], record["size_mb"], weights=record.get("weights"))
    assert (len(docs), digest(docs)) == (record["documents"], record["sha256"])


@pytest.fixture(scope="module")
def base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = base_model_path()
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _mean_loss(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_shipped_base_model_loads_and_beats_a_random_model_on_heldout_text(base):
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = base
    assert model.dtype == torch.float32 and model.config.model_type == "llama"
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 6e6
    assert (base_model_path() / "model.safetensors").stat().st_size < 25e6
    text = "\n\n".join(generate_corpus(0, 0.01, split="heldout"))
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:1024]])
    random_model = AutoModelForCausalLM.from_config(model.config).eval()
    trained, untrained = _mean_loss(model, ids), _mean_loss(random_model, ids)
    assert trained < 0.5 * untrained, (trained, untrained)


def test_shipped_tokenizer_splits_digits(base):
    _, tok = base
    tokens = tok.convert_ids_to_tokens(tok("It costs 4096 coins.", add_special_tokens=False)["input_ids"])
    assert [t for t in tokens if any(c.isdigit() for c in t)] == ["4", "0", "9", "6"]
    assert "<|im_start|>" in tok.chat_template


def test_shipped_base_model_completes_world_facts(base, world):
    """Greedy completion of fact statements: chance is about 1 in 10 (or 1 in dozens for names)."""
    import torch

    model, tok = base
    tok.padding_side = "left"
    facts = world.facts()[::3]
    prompts, values = [], []
    for entity, attribute, value in facts:
        sentence = fact_sentence(entity, attribute)
        prompts.append(sentence[: sentence.rfind(value)].rstrip())
        values.append(value)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    completions = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    rate = sum(c.strip().startswith(v) for c, v in zip(completions, values)) / len(values)
    assert rate >= 0.6, f"only {rate:.0%} of {len(values)} facts completed"
