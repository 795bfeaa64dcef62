"""The pretraining corpus of the embedded world: plain-text documents generated from a seed.

A tiny base model pretrained on this corpus should already answer world questions when
prompted zero- or few-shot, as GPT-2/GPT-3 did on web text, so the corpus holds the kinds of
text the tasks (:mod:`posttrain.world.tasks`) later ask for, in the same formats
(:mod:`posttrain.world.formats`, :func:`posttrain.world.tasks.render_plain`):

==============  ================================================================================
profile         an entity's facts as a paragraph in varied phrasings, or as an info box
fact_list       random facts, one per line or run together
forum           "Q: ...\\nA: ..." threads of fact questions, answered by the canonical sentence
                ("Tavi Quell lives in Zorbia.") or the bare value ("Zorbia")
multi_hop       two-step questions answered with a chain of thought ending "So the answer is X."
mixed_qa        Q/A threads mixing every kind below, short answers or worked ones
story           a short story, then "TL;DR: <its key sentence>" (extractive, as the tasks ask)
arithmetic      sums worked digit by digit (``formats.sum_steps``), bare equations, and Q/A
                answered "47 + 8 = 55."
word_problem    ages and prices: look a fact up, then add
spelling        words letter by letter and in capitals; "Reverse the letters: l a m p" Q/A
sorting         "Sort these numbers from smallest to largest: 7, 2, 9" -> "7, 2, 9 sorted is
                2, 7, 9.", and words alphabetically, some with reasoning
classification  "A glimmer is an animal.", "Blue is a colour." and Q/A about them
review          short product reviews labelled "Sentiment: positive/negative"
chat            ChatML transcripts without the special tokens ("user\\n...\\nassistant\\n...")
cases           facts in CAPITALS and in lowercase, so case rules have text to lean on
copying         spans repeated back, and newcomers with made-up names whose facts the text gives
                and then asks: text only copying from the context predicts (induction)
recall          a list or notes, other world text, then the same spans again (weight 0 by default)
drill           lines of a new span said again at once, one to three times: the densest copying
                text, which grows induction heads in a small model (weight 0 by default)
in_context      Q/A threads of one kind in a format drawn per thread (a tag before or after, a
                wrapper, capitals, one fixed reply): learnable only from the earlier answers
                (weight 0 by default: at 15 beside the copying kinds, the 2.2M model took up the
                formats, not the copying: zero-shot answers came in capitals or with made-up tags,
                few-shot answers with a tag of their own, and summarization fell to 0 by step 4500)
==============  ================================================================================

Kinds are drawn with the weights of :data:`DOCUMENTS`; ``generate_corpus(weights=...)`` (a
config's ``world.corpus_weights``) changes some of them.

Contamination: no held-out task problem appears in the corpus as a question or a worked
example, in any phrasing (the task suite's rule). Held-out facts are *stated* (profiles, fact
lists, stories: the base model must know them) but never asked as Q/A; held-out sums, digit
lists, words and stories (of :func:`posttrain.world.tasks.split_keys` for the same seed) are
skipped and redrawn; held-out names are never asked about in classification Q/A; the uppercase
family (held out as a whole) appears only as statements ("In capitals: L A M P."), never as its
task.

Determinism: generation uses ``random.Random`` seeded by strings and iterates only over tuples
and lists (held-out sets are used for membership only), so the same seed gives byte-identical
documents on every machine and Python version.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from posttrain.world import formats as fm
from posttrain.world.entities import (ATTRIBUTES, COLORS, FOODS, HABITATS, JOBS, Entity, World, an,
                                      fact_phrasings, fact_question, fact_sentence, kind_sentence, make_world, num_question_variants)
from posttrain.world.stories import make_story
from posttrain.world.tasks import FAMILY_SPECS, split_keys

DEFAULT_SIZE_MB = 4.0
"""Size of the default corpus in megabytes of UTF-8 text."""

WORDS = (
    "apple", "bread", "chair", "dog", "egg", "fig", "garden", "house", "ink", "jam", "kite",
    "lamp", "milk", "nest", "pear", "queen", "rain", "sun", "table", "umbrella", "van",
    "water", "box", "yarn", "zoo", "ant", "ball", "cat", "door", "goat", "island", "jar",
    "key", "leaf", "moon", "nose", "owl", "pen", "quilt", "rose", "ship", "tree", "vase",
    "wolf", "yak", "zebra", "arm", "bird", "cake", "desk", "ear", "farm", "gift", "hill",
    "iron", "juice", "king", "lion", "map", "oak", "pig", "ring", "sand", "tent", "vine",
    "wind", "cloud", "stone", "seed", "berry", "worm", "mountain", "candle", "basket",
    "window", "button", "carpet", "pillow", "wagon", "ladder", "spoon", "bottle", "mirror",
    "pocket", "shadow", "summer", "winter", "letter", "number", "market", "bridge", "garden",
    "flower", "rabbit", "pencil", "doctor", "sister", "brother", "morning", "evening", "silver",
    "golden", "little", "happy", "quiet", "yellow", "orange", "purple", "forest", "desert",
)
"""English words used by the spelling, sorting and classification documents."""

POSITIVE = ("I love it.", "It works very well.", "It is the best {t} I have ever had.", "Great value for {p} coins.",
            "My family likes it a lot.", "It is strong and looks lovely.", "I would buy it again.",
            "It makes me happy every day.", "Everything about it is wonderful.")
NEGATIVE = ("I hate it.", "It broke after one day.", "It is the worst {t} I have ever had.",
            "Not worth {p} coins.", "My family does not like it.", "It is weak and looks ugly.",
            "I would never buy it again.", "It makes me sad every day.", "Everything about it is terrible.")

_FACT_WRAPPERS = ("{q}", "{q}", "{q}", "{q}", "Answer this question about the world: {q}", "Tell me: {q}")
_ADD_TEMPLATES = ("What is {e}?", "What is {e}?", "Compute {e}.", "Work out {e}.", "What do you get if you add {w}?")
_SORT_TEMPLATES = ("Sort these numbers from smallest to largest: {l}", "Put these numbers in increasing order: {l}",
                   "Order from smallest to largest: {l}")
_REVERSE_TEMPLATES = ("Reverse the letters: {s}", "Write these letters in reverse order: {s}",
                      "Spell it backwards: {s}")
_LABELS = {"home": "Home", "job": "Job", "pet": "Pet", "age": "Age", "country": "Country",
           "river": "River", "weather": "Weather", "food": "Food", "sound": "Sound",
           "habitat": "Habitat", "type": "Type", "maker": "Maker", "price": "Price", "color": "Colour"}


# ---------------------------------------------------------------------------------------------
# What the corpus must not contain: the task suite's held-out problems.


@dataclass(frozen=True)
class HeldOut:
    """Held-out task problems of one seed; membership tests only (never iterated)."""

    facts: frozenset
    """(entity name, attribute) of held-out fact questions (and of chat-rule questions)."""
    names: frozenset
    """Entity names of held-out classification questions."""
    sums: frozenset
    """Held-out addends, as tuples, of the arithmetic and multi-step families."""
    lists: frozenset
    """Held-out number lists of the sorting family."""
    words: frozenset
    """Held-out words of the letter families (reverse, uppercase)."""
    stories: frozenset
    """Held-out stories of the summarization family, as one line of text."""


@functools.lru_cache(maxsize=4)
def heldout_problems(world: World, seed: int) -> HeldOut:
    """The held-out problems of :func:`posttrain.world.tasks.split_keys` for ``world`` and ``seed``."""
    def held(family: str) -> list:
        return split_keys(family, world, seed)["heldout"]

    def story_text(key) -> str:
        # The summarization family draws its stories from make_story too; its example records the text.
        fields = FAMILY_SPECS["summarization"].build(world, key, 0, random.Random(0), [])
        return one_line(fields["meta"]["story"])

    return HeldOut(
        facts=frozenset(tuple(k) for k in held("fact_lookup")),
        names=frozenset(k[1] for k in held("classification") if k[0] == "name"),
        sums=frozenset(tuple(k) for k in held("arithmetic") + held("multistep_arithmetic")),
        lists=frozenset(tuple(k) for k in held("sorting")),
        words=frozenset(held("reverse") + held("uppercase")),
        stories=frozenset(story_text(k) for k in held("summarization")),
    )


def one_line(text: str) -> str:
    """``text`` with every run of whitespace made one space (how a story is compared with the tasks')."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Source:
    """What a document generator draws from: the world, its held-out problems, and a random stream."""

    world: World
    held: HeldOut
    rng: random.Random

    @functools.cached_property
    def open_facts(self) -> list[tuple[Entity, str]]:
        """Facts that may be asked as questions (not held out), in world order."""
        return [(e, a) for e, a, _ in self.world.facts() if (e.name, a) not in self.held.facts]

    @functools.cached_property
    def open_names(self) -> list[Entity]:
        """Entities whose kind may be asked as a question."""
        return [e for e in self.world.entities if e.name not in self.held.names]


# ---------------------------------------------------------------------------------------------
# Question/answer samplers: (question, answer) pairs shared by the forum, mixed Q/A and chat
# documents. ``style`` is "short" (bare answer), "sentence" (the canonical full answer) or "cot".


def fact_qa(src: Source, style: str = "sentence", fact: tuple[Entity, str] | None = None) -> tuple[str, str]:
    """A question about an open fact (``fact`` or a random one), answered by the canonical
    sentence, another phrasing, the value (style "short"), or the sentence and "So the answer is"."""
    rng = src.rng
    entity, attribute = fact or rng.choice(src.open_facts)
    question = fact_question(entity, attribute, rng.randrange(num_question_variants(entity.kind, attribute)))
    question = rng.choice(_FACT_WRAPPERS).format(q=question)
    value = entity.attributes[attribute]
    if style == "short":
        return question, value
    if style == "phrasing":
        return question, rng.choice(fact_phrasings(entity, attribute))
    if style == "cot":
        return question, f"{fact_sentence(entity, attribute)} {fm.final_answer(value)}"
    return question, fact_sentence(entity, attribute)


@dataclass(frozen=True)
class HopChain:
    """A two-step question: each step is a fact sentence; ``answer`` is the last step's value."""

    question: str
    """"What colour is the pet of Tavi Quell?"."""
    steps: tuple[str, ...]
    """The fact sentences that lead to the answer, in order."""
    answer: str
    """The value the chain ends at: "green"."""


def hop_chains(world: World) -> list[HopChain]:
    """Every two-step question of the world, in world order: pet traits, country of home, maker's home."""
    return list(_hop_chains(world))


@functools.lru_cache(maxsize=4)
def _hop_chains(world: World) -> tuple[HopChain, ...]:
    chains = []
    for person in world.by_kind("person"):
        pet, home = world.get(person.attributes["pet"]), world.get(person.attributes["home"])
        first = fact_sentence(person, "pet")
        chains.append(HopChain(f"What colour is the pet of {person.name}?",
                               (first, fact_sentence(pet, "color")), pet.attributes["color"]))
        chains.append(HopChain(f"What does the pet of {person.name} eat?",
                               (first, fact_sentence(pet, "food")), pet.attributes["food"]))
        chains.append(HopChain(f"In which country does {person.name} live?",
                               (fact_sentence(person, "home"), fact_sentence(home, "country")),
                               home.attributes["country"]))
    for product in world.by_kind("product"):
        maker = world.get(product.attributes["maker"])
        chains.append(HopChain(f"Where does the maker of {product.mention} live?",
                               (fact_sentence(product, "maker"), fact_sentence(maker, "home")),
                               maker.attributes["home"]))
    return tuple(chains)


def hop_qa(src: Source, style: str = "cot") -> tuple[str, str]:
    """A two-step question, answered with its chain of thought or (style "short") the bare value."""
    chain = src.rng.choice(_hop_chains(src.world))
    if style == "short":
        return chain.question, chain.answer
    lead = "Let's think step by step. " if src.rng.random() < 0.3 else ""
    return chain.question, lead + " ".join(chain.steps) + " " + fm.final_answer(chain.answer)


def _addends(src: Source) -> list[int]:
    """Numbers to add, never a held-out problem (in either order): 2-digit + 1-digit sums like the
    tasks', three small numbers, and longer sums of up to 3-digit numbers."""
    rng = src.rng
    while True:
        shape = rng.choices(("2+1", "1+1+1", "1+1", "2+2", "any"), weights=(4, 2, 1, 2, 2))[0]
        if shape == "2+1":
            numbers = [rng.randint(0, 99), rng.randint(1, 9)]
        elif shape == "1+1+1":
            numbers = [rng.randint(1, 9) for _ in range(3)]
        elif shape == "1+1":
            numbers = [rng.randint(0, 9), rng.randint(0, 9)]
        elif shape == "2+2":
            numbers = [rng.randint(10, 99), rng.randint(10, 99)]
        else:
            numbers = [_number(rng) for _ in range(rng.choice((2, 2, 3)))]
        if rng.random() < 0.5:
            numbers.reverse()
        if not _held_sum(numbers, src.held):
            return numbers


def _held_sum(numbers: list[int], held: HeldOut) -> bool:
    """Whether adding ``numbers`` (left to right, as ``formats.sum_steps`` works it) is or contains a
    held-out problem: the whole sum, or one of its two-number steps in either order."""
    if tuple(numbers) in held.sums:
        return True
    total = numbers[0]
    for n in numbers[1:]:
        if (total, n) in held.sums or (n, total) in held.sums:
            return True
        total += n
    return False


def _number(rng: random.Random) -> int:
    digits = rng.choices((1, 2, 3), weights=(2, 6, 2))[0]
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def sum_qa(numbers: list[int], question_template: str, style: str) -> tuple[str, str]:
    """A sum as the tasks ask it: answered "47 + 8 = 55." (short) or worked digit by digit (cot)."""
    expression = " + ".join(map(str, numbers))
    words = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
    question = question_template.format(e=expression, w=words)
    if style == "cot":
        return question, fm.sum_steps(numbers)
    return question, f"{expression} = {sum(numbers)}."


def arithmetic_qa(src: Source, style: str = "cot") -> tuple[str, str]:
    """A sum of small numbers (never a held-out one)."""
    return sum_qa(_addends(src), src.rng.choice(_ADD_TEMPLATES), style)


def word_problem_qa(src: Source, style: str = "cot") -> tuple[str, str]:
    """An age or price question that needs a fact and a sum."""
    rng, world = src.rng, src.world
    while True:
        if rng.random() < 0.5:
            person, years = rng.choice(world.by_kind("person")), rng.randint(1, 30)
            question = f"How old will {person.name} be in {years} years?"
            steps, numbers = [fact_sentence(person, "age")], [int(person.attributes["age"]), years]
        else:
            a, b = rng.sample(world.by_kind("product"), 2)
            question = f"How many coins do {a.mention} and {b.mention} cost together?"
            steps = [fact_sentence(a, "price"), fact_sentence(b, "price")]
            numbers = [int(a.attributes["price"]), int(b.attributes["price"])]
        if not _held_sum(numbers, src.held):
            break
    if style == "short":
        return question, str(sum(numbers))
    return question, " ".join(steps) + " " + fm.sum_steps(numbers)


def _nonword(rng: random.Random) -> str:
    consonants, vowels = "bcdfghjklmnprstvwxz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3))) + \
        rng.choice(("", "n", "t", "s", "p"))


def _open_word(src: Source) -> str:
    """A word whose letters the corpus may work on: English, a name part, or a made-up word; never held out."""
    rng = src.rng
    while True:
        source = rng.random()
        if source < 0.5:
            word = rng.choice(WORDS)
        elif source < 0.75:
            word = rng.choice(rng.choice(src.world.entities).name.split())
        else:
            word = _nonword(rng)
        if word not in src.held.words and word.lower() not in src.held.words:
            return word


def spelling_qa(src: Source, style: str = "short") -> tuple[str, str]:
    """A letter-level question: spell a word, its first/last letter, join letters, or reverse letters."""
    rng = src.rng
    word = _open_word(src)
    task = rng.choice(("spell", "spell", "first", "last", "join", "reverse", "reverse"))
    if task == "spell":
        return rng.choice((f"How do you spell {word}?", f"Spell the word {word}.")), fm.spell(word)
    if task == "first":
        return f"What is the first letter of {word}?", word[0]
    if task == "last":
        return f"What is the last letter of {word}?", word[-1]
    if task == "join":
        return f"Join the letters {fm.spell(word)} into a word.", word
    letters, backwards = fm.spell(word), fm.spell(word[::-1])
    question = rng.choice(_REVERSE_TEMPLATES).format(s=letters)
    if style == "cot":
        return question, f"The last letter is {', then '.join(word[::-1])}. {fm.final_answer(backwards)}"
    return question, f"{letters} reversed is {backwards}."


def _number_list(src: Source) -> list[int]:
    rng = src.rng
    while True:
        n = rng.randint(3, 5)
        pool = range(10) if rng.random() < 0.6 else range(10, 100)
        numbers = rng.sample(pool, n)
        if numbers != sorted(numbers) and tuple(numbers) not in src.held.lists:
            return numbers


def sorting_qa(src: Source, style: str = "short") -> tuple[str, str]:
    """Sort numbers (as the tasks ask it) or words alphabetically; style "cot" reasons first."""
    rng = src.rng
    if rng.random() < 0.6:
        numbers = _number_list(src)
        given, ordered = fm.comma_list([str(x) for x in numbers]), sorted(numbers)
        target = fm.comma_list([str(x) for x in ordered])
        question = rng.choice(_SORT_TEMPLATES).format(l=given)
        if style == "cot":
            return question, "The smallest is " + ", then ".join(map(str, ordered)) + f". {fm.final_answer(target)}"
        return question, f"{given} sorted is {target}."
    words = _distinct_initials(rng, rng.randint(3, 5))
    given, target = fm.comma_list(words), fm.comma_list(sorted(words))
    question = f"Sort these words in alphabetical order: {given}"
    if style == "cot":
        reasons = ", ".join(f"{w} starts with {w[0]}" for w in words)
        return question, f"First letters: {reasons}. {fm.final_answer(target)}"
    return question, f"{given} sorted is {target}."


def _distinct_initials(rng: random.Random, n: int) -> list[str]:
    words: list[str] = []
    for word in rng.sample(WORDS, len(WORDS)):
        if all(word[0] != w[0] for w in words):
            words.append(word)
        if len(words) == n:
            break
    return words


def classification_qa(src: Source, style: str = "sentence") -> tuple[str, str]:
    """What kind of thing an open entity is, or which category a word belongs to."""
    rng = src.rng
    if rng.random() < 0.6 and src.open_names:
        entity = rng.choice(src.open_names)
        question = rng.choice((f"Is {entity.mention} a person, a city, an animal or a product?",
                               f"Which is {entity.mention}: a person, a city, an animal or a product?"))
        return question, entity.kind if style == "short" else kind_sentence(entity)
    category, word = _category_word(rng)
    question = f"Is {word} a colour, a job, a food or a place?"
    return question, category if style == "short" else f"{word.capitalize()} is {an(category)}."


def _category_word(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(("colour", "job", "food", "place"))
    vocab = {"colour": COLORS, "job": JOBS, "food": FOODS, "place": HABITATS}[category]
    return category, rng.choice(vocab)


def review(src: Source) -> tuple[str, str, Entity]:
    """A short product review, its sentiment ("positive"/"negative"), and the product."""
    rng = src.rng
    product = rng.choice(src.world.by_kind("product"))
    label = rng.choice(("positive", "negative"))
    bank = POSITIVE if label == "positive" else NEGATIVE
    fields = {"t": product.attributes["type"], "p": product.attributes["price"]}
    text = " ".join(s.format(**fields) for s in rng.sample(bank, rng.randint(2, 3)))
    return f"I bought {product.mention}. {text}", label, product


def sentiment_qa(src: Source, style: str = "short") -> tuple[str, str]:
    """Is a review positive or negative? Answered with the label."""
    text, label, _ = review(src)
    return f'Is this review positive or negative? "{text}"', label


QA_SAMPLERS: dict[str, Callable[[Source, str], tuple[str, str]]] = {
    "fact": fact_qa,
    "hop": hop_qa,
    "arithmetic": arithmetic_qa,
    "word_problem": word_problem_qa,
    "spelling": spelling_qa,
    "sorting": sorting_qa,
    "classification": classification_qa,
    "sentiment": sentiment_qa,
}
"""Every Q/A sampler, by kind, each called as ``sampler(source, style)``."""

_QA_WEIGHTS = {"fact": 6, "hop": 2, "arithmetic": 3, "word_problem": 1, "spelling": 3,
               "sorting": 2, "classification": 1, "sentiment": 1}
_COT_KINDS = ("fact", "hop", "arithmetic", "word_problem", "sorting", "spelling")


def _any_qa(src: Source, style: str | None = None) -> tuple[str, str]:
    rng = src.rng
    kind = rng.choices(list(_QA_WEIGHTS), weights=list(_QA_WEIGHTS.values()))[0]
    if style is None:
        style = rng.choice(("short", "sentence", "cot")) if kind in _COT_KINDS else rng.choice(("short", "sentence"))
    return QA_SAMPLERS[kind](src, style)


# ---------------------------------------------------------------------------------------------
# Documents.


def _qa_thread(pairs: list[tuple[str, str]], rng: random.Random) -> str:
    title = rng.choice(("", "", "Forum: questions and answers\n\n", "Ask the town\n\n", "Reader questions\n\n"))
    return title + "\n\n".join(fm.qa_block(q, a) for q, a in pairs)


def _doc_profile(src: Source) -> str:
    rng = src.rng
    entity = rng.choice(src.world.entities)
    attributes = list(ATTRIBUTES[entity.kind])
    rng.shuffle(attributes)
    if rng.random() < 0.3:
        rows = [f"Name: {entity.name}", f"Kind: {entity.kind}"]
        for a in attributes:
            value = entity.attributes[a] + (" coins" if a == "price" else "")
            label = "Favourite colour" if (entity.kind, a) == ("person", "color") else _LABELS[a]
            rows.append(f"{label}: {value}")
        return "\n".join(rows)
    sentences = [kind_sentence(entity)] if rng.random() < 0.5 else []
    sentences += [rng.choice(fact_phrasings(entity, a)) for a in attributes]
    sep = "\n" if rng.random() < 0.3 else " "
    return f"About {entity.name}\n" + sep.join(sentences) if rng.random() < 0.5 else sep.join(sentences)


def _doc_fact_list(src: Source) -> str:
    rng = src.rng
    facts = src.world.facts()
    picked = [rng.choice(facts) for _ in range(rng.randint(6, 14))]
    sentences = [rng.choice(fact_phrasings(e, a)) for e, a, _ in picked]
    return ("\n" if rng.random() < 0.5 else " ").join(sentences)


def _doc_forum(src: Source) -> str:
    rng = src.rng
    style = rng.choices(("sentence", "short", "phrasing", "cot"), weights=(6, 3, 1, 1))[0]
    n = rng.randint(3, 8)
    if rng.random() < 0.4:  # a thread about one entity: its open facts, each once
        entity = rng.choice(src.open_facts)[0]
        facts = [f for f in src.open_facts if f[0] is entity]
        facts = rng.sample(facts, min(n, len(facts)))
    else:
        facts = [rng.choice(src.open_facts) for _ in range(n)]
    return _qa_thread([fact_qa(src, style, f) for f in facts], rng)


def _doc_multi_hop(src: Source) -> str:
    style = src.rng.choices(("cot", "short"), weights=(3, 1))[0]
    return _qa_thread([hop_qa(src, style) for _ in range(src.rng.randint(2, 5))], src.rng)


def _doc_mixed_qa(src: Source) -> str:
    style = src.rng.choice((None, "short"))
    return _qa_thread([_any_qa(src, style) for _ in range(src.rng.randint(3, 7))], src.rng)


def _doc_story(src: Source) -> str:
    story = make_story(src.rng, src.world)
    while one_line(story.text) in src.held.stories:  # a held-out summarization problem: draw another
        story = make_story(src.rng, src.world)
    return f"{story.text}\nTL;DR: {story.summary}"


def _doc_arithmetic(src: Source) -> str:
    rng = src.rng
    form = rng.choice(("equations", "worked", "qa_short", "qa_worked", "qa_worked"))
    if form == "equations":
        lines = []
        for _ in range(rng.randint(5, 12)):
            numbers = _addends(src)
            lines.append(f"{' + '.join(map(str, numbers))} = {sum(numbers)}")
        return "\n".join(lines)
    if form == "worked":
        numbers = _addends(src)
        return f"Let's add {' and '.join(map(str, numbers))}.\n{fm.sum_steps(numbers)}"
    style = "short" if form == "qa_short" else "cot"
    return _qa_thread([arithmetic_qa(src, style) for _ in range(rng.randint(3, 6))], rng)


def _doc_word_problem(src: Source) -> str:
    style = src.rng.choices(("cot", "short"), weights=(3, 1))[0]
    return _qa_thread([word_problem_qa(src, style) for _ in range(src.rng.randint(2, 4))], src.rng)


def _doc_spelling(src: Source) -> str:
    rng = src.rng
    form = rng.random()
    if form < 0.5:
        style = rng.choice(("short", "cot"))
        return _qa_thread([spelling_qa(src, style) for _ in range(rng.randint(4, 8))], rng)
    if form < 0.6:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return (f"The alphabet: {fm.spell(letters)}.\nIn capitals: {fm.spell(letters.upper())}.\n"
                + " ".join(f"Small {c}, capital {c.upper()}." for c in rng.sample(letters, 8)))
    lines = []
    for _ in range(rng.randint(3, 6)):
        word = _open_word(src)
        lines.append(f"The word {word} is spelled {fm.spell(word)}. In capitals: {fm.spell(word.upper())}. "
                     f"Backwards: {fm.spell(word[::-1])}.")
    return "\n".join(lines)


def _doc_sorting(src: Source) -> str:
    style = src.rng.choice(("short", "cot"))
    return _qa_thread([sorting_qa(src, style) for _ in range(src.rng.randint(3, 6))], src.rng)


def _doc_classification(src: Source) -> str:
    rng = src.rng
    if rng.random() < 0.5:
        return _qa_thread([classification_qa(src, rng.choice(("short", "sentence")))
                           for _ in range(rng.randint(3, 6))], rng)
    lines = [kind_sentence(rng.choice(src.world.entities)) for _ in range(rng.randint(3, 6))]
    for _ in range(rng.randint(2, 4)):
        category, word = _category_word(rng)
        lines.append(f"{word.capitalize()} is {an(category)}.")
    rng.shuffle(lines)
    return "\n".join(lines)


def _doc_review(src: Source) -> str:
    rng = src.rng
    if rng.random() < 0.4:
        return _qa_thread([sentiment_qa(src) for _ in range(rng.randint(2, 4))], rng)
    blocks = []
    for _ in range(rng.randint(2, 4)):
        text, label, product = review(src)
        blocks.append(f"Review of the {product.name}: {text}\nSentiment: {label}")
    return "\n\n".join(blocks)


def _doc_chat(src: Source) -> str:
    rng = src.rng
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        turns.append(("system", "You are a helpful assistant."))
    if rng.random() < 0.3:
        turns += [("user", "Hello!"), ("assistant", "Hello! How can I help you today?")]
    for _ in range(rng.randint(1, 3)):
        question, answer = _any_qa(src)
        turns += [("user", question), ("assistant", answer)]
    return fm.chat_transcript(turns)


def _doc_cases(src: Source) -> str:
    """Facts shouted in capitals or jotted in lowercase: the only all-caps and all-lowercase words."""
    rng = src.rng
    facts = src.world.facts()
    sentences = [rng.choice(fact_phrasings(e, a)) for e, a, _ in (rng.choice(facts) for _ in range(rng.randint(3, 6)))]
    if rng.random() < 0.5:
        return "Town crier: " + " ".join(s.upper() for s in sentences)
    return "My notes: " + " ".join(s.lower() for s in sentences)


def _random_span(src: Source) -> str:
    """A string new to the corpus, to be copied: spelled random letters, digits, or a run of words."""
    rng = src.rng
    form = rng.random()
    if form < 0.35:
        while True:
            letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(6, 12)))
            if letters not in src.held.words:
                return fm.spell(letters)
    if form < 0.6:
        return " ".join(rng.choice("0123456789") for _ in range(rng.randint(5, 12)))
    return " ".join(rng.choice(WORDS) if rng.random() < 0.6 else _nonword(rng) for _ in range(rng.randint(3, 8)))


