"""The pretraining corpus of the embedded world: plain-text documents generated from a seed.

A tiny base model pretrained on this corpus should already answer world questions when
prompted zero- or few-shot, as GPT-2/GPT-3 did on web text, so the corpus holds the same kinds
of text the tasks later ask for, in the formats of :mod:`posttrain.world.formats`:

==================  ===========================================================================
profile             an entity's facts as a paragraph in varied phrasings, or as an info box
fact_list           random facts, one per line or run together
forum               "Q: ...\\nA: ..." threads of fact questions (sentence or short answers)
multi_hop           two-step questions answered with a chain of thought ("So the answer is ...")
mixed_qa            Q/A threads mixing every task kind (facts, sums, spelling, sorting, ...)
story               a short story about a person, then "TL;DR: <one-sentence summary>"
arithmetic          sums worked digit by digit, bare equations, and Q/A with short answers
word_problem        ages and prices: look a fact up, then add
spelling            words letter by letter, in capitals, backwards, first and last letters
sorting             words alphabetically and numbers by size, some with reasoning
classification      "A glimmer is an animal.", "Blue is a colour."
review              short product reviews labelled "Sentiment: positive/negative"
chat                ChatML transcripts without the special tokens ("user\\n...\\nassistant\\n...")
==================  ===========================================================================

Every fact is stated many times in many phrasings; stories and word problems use the world's
true facts, so nothing in the corpus contradicts the world. Generation uses
``random.Random`` seeded by strings and iterates only over tuples and lists, so the same seed
gives byte-identical documents on every machine and Python version.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable

from posttrain.world import formats as fm
from posttrain.world.entities import (ATTRIBUTES, COLORS, FOODS, HABITATS, JOBS, PRODUCT_TYPES,
                                      SOUNDS, WEATHERS, Entity, World, an, fact_phrasings,
                                      fact_question, fact_sentence, first_name, kind_sentence,
                                      make_world, num_question_variants)

DEFAULT_SIZE_MB = 4.0
"""Size of the default corpus in megabytes of UTF-8 text."""

WORDS = (
    "apple", "bread", "chair", "dog", "egg", "fig", "garden", "house", "ink", "jam", "kite",
    "lamp", "milk", "nest", "orange", "pear", "queen", "rain", "sun", "table", "umbrella",
    "van", "water", "box", "yarn", "zoo", "ant", "ball", "cat", "door", "fish", "goat", "hat",
    "island", "jar", "key", "leaf", "moon", "nut", "owl", "pen", "quilt", "rose", "ship",
    "tree", "vase", "wolf", "yak", "zebra", "arm", "bird", "cake", "desk", "ear", "farm",
    "gift", "hill", "iron", "juice", "king", "lion", "map", "nose", "oak", "pig", "ring",
    "sand", "tent", "vine", "wind", "cloud", "stone", "river", "bell", "boat", "clock",
    "drum", "cart", "radio", "kettle", "honey", "seed", "grass", "berry", "worm", "forest",
    "desert", "swamp", "meadow", "cave", "sea", "mountain", "red", "blue", "green", "yellow",
    "purple", "white", "black", "brown", "pink", "baker", "farmer", "teacher", "painter",
    "doctor", "sailor", "singer", "builder", "tailor", "miner", "writer", "cook", "candle",
    "basket", "window", "button", "carpet", "pillow", "wagon", "ladder", "spoon", "bottle",
    "mirror", "pocket", "shadow", "summer", "winter", "letter", "number", "market", "bridge",
)
"""English words used by the spelling, sorting and classification documents."""

POSITIVE = ("I love it.", "It works very well.", "It is the best {t} I have ever had.", "Great value for {p} coins.",
            "My family likes it a lot.", "It is strong and looks lovely.", "I would buy it again.",
            "It makes me happy every day.", "Everything about it is wonderful.")
NEGATIVE = ("I hate it.", "It broke after one day.", "It is the worst {t} I have ever had.",
            "Not worth {p} coins.", "My family does not like it.", "It is weak and looks ugly.",
            "I would never buy it again.", "It makes me sad every day.", "Everything about it is terrible.")

_LABELS = {"home": "Home", "job": "Job", "pet": "Pet", "age": "Age", "country": "Country",
           "river": "River", "weather": "Weather", "food": "Food", "sound": "Sound",
           "habitat": "Habitat", "type": "Type", "maker": "Maker", "price": "Price", "color": "Colour"}
_PLACES = ("the bakery", "the old bridge", "the market", "the garden", "a big tree", "the school",
           "the river bank", "the barn", "the library", "the town square")
_ACTIVITIES = {"baker": "baked bread", "farmer": "worked in the fields", "teacher": "taught a class",
               "painter": "painted a wall", "doctor": "helped the sick", "sailor": "sailed a boat",
               "singer": "sang songs", "builder": "built a house", "tailor": "sewed a coat",
               "miner": "dug for stones", "writer": "wrote a book", "cook": "cooked soup"}
_TOPICS = ("the weather", "their pets", "the market", "an old song", "a good book", "the river")


# ---------------------------------------------------------------------------------------------
# Question/answer samplers: (question, answer) pairs shared by the forum, mixed Q/A and chat
# documents. ``style`` is "short" (bare value), "sentence" (a full sentence) or "cot" (worked).


def fact_qa(rng: random.Random, world: World, style: str = "sentence",
            entity: Entity | None = None) -> tuple[str, str]:
    """A question about one fact and its answer: the canonical sentence, another phrasing, or the value."""
    entity = entity or rng.choice(world.entities)
    attribute = rng.choice(ATTRIBUTES[entity.kind])
    question = fact_question(entity, attribute, rng.randrange(num_question_variants(entity.kind, attribute)))
    if style == "short":
        return question, entity.attributes[attribute]
    if style == "phrasing":
        return question, rng.choice(fact_phrasings(entity, attribute))
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


def hop_qa(rng: random.Random, world: World, style: str = "cot") -> tuple[str, str]:
    """A two-step question, answered with its chain of thought or (style "short") the bare value."""
    chain = rng.choice(_hop_chains(world))
    if style == "short":
        return chain.question, chain.answer
    lead = "Let's think step by step. " if rng.random() < 0.3 else ""
    return chain.question, lead + " ".join(chain.steps) + " " + fm.final_answer(chain.answer)


def _number(rng: random.Random) -> int:
    digits = rng.choices((1, 2, 3), weights=(2, 6, 2))[0]
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1)


def arithmetic_qa(rng: random.Random, style: str = "cot") -> tuple[str, str]:
    """A sum of two (sometimes three) short numbers, answered worked digit by digit or (style "short") bare."""
    numbers = [_number(rng) for _ in range(rng.choices((2, 3), weights=(4, 1))[0])]
    question = fm.addition_question(numbers)
    return question, str(sum(numbers)) if style == "short" else fm.sum_steps(numbers)


def word_problem_qa(rng: random.Random, world: World, style: str = "cot") -> tuple[str, str]:
    """An age or price question that needs a fact and a sum."""
    if rng.random() < 0.5:
        person, years = rng.choice(world.by_kind("person")), rng.randint(1, 30)
        age = int(person.attributes["age"])
        question = f"How old will {person.name} be in {years} years?"
        steps, numbers = [fact_sentence(person, "age")], [age, years]
    else:
        a, b = rng.sample(world.by_kind("product"), 2)
        question = f"How many coins do {a.mention} and {b.mention} cost together?"
        steps = [fact_sentence(a, "price"), fact_sentence(b, "price")]
        numbers = [int(a.attributes["price"]), int(b.attributes["price"])]
    if style == "short":
        return question, str(sum(numbers))
    return question, " ".join(steps) + " " + fm.sum_steps(numbers)


def _nonword(rng: random.Random) -> str:
    consonants, vowels = "bcdfghjklmnprstvwxz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3))) + \
        rng.choice(("", "n", "t", "s", "p"))


def _spell_word(rng: random.Random, world: World) -> str:
    source = rng.random()
    if source < 0.55:
        return rng.choice(WORDS)
    if source < 0.8:
        return rng.choice(rng.choice(world.entities).name.split())
    return _nonword(rng)


def spelling_qa(rng: random.Random, world: World, style: str = "short") -> tuple[str, str]:
    """A letter-level question about one word: spell it, in capitals, backwards, first/last letter, join."""
    word = _spell_word(rng, world)
    task = rng.choice(("spell", "capitals", "backwards", "first", "last", "join"))
    if task == "spell":
        return rng.choice((f"How do you spell {word}?", f"Spell the word {word}.")), fm.spell(word)
    if task == "capitals":
        return f"Spell {word} in capitals.", fm.spell(word.upper())
    if task == "backwards":
        return f"Spell {word} backwards.", fm.spell(word[::-1])
    if task == "first":
        return f"What is the first letter of {word}?", word[0]
    if task == "last":
        return f"What is the last letter of {word}?", word[-1]
    return f"Join the letters {fm.spell(word)} into a word.", word


def sorting_qa(rng: random.Random, style: str = "short") -> tuple[str, str]:
    """Sort a few words alphabetically or numbers by size; style "cot" names first letters first."""
    n = rng.randint(3, 5)
    if rng.random() < 0.5:
        numbers = rng.sample(range(1, 100), n)
        question = f"Sort these numbers from smallest to largest: {fm.comma_list([str(x) for x in numbers])}."
        return question, fm.comma_list([str(x) for x in sorted(numbers)])
    words = _distinct_initials(rng, n) if rng.random() < 0.8 else rng.sample(WORDS, n)
    question = f"Sort these words in alphabetical order: {fm.comma_list(words)}."
    answer = fm.comma_list(sorted(words))
    if style == "cot":
        reasons = ", ".join(f"{w} starts with {w[0]}" for w in words)
        return question, f"First letters: {reasons}. {fm.final_answer(answer)}"
    return question, answer


def _distinct_initials(rng: random.Random, n: int) -> list[str]:
    words: list[str] = []
    for word in rng.sample(WORDS, len(WORDS)):
        if all(word[0] != w[0] for w in words):
            words.append(word)
        if len(words) == n:
            break
    return words


def classification_qa(rng: random.Random, world: World, style: str = "sentence") -> tuple[str, str]:
    """What kind of thing an entity or a word is: person, city, animal, product, colour, job."""
    if rng.random() < 0.7:
        entity = rng.choice(world.entities)
        question = rng.choice((f"Is {entity.mention} a person, a city, an animal or a product?",
                               f"What kind of thing is {entity.mention}?"))
        return question, entity.kind if style == "short" else kind_sentence(entity)
    category, word = _category_word(rng)
    question = f"Is {word} a colour, a job, a food or a place?"
    return question, category if style == "short" else f"{word.capitalize()} is {an(category)}."


def _category_word(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(("colour", "job", "food", "place"))
    vocab = {"colour": COLORS, "job": JOBS, "food": FOODS, "place": HABITATS}[category]
    return category, rng.choice(vocab)


def review(rng: random.Random, world: World) -> tuple[str, str, Entity]:
    """A short product review, its sentiment ("positive"/"negative"), and the product."""
    product = rng.choice(world.by_kind("product"))
    label = rng.choice(("positive", "negative"))
    bank = POSITIVE if label == "positive" else NEGATIVE
    fields = {"t": product.attributes["type"], "p": product.attributes["price"]}
    text = " ".join(s.format(**fields) for s in rng.sample(bank, rng.randint(2, 3)))
    return f"I bought {product.mention}. {text}", label, product


def sentiment_qa(rng: random.Random, world: World, style: str = "short") -> tuple[str, str]:
    """Is a review positive or negative? Answered with the label."""
    text, label, _ = review(rng, world)
    return f'Is this review positive or negative? "{text}"', label


QA_SAMPLERS: dict[str, Callable[[random.Random, World, str], tuple[str, str]]] = {
    "fact": fact_qa,
    "hop": hop_qa,
    "arithmetic": lambda rng, world, style: arithmetic_qa(rng, style),
    "word_problem": word_problem_qa,
    "spelling": spelling_qa,
    "sorting": lambda rng, world, style: sorting_qa(rng, style),
    "classification": classification_qa,
    "sentiment": sentiment_qa,
}
"""Every Q/A sampler, by task kind, each called as ``sampler(rng, world, style)``."""

_QA_WEIGHTS = {"fact": 6, "hop": 2, "arithmetic": 3, "word_problem": 1, "spelling": 3,
               "sorting": 1, "classification": 1, "sentiment": 1}


def _any_qa(rng: random.Random, world: World, style: str | None = None) -> tuple[str, str]:
    kind = rng.choices(list(_QA_WEIGHTS), weights=list(_QA_WEIGHTS.values()))[0]
    if style is None:
        style = rng.choice(("short", "cot")) if kind in ("hop", "arithmetic", "word_problem", "sorting") \
            else rng.choice(("short", "sentence"))
    return QA_SAMPLERS[kind](rng, world, style)


# ---------------------------------------------------------------------------------------------
# Stories with TL;DR summaries.


@dataclass(frozen=True)
class Story:
    """A short story about people of the world and its one-sentence summary."""

    text: str
    """The story: a few sentences on one line each or run together."""
    summary: str
    """One sentence saying what happened, built from the story's key facts."""
    person: str
    """Name of the main character."""
    event: str
    """Kind of event: lost_pet, purchase, trip, work_day or meeting."""


