"""Format adapters: one parsed JSON object (a JSONL line, a Parquet row) -> one validated record.

Formats and the fields they read (``format="auto"`` picks the first row whose key is present):

    key present              format             record
    messages                 messages           Conversation  (OpenAI: [{"role", "content"}, ...])
    conversations            sharegpt           Conversation  ([{"from": "human"|"gpt"|"system", "value"}])
    chosen or rejected       preference         Preference    (prompt, chosen, rejected, strength 1-4)
    responses                ranking            Ranking       (prompt, responses best first, or ranks)
    completion and label     unpaired           Unpaired      (TRL KTO: prompt, completion, label bool)
    completion               prompt_completion  PromptCompletion, or Conversation when given messages
    instruction or output    alpaca             Conversation  (instruction, input, output, system)
    text                     text               Text
    prompt                   prompt             Prompt        (prompts alone, for rollouts and eval)

Conventions shared by all formats:

- A prompt is a string (one user turn) or a list of messages that does not end with an
  assistant turn. A response (chosen, rejected, completion, each ranked response) is a string
  (one assistant turn) or a list of messages that starts with an assistant turn.
- Preference also takes TRL's implicit-prompt form: no ``prompt`` field, and chosen/rejected are
  full conversations; their longest shared prefix, cut back to end before an assistant turn, is
  the prompt. When an explicit prompt is given and chosen/rejected repeat it, it is removed.
- Ranking: ``responses`` are best first, unless ``ranks`` (1 = best, one distinct integer per
  response) is given, in which case responses are ordered by rank. Identical responses are allowed
  in a ranking (the others still carry signal), unlike an identical chosen/rejected pair.
- Alpaca: the user turn is ``instruction``, followed by a blank line and ``input`` when input is
  not empty; ``system`` (optional) becomes a system turn.
- A top-level field whose value is null counts as absent (Parquet and ``datasets`` fill columns
  a row lacks with null). Message fields other than role/content must be null or absent: any other
  value is an error rather than silently dropped. Remaining top-level fields (ids, sources) are
  kept in ``meta``, merged with a ``meta`` object if the record has one (null values left out).

Validation (every failure is a ``FieldError`` naming the field and a ``reason``; the readers add
the file and line): roles must be system/user/assistant; content must be a string; an assistant
turn must not be empty or whitespace; a conversation needs at least one assistant turn; strength
is an integer 1-4; chosen identical to rejected is an error (reason ``identical_pair``): such a
pair carries no preference and is usually a bug upstream (skip them with ``skip_invalid``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from posttrain.data.records import (
    ROLES,
    Conversation,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Ranking,
    Record,
    Text,
    Unpaired,
)

# Why a record was rejected; the readers count skipped records under these names.
REASONS = (
    "invalid_json",
    "encoding",
    "unknown_format",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_role",
    "empty_turn",
    "no_assistant_turn",
    "identical_pair",
    "template_refused",
)

SHAREGPT_SPEAKERS = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant",
    "system": "system",
}


class FieldError(ValueError):
    """A record that fails validation: which field, what is wrong, and a reason code (see REASONS)."""

    def __init__(self, field: str | None, problem: str, reason: str):
        self.field = field
        self.problem = problem
        self.reason = reason
        super().__init__(f"field '{field}': {problem}" if field else problem)


# ---------------------------------------------------------------- small checks


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _require(raw: dict, key: str, fmt: str) -> Any:
    if key not in raw:
        raise FieldError(key, f"missing (a {fmt} record needs it; fields found: {', '.join(raw) or 'none'})",
                         "missing_field")
    return raw[key]


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        hint = " (multi-part content is not supported; join the text parts)" if isinstance(value, list) else ""
        raise FieldError(field, f"expected a string, got {_describe(value)}{hint}", "wrong_type")
    return value


def _list(value: Any, field: str, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise FieldError(field, f"expected a list of {what}, got {_describe(value)}", "wrong_type")
    return list(value)


def _message(item: Any, field: str) -> Message:
    if not isinstance(item, dict):
        raise FieldError(field, f"expected a message object with role and content, got {_describe(item)}",
                         "wrong_type")
    if item.get("role") is None:
        raise FieldError(f"{field}.role", "missing role; expected one of " + ", ".join(ROLES), "missing_field")
    role = item["role"]
    if not isinstance(role, str):
        raise FieldError(f"{field}.role", f"expected a string, got {_describe(role)}", "wrong_type")
    if role not in ROLES:
        raise FieldError(f"{field}.role", f"unknown role '{role}'; expected one of " + ", ".join(ROLES),
                         "unknown_role")
    if item.get("content") is None:
        raise FieldError(f"{field}.content", "missing content", "missing_field")
    content = _string(item["content"], f"{field}.content")
    for key, value in item.items():
        if key not in ("role", "content") and value is not None:
            raise FieldError(f"{field}.{key}", "unsupported message field; messages keep only role and content",
                             "bad_value")
    return Message(role, content)


def _messages(value: Any, field: str) -> list[Message]:
    items = _list(value, field, "messages")
    if not items:
        raise FieldError(field, "empty list of messages", "bad_value")
    return [_message(item, f"{field}[{i}]") for i, item in enumerate(items)]


def _check_assistant_turns(messages: list[Message], field: str, offset: int = 0) -> None:
    for i, m in enumerate(messages):
        if m.role == "assistant" and not m.content.strip():
            raise FieldError(f"{field}[{i + offset}].content", "empty assistant turn", "empty_turn")


def _check_conversation(messages: list[Message], field: str) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise FieldError(field, "no assistant turn, so nothing to learn from "
                         "(a prompt alone is written {\"prompt\": ...})", "no_assistant_turn")
    _check_assistant_turns(messages, field)


def _prompt(value: Any, field: str = "prompt") -> list[Message]:
    """A string (one user turn) or messages not ending with an assistant turn."""
    if isinstance(value, str):
        return [Message("user", value)]
    messages = _messages(value, field)
    if messages[-1].role == "assistant":
        raise FieldError(f"{field}[{len(messages) - 1}].role",
                         "a prompt must not end with an assistant turn; the response continues it", "bad_value")
    _check_assistant_turns(messages, field)
    return messages


def _response(value: Any, field: str, prompt: list[Message] | None = None) -> list[Message]:
    """A string (one assistant turn) or messages starting with an assistant turn.

    When ``prompt`` is given and the messages repeat it first (TRL full-conversation form), it is removed.
    """
    if isinstance(value, str):
        if not value.strip():
            raise FieldError(field, "empty assistant turn", "empty_turn")
        return [Message("assistant", value)]
    messages = _messages(value, field)
    offset = 0
    if prompt and len(messages) > len(prompt) and messages[:len(prompt)] == prompt:
        messages, offset = messages[len(prompt):], len(prompt)
    return _continuation(messages, field, offset)


def _continuation(messages: list[Message], field: str, offset: int = 0) -> list[Message]:
    if not messages:
        raise FieldError(field, "no response after the prompt", "empty_turn")
    if messages[0].role != "assistant":
        raise FieldError(f"{field}[{offset}].role",
                         f"a response must start with an assistant turn, got '{messages[0].role}'", "bad_value")
    _check_assistant_turns(messages, field, offset)
    return messages


def _integer(value: Any, field: str) -> int:
    if isinstance(value, float) and value.is_integer():  # pandas turns int columns with nulls into floats
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"expected an integer, got {_describe(value)}", "wrong_type")
    return value


def _meta(raw: dict, used: tuple[str, ...]) -> dict[str, Any]:
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise FieldError("meta", f"expected an object, got {_describe(meta)}", "wrong_type")
    extras = {k: v for k, v in raw.items() if k not in used and k != "meta"}
    # Nulls are dropped here too: a Parquet struct column fills keys that other rows have with null.
    return {k: v for k, v in {**extras, **meta}.items() if v is not None}


# ---------------------------------------------------------------- one parser per format


def parse_messages(raw: dict) -> Conversation:
    messages = _messages(_require(raw, "messages", "messages"), "messages")
    _check_conversation(messages, "messages")
    return Conversation(messages, _meta(raw, ("messages",)))


def parse_sharegpt(raw: dict) -> Conversation:
    turns = _list(_require(raw, "conversations", "sharegpt"), "conversations", "turns")
    messages = [Message("system", _string(raw["system"], "system"))] if raw.get("system") else []
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if isinstance(turn, dict) and "from" not in turn and "role" in turn:
            messages.append(_message(turn, field))  # some ShareGPT dumps use OpenAI keys
            continue
        if not isinstance(turn, dict):
            raise FieldError(field, f"expected a turn object with from and value, got {_describe(turn)}",
                             "wrong_type")
        speaker = turn.get("from")
        if speaker is None:
            raise FieldError(f"{field}.from", "missing speaker", "missing_field")
        if not isinstance(speaker, str) or speaker.lower() not in SHAREGPT_SPEAKERS:
            raise FieldError(f"{field}.from", f"unknown speaker {speaker!r}; expected one of "
                             + ", ".join(SHAREGPT_SPEAKERS), "unknown_role")
        if turn.get("value") is None:
            raise FieldError(f"{field}.value", "missing value", "missing_field")
        messages.append(Message(SHAREGPT_SPEAKERS[speaker.lower()], _string(turn["value"], f"{field}.value")))
    if not messages:
        raise FieldError("conversations", "empty list of turns", "bad_value")
    _check_conversation(messages, "conversations")
    return Conversation(messages, _meta(raw, ("conversations", "system")))


def parse_alpaca(raw: dict) -> Conversation:
    instruction = _string(_require(raw, "instruction", "alpaca"), "instruction")
    if not instruction.strip():
        raise FieldError("instruction", "empty instruction", "bad_value")
    extra = _string(raw.get("input", ""), "input")
    output = _string(_require(raw, "output", "alpaca"), "output")
    if not output.strip():
        raise FieldError("output", "empty assistant turn", "empty_turn")
    messages = [Message("system", _string(raw["system"], "system"))] if raw.get("system") else []
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [Message("user", user), Message("assistant", output)]
    return Conversation(messages, _meta(raw, ("instruction", "input", "output", "system")))


def parse_prompt_completion(raw: dict) -> PromptCompletion | Conversation:
    prompt, completion = _require(raw, "prompt", "prompt_completion"), _require(raw, "completion", "prompt_completion")
    meta = _meta(raw, ("prompt", "completion"))
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise FieldError("completion", "empty completion", "empty_turn")
        return PromptCompletion(prompt, completion, meta)
    # TRL's conversational prompt-completion: messages in, messages out, i.e. a conversation.
    prompt_messages = _prompt(prompt)
    return Conversation(prompt_messages + _response(completion, "completion", prompt_messages), meta)


def parse_prompt(raw: dict) -> Prompt:
    return Prompt(_prompt(_require(raw, "prompt", "prompt")), _meta(raw, ("prompt",)))


def _shared_prompt(chosen: list[Message], rejected: list[Message]) -> int:
    """Length of the prompt two full conversations share: their common prefix, minus trailing assistant turns."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1].role == "assistant":
        n -= 1
    return n