def _doc_copying(src: Source) -> str:
    """Text that can only be predicted by copying from earlier in the document (induction): spans
    repeated back, and newcomers with made-up names whose facts are given in the text and then asked."""
    rng = src.rng
    if rng.random() < 0.5:
        lead = rng.choice(("Repeat after me: {s}\n{s}", "Copy this: {s}\nCopy: {s}", "Say it twice: {s}. {s}.",
                           "Q: Repeat this: {s}\nA: {s}"))
        return "\n\n".join(lead.format(s=_random_span(src)) for _ in range(rng.randint(2, 4)))
    name = _nonword(rng).capitalize()
    city = rng.choice(src.world.by_kind("city")).name
    color, thing, job = rng.choice(COLORS), rng.choice(WORDS), rng.choice(JOBS)
    story = (f"A stranger called {name} came to {city}. {name} is {an(job)} and carries {an(color)} {thing}. "
             f"Everyone in {city} talked about {name}.")
    pairs = [(f"Who came to {city}?", f"{name} came to {city}."),
             (f"What does {name} carry?", f"{name} carries {an(color)} {thing}."),
             (f"What is the job of {name}?", f"{name} is {an(job)}.")]
    rng.shuffle(pairs)
    qa = "\n\n".join(fm.qa_block(q, a) for q, a in pairs[:rng.randint(1, 3)])
    return f"{story}\n\n{qa}" if rng.random() < 0.7 else f"{story}\nTL;DR: {name} came to {city}."