def make_story(rng: random.Random, world: World) -> Story:
    """A short story consistent with the world's facts, and its TL;DR summary."""
    person = rng.choice(world.by_kind("person"))
    event = rng.choice(tuple(_STORIES))
    sentences, summary = _STORIES[event](rng, world, person)
    sep = "\n" if rng.random() < 0.3 else " "
    return Story(sep.join(sentences), summary, person.name, event)


def _lost_pet(rng, world, p):
    pet, home = world.get(p.attributes["pet"]), world.get(p.attributes["home"])
    f, place = first_name(p), rng.choice(_PLACES)
    return ([f"One {home.attributes['weather']} morning in {home.name}, {p.name} could not find the {pet.name}.",
             f"{f} looked everywhere, even by the river {home.attributes['river']}.",
             f"At last {f} heard the {pet.name}, which {pet.attributes['sound']}, near {place}.",
             f"The {pet.name} was eating {pet.attributes['food']}.",
             f"{f} took it home and was very happy."],
            f"{p.name} lost the {pet.name} and found it near {place}.")


def _purchase(rng, world, p):
    item = rng.choice(world.by_kind("product"))
    f, t = first_name(p), item.attributes["type"]
    return ([f"{p.name} went to the market in {p.attributes['home']} to buy {an(t)}.",
             f"There {f} saw the {item.name}, {an(item.attributes['color'])} {t} made by {item.attributes['maker']}.",
             f"It cost {item.attributes['price']} coins.",
             rng.choice((f"{f} paid and carried the {item.name} home.", f"{f} bought it at once."))],
            f"{p.name} bought the {item.name} for {item.attributes['price']} coins.")