def parse_preference(raw: dict) -> Preference:
    chosen_raw, rejected_raw = _require(raw, "chosen", "preference"), _require(raw, "rejected", "preference")
    if "prompt" in raw:
        prompt = _prompt(raw["prompt"])
        chosen = _response(chosen_raw, "chosen", prompt)
        rejected = _response(rejected_raw, "rejected", prompt)
    else:
        if isinstance(chosen_raw, str) or isinstance(rejected_raw, str):
            raise FieldError("prompt", "missing (needed unless chosen and rejected are full conversations "
                             "that start with the prompt)", "missing_field")
        full_chosen, full_rejected = _messages(chosen_raw, "chosen"), _messages(rejected_raw, "rejected")
        n = _shared_prompt(full_chosen, full_rejected)
        if n == 0:
            raise FieldError("prompt", "missing, and chosen and rejected share no prompt turns to take it from",
                             "missing_field")
        prompt = full_chosen[:n]
        _check_assistant_turns(prompt, "chosen")
        chosen = _continuation(full_chosen[n:], "chosen", n)
        rejected = _continuation(full_rejected[n:], "rejected", n)
    if chosen == rejected:
        raise FieldError("rejected", "identical to chosen; such a pair carries no preference", "identical_pair")
    strength = None
    if raw.get("strength") is not None:
        strength = _integer(raw["strength"], "strength")
        if not 1 <= strength <= 4:
            raise FieldError("strength", f"expected 1 (slight) to 4 (decisive), got {strength}", "bad_value")
    return Preference(prompt, chosen, rejected, strength, _meta(raw, ("prompt", "chosen", "rejected", "strength")))


