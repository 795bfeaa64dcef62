"""Teachers: any chat model posttrain can call, behind one interface, with a disk cache in front.

- :class:`OpenAITeacher`: any OpenAI-compatible endpoint (``vllm serve``, ``transformers serve``, a
  hosted API) through the official ``openai`` client, requests in flight at once up to a limit,
  rate limits (429), server errors (5xx), timeouts and lost connections retried with exponential
  backoff by the client;
- :class:`LocalTeacher`: an HF folder or hub id, through posttrain's own batched, KV-cached generation;
- :class:`~posttrain.synth.world_teacher.WorldTeacher`: the embedded world's simulated teacher.

A teacher turns :class:`Request` s (chat messages + sampling settings) into :class:`Completion` s,
yielding each as it arrives. :class:`Teaching` puts a :class:`ResponseCache` in front: every response
is written to disk the moment it arrives, keyed by (teacher, model, messages, sampling, sample
index), so a rerun, or a job resumed after its server died, sends nothing twice and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from posttrain.errors import UserError
from posttrain.files import write_text_atomic
from posttrain.synth.config import TeacherConfig


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    """0: greedy."""
    top_p: float = 1.0
    max_tokens: int = 256
    sample: int = 0
    """Which sample of the same prompt this is (0, 1, ...): part of the cache key and the seed."""


@dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs, ending with a user turn."""
    sampling: Sampling

    @classmethod
    def chat(cls, messages: Sequence[dict], sampling: Sampling) -> "Request":
        return cls(tuple((m["role"], m["content"]) for m in messages), sampling)

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str = "stop"
    """stop, or length when the response was cut off at max_tokens."""


class Teacher(Protocol):
    identity: str
    """Names the teacher and model in the cache key and in each record's provenance."""

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Completion]]:
        """(index into requests, completion) for each request, in the order they finish."""


class TeacherError(UserError):
    """The teacher could not be reached or refused the request after every retry."""


# --------------------------------------------------------------------------- OpenAI-compatible


class OpenAITeacher:
    """A model behind any OpenAI-compatible chat-completions endpoint."""

    def __init__(self, cfg: TeacherConfig):
        import openai

        if not cfg.model:
            raise UserError("teacher.model: name the served model (e.g. the folder given to `vllm serve`)")
        self.cfg = cfg
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                                    max_retries=cfg.max_retries, timeout=cfg.timeout)
        self.identity = f"openai:{self.base_url or 'api.openai.com'}:{cfg.model}"
        self.errors = (openai.APIError,)

    def _one(self, request: Request) -> Completion:
        s = request.sampling
        response = self.client.chat.completions.create(
            model=self.cfg.model, messages=request.as_dicts(), temperature=s.temperature, top_p=s.top_p,
            max_tokens=s.max_tokens, seed=s.sample)
        choice = response.choices[0]
        return Completion(choice.message.content or "", choice.finish_reason or "stop")

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Completion]]:
        pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency))
        try:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except self.errors as e:
                    raise TeacherError(f"teacher {self.identity}: {type(e).__name__}: {e} (after "
                                       f"{self.cfg.max_retries} retries)") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- local HF model


class LocalTeacher:
    """An HF causal LM folder (or hub id) answering with posttrain's batched, KV-cached generation."""

    def __init__(self, cfg: TeacherConfig):
        from posttrain.generation import stop_at_end_of_turn
        from posttrain.models.config import ModelConfig
        from posttrain.models.loading import load_causal_lm, load_tokenizer

        if not cfg.model:
            raise UserError("teacher.model: give the teacher's folder (or hub id) for teacher.kind=local")
        model_cfg = ModelConfig(name_or_path=cfg.model)
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = load_causal_lm(model_cfg, tokenizer=self.tokenizer, for_training=False)
        stop_at_end_of_turn(self.model, self.tokenizer)
        self.cfg = cfg
        self.identity = f"local:{cfg.model}"

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Completion]]:
        from posttrain.generation import generate_chat

        groups: dict[Sampling, list[int]] = {}  # a batch samples one way
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling, []).append(i)
        for s, ids in groups.items():
            for start in range(0, len(ids), self.cfg.batch_size):
                batch = ids[start:start + self.cfg.batch_size]
                outputs = generate_chat(self.model, self.tokenizer, [requests[i].as_dicts() for i in batch],
                                        max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                        batch_size=len(batch), seed=s.sample * 1_000_003 + start)
                for i, out in zip(batch, outputs):
                    yield i, Completion(out.text, "stop" if out.finished else "length")


