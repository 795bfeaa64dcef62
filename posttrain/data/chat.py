"""Chat rendering: messages -> ``input_ids`` plus a loss mask over the assistant's tokens.

The tokenizer's chat template is the source of truth. A conversation is rendered to text by
``tokenizer.apply_chat_template(..., tokenize=False)`` and that whole text is tokenized once, so
the ids are exactly what ``apply_chat_template(..., tokenize=True)`` gives and what the model
sees at inference. The loss mask is found without knowing the template:

1. For each assistant message, render the conversation up to it twice: once with its content
   replaced by a placeholder (which locates where the template puts the content, and what it
   writes after it), once for real (which gives the content as the template renders it, e.g.
   stripped).
2. That gives a character span per assistant turn (see *What carries the loss* below).
3. The fast tokenizer's offsets map character spans to tokens.

What carries the loss (``loss_on="assistant"``), per assistant turn:

- the content as the template renders it, **plus the end-of-turn marker** the template writes
  right after it (``<|im_end|>`` for ChatML, `` </s>`` for Llama-2, ``</s>`` for Zephyr), so the
  model learns to stop. The marker is everything the template writes after the content in that
  turn, minus trailing whitespace: the newline between turns is never generated, so never trained.
  Where the conversation goes on with less of it (Phi-3 closes only its last turn with eos), an
  earlier turn's marker is the part of it, in whole tokens, that the text goes on with (``<|end|>``).
- the role header the template writes before the content (``<|im_start|>assistant\\n``) is prompt.
- A token is in the loss if any of its characters are in a span. So a token that straddles the
  start of the content, like Llama-2's ``" Hello"`` after ``[/INST]`` (the template's space fused
  with the first word by the tokenizer), is trained: the model must predict it to say "Hello".
  The masked tokens then decode to the span plus at most the part of its first and last tokens
  that lies outside it.

``loss_on="last_assistant"`` keeps only the last assistant turn's span; ``"all"`` trains every token.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from jinja2.exceptions import TemplateError

from posttrain.data.errors import DataError, location_of, set_location
from posttrain.data.templates import CHAT_TEMPLATES, RAW_TEMPLATE, RAW_TEMPLATE_BOS, RAW_TEMPLATES, resolve_chat_template
from posttrain.errors import UserError

logger = logging.getLogger("posttrain.data")

LossOn = Literal["assistant", "last_assistant", "all"]
Message = dict[str, Any]

CHATML_MARKERS = ["<|im_start|>", "<|im_end|>"]
# Stands in for an assistant message's content to locate it in the rendered text. Any string
# the template passes through unchanged works; this one will not occur in real data.
_PLACEHOLDER = "@@posttrain-assistant-content-7c1e@@"


class ExampleTooLongError(UserError, ValueError):
    """A conversation longer than ``data.max_length`` while ``data.overflow`` is ``error``."""


class ChatTemplateError(UserError, ValueError):
    """A chat template whose assistant turns cannot be located in the text it renders."""


class TemplateRefusedError(ChatTemplateError):
    """A conversation the model's chat template refuses to render (e.g. "System role not supported")."""

    def __init__(self, reason: str, has_system: bool):
        self.reason = reason
        self.fix = ("set data.system=merge (the system text joins the first user turn, as this model's users do), "
                    "data.system=drop, or model.chat_template=chatml" if has_system else
                    "make the roles alternate user/assistant, or set model.chat_template=chatml")
        super().__init__(f"the model's chat template refuses this conversation: {reason}; {self.fix}")