def parse_ranking(raw: dict) -> Ranking:
    prompt = _prompt(_require(raw, "prompt", "ranking"))
    items = _list(_require(raw, "responses", "ranking"), "responses", "responses")
    if len(items) < 2:
        raise FieldError("responses", f"a ranking needs at least 2 responses, got {len(items)}", "bad_value")
    responses = [_response(r, f"responses[{i}]", prompt) for i, r in enumerate(items)]
    if raw.get("ranks") is not None:
        ranks = [_integer(r, f"ranks[{i}]") for i, r in enumerate(_list(raw["ranks"], "ranks", "integers"))]
        if len(ranks) != len(responses) or len(set(ranks)) != len(ranks):
            raise FieldError("ranks", f"expected {len(responses)} distinct integers (1 = best), one per response, "
                             f"got {ranks}", "bad_value")
        responses = [r for _, r in sorted(zip(ranks, responses), key=lambda pair: pair[0])]
    return Ranking(prompt, responses, _meta(raw, ("prompt", "responses", "ranks")))


def parse_unpaired(raw: dict) -> Unpaired:
    prompt = _prompt(_require(raw, "prompt", "unpaired"))
    completion = _response(_require(raw, "completion", "unpaired"), "completion", prompt)
    label = _require(raw, "label", "unpaired")
    if not isinstance(label, bool):
        raise FieldError("label", f"expected true (desirable) or false (undesirable), got {_describe(label)}",
                         "wrong_type")
    return Unpaired(prompt, completion, label, _meta(raw, ("prompt", "completion", "label")))