def _trip(rng, world, p):
    cities = [c for c in world.by_kind("city") if c.name != p.attributes["home"]]
    city, days, f = rng.choice(cities), rng.randint(2, 9), first_name(p)
    return ([f"{p.name} left {p.attributes['home']} for a trip to {city.name}.",
             f"{city.name} lies on the river {city.attributes['river']} in {city.attributes['country']}.",
             f"The weather there was {city.attributes['weather']}.",
             f"{f} stayed for {days} days and then went home."],
            f"{p.name} visited {city.name} for {days} days.")


def _work_day(rng, world, p):
    pet, f, job = world.get(p.attributes["pet"]), first_name(p), p.attributes["job"]
    return ([f"{p.name} is {an(job)} in {p.attributes['home']}.",
             f"Today {f} {_ACTIVITIES[job]} from morning until evening.",
             f"It was hard work, so {f} was tired.",
             f"At home, {f} gave the {pet.name} some {pet.attributes['food']} and went to bed."],
            f"{p.name} {_ACTIVITIES[job]} all day and fed the {pet.name}.")


def _meeting(rng, world, p):
    other = rng.choice([q for q in world.by_kind("person") if q.name != p.name])
    topic, city = rng.choice(_TOPICS), p.attributes["home"]
    return ([f"{p.name} met {other.name} in {city}.",
             f"{first_name(other)} is {an(other.attributes['job'])} from {other.attributes['home']}.",
             f"They sat by the river and talked about {topic}.",
             f"In the evening {first_name(p)} and {first_name(other)} said goodbye."],
            f"{p.name} met {other.name} in {city} and talked about {topic}.")