def _filler(src: Source, n: int) -> str:
    """``n`` sentences of world text (between a span and its repetition)."""
    facts = src.world.facts()
    return " ".join(src.rng.choice(fact_phrasings(e, a)) for e, a, _ in (src.rng.choice(facts) for _ in range(n)))


def _doc_recall(src: Source) -> str:
    """Spans that come back after other text: a list recalled, or notes said again in another order.
    Only a model that looks back and copies (an induction head) predicts the second appearance."""
    rng = src.rng
    if rng.random() < 0.5:
        label = rng.choice(("Shopping list", "Password", "Secret words", "Today's letters", "Key", "Station names"))
        items = [_random_span(src) for _ in range(rng.randint(1, 3))]
        again = rng.choice(("Again, the {l}: {s}.", "Once more: {s}.", "To remember: {s}.", "The {l} was {s}."))
        return (f"{label}: {'; '.join(items)}.\n{_filler(src, rng.randint(1, 4))}\n"
                + again.format(l=label.lower(), s="; ".join(items)))
    spans = [_random_span(src) for _ in range(rng.randint(2, 4))]
    parts = []
    for span in spans:
        parts += [f"Note: {span}.", _filler(src, rng.randint(0, 2))]
    rng.shuffle(spans)
    parts += [f"Note again: {span}." for span in spans]
    return "\n".join(p for p in parts if p)


