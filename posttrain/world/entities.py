"""The embedded world's universe: invented people, cities, animals and products, and their facts.

Everything is generated from a seed with ``random.Random(seed)`` (never the global RNG, never
set or hash order), so the same seed gives the same world on every machine.

Each entity has a few attributes whose values come from small closed vocabularies (``COLORS``,
``JOBS``, ...) or name other entities (a person's ``home`` is a city, ``pet`` an animal, a
product's ``maker`` a person). Numbers are written in digits (``age``, ``price``).

Facts are said in many phrasings (:func:`fact_phrasings`, used by the corpus) and asked in a few
question forms (:func:`fact_question`); :func:`fact_sentence` is the one canonical sentence that
answers a question, and always contains the value verbatim.

Names are unique across the world (and differ from every vocabulary word), first and last names
of people are unique too, so "Tavi" alone names one person in a story.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Closed vocabularies of attribute values (module constants; order matters for determinism).

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "brown", "pink")
JOBS = ("baker", "farmer", "teacher", "painter", "doctor", "sailor", "singer", "builder",
        "tailor", "miner", "writer", "cook")
FOODS = ("berries", "fish", "seeds", "honey", "leaves", "mushrooms", "grass", "nuts", "bread", "worms")
SOUNDS = ("chirps", "hums", "growls", "whistles", "squeaks", "hoots", "croaks", "purrs", "barks", "clicks")
HABITATS = ("forest", "desert", "river", "mountains", "swamp", "meadow", "cave", "sea")
WEATHERS = ("sunny", "rainy", "snowy", "windy", "foggy", "stormy")
PRODUCT_TYPES = ("lamp", "kettle", "bicycle", "clock", "radio", "chair", "boat", "drum",
                 "hat", "kite", "bell", "cart")
COUNTRIES = ("Ostrava", "Melunia", "Karvell", "Duspor", "Yentara", "Brolland")
"""Invented country names (values of a city's ``country``)."""
RIVERS = ("Ossa", "Brin", "Talven", "Mure", "Quenna", "Dovra", "Silt", "Arrow")
"""Invented river names (values of a city's ``river``)."""
CURRENCY = "coins"
"""Unit of every product price: "The Vorpix costs 47 coins."."""

KINDS = ("person", "city", "animal", "product")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "person": ("home", "job", "pet", "color", "age"),
    "city": ("country", "river", "weather"),
    "animal": ("color", "food", "sound", "habitat"),
    "product": ("type", "maker", "price", "color"),
}
"""Attributes of each kind, in the fixed order used by :meth:`World.facts`."""

REFERENCE_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("person", "home"): "city",
    ("person", "pet"): "animal",
    ("product", "maker"): "person",
}
"""(kind, attribute) whose value is the name of another entity, and that entity's kind."""

VOCABULARIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("person", "job"): JOBS,
    ("person", "color"): COLORS,
    ("city", "country"): COUNTRIES,
    ("city", "river"): RIVERS,
    ("city", "weather"): WEATHERS,
    ("animal", "color"): COLORS,
    ("animal", "food"): FOODS,
    ("animal", "sound"): SOUNDS,
    ("animal", "habitat"): HABITATS,
    ("product", "type"): PRODUCT_TYPES,
    ("product", "color"): COLORS,
}
"""(kind, attribute) whose value comes from a closed vocabulary, and that vocabulary."""

NUMBER_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("person", "age"): (18, 79),
    ("product", "price"): (10, 99),
}
"""(kind, attribute) whose value is a whole number in digits, and its inclusive range."""

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"person": 6, "city": 4, "animal": 4, "product": 4},
    "small": {"person": 12, "city": 6, "animal": 6, "product": 6},
    "default": {"person": 30, "city": 10, "animal": 12, "product": 12},
    "large": {"person": 80, "city": 20, "animal": 24, "product": 30},
}
"""Entities per kind for each named world size (default: 66 entities, 276 facts)."""


# ---------------------------------------------------------------------------------------------
# Entities and the world.


@dataclass(frozen=True)
class Entity:
    kind: str
    """"person", "city", "animal" or "product"."""
    name: str
    """Invented, pronounceable, unique across the world: "Tavi Quell", "Zorbia", "glimmer", "Vorpix"."""
    attributes: dict[str, str] = field(hash=False)
    """Attribute -> value, in the order of ``ATTRIBUTES[kind]``; every value is a string."""

    @property
    def subject(self) -> str:
        """How a sentence starts when it is about this entity: "Tavi Quell", "A glimmer", "The Vorpix"."""
        return {"animal": an(self.name).capitalize(), "product": f"The {self.name}"}.get(self.kind, self.name)

    @property
    def mention(self) -> str:
        """How the entity is named inside a sentence: "Tavi Quell", "a glimmer", "the Vorpix"."""
        return {"animal": an(self.name), "product": f"the {self.name}"}.get(self.kind, self.name)