_STORIES = {"lost_pet": _lost_pet, "purchase": _purchase, "trip": _trip, "work_day": _work_day,
            "meeting": _meeting}


# ---------------------------------------------------------------------------------------------
# Documents.


def _doc_profile(rng: random.Random, world: World) -> str:
    entity = rng.choice(world.entities)
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


def _doc_fact_list(rng: random.Random, world: World) -> str:
    facts = world.facts()
    picked = [rng.choice(facts) for _ in range(rng.randint(6, 14))]
    sentences = [rng.choice(fact_phrasings(e, a)) for e, a, _ in picked]
    return ("\n" if rng.random() < 0.5 else " ").join(sentences)


def _qa_thread(pairs: list[tuple[str, str]], rng: random.Random) -> str:
    title = rng.choice(("", "Forum: questions and answers\n\n", "Ask the town\n\n", "Reader questions\n\n"))
    return title + "\n\n".join(fm.qa_block(q, a) for q, a in pairs)


def _doc_forum(rng: random.Random, world: World) -> str:
    style = rng.choices(("sentence", "short", "phrasing"), weights=(6, 3, 1))[0]
    entity = rng.choice(world.entities) if rng.random() < 0.4 else None
    pairs = [fact_qa(rng, world, style, entity) for _ in range(rng.randint(3, 8))]
    return _qa_thread(pairs, rng)