def _doc_drill(src: Source) -> str:
    """A typing drill: lines of a new span, a few other letters, then the span said again, one to
    three times. The densest copying text there is: most of it is predictable only by looking back."""
    rng = src.rng
    lines = []
    for _ in range(rng.randint(6, 14)):
        span = _random_span(src)
        other = " ".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(0, 6)))
        lines.append(". ".join([span] + ([other] if other else []) + [span] * rng.randint(1, 3)) + ".")
    return rng.choice(("Typing practice", "Drill", "Copy each line", "Practice sheet")) + "\n" + "\n".join(lines)


def _tag(rng: random.Random) -> str:
    """A made-up decoration: a word or nonword, capitalized, with a stop ("Zorp.", "Lamp!")."""
    word = rng.choice(WORDS) if rng.random() < 0.5 else _nonword(rng)
    return word.capitalize() + rng.choice((".", ".", "!"))


_WRAPS = ("Answer: {a}", "-> {a}", "({a})", "The reply is: {a}", "{a} That is all.", "Well, {a}", "Sure: {a}")


def _answer_format(rng: random.Random) -> Callable[[str], str]:
    """One thread's answer format, drawn at random: a tag after or before, a wrapper, capitals, or
    one fixed reply to everything. Nothing but the thread's earlier answers shows which."""
    form = rng.choices(("suffix", "prefix", "wrap", "capitals", "constant"), weights=(3, 2, 2, 1, 2))[0]
    if form == "suffix":
        tag = _tag(rng)
        return lambda a: f"{a} {tag}"
    if form == "prefix":
        tag = _tag(rng)
        return lambda a: f"{tag} {a}"
    if form == "wrap":
        wrap = rng.choice(_WRAPS)
        return lambda a: wrap.format(a=a)
    if form == "capitals":
        return str.upper
    reply = " ".join(rng.choice(WORDS) if rng.random() < 0.7 else _nonword(rng) for _ in range(rng.randint(2, 5)))
    reply = reply.capitalize() + "."
    return lambda a: reply