@dataclass(frozen=True)
class World:
    seed: int
    """Seed the world was generated from."""
    entities: tuple[Entity, ...]
    """Every entity, grouped by kind in the order of ``KINDS``."""

    def by_kind(self, kind: str) -> list[Entity]:
        """Entities of one kind, in world order."""
        if kind not in KINDS:
            raise KeyError(f"unknown entity kind {kind!r}; kinds are {', '.join(KINDS)}")
        return [e for e in self.entities if e.kind == kind]

    def get(self, name: str) -> Entity:
        """The entity called ``name`` (exact spelling)."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no entity named {name!r} in the world of seed {self.seed}") from None

    def facts(self) -> list[tuple[Entity, str, str]]:
        """Every (entity, attribute, value), in world order then attribute order."""
        return [(e, a, e.attributes[a]) for e in self.entities for a in ATTRIBUTES[e.kind]]

    def referrers(self, name: str, attribute: str) -> list[Entity]:
        """Entities whose ``attribute`` is ``name``: who lives in a city, who owns a pet, what a person made."""
        return [e for e in self.entities if e.attributes.get(attribute) == name]

    @functools.cached_property
    def _index(self) -> dict[str, Entity]:
        return {e.name: e for e in self.entities}


def make_world(seed: int = 0, size: str | int = "default") -> World:
    """Generate the world of ``seed``: invented entities with attribute values drawn at random.

    ``size`` is a name in ``SIZES`` or a number of people (other kinds scale with it).
    """
    counts = _counts(size)
    rng = random.Random(f"world-{seed}")
    names = _NameMaker(rng)
    raw_names = {
        "city": [names.city() for _ in range(counts["city"])],
        "animal": [names.animal() for _ in range(counts["animal"])],
        "person": [names.person() for _ in range(counts["person"])],
        "product": [names.product() for _ in range(counts["product"])],
    }
    entities: list[Entity] = []
    for kind in KINDS:
        for name in raw_names[kind]:
            attrs = {a: _draw_value(rng, kind, a, raw_names) for a in ATTRIBUTES[kind]}
            entities.append(Entity(kind, name, attrs))
    return World(seed=seed, entities=tuple(entities))


def _counts(size: str | int) -> dict[str, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 2:
            raise ValueError(f"world size {size} is too small: give at least 2 people, or one of {', '.join(SIZES)}")
        return {"person": size, "city": max(2, size // 3), "animal": max(2, (2 * size) // 5),
                "product": max(2, (2 * size) // 5)}
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}: use one of {', '.join(SIZES)} or a number of people")
    return SIZES[size]


def _draw_value(rng: random.Random, kind: str, attribute: str, names: dict[str, list[str]]) -> str:
    if (kind, attribute) in REFERENCE_ATTRIBUTES:
        return rng.choice(names[REFERENCE_ATTRIBUTES[kind, attribute]])
    if (kind, attribute) in VOCABULARIES:
        return rng.choice(VOCABULARIES[kind, attribute])
    lo, hi = NUMBER_RANGES[kind, attribute]
    return str(rng.randint(lo, hi))


# ---------------------------------------------------------------------------------------------
# Invented names: syllables that read easily, unique across the world.

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gl", "kr", "pl", "sk", "st", "tr", "th", "sh", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "ai", "ou", "ee")
_SIMPLE_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "x", "th")
_CITY_ENDINGS = ("ia", "ora", "ton", "vale", "mar", "heim", "wick", "osa")
_ANIMAL_ENDINGS = ("ling", "mer", "bit", "nok", "pup", "wump", "fin", "mop")
_PRODUCT_ENDINGS = ("ix", "o", "ara", "el", "on", "us")

_RESERVED = {w.lower() for vocab in VOCABULARIES.values() for w in vocab} | {
    "the", "and", "is", "a", "an", "of", "in", "to", "it", "on", "at", "by", "as", "be", "or",
    "he", "she", "they", "we", "you", "i", "me", "so", "no", "do", "go", "up", "us", "my",
    "one", "two", "ten", "sea", "bee", "see", "tree", "free", "three", "more", "sore", "bore",
    "then", "than", "this", "that", "them", "there", "these", "those", "here", "were", "where",
    "what", "who", "when", "with", "from", "into", "over", "under", "after", "before", "some",
    "sum", "ones", "tens", "carry", "write", "word", "list", "sorted", "review", "story",
    "loves", "likes", "made", "make", "sells", "costs", "lives", "eats", "pet", "city", "animal",
    "person", "product", "colour", "coins", "river", "home", "home", "name", "answer", "question",
}


class _NameMaker:
    """Draws pronounceable invented names; each name (and each first/last name) is used once."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set(_RESERVED)

    def _syllables(self, n: int) -> str:
        parts = []
        for i in range(n):
            coda = self.rng.choice(_CODAS) if i == n - 1 else ""
            parts.append(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + coda)
        return "".join(parts)

    def _fresh(self, make) -> str:
        for _ in range(1000):
            word = make()
            if 3 <= len(word) <= 10 and word.lower() not in self.used:
                self.used.add(word.lower())
                return word
        raise RuntimeError("ran out of fresh invented names; use a smaller world size")

    def person(self) -> str:
        first = self._fresh(lambda: self._syllables(2).capitalize())
        last = self._fresh(lambda: self._syllables(2).capitalize())
        return f"{first} {last}"

    def city(self) -> str:
        return self._fresh(lambda: (self._syllables(1) + self.rng.choice(_CITY_ENDINGS)).capitalize())

    def animal(self) -> str:
        return self._fresh(lambda: self.rng.choice(_ONSETS) + self.rng.choice(_SIMPLE_VOWELS)
                           + self.rng.choice(_ANIMAL_ENDINGS))

    def product(self) -> str:
        return self._fresh(lambda: (self.rng.choice(_ONSETS) + self.rng.choice(_SIMPLE_VOWELS)
                                    + self.rng.choice(_ONSETS) + self.rng.choice(_PRODUCT_ENDINGS)).capitalize())