def _doc_multi_hop(rng: random.Random, world: World) -> str:
    style = rng.choices(("cot", "short"), weights=(3, 1))[0]
    return _qa_thread([hop_qa(rng, world, style) for _ in range(rng.randint(2, 5))], rng)


def _doc_mixed_qa(rng: random.Random, world: World) -> str:
    style = rng.choice((None, "short"))
    return _qa_thread([_any_qa(rng, world, style) for _ in range(rng.randint(3, 7))], rng)


def _doc_story(rng: random.Random, world: World) -> str:
    story = make_story(rng, world)
    return f"{story.text}\nTL;DR: {story.summary}"


def _doc_arithmetic(rng: random.Random, world: World) -> str:
    form = rng.choice(("equations", "worked", "qa_short", "qa_worked"))
    if form == "equations":
        lines = []
        for _ in range(rng.randint(5, 12)):
            a, b = _number(rng), _number(rng)
            lines.append(f"{a} + {b} = {a + b}")
        return "\n".join(lines)
    if form == "worked":
        a, b = _number(rng), _number(rng)
        return f"Let's add {a} and {b}.\n{fm.addition_steps(a, b)}"
    style = "short" if form == "qa_short" else "cot"
    return _qa_thread([arithmetic_qa(rng, style) for _ in range(rng.randint(3, 6))], rng)


def _doc_word_problem(rng: random.Random, world: World) -> str:
    style = rng.choices(("cot", "short"), weights=(3, 1))[0]
    return _qa_thread([word_problem_qa(rng, world, style) for _ in range(rng.randint(2, 4))], rng)


def _doc_spelling(rng: random.Random, world: World) -> str:
    if rng.random() < 0.5:
        return _qa_thread([spelling_qa(rng, world) for _ in range(rng.randint(4, 8))], rng)
    lines = []
    for _ in range(rng.randint(3, 6)):
        word = _spell_word(rng, world)
        lines.append(f"The word {word} is spelled {fm.spell(word)}. In capitals: {fm.spell(word.upper())}. "
                     f"Backwards: {fm.spell(word[::-1])}.")
    return "\n".join(lines)