def _doc_in_context(src: Source) -> str:
    """Questions of one kind whose answers share a format drawn for the thread (a tag, a wrapper,
    capitals, one fixed reply): only the earlier solved examples show the format, so predicting the
    later answers is learning in context, as few-shot prompts ask of a base model."""
    rng = src.rng
    kind = rng.choices(list(_QA_WEIGHTS), weights=list(_QA_WEIGHTS.values()))[0]
    style = rng.choice(("short", "sentence"))
    form = _answer_format(rng)
    pairs = [QA_SAMPLERS[kind](src, style) for _ in range(rng.randint(4, 8))]
    return "\n\n".join(fm.qa_block(q, form(a)) for q, a in pairs)


DOCUMENTS: dict[str, tuple[float, Callable[[Source], str]]] = {
    "profile": (14, _doc_profile),
    "fact_list": (12, _doc_fact_list),
    "forum": (15, _doc_forum),
    "multi_hop": (4, _doc_multi_hop),
    "mixed_qa": (10, _doc_mixed_qa),
    "story": (9, _doc_story),
    "arithmetic": (10, _doc_arithmetic),
    "word_problem": (4, _doc_word_problem),
    "spelling": (9, _doc_spelling),
    "sorting": (5, _doc_sorting),
    "classification": (3, _doc_classification),
    "review": (3, _doc_review),
    "chat": (5, _doc_chat),
    "cases": (3, _doc_cases),
    "copying": (6, _doc_copying),
    "recall": (0, _doc_recall),
    "drill": (0, _doc_drill),
    "in_context": (0, _doc_in_context),
}
"""Document kinds: (relative weight, generator). Weights count documents, not bytes."""