def parse_text(raw: dict) -> Text:
    text = _string(_require(raw, "text", "text"), "text")
    if not text.strip():
        raise FieldError("text", "empty text", "bad_value")
    return Text(text, _meta(raw, ("text",)))


FORMATS: dict[str, Callable[[dict], Record]] = {
    "messages": parse_messages,
    "conversation": parse_messages,
    "sharegpt": parse_sharegpt,
    "alpaca": parse_alpaca,
    "prompt_completion": parse_prompt_completion,
    "preference": parse_preference,
    "ranking": parse_ranking,
    "unpaired": parse_unpaired,
    "text": parse_text,
    "prompt": parse_prompt,
}

# (keys, any/all, format) in priority order; see the module docstring.
_DETECT: list[tuple[tuple[str, ...], Callable, str]] = [
    (("messages",), any, "messages"),
    (("conversations",), any, "sharegpt"),
    (("chosen", "rejected"), any, "preference"),
    (("responses",), any, "ranking"),
    (("completion", "label"), all, "unpaired"),
    (("completion",), any, "prompt_completion"),
    (("instruction", "output"), any, "alpaca"),
    (("text",), any, "text"),
    (("prompt",), any, "prompt"),
]
_EXPECTED = ("messages (OpenAI), conversations (ShareGPT), instruction+output (Alpaca), prompt+chosen+rejected, "
             "prompt+responses, prompt+completion+label, prompt+completion, text, or prompt")


def detect_format(raw: dict) -> str:
    """Name of the format of ``raw`` (a dict with null fields already removed), judged by its keys."""
    for keys, quantifier, fmt in _DETECT:
        if quantifier(k in raw for k in keys):
            return fmt
    found = ", ".join(k for k in raw if k != "meta") or "none"
    raise FieldError(None, f"cannot tell the format from the fields found ({found}); expected {_EXPECTED} "
                     "(or set format explicitly)", "unknown_format")


def parse_record(raw: Any, format: str = "auto") -> Record:
    """One JSON object -> a validated record; raises FieldError (no file or line: the readers add them)."""
    if not isinstance(raw, dict):
        raise FieldError(None, f"expected a JSON object, got {_describe(raw)}", "wrong_type")
    present = {k: v for k, v in raw.items() if v is not None}
    fmt = detect_format(present) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format '{format}'; expected auto or one of {', '.join(FORMATS)}")
    return FORMATS[fmt](present)