# ---------------------------------------------------------------------------------------------
# Language about facts.


def an(noun: str) -> str:
    """The noun with its indefinite article: "a glimmer", "an ossel"."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def first_name(person: Entity) -> str:
    """The first word of a person's name ("Tavi" for "Tavi Quell"); unique in the world."""
    return person.name.split()[0]


# Statement templates per (kind, attribute). The first one is canonical (fact_sentence). Fields:
# {S} subject at sentence start, {m} mention mid-sentence, {v} value, {av} value with article
# ("a baker"), {V} value capitalized, {vm} value's mention if it names an entity ("a glimmer").
_STATEMENTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("person", "home"): ("{S} lives in {v}.", "{V} is the home of {m}.", "{S} is from {v}.",
                         "The home city of {m} is {v}.", "{S} has a house in {v}."),
    ("person", "job"): ("{S} works as {av}.", "{S} is {av} by trade.", "The job of {m} is {v}.",
                        "By trade, {m} is {av}."),
    ("person", "pet"): ("The pet of {m} is {vm}.", "{S} has {vm} as a pet.", "{S} keeps {vm} at home.",
                        "{S} owns a pet {v}."),
    ("person", "color"): ("The favourite colour of {m} is {v}.", "{S} likes the colour {v} best.",
                          "{V} is the favourite colour of {m}.", "Of all colours, {m} loves {v} most."),
    ("person", "age"): ("{S} is {v} years old.", "The age of {m} is {v}.", "{S} is aged {v}."),
    ("city", "country"): ("{S} is in {v}.", "{S} is a city in {v}.", "The city of {m} lies in {v}.",
                          "{V} is the country of {m}."),
    ("city", "river"): ("{S} lies on the river {v}.", "The river {v} runs through {m}.",
                        "The river of {m} is the {v}.", "{S} is built on the river {v}."),
    ("city", "weather"): ("The weather in {m} is usually {v}.", "{S} is usually {v}.",
                          "It is often {v} in {m}.", "In {m} the days are mostly {v}."),
    ("animal", "color"): ("{S} is {v}.", "The colour of {m} is {v}.", "{S} has {v} fur.",
                          "Every {n} is {v}."),
    ("animal", "food"): ("{S} eats {v}.", "The food of {m} is {v}.", "{S} likes to eat {v}.",
                         "{S} feeds on {v}."),
    ("animal", "sound"): ("{S} {v}.", "The {n} {v} when it is happy.", "You can hear {m} when it {v}.",
                          "{S} always {v}."),
    ("animal", "habitat"): ("{S} lives in the {v}.", "The home of {m} is the {v}.",
                            "You can find {m} in the {v}.", "{S} makes its nest in the {v}."),
    ("product", "type"): ("{S} is {av}.", "{S} is a kind of {v}.", "The {n} is {av} that people like.",
                          "If you want {av}, buy {m}."),
    ("product", "maker"): ("{S} was made by {v}.", "{V} made {m}.", "The maker of {m} is {v}.",
                           "{S} is made by {v}."),
    ("product", "price"): ("{S} costs {v} coins.", "The price of {m} is {v} coins.",
                           "You can buy {m} for {v} coins.", "{S} sells for {v} coins."),
    ("product", "color"): ("{S} is {v}.", "The colour of {m} is {v}.", "{S} is painted {v}.",
                           "You can get {m} in {v}."),
}