def _doc_sorting(rng: random.Random, world: World) -> str:
    style = rng.choice(("short", "cot"))
    return _qa_thread([sorting_qa(rng, style) for _ in range(rng.randint(3, 6))], rng)


def _doc_classification(rng: random.Random, world: World) -> str:
    if rng.random() < 0.5:
        return _qa_thread([classification_qa(rng, world, rng.choice(("short", "sentence")))
                           for _ in range(rng.randint(3, 6))], rng)
    lines = [kind_sentence(rng.choice(world.entities)) for _ in range(rng.randint(3, 6))]
    for _ in range(rng.randint(2, 4)):
        category, word = _category_word(rng)
        lines.append(f"{word.capitalize()} is {an(category)}.")
    rng.shuffle(lines)
    return "\n".join(lines)


def _doc_review(rng: random.Random, world: World) -> str:
    if rng.random() < 0.4:
        return _qa_thread([sentiment_qa(rng, world) for _ in range(rng.randint(2, 4))], rng)
    blocks = []
    for _ in range(rng.randint(2, 4)):
        text, label, product = review(rng, world)
        blocks.append(f"Review of the {product.name}: {text}\nSentiment: {label}")
    return "\n\n".join(blocks)


def _doc_chat(rng: random.Random, world: World) -> str:
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        turns.append(("system", "You are a helpful assistant."))
    if rng.random() < 0.3:
        turns += [("user", "Hello!"), ("assistant", "Hello! How can I help you today?")]
    for _ in range(rng.randint(1, 3)):
        question, answer = _any_qa(rng, world)
        turns += [("user", question), ("assistant", answer)]
    return fm.chat_transcript(turns)


DOCUMENTS: dict[str, tuple[float, Callable[[random.Random, World], str]]] = {
    "profile": (10, _doc_profile),
    "fact_list": (8, _doc_fact_list),
    "forum": (16, _doc_forum),
    "multi_hop": (5, _doc_multi_hop),
    "mixed_qa": (10, _doc_mixed_qa),
    "story": (10, _doc_story),
    "arithmetic": (12, _doc_arithmetic),
    "word_problem": (4, _doc_word_problem),
    "spelling": (9, _doc_spelling),
    "sorting": (4, _doc_sorting),
    "classification": (3, _doc_classification),
    "review": (4, _doc_review),
    "chat": (5, _doc_chat),
}
"""Document kinds: (relative weight, generator). Weights count documents, not bytes."""


def generate_corpus(seed: int = 0, size_mb: float = DEFAULT_SIZE_MB, world: World | None = None,
                    split: str = "train") -> list[str]:
    """Documents of the world of ``seed`` until they hold ``size_mb`` megabytes of UTF-8 text.

    Byte-identical for the same (seed, size_mb, world, split). ``split`` names an independent
    stream of documents about the same world ("train", "heldout", ...), so held-out text never
    repeats the training stream's documents (facts themselves are shared, by design).
    """
    if size_mb <= 0:
        raise ValueError(f"size_mb must be positive, got {size_mb}")
    world = world if world is not None else make_world(seed)
    rng = random.Random(f"corpus-{seed}-{split}")
    kinds = list(DOCUMENTS)
    weights = [DOCUMENTS[k][0] for k in kinds]
    target, total, docs = int(size_mb * 1_000_000), 0, []
    while total < target:
        kind = rng.choices(kinds, weights=weights)[0]
        doc = DOCUMENTS[kind][1](rng, world)
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    return docs


def write_corpus(path: str, seed: int = 0, size_mb: float = DEFAULT_SIZE_MB, split: str = "train") -> int:
    """Write the corpus as JSONL records ``{"text": ...}`` (the "text" data format); returns the document count."""
    import json
    from pathlib import Path

    docs = generate_corpus(seed, size_mb, split=split)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(docs)
