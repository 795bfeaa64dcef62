"""Stories about the world's people and their extractive TL;DR: the corpus' story documents and the
summarization task's problems (each draws from :func:`make_story` with its own seeds)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from posttrain.world.entities import COLORS, World, an, first_name

_PLACES = ("the well", "the mill pond", "the barn", "the library", "the school", "the hill",
           "the garden gate", "the town hall")
_ACTIVITIES = {"baker": "baked bread", "farmer": "worked in the fields", "teacher": "taught a class",
               "painter": "painted a wall", "doctor": "helped the sick", "sailor": "sailed a boat",
               "singer": "sang songs", "builder": "built a house", "tailor": "sewed a coat",
               "miner": "dug for stones", "writer": "wrote a book", "cook": "cooked soup"}
_TOPICS = ("the weather", "their pets", "the harvest", "an old song", "a good book", "the festival")
# Verbs and places of the one-named-sentence stories; disjoint from the summarization task's
# own lists, so a corpus story can never be one of its held-out problems.
_STORY_VERBS = ("dropped", "washed", "borrowed", "hid", "opened", "won", "dried", "wrapped")
_STORY_PLACES = ("near the well", "at the school", "on the hill", "in the garden", "by the town hall")
_STORY_SETTING = ("It was early in the morning.", "The wind was cold.", "The town was quiet.",
                  "Bread was baking somewhere.", "The clock struck nine.", "Clouds hung over the roofs.",
                  "A boat drifted down the river.", "Leaves blew across the road.", "The shops were opening.",
                  "Someone was singing far away.")
_STORY_ENDINGS = ("After that, the day went on.", "Nothing else happened that day.", "Soon it was evening.",
                  "The town went to sleep.")



@dataclass(frozen=True)
class Story:
    """A short story about people of the world and its summary, one sentence of the story."""

    text: str
    """The story, its sentences on one line or one per line."""
    summary: str
    """The story's key sentence, copied from it: what the main character did."""
    person: str
    """Name of the main character."""
    event: str
    """Kind of event: lost_pet, purchase, trip, work_day, meeting or one_line."""


def make_story(rng: random.Random, world: World) -> Story:
    """A short story consistent with the world's facts, and its extractive TL;DR."""
    person = rng.choice(world.by_kind("person"))
    event = rng.choice(tuple(_STORIES))
    sentences, key = _STORIES[event](rng, world, person)
    sep = "\n" if rng.random() < 0.2 else " "
    return Story(sep.join(sentences), sentences[key], person.name, event)


# Each story builder returns (sentences, index of the key sentence). The full name appears in the
# key sentence only; other sentences use the first name, as the summarization task's stories
# name their actor once.


def _lost_pet(rng, world, p):
    pet, home = world.get(p.attributes["pet"]), world.get(p.attributes["home"])
    f, place = first_name(p), rng.choice(_PLACES)
    return ([f"It was a {home.attributes['weather']} morning in {home.name}.",
             f"{f} could not find the {pet.name} anywhere, not even by the river {home.attributes['river']}.",
             f"Then a {pet.name} {pet.attributes['sound']} somewhere near {place}.",
             f"{p.name} found the {pet.name} near {place}.",
             f"It was eating {pet.attributes['food']}, and {f} took it home."], 3)


def _purchase(rng, world, p):
    item = rng.choice(world.by_kind("product"))
    f, t = first_name(p), item.attributes["type"]
    return ([f"The market in {p.attributes['home']} was full of people.",
             f"{f} needed {an(t)} and looked at every stall.",
             f"The {item.name} was {an(item.attributes['color'])} {t} made by {item.attributes['maker']}.",
             f"{p.name} bought the {item.name} for {item.attributes['price']} coins.",
             f"{f} carried it home with a smile."], 3)


def _trip(rng, world, p):
    cities = [c for c in world.by_kind("city") if c.name != p.attributes["home"]]
    city, days, f = rng.choice(cities), rng.randint(2, 9), first_name(p)
    return ([f"{f} packed a bag in {p.attributes['home']}.",
             f"{p.name} visited {city.name} for {days} days.",
             f"{city.name} lies on the river {city.attributes['river']} in {city.attributes['country']}.",
             f"The weather there was {city.attributes['weather']}, and {f} was glad to get home."], 1)


def _work_day(rng, world, p):
    pet, f, job = world.get(p.attributes["pet"]), first_name(p), p.attributes["job"]
    return ([f"{f} is {an(job)} in {p.attributes['home']}.",
             f"{p.name} {_ACTIVITIES[job]} from morning until evening.",
             f"It was hard work, so {f} was tired.",
             f"At home, {f} gave the {pet.name} some {pet.attributes['food']} and went to bed."], 1)


def _meeting(rng, world, p):
    other = rng.choice([q for q in world.by_kind("person") if q.name != p.name])
    topic, city = rng.choice(_TOPICS), p.attributes["home"]
    return ([f"{first_name(other)} came to {city} for a day.",
             f"{p.name} met {other.name} by the river and talked about {topic}.",
             f"{first_name(other)} is {an(other.attributes['job'])} from {other.attributes['home']}.",
             f"In the evening {first_name(p)} and {first_name(other)} said goodbye."], 1)


def _one_line(rng, world, p):
    event = (f"{p.name} {rng.choice(_STORY_VERBS)} {an(rng.choice(COLORS))} "
             f"{rng.choice(world.by_kind('product')).attributes['type']} {rng.choice(_STORY_PLACES)}.")
    middle = rng.sample(_STORY_SETTING, rng.randint(1, 2)) + [event]
    rng.shuffle(middle)
    sentences = [rng.choice(_STORY_SETTING[:3])] + middle + [rng.choice(_STORY_ENDINGS)]
    return sentences, sentences.index(event)


_STORIES = {"lost_pet": _lost_pet, "purchase": _purchase, "trip": _trip, "work_day": _work_day,
            "meeting": _meeting, "one_line": _one_line}