@dataclass
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    """Token ids, (seq,)."""
    loss_mask: list[bool]
    """(seq,) True where the token is a target of the loss."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass
class PromptResponse(Example):
    """A prompt followed by a response, as for preference pairs and reward models."""

    response_start: int = 0
    """Index of the first response token; ``input_ids[:response_start]`` is the prompt."""


# --------------------------------------------------------------------------------- templates


def ensure_chat_template(tokenizer, override: str | None = None, data_format: str = "auto") -> list[str]:
    """Give ``tokenizer`` the template to train with, in place; return the tokens it added.

    ``data_format`` (``data.format``): raw sets posttrain's raw-text template (prompt and completion
    as written, bos first if the tokenizer adds one to every text, eos after each completion); chat
    and auto keep what follows. ``override`` (a name in ``posttrain.data.templates.CHAT_TEMPLATES``,
    a ``.jinja`` path, or Jinja text) wins; otherwise the tokenizer's own template is kept; a tokenizer
    with none gets raw text under auto (a base model's data is trained as written) and ChatML under
    chat. The log says which was chosen and why. The template is stored on the tokenizer; exports
    leave a raw one out (``posttrain.models.export``).

    ChatML needs ``<|im_start|>`` and ``<|im_end|>`` as single special tokens. Where the tokenizer
    lacks them they are added, and returned: the caller must then call
    ``model.resize_token_embeddings(len(tokenizer))`` (the new rows are untrained).
    """
    if data_format not in ("auto", "chat", "raw"):
        raise ValueError(f"data.format={data_format!r}: expected auto, chat or raw")
    if data_format == "raw" or (data_format == "auto" and not override and not tokenizer.chat_template):
        tokenizer.chat_template = raw_template(tokenizer)
        logger.warning("data.format=%s: records are trained as raw text (prompt + completion + eos, no chat markers)%s",
                       data_format, "" if data_format == "raw" else "; the tokenizer has no chat template (set "
                       "data.format=chat, or model.chat_template=chatml, for ChatML)")
        return []
    if override:
        tokenizer.chat_template = resolve_chat_template(override)
    elif tokenizer.chat_template:
        return []
    else:
        tokenizer.chat_template = CHAT_TEMPLATES["chatml"]
        logger.warning("data.format=chat: the tokenizer has no chat template; using ChatML (new special tokens)")
    if tokenizer.chat_template in (CHAT_TEMPLATES["llama2"], CHAT_TEMPLATES["zephyr"]) and (
        tokenizer.bos_token is None or tokenizer.eos_token is None
    ):
        raise ValueError(
            f"the chat template {override!r} writes the tokenizer's bos and eos tokens, but this tokenizer has "
            f"bos={tokenizer.bos_token!r} eos={tokenizer.eos_token!r}. Use a tokenizer that defines both, "
            "or set model.chat_template=chatml."
        )
    if tokenizer.chat_template != CHAT_TEMPLATES["chatml"]:
        return []
    return _add_special_tokens(tokenizer, CHATML_MARKERS)


def raw_template(tokenizer) -> str:
    """The raw-text template for ``tokenizer``: with bos first when the tokenizer puts bos before a text."""
    if tokenizer.eos_token is None:
        raise ValueError("data.format=raw closes every completion with eos, but the tokenizer has no eos token")
    probe = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    return RAW_TEMPLATE_BOS if adds_bos else RAW_TEMPLATE


def is_raw(tokenizer) -> bool:
    """Whether ``tokenizer`` renders raw text (``data.format=raw``), not a chat template."""
    return tokenizer.chat_template in RAW_TEMPLATES


def _add_special_tokens(tokenizer, tokens: list[str]) -> list[str]:
    """Make ``tokens`` special (never split); return those that are new to the vocabulary."""
    missing = [t for t in tokens if t not in tokenizer.added_tokens_encoder]
    if not missing:
        return []
    vocab = tokenizer.get_vocab()
    new = [t for t in missing if t not in vocab]
    tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if new:
        logger.warning(
            "added special tokens %s for the ChatML template; resize the model's embeddings "
            "(model.resize_token_embeddings(len(tokenizer))) before training",
            ", ".join(new),
        )
    return new


# --------------------------------------------------------------------------------- rendering


def render_text(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it; :class:`TemplateRefusedError` when the
    template refuses it (its ``raise_exception``)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise TemplateRefusedError(str(e), any(m.get("role") == "system" for m in messages)) from None


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (ChatML's <|im_end|>), if it is a
    special token other than eos: generation must stop there as well as at eos."""
    marker = "@@end-of-turn-probe@@"
    text = render_text(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}])
    tail = text.split(marker, 1)[1].strip()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    if ids and ids[0] in tokenizer.all_special_ids and ids[0] != tokenizer.eos_token_id:
        return ids[0]
    return None


