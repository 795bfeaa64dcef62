"""The embedded world as a data source: what ``world:<name>`` means in ``data.train`` / ``data.eval``.

The readers (:func:`posttrain.data.readers.read_from_config`) read these names as they read files,
into the same records, from the recipe's ``world`` section (:class:`posttrain.recipes.config.WorldConfig`):

- ``world:sft`` and ``world:prompts``: task examples (:class:`~posttrain.world.tasks.TaskExample`,
  record kind ``task``) of ``world.families`` (empty: every trained family), ``world.examples`` per
  family from the train split (``world.eval_examples`` from the held-out split when read as
  ``data.eval``). SFT trains on their answers; PPO and DPO prompt with them, and the world's gold
  reward can score the answers because each record is its task.
- ``world:heldout``: the same from the held-out split, wherever it is read.
- ``world:preferences``: pairs of the world's candidate responses to those prompts, each labelled by
  a simulated annotator (``world.noise_temperature``, ``world.length_bias``, ``world.annotator_seed``
  when the section has them), ``world.pairs_per_prompt`` per prompt.
- ``world:corpus``: the pretraining corpus, ``world.corpus_mb`` megabytes of text documents
  (``world.eval_corpus_mb`` of a separate held-out stream when read as ``data.eval``).
"""

from __future__ import annotations

from typing import Any

from posttrain.data.records import Text
from posttrain.errors import UserError
from posttrain.world.annotators import Annotator, AnnotatorConfig, make_preferences
from posttrain.world.corpus import generate_corpus
from posttrain.world.tasks import task_examples

WORLD_SOURCES = ("world:sft", "world:prompts", "world:heldout", "world:preferences", "world:corpus")
"""Every name a data.train / data.eval entry may give the world."""


def is_world_source(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("world:")


def reads_world(sources: list) -> bool:
    """Whether any of ``sources`` is the world's."""
    return any(is_world_source(s) for s in sources)


def world_records(source: str, world: Any, split: str = "train") -> list:
    """The records ``source`` names, made from the ``world`` section (a WorldConfig) for ``split``
    (train, or heldout when read as data.eval)."""
    if source not in WORLD_SOURCES:
        raise UserError(f"data: unknown world source {source!r}; the world provides {', '.join(WORLD_SOURCES)}")
    if world is None:
        raise UserError(f"data: {source} reads the embedded world, but this command has no world section")
    if source == "world:corpus":  # held out: a separate stream of documents, world.eval_corpus_mb of it
        size_mb = getattr(world, "corpus_mb", 4.0) if split == "train" else getattr(world, "eval_corpus_mb", 0.2)
        weights = getattr(world, "corpus_weights", None) or None
        return [Text(doc) for doc in generate_corpus(world.seed, size_mb, split=split, weights=weights)]
    split = "heldout" if source == "world:heldout" else split
    n = world.examples if split == "train" else world.eval_examples
    examples = task_examples(world.seed, world.families, split, n, setting="world.families", error=UserError)
    if source != "world:preferences":
        return examples
    annotator = Annotator(AnnotatorConfig(getattr(world, "noise_temperature", 0.1), getattr(world, "length_bias", 0.0),
                                          getattr(world, "annotator_seed", 0) + (split != "train")))
    return make_preferences(examples, annotator, getattr(world, "pairs_per_prompt", 2))