# Question templates per (kind, attribute), answered by fact_sentence. Same fields as above.
_QUESTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("person", "home"): ("Where does {m} live?", "In which city does {m} live?", "What is the home city of {m}?"),
    ("person", "job"): ("What does {m} do for work?", "What is the job of {m}?", "What work does {m} do?"),
    ("person", "pet"): ("What pet does {m} have?", "What is the pet of {m}?", "Which animal does {m} keep as a pet?"),
    ("person", "color"): ("What is the favourite colour of {m}?", "Which colour does {m} like best?",
                          "What colour does {m} love most?"),
    ("person", "age"): ("How old is {m}?", "What is the age of {m}?", "How many years old is {m}?"),
    ("city", "country"): ("In which country is {m}?", "What country is {m} in?", "Where is {m}?"),
    ("city", "river"): ("Which river does {m} lie on?", "What river runs through {m}?", "What is the river of {m}?"),
    ("city", "weather"): ("What is the weather like in {m}?", "What is the weather usually like in {m}?",
                          "How is the weather in {m}?"),
    ("animal", "color"): ("What colour is {m}?", "What is the colour of {m}?", "Which colour is {m}?"),
    ("animal", "food"): ("What does {m} eat?", "What is the food of {m}?", "What does {m} like to eat?"),
    ("animal", "sound"): ("What sound does {m} make?", "What noise does {m} make?", "How does {m} sound?"),
    ("animal", "habitat"): ("Where does {m} live?", "Where can you find {m}?", "What is the home of {m}?"),
    ("product", "type"): ("What is {m}?", "What kind of thing is {m}?", "What type of product is {m}?"),
    ("product", "maker"): ("Who made {m}?", "Who is the maker of {m}?", "Who makes {m}?"),
    ("product", "price"): ("How much does {m} cost?", "What is the price of {m}?", "How many coins does {m} cost?"),
    ("product", "color"): ("What colour is {m}?", "What is the colour of {m}?", "Which colour is {m}?"),
}


def _fields(entity: Entity, attribute: str) -> dict[str, str]:
    value = entity.attributes[attribute]
    ref_kind = REFERENCE_ATTRIBUTES.get((entity.kind, attribute))
    return {
        "S": entity.subject, "m": entity.mention, "n": entity.name, "v": value,
        "V": value[:1].upper() + value[1:], "av": an(value),
        "vm": an(value) if ref_kind == "animal" else value,
    }


def _check(entity: Entity, attribute: str) -> None:
    if attribute not in ATTRIBUTES.get(entity.kind, ()):
        raise KeyError(f"a {entity.kind} has no attribute {attribute!r}; "
                       f"its attributes are {', '.join(ATTRIBUTES.get(entity.kind, ()))}")


def fact_phrasings(entity: Entity, attribute: str) -> list[str]:
    """Every statement of one fact, canonical first: ["Tavi Quell lives in Zorbia.", "Zorbia is the
    home of Tavi Quell.", ...]."""
    _check(entity, attribute)
    f = _fields(entity, attribute)
    return [t.format(**f) for t in _STATEMENTS[entity.kind, attribute]]


def fact_sentence(entity: Entity, attribute: str) -> str:
    """The canonical sentence stating one fact, the answer to :func:`fact_question`; contains the value verbatim."""
    return fact_phrasings(entity, attribute)[0]


def num_question_variants(kind: str, attribute: str) -> int:
    """How many question forms :func:`fact_question` has for (kind, attribute)."""
    return len(_QUESTIONS[kind, attribute])


def fact_question(entity: Entity, attribute: str, variant: int = 0) -> str:
    """A question asking one fact: "Where does Tavi Quell live?"; ``variant`` is taken modulo the number of forms."""
    _check(entity, attribute)
    templates = _QUESTIONS[entity.kind, attribute]
    return templates[variant % len(templates)].format(**_fields(entity, attribute))


def kind_sentence(entity: Entity) -> str:
    """The classification sentence of an entity: "Tavi Quell is a person.", "A glimmer is an animal."."""
    return f"{entity.subject} is {an(entity.kind)}."