def assistant_char_spans(tokenizer, messages: list[Message], text: str, indices: Iterable[int],
                         render=None) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` in ``text`` (the rendered conversation) of the assistant
    messages at ``indices``: each covers the rendered content and the end-of-turn marker. ``render``:
    ``(messages) -> text`` in place of :func:`render_text` (a memo of it, see :class:`_Renders`)."""
    render = render or (lambda m: render_text(tokenizer, m))
    spans = []
    for i in indices:
        probe = render(messages[:i] + [{**messages[i], "content": _PLACEHOLDER}])
        real = text if i == len(messages) - 1 else render(messages[: i + 1])
        if probe.count(_PLACEHOLDER) != 1:
            raise ChatTemplateError(
                f"message {i}: the chat template writes an assistant message's content "
                f"{probe.count(_PLACEHOLDER)} times, not once, so its tokens cannot be located. "
                "Set model.chat_template to a template that writes it once (e.g. chatml)."
            )
        start = probe.index(_PLACEHOLDER)
        head, tail = probe[:start], probe[start + len(_PLACEHOLDER):]
        content_end = len(real) - len(tail)
        consistent = (
            real.startswith(head)
            and real.endswith(tail)
            and len(head) + len(tail) <= len(real)
            and text.startswith(real[:content_end])
        )
        end = content_end + len(_marker(tokenizer, tail.rstrip(), text[content_end:])) if consistent else 0
        if not consistent:
            raise ChatTemplateError(
                f"message {i}: the chat template renders this assistant turn differently depending on "
                "its content or on the messages after it (e.g. a reasoning model's drops earlier turns' "
                "thinking), so its tokens cannot be located. Set data.loss_on=last_assistant (train the last assistant turn "
                "only), data.loss_on=all (every token), or model.chat_template to a template that renders each "
                "turn independently (e.g. chatml)."
            )
        spans.append((start, end))
    return spans


def _marker(tokenizer, tail: str, following: str) -> str:
    """The end-of-turn marker: the longest run of ``tail``'s tokens (what the template writes after an
    assistant turn's content when the turn ends the text) that the conversation's text continues with,
    minus trailing whitespace. All of ``tail`` for most templates; Phi-3's closes only the last turn with
    eos, so an earlier turn's marker is its ``<|end|>`` alone."""
    if following.startswith(tail):
        return tail
    cuts = [end for _, end in _tokenize_with_offsets(tokenizer, tail)[1]]
    return next((tail[:cut] for cut in reversed(cuts) if following.startswith(tail[:cut])), "").rstrip()


def token_mask_from_char_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """(seq,) True for each token whose characters ``offsets[t] = (start, end)`` overlap a span.

    Overlap, not containment: a token straddling a span boundary is in (see the module docstring).
    ``spans`` must be sorted and disjoint, and token offsets in text order, as tokenizers give them.
    """
    mask = [False] * len(offsets)
    j = 0
    for t, (start, end) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j == len(spans):
            break
        mask[t] = start < spans[j][1] and end > spans[j][0]
    return mask


def _tokenize_with_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer; rendering needs character offsets, "
            "which only fast tokenizers give. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    # add_special_tokens=False: the template writes bos itself; apply_chat_template tokenizes the same way.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _render_with_offsets(tokenizer, messages, loss_on, add_generation_prompt):
    """(text, input_ids, offsets, loss_mask) of one conversation."""
    if loss_on not in ("assistant", "last_assistant", "all"):
        raise ValueError(f"loss_on={loss_on!r}: expected assistant, last_assistant or all")
    text = render_text(tokenizer, messages, add_generation_prompt)
    input_ids, offsets = _tokenize_with_offsets(tokenizer, text)
    if loss_on == "all":
        return text, input_ids, offsets, [True] * len(input_ids)
    indices = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if loss_on == "last_assistant":
        indices = indices[-1:]
    spans = assistant_char_spans(tokenizer, messages, text, indices)
    return text, input_ids, offsets, token_mask_from_char_spans(offsets, spans)


def render_chat(tokenizer, messages: list[Message], loss_on: LossOn = "assistant",
                add_generation_prompt: bool = False) -> Example:
    """Render ``messages`` (``[{"role", "content"}, ...]``) with the tokenizer's chat template.

    ``input_ids`` equal ``apply_chat_template(messages, add_generation_prompt=...)``; ``loss_mask``
    marks the assistant turns chosen by ``loss_on`` (see the module docstring for exactly which
    tokens). With ``add_generation_prompt`` the trailing assistant header is appended, untrained.
    """
    _, input_ids, _, loss_mask = _render_with_offsets(tokenizer, messages, loss_on, add_generation_prompt)
    return Example(input_ids, loss_mask)


def render_prompt_response(tokenizer, prompt_messages: list[Message], response_messages: list[Message]) -> PromptResponse:
    """Render a prompt conversation followed by its response messages (usually one assistant turn).

    ``input_ids`` are those of the whole conversation. ``response_start`` is the first token with
    characters past the prompt as rendered with its generation prompt; ``loss_mask`` marks the
    response's assistant turns (content + end-of-turn marker) as in ``render_chat``, nothing of the
    prompt. Two responses to one prompt (chosen/rejected) share ``input_ids[:response_start]``
    unless the tokenizer fuses the prompt's last characters with a response's first, which the
    straddling rule then gives to the response.
    """
    return render_prompt_responses(tokenizer, [(prompt_messages, response_messages)])[0]


class _Renders:
    """:func:`render_text` remembered per conversation: in preference data a prompt is rendered for its
    chosen and its rejected response, and often for several pairs (the template is deterministic)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, {}

    def __call__(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        key = (repr(messages), add_generation_prompt)
        text = self.seen.get(key)
        if text is None:
            text = self.seen[key] = render_text(self.tokenizer, messages, add_generation_prompt)
        return text


def render_prompt_responses(tokenizer, items: Iterable[tuple[list[Message], list[Message]]]) -> list[PromptResponse]:
    """:func:`render_prompt_response` of every (prompt messages, response messages), in one pass: each
    distinct conversation rendered once, every text tokenized by one batch call of the fast tokenizer."""
    render, items = _Renders(tokenizer), list(items)
    texts, prompt_texts = [], []
    for prompt_messages, response_messages in items:
        if not response_messages:
            raise ValueError("render_prompt_response: response_messages is empty; give at least one message")
        prompt_texts.append(render(list(prompt_messages), True) if prompt_messages else "")
        texts.append(render(list(prompt_messages) + list(response_messages)))
    encoded = _tokenize_many(tokenizer, texts)
    out = []
    for (prompt_messages, response_messages), text, prompt_text, (input_ids, offsets) in zip(
            items, texts, prompt_texts, encoded):
        messages = list(prompt_messages) + list(response_messages)
        indices = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        spans = assistant_char_spans(tokenizer, messages, text, indices, render)
        loss_mask = token_mask_from_char_spans(offsets, spans)
        if not text.startswith(prompt_text):
            raise ChatTemplateError(
                "the chat template renders the prompt differently once a response follows it, so the response "
                "cannot be located. Set model.chat_template to a template without that behaviour (e.g. chatml)."
            )
        response_start = next((t for t, (_, end) in enumerate(offsets) if end > len(prompt_text)), len(offsets))
        loss_mask = [m and t >= response_start for t, m in enumerate(loss_mask)]
        out.append(PromptResponse(input_ids, loss_mask, response_start))
    return out


def _tokenize_many(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """:func:`_tokenize_with_offsets` of every text, by one batch call."""
    if not texts:
        return []
    if len(texts) == 1:
        return [_tokenize_with_offsets(tokenizer, texts[0])]
    _tokenize_with_offsets(tokenizer, "")  # the slow-tokenizer check
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(list(ids), [tuple(o) for o in offsets]) for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]


# --------------------------------------------------------------------------------- datasets


@dataclass
class TokenizeReport:
    """What ``tokenize_conversations`` kept, cut and dropped."""

    max_length: int
    """The length limit the counts refer to."""
    seen: int = 0
    """Conversations read."""
    kept: int = 0
    """Examples returned."""
    truncated: int = 0
    """Kept examples cut to ``max_length`` tokens."""
    dropped_too_long: int = 0
    """Dropped because longer than ``max_length`` (``overflow=drop``)."""
    dropped_truncated_no_loss: int = 0
    """Dropped because truncation to ``max_length`` left no loss tokens."""
    dropped_no_loss: int = 0
    """Dropped because they have no loss tokens at all (e.g. no assistant message)."""
    tokens: int = 0
    """Tokens in the kept examples."""
    loss_tokens: int = 0
    """Loss tokens in the kept examples."""

    @property
    def dropped(self) -> int:
        return self.dropped_too_long + self.dropped_truncated_no_loss + self.dropped_no_loss

    def summary(self) -> str:
        return (
            f"tokenized {self.seen} conversations into {self.kept} examples "
            f"({self.tokens} tokens, {self.loss_tokens} in the loss); "
            f"{self.truncated} truncated to max_length={self.max_length}; dropped {self.dropped}: "
            f"{self.dropped_too_long} longer than max_length, "
            f"{self.dropped_truncated_no_loss} with no loss tokens left after truncation, "
            f"{self.dropped_no_loss} with no loss tokens"
        )


def fit_to_length(example: Example, index: int | str, max_length: int, overflow: str, report: TokenizeReport) -> Example | None:
    """Apply the overflow policy to one example; count what happens in ``report``; None if dropped.
    ``index``: where the example came from (``path:line``), or its 0-based position."""
    if example.num_loss_tokens == 0:
        report.dropped_no_loss += 1
        return None
    if len(example) <= max_length:
        return example
    if overflow == "error":
        where = index if isinstance(index, str) else f"conversation {index} (0-based)"
        raise ExampleTooLongError(
            f"{where}: {len(example)} tokens, longer than data.max_length={max_length}. "
            "Raise data.max_length, or set data.overflow=truncate or data.overflow=drop."
        )
    if overflow == "drop":
        report.dropped_too_long += 1
        return None
    if overflow != "truncate":
        raise ValueError(f"data.overflow={overflow!r}: expected truncate, drop or error")
    cut = Example(example.input_ids[:max_length], example.loss_mask[:max_length])
    if cut.num_loss_tokens == 0:
        report.dropped_truncated_no_loss += 1
        return None
    report.truncated += 1
    return cut


def tokenize_conversations(tokenizer, conversations: Iterable[list[Message]], data_cfg) -> tuple[list[Example], TokenizeReport]:
    """Render and tokenize each conversation (a list of message dicts, or a record with
    ``.as_dicts()``) with ``data_cfg.loss_on``, or the record's own ``meta["loss_on"]`` where it has
    one (ghost-attention data trains only its last turn), then apply ``data_cfg.max_length`` / ``overflow``.

    Returns the examples and a report of what was truncated and dropped (also logged).
    """
    report = TokenizeReport(max_length=data_cfg.max_length)
    examples = []
    for index, conversation in enumerate(conversations):
        messages = conversation.as_dicts() if hasattr(conversation, "as_dicts") else conversation
        report.seen += 1
        own = getattr(conversation, "meta", {}).get("loss_on") if data_cfg.loss_on != "all" else None
        example = render_chat(tokenizer, messages, loss_on=own or data_cfg.loss_on)
        example = fit_to_length(example, location_of(conversation, index), data_cfg.max_length, data_cfg.overflow,
                                report)
        if example is not None:
            examples.append(example)
            report.kept += 1
            report.tokens += len(example)
            report.loss_tokens += example.num_loss_tokens
    logger.info(report.summary())
    return examples, report


# --------------------------------------------------------------------------------- roles a template refuses

SystemTurns = Literal["keep", "merge", "drop"]


def apply_system(messages: list, system: SystemTurns) -> list:
    """Messages (records' ``Message`` objects or dicts) with their system turns kept, dropped, or merged
    into the first user turn ("<system>\\n\\n<user>", what users of Gemma and Mistral do, whose templates
    refuse a system role). A system turn with no user turn after it stays where it is."""
    if system == "keep" or not any(_role(m) == "system" for m in messages):
        return list(messages)
    if system not in ("merge", "drop"):
        raise ValueError(f"data.system={system!r}: expected keep, merge or drop")
    rest = [m for m in messages if _role(m) != "system"]
    if system == "drop":
        return rest
    text = "\n\n".join(_content(m) for m in messages if _role(m) == "system")
    first_user = next((i for i, m in enumerate(rest) if _role(m) == "user"), None)
    if first_user is None:
        return list(messages)
    rest[first_user] = _with_content(rest[first_user], f"{text}\n\n{_content(rest[first_user])}")
    return rest


def _role(message) -> str:
    return message["role"] if isinstance(message, dict) else message.role


def _content(message) -> str:
    return message["content"] if isinstance(message, dict) else message.content


def _with_content(message, content: str):
    if isinstance(message, dict):
        return {**message, "content": content}
    return dataclasses.replace(message, content=content)


# Record fields that hold the messages before the assistant's reply, by record kind.
_PROMPT_FIELDS = {"conversation": "messages", "prompt": "prompt", "preference": "prompt", "ranking": "prompt",
                  "unpaired": "prompt"}


def _rendered_messages(record) -> tuple[list, bool]:
    """The messages to test-render for ``record`` and whether a generation prompt follows them."""
    if record.kind == "conversation":
        return record.as_dicts(), False
    if record.kind == "prompt":
        return record.as_dicts(), True
    reply = {"preference": lambda r: r.chosen, "ranking": lambda r: r.responses[0],
             "unpaired": lambda r: r.completion}[record.kind](record)
    return [m.to_dict() for m in list(record.prompt) + list(reply)], False


def fit_to_template(result, tokenizer, system: SystemTurns = "keep", skip_invalid: bool = False):
    """Apply ``data.system`` to every record of a :class:`~posttrain.data.readers.ReadResult` (in place)
    and check that the chat template renders it.

    A record the template refuses (its ``raise_exception``, e.g. Gemma's and Mistral's "System role not
    supported", or roles that do not alternate) raises a :class:`~posttrain.data.readers.DataError` at
    its file:line with what to do, or with ``skip_invalid`` is skipped and counted (reason
    ``template_refused``). Text records and prompt/completion strings have no template and pass as is.
    """
    # Only a template that can raise needs a trial rendering (tokenization renders every record anyway).
    can_refuse = "raise_exception" in (tokenizer.chat_template or "")
    kept, where_kept = [], []
    for record, where in zip(result.records, result.locations):
        field = _PROMPT_FIELDS.get(record.kind)
        if field is None or (system == "keep" and not can_refuse):
            kept.append(record)
            where_kept.append(where)
            continue
        if system != "keep":
            record = set_location(dataclasses.replace(record, **{field: apply_system(getattr(record, field), system)}),
                                  where)
        if not can_refuse:
            kept.append(record)
            where_kept.append(where)
            continue
        messages, generation_prompt = _rendered_messages(record)
        try:
            render_text(tokenizer, messages, add_generation_prompt=generation_prompt)
        except TemplateRefusedError as e:
            error = DataError(where, f"the model's chat template refuses this record: {e.reason}; {e.fix}",
                              field=field, reason="template_refused")
            if not skip_invalid:
                raise error from None
            result.report.read -= 1
            result.report.kinds[record.kind] -= 1
            result.report.add_skip(error)
            continue
        kept.append(record)
        where_kept.append(where)
    result.records, result.locations = kept, where_kept
    return result
