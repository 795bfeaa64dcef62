"""Contamination check: how much of each evaluation set already appears in the training data.

An evaluation example is *contaminated* when its word n-grams are found in the training text, as
GPT-3 (Brown et al. 2020, appendix C) measured it with 13-grams and as most later reports do with
8- to 13-grams. For each example this module reports the **overlap**: the fraction of its distinct
word n-grams that occur anywhere in the training documents; for each evaluation set, the number
and percent of examples whose overlap is above a threshold (default: any shared n-gram), the mean
overlap and the worst examples.

- **Words** are lower-cased runs of letters, digits and underscores (:func:`words`): punctuation
  and spacing do not hide a copy.
- **Training data** is a list of documents; n-grams never span two documents. Records of every
  posttrain data format count (:func:`record_docs`: a preference gives prompt+chosen and
  prompt+rejected, ...), as do world task examples (question with its answer, and with its worked
  reasoning) and the world's pretraining corpus.
- **Short examples**: an example with fewer than ``n`` words in every document is checked with
  k-grams, k its longest document's length, i.e. that document is looked up whole. They are
  counted (``short``), so a set of short examples is not mistaken for a clean one.
- **Exact and fast**: n-grams are compared as 64-bit hashes of word-id tuples (a chance collision
  with one of ~10^6 training n-grams, ~10^-13 per evaluation n-gram, could only add a false hit);
  every evaluation n-gram is looked up in one streaming pass over the training text per gram
  length, about a second for the world's 7 MB corpus. MinHash (``datasketch``) estimates document
  similarity, the wrong question here: exact n-gram sets say which parts were seen, at this size.
- **Templates count**: n-grams of an instruction template (8 words of "Sort these numbers from
  smallest to largest") are found in any training data that uses the template, so templated
  tasks read partly contaminated at n=8 without their problems being seen; n=13 mostly avoids it.

`posttrain contamination` (:func:`run_contamination`) prints one row per evaluation set and
writes ``contamination.json``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from posttrain.config import save_config
from posttrain.data.readers import read_records
from posttrain.errors import UserError
from posttrain.files import write_json_atomic
from posttrain.world import ASSETS_DIR, generate_corpus
from posttrain.world.entities import make_world
from posttrain.world.tasks import FAMILIES, HELDOUT_FAMILIES, TRAIN_FAMILIES, check_families, make_tasks, read_tasks

if TYPE_CHECKING:
    from posttrain.data.records import Record
    from posttrain.world.tasks import TaskExample

_WORD = re.compile(r"\w+")
_UNSEEN = -1
"""Word id of an evaluation word absent from the training vocabulary: no training n-gram holds it."""
WORLD_SOURCES = ("world:sft", "world:corpus", "world:heldout")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits, underscores); punctuation and spacing are ignored."""
    return _WORD.findall(text.lower())


def _gram_hashes(ids: Sequence[int], k: int) -> Iterable[int]:
    # zip over k shifted views builds every k-gram tuple in C; hashing ints is deterministic.
    return map(hash, zip(*(ids[i:] for i in range(k))))


class NgramIndex:
    """The training documents as word ids, for exact n-gram lookups.

    A lookup streams the training k-grams once per gram length through ``set.intersection``, so no
    set of every training n-gram is ever held: memory stays that of the word ids.
    """

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"n must be at least 1 word, got {n}")
        self.n = n
        self.words = 0
        self._vocab: dict[str, int] = {}
        self._docs: list[list[int]] = []

    @property
    def documents(self) -> int:
        return len(self._docs)

    def add(self, texts: Iterable[str]) -> NgramIndex:
        """Index more training documents (n-grams never span two of them)."""
        for text in texts:
            ids = [self._vocab.setdefault(w, len(self._vocab)) for w in words(text)]
            self._docs.append(ids)
            self.words += len(ids)
        return self

    def encode(self, text: str) -> list[int]:
        """Word ids of an evaluation text in the training vocabulary (unseen words get an id no n-gram holds)."""
        return [self._vocab.get(w, _UNSEEN) for w in words(text)]

    def found(self, wanted: dict[int, set[int]]) -> dict[int, set[int]]:
        """For each gram length k, the hashes of ``wanted[k]`` that are k-grams of some training document."""
        out = {}
        for k, hashes in wanted.items():
            hits: set[int] = set()
            for ids in self._docs:
                hits |= hashes.intersection(_gram_hashes(ids, k))
            out[k] = hits
        return out


