"""Training records: the few shapes post-training data comes in, as small immutable dataclasses.

Every reader produces these and every stage consumes them, whatever the file looked like:

    Conversation      system/user/assistant turns, for SFT
    PromptCompletion  raw-text prompt and completion (no chat template), for SFT on plain text
    Prompt            a prompt alone, for rollouts (PPO, STaR) and generation-based evaluation
    Preference        prompt + chosen + rejected (+ strength 1-4), for reward models and DPO
    Ranking           prompt + K responses ordered best first, for ranking reward losses
    Unpaired          prompt + completion + desirable/undesirable label, for KTO-style losses
    Text              a document, for pretraining and mid-training

Prompts are lists of messages so that multi-turn prompts (with a system rule) work; responses
(chosen, rejected, completion, ranked responses) are the assistant messages that continue them.
Each record has a ``kind`` and a ``to_dict()`` giving its canonical JSON form, the form that
``posttrain.data.writers.write_jsonl`` writes and ``posttrain.data.readers`` reads back
unchanged. Canonical forms always use message lists (never a bare string for a chat turn), so a
file has one type per column and ``datasets``/TRL load it too. ``meta`` (ids, sources, licenses,
annotator details) is written under a ``"meta"`` key only when it is not empty.

This module validates nothing: parsing and validation, with file/line/field in the errors, live in
``posttrain.data.formats``; it imports nothing beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    """One of system, user, assistant."""
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def messages_to_dicts(messages: list[Message]) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` dicts, the form chat templates consume."""
    return [m.to_dict() for m in messages]


def _with_meta(data: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    if meta:
        data["meta"] = meta
    return data


@dataclass(frozen=True)
class Conversation:
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "conversation"

    def as_dicts(self) -> list[dict[str, str]]:
        return messages_to_dicts(self.messages)

    def to_dict(self) -> dict[str, Any]:
        return _with_meta({"messages": self.as_dicts()}, self.meta)


@dataclass(frozen=True)
class PromptCompletion:
    prompt: str
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "prompt_completion"

    def to_dict(self) -> dict[str, Any]:
        return _with_meta({"prompt": self.prompt, "completion": self.completion}, self.meta)


@dataclass(frozen=True)
class Prompt:
    prompt: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "prompt"

    def as_dicts(self) -> list[dict[str, str]]:
        return messages_to_dicts(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        return _with_meta({"prompt": self.as_dicts()}, self.meta)


@dataclass(frozen=True)
class Preference:
    prompt: list[Message]
    chosen: list[Message]
    """Assistant continuation preferred by the annotator."""
    rejected: list[Message]
    strength: int | None = None
    """How strongly chosen is preferred, 1 (slightly) to 4 (decisively); None when not annotated."""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "preference"

    def chosen_conversation(self) -> Conversation:
        return Conversation(self.prompt + self.chosen, dict(self.meta))

    def rejected_conversation(self) -> Conversation:
        return Conversation(self.prompt + self.rejected, dict(self.meta))

    def to_conversations(self) -> tuple[Conversation, Conversation]:
        """(prompt + chosen, prompt + rejected)."""
        return self.chosen_conversation(), self.rejected_conversation()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt": messages_to_dicts(self.prompt),
            "chosen": messages_to_dicts(self.chosen),
            "rejected": messages_to_dicts(self.rejected),
        }
        if self.strength is not None:
            data["strength"] = self.strength
        return _with_meta(data, self.meta)


@dataclass(frozen=True)
class Ranking:
    prompt: list[Message]
    responses: list[list[Message]]
    """Assistant continuations, best first."""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "ranking"

    def conversations(self) -> list[Conversation]:
        """prompt + response for each response, best first."""
        return [Conversation(self.prompt + r, dict(self.meta)) for r in self.responses]

    def to_pairs(self) -> list[Preference]:
        """Every (better, worse) pair the ranking implies: K*(K-1)/2 preferences."""
        return [
            Preference(self.prompt, better, worse, None, dict(self.meta))
            for i, better in enumerate(self.responses)
            for worse in self.responses[i + 1:]
        ]

    def to_dict(self) -> dict[str, Any]:
        data = {"prompt": messages_to_dicts(self.prompt),
                "responses": [messages_to_dicts(r) for r in self.responses]}
        return _with_meta(data, self.meta)


@dataclass(frozen=True)
class Unpaired:
    prompt: list[Message]
    completion: list[Message]
    desirable: bool
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "unpaired"

    def conversation(self) -> Conversation:
        return Conversation(self.prompt + self.completion, dict(self.meta))

    def to_dict(self) -> dict[str, Any]:
        data = {"prompt": messages_to_dicts(self.prompt),
                "completion": messages_to_dicts(self.completion),
                "label": self.desirable}
        return _with_meta(data, self.meta)


@dataclass(frozen=True)
class Text:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "text"

    def to_dict(self) -> dict[str, Any]:
        return _with_meta({"text": self.text}, self.meta)


Record = Conversation | PromptCompletion | Prompt | Preference | Ranking | Unpaired | Text
RECORD_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Conversation, PromptCompletion, Prompt, Preference, Ranking, Unpaired, Text)
}