def make_teacher(cfg: TeacherConfig, world_seed: int = 0) -> Teacher:
    """The teacher ``cfg.kind`` names."""
    if cfg.kind == "openai":
        return OpenAITeacher(cfg)
    if cfg.kind == "local":
        return LocalTeacher(cfg)
    if cfg.kind == "world":
        from posttrain.synth.world_teacher import WorldTeacher

        return WorldTeacher(cfg.world, world_seed)
    raise UserError(f"teacher.kind={cfg.kind!r}: choose world, local or openai")


def teacher_license(cfg: TeacherConfig) -> str:
    if cfg.license:
        return cfg.license
    return "Apache-2.0" if cfg.kind == "world" else "unknown"


# --------------------------------------------------------------------------- cache


class ResponseCache:
    """One JSON file per response under ``root``, written atomically: a killed job leaves whole files only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(identity: str, request: Request) -> str:
        blob = json.dumps([identity, request.messages, asdict(request.sampling)], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self._path(key)
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return Completion(data["text"], data.get("finish_reason", "stop"))

    def put(self, key: str, identity: str, request: Request, completion: Completion) -> None:
        write_text_atomic(self._path(key), json.dumps(
            {"teacher": identity, "messages": request.as_dicts(), "sampling": asdict(request.sampling),
             "text": completion.text, "finish_reason": completion.finish_reason}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json")) if self.root.is_dir() else 0


class Teaching:
    """A teacher with the cache in front, sampling settings from the config, and counts of what it did."""

    def __init__(self, teacher: Teacher, cache: ResponseCache, cfg: TeacherConfig, progress: bool = False):
        self.teacher, self.cache, self.cfg, self.progress = teacher, cache, cfg, progress
        self.hits = self.sent = 0

    @property
    def identity(self) -> str:
        return self.teacher.identity

    def sampling(self, sample: int = 0, temperature: float | None = None, max_tokens: int | None = None) -> Sampling:
        return Sampling(self.cfg.temperature if temperature is None else temperature, self.cfg.top_p,
                        max_tokens or self.cfg.max_tokens, sample)

    def ask(self, conversations: Sequence[Sequence[dict]], what: str, samples: Sequence[int] | int = 0,
            temperature: float | None = None) -> list[Completion]:
        """The teacher's reply to each conversation (cached ones from disk), in order. ``samples``: the
        sample index of each (or of all): the same conversation with another index is another draw."""
        samples = [samples] * len(conversations) if isinstance(samples, int) else list(samples)
        requests = [Request.chat(c, self.sampling(k, temperature)) for c, k in zip(conversations, samples)]
        keys = [ResponseCache.key(self.identity, r) for r in requests]
        out: list[Completion | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, c in enumerate(out) if c is None]
        self.hits += len(requests) - len(todo)
        if todo:
            with _progress(self.progress, what, len(todo)) as advance:
                for j, completion in self.teacher.generate([requests[i] for i in todo]):
                    i = todo[j]
                    self.cache.put(keys[i], self.identity, requests[i], completion)
                    out[i] = completion
                    self.sent += 1
                    advance()
        return out  # type: ignore[return-value]


def cached_teacher(cfg: TeacherConfig, cache_dir: str | Path, world_seed: int = 0, progress: bool = False) -> Teaching:
    """The teacher ``cfg`` names with its responses cached under ``cache_dir``."""
    return Teaching(make_teacher(cfg, world_seed), ResponseCache(cache_dir), cfg, progress)


class _progress:
    """A rich progress bar (or nothing) that counts answered requests."""

    def __init__(self, enabled: bool, what: str, total: int):
        self.enabled, self.what, self.total = enabled, what, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task(self.what, total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