@dataclass(frozen=True)
class EvalItem:
    id: str
    """Where the example comes from: its task id, its record's meta id, or file:line."""
    docs: list[str]
    """Its texts, each checked on its own (a preference's prompt+chosen and prompt+rejected, ...)."""


@dataclass(frozen=True)
class Overlap:
    id: str
    ngrams: int
    """Distinct k-grams of the example (0 for an example without words)."""
    found: int
    """How many of them occur in the training data."""
    k: int
    """Gram length used: n, or less for an example shorter than n words."""

    @property
    def fraction(self) -> float:
        return self.found / self.ngrams if self.ngrams else 0.0


def item_grams(index: NgramIndex, item: EvalItem) -> tuple[int, set[int]]:
    """(k, hashes of the item's distinct k-grams): k is n, or its longest document's length if shorter."""
    encoded = [index.encode(doc) for doc in item.docs]
    k = min(index.n, max((len(ids) for ids in encoded), default=0))
    if k == 0:
        return 0, set()
    return k, {h for ids in encoded if len(ids) >= k for h in _gram_hashes(ids, k)}


def overlaps(index: NgramIndex, items: Sequence[EvalItem]) -> list[Overlap]:
    """Each item's share of distinct word n-grams found in the training data (one pass per gram length)."""
    grams = [item_grams(index, item) for item in items]
    wanted: dict[int, set[int]] = {}
    for k, hashes in grams:
        if k:
            wanted.setdefault(k, set()).update(hashes)
    found = index.found(wanted)
    return [Overlap(item.id, len(hashes), len(hashes & found[k]) if k else 0, k)
            for item, (k, hashes) in zip(items, grams)]


@dataclass
class SetReport:
    name: str
    n: int
    """Examples in the set."""
    contaminated: int
    """Examples whose overlap is above the threshold."""
    mean_overlap: float
    short: int
    """Examples shorter than n words, looked up whole (k < n)."""
    worst: list[tuple[str, float]]
    """The most overlapping examples (id, overlap), highest first, those above the threshold only."""
    contaminated_ids: list[str] = field(repr=False)
    overlaps: list[Overlap] = field(repr=False)

    @property
    def percent(self) -> float:
        return 100.0 * self.contaminated / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "contaminated": self.contaminated, "percent": round(self.percent, 4),
                "mean_overlap": round(self.mean_overlap, 6), "short": self.short,
                "worst": [{"id": i, "overlap": round(f, 6)} for i, f in self.worst],
                "contaminated_ids": self.contaminated_ids}


def summarize_set(name: str, found: Sequence[Overlap], n: int, threshold: float = 0.0, worst: int = 5) -> SetReport:
    """A set's report from its examples' overlaps: contaminated means overlap above ``threshold``."""
    dirty = [o for o in found if o.fraction > threshold]
    ranked = sorted(dirty, key=lambda o: -o.fraction)[:worst]
    mean = sum(o.fraction for o in found) / len(found) if found else 0.0
    return SetReport(name, len(found), len(dirty), mean, sum(o.k < n for o in found),
                     [(o.id, o.fraction) for o in ranked], [o.id for o in dirty], list(found))


def check_set(index: NgramIndex, items: Sequence[EvalItem], name: str = "eval", threshold: float = 0.0,
              worst: int = 5) -> SetReport:
    """One evaluation set's report against an index."""
    return summarize_set(name, overlaps(index, items), index.n, threshold, worst)


@dataclass
class ContaminationReport:
    sets: dict[str, SetReport]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "sets": {name: s.summary() for name, s in self.sets.items()}}


def check_contamination(train_docs: Iterable[str], eval_sets: dict[str, Sequence[EvalItem]], n: int = 8,
                        threshold: float = 0.0, worst: int = 5) -> ContaminationReport:
    """Index ``train_docs``, look every set's n-grams up in one pass, report each set."""
    index = NgramIndex(n).add(train_docs)
    everything = [item for items in eval_sets.values() for item in items]
    found = iter(overlaps(index, everything))
    sets = {name: summarize_set(name, [next(found) for _ in items], n, threshold, worst)
            for name, items in eval_sets.items()}
    settings = {"n": n, "threshold": threshold, "train_documents": index.documents, "train_words": index.words}
    return ContaminationReport(sets, settings)


# ---------------------------------------------------------------------------------------------
# Texts of records and task examples