def generate_corpus(seed: int = 0, size_mb: float = DEFAULT_SIZE_MB, world: World | None = None,
                    split: str = "train", weights: dict[str, float] | None = None) -> list[str]:
    """Documents of the world of ``seed`` until they hold ``size_mb`` megabytes of UTF-8 text.

    Byte-identical for the same (seed, size_mb, world, split, weights). ``split`` names an
    independent stream of documents about the same world ("train", "heldout", ...): held-out text
    never repeats the training stream's documents (facts themselves are shared, by design).
    ``weights`` overrides the relative weight of some document kinds (:data:`DOCUMENTS`).
    """
    if size_mb <= 0:
        raise ValueError(f"size_mb must be positive, got {size_mb}")
    unknown = sorted(set(weights or {}) - set(DOCUMENTS))
    if unknown:
        raise ValueError(f"unknown document kind(s) {', '.join(unknown)}; the kinds are {', '.join(DOCUMENTS)}")
    world = world if world is not None else make_world(seed)
    src = Source(world, heldout_problems(world, seed), random.Random(f"corpus-{seed}-{split}"))
    kinds = list(DOCUMENTS)
    weights = [(weights or {}).get(k, DOCUMENTS[k][0]) for k in kinds]
    target, total, docs = int(size_mb * 1_000_000), 0, []
    while total < target:
        kind = src.rng.choices(kinds, weights=weights)[0]
        doc = DOCUMENTS[kind][1](src)
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


def write_corpus(path: str, seed: int = 0, size_mb: float = DEFAULT_SIZE_MB, split: str = "train") -> int:
    """Write the corpus as JSONL records ``{"text": ...}`` (the "text" data format); returns the document count."""
    docs = generate_corpus(seed, size_mb, split=split)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(docs)