def task_docs(example: TaskExample, with_cot: bool = False) -> list[str]:
    """The prompt's turns with the canonical answer (and, ``with_cot``, with the worked reasoning too)."""
    prompt = "\n".join(m["content"] for m in example.messages)
    docs = [f"{prompt}\n{example.answer}"]
    if with_cot and example.cot:
        docs.append(f"{prompt}\n{example.cot}")
    return docs


def _turns(messages) -> str:
    return "\n".join(m.content for m in messages)


def record_docs(record: Record) -> list[str]:
    """The documents a training record shows a model: one per full sequence it is trained on."""
    kind = record.kind
    if kind == "conversation":
        return [_turns(record.messages)]
    if kind == "prompt_completion":
        return [f"{record.prompt}{record.completion}"]
    if kind == "prompt":
        return [_turns(record.prompt)]
    if kind == "preference":
        return [_turns(record.prompt + record.chosen), _turns(record.prompt + record.rejected)]
    if kind == "ranking":
        return [_turns(record.prompt + r) for r in record.responses]
    if kind == "unpaired":
        return [_turns(record.prompt + record.completion)]
    if kind == "text":
        return [record.text]
    raise ValueError(f"record_docs: no texts known for a {kind!r} record")


def _is_task_file(path: Path) -> bool:
    """Whether a JSONL file holds world task examples (posttrain.world.tasks.write_tasks)."""
    if path.suffix not in (".jsonl", ".ndjson"):
        return False
    with path.open(encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and {"family", "id", "messages", "answer", "target"} <= first.keys()
    return False


def file_items(path: str | Path, skip_invalid: bool = False) -> list[EvalItem]:
    """Evaluation examples of a file: task examples (write_tasks) or records of any posttrain format."""
    path = Path(path)
    if path.is_file() and _is_task_file(path):
        return [EvalItem(ex.id, task_docs(ex)) for ex in read_tasks(path)]
    result = read_records(path, skip_invalid=skip_invalid)
    return [EvalItem(str(rec.meta.get("id", where)), record_docs(rec))
            for rec, where in zip(result.records, result.locations)]


def file_docs(path: str | Path, skip_invalid: bool = False) -> list[str]:
    """Training documents of a file: task examples (with their reasoning) or records of any posttrain format."""
    path = Path(path)
    if path.is_file() and _is_task_file(path):
        return [doc for ex in read_tasks(path) for doc in task_docs(ex, with_cot=True)]
    return [doc for rec in read_records(path, skip_invalid=skip_invalid).records for doc in record_docs(rec)]


# ---------------------------------------------------------------------------------------------
# The world's data


def world_sft_examples(seed: int = 0, families: Sequence[str] | None = None, n: int = 1000,
                       world=None) -> dict[str, list[TaskExample]]:
    """The world's instruction-tuning examples (train splits, as `posttrain sft` draws them), by family;
    ``families`` None: every trained family (posttrain.world.tasks.TRAIN_FAMILIES)."""
    world = world or make_world(seed)
    return {f: make_tasks(world, seed, f, "train", n) for f in (TRAIN_FAMILIES if families is None else families)}


def world_heldout_sets(seed: int = 0, families: Sequence[str] = (), n: int = 250,
                       world=None) -> dict[str, list[EvalItem]]:
    """Each family's held-out split as an evaluation set named "heldout/<family>"."""
    world = world or make_world(seed)
    return {f"heldout/{f}": [EvalItem(ex.id, task_docs(ex)) for ex in make_tasks(world, seed, f, "heldout", n)]
            for f in (families or FAMILIES)}


def world_corpus_docs(seed: int | None = None, size_mb: float = 0.0) -> list[str]:
    """The world's pretraining corpus; size 0 (and no seed) means the one the shipped base model was trained on."""
    weights = None
    if size_mb <= 0 or seed is None:
        record = json.loads((ASSETS_DIR / "corpus.json").read_text(encoding="utf-8"))
        seed = record["seed"] if seed is None else seed
        size_mb = size_mb if size_mb > 0 else record["size_mb"]
        weights = record.get("weights")
    return generate_corpus(seed, size_mb, split="train", weights=weights)


# ---------------------------------------------------------------------------------------------
# The command


def gather_training_docs(cfg) -> tuple[list[str], dict[str, int]]:
    """Every training document named by ``cfg.train``, and how many each source gave."""
    docs: list[str] = []
    counts: dict[str, int] = {}
    for source in cfg.train:
        if source == "world:sft":
            examples = world_sft_examples(cfg.world.seed, _sft_families(cfg), cfg.world.examples)
            found = [d for exs in examples.values() for ex in exs for d in task_docs(ex, with_cot=True)]
        elif source == "world:corpus":
            found = world_corpus_docs(cfg.world.seed, cfg.world.corpus_mb)
        elif source.startswith("world:"):
            raise _bad_source("train", source, "world:sft, world:corpus")
        else:
            found = file_docs(_existing(source, "train"), cfg.skip_invalid)
        counts[source] = len(found)
        docs += found
    return docs, counts


def gather_eval_sets(cfg) -> dict[str, list[EvalItem]]:
    """Every evaluation set named by ``cfg.eval``, by set name."""
    sets: dict[str, list[EvalItem]] = {}
    for source in cfg.eval:
        if source == "world:heldout":
            sets.update(world_heldout_sets(cfg.world.seed, cfg.world.families, cfg.world.eval_examples))
        elif source == "world:sft":
            examples = world_sft_examples(cfg.world.seed, _sft_families(cfg), cfg.world.examples)
            sets.update({f"sft/{f}": [EvalItem(ex.id, task_docs(ex)) for ex in exs] for f, exs in examples.items()})
        elif source.startswith("world:"):
            raise _bad_source("eval", source, "world:heldout, world:sft")
        else:
            # A set is named by its file name, or by the path given where two files share a name.
            name = Path(source).name
            if name in sets or sum(Path(s).name == name for s in cfg.eval) > 1:
                name = source
            sets[name] = file_items(_existing(source, "eval"), cfg.skip_invalid)
    return sets


def _sft_families(cfg) -> list[str] | None:
    """world.families less the held-out ones (never instruction-tuned on); None when world.families is empty."""
    return [f for f in cfg.world.families if f not in HELDOUT_FAMILIES] if cfg.world.families else None


def _existing(source: str, key: str) -> str:
    if not Path(source).exists():
        raise UserError(f"contamination: {key}: {source} does not exist; name a data file or folder, "
                        f"or one of {', '.join(WORLD_SOURCES)}")
    return source


def _bad_source(key: str, source: str, known: str):
    return UserError(f"contamination: {key}: unknown world source {source!r}; use {known} or a file")


def contamination_table(report: ContaminationReport):
    """A rich Table: one row per evaluation set."""
    s = report.settings
    table = Table(title=f"Contamination: {s['n']}-gram overlap with {s['train_documents']} training documents")
    for name, justify in (("eval set", "left"), ("n", "right"), ("contaminated", "right"), ("%", "right"),
                          ("mean overlap", "right"), ("short", "right"), ("worst", "left")):
        table.add_column(name, justify=justify)
    for name, r in report.sets.items():
        worst = f"{r.worst[0][0]} ({r.worst[0][1]:.2f})" if r.worst else "—"
        table.add_row(name, str(r.n), str(r.contaminated), f"{r.percent:.1f}", f"{r.mean_overlap:.3f}",
                      str(r.short), worst)
    table.caption = (f"contaminated: overlap > {s['threshold']} (share of an example's distinct {s['n']}-grams "
                     f"found in training); short: fewer than {s['n']} words, looked up whole")
    return table


def run_contamination(cfg) -> ContaminationReport:
    """The `posttrain contamination` command: index the training data, check every evaluation set, report."""
    check_families(cfg.world.families, "contamination: world.families", UserError)
    if not cfg.train or not cfg.eval:
        raise UserError("contamination: both train and eval need at least one source "
                        f"(files, or {', '.join(WORLD_SOURCES)})")
    console = Console()
    if not console.is_terminal:  # logs and pipes: keep one line per set
        console = Console(width=max(console.width, 132))
    start = time.time()
    docs, counts = gather_training_docs(cfg)
    sets = gather_eval_sets(cfg)
    report = check_contamination(docs, sets, cfg.n, cfg.threshold, cfg.worst)
    report.settings.update({"train": list(cfg.train), "train_sources": counts, "eval": list(cfg.eval),
                            "world_seed": cfg.world.seed, "seconds": round(time.time() - start, 2)})
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    path = run_dir / "contamination.json"
    write_json_atomic(path, report.to_json())
    console.print(contamination_table(report))
    console.print(f"results: {path}")
    return report
