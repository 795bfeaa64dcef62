"""Batched generation with ``transformers``' ``generate``: left padding, KV cache, greedy or sampled.

Decoding depends only on the arguments of :func:`generate`: the model's own
``generation_config`` (which may carry a repetition penalty or a top-k from its authors) is
switched for a neutral one during the call, so PPO's log-probs describe the distribution that was
actually sampled. :func:`posttrain.models.export.export_model` writes that same neutral config,
so plain ``model.generate`` on an exported folder decodes greedily to the same tokens.

Prompts are sorted by length into batches (less padding); greedy results do not depend on
the batch size or on which prompts share a batch. Sampled results are reproducible for the same
prompts, ``batch_size`` and ``seed``; with ``row_seeds`` they do not depend on the batch either
(each row draws from its own generator), which is how processes that split one batch of prompts
sample what a single process would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList

from posttrain.data.chat import end_of_turn_id
from posttrain.models.wrappers import transformers_model, unwrap_model

if TYPE_CHECKING:
    import torch


@dataclass
class GenerationOutput:
    """One prompt and its completion."""

    prompt_ids: list[int]
    """Prompt token ids, without padding."""
    completion_ids: list[int]
    """Generated ids, without padding; cut after the first eos, which is kept (the policy chose to stop)."""
    text: str
    """The completion decoded without special tokens."""
    finished: bool
    """True when the completion ended with an eos; False when it ran into max_new_tokens."""
    completion_token_logps: list[float] | None = None
    """Log-prob of each completion token under the model (at ``logps_temperature``, 1 unless set; before
    top-p); None unless asked."""

    @property
    def completion_logps(self) -> float | None:
        """Summed log-prob of the completion (``*_logps`` are per sequence), or None when not computed."""
        return None if self.completion_token_logps is None else float(sum(self.completion_token_logps))


@dataclass
class PaddedCompletions:
    """Prompts and their completions as padded tensors on the model's device (what RL trains on):
    no per-row lists between sampling and the loss."""

    prompt_ids: torch.Tensor
    """(B, P) long, left-padded with the pad id: every prompt ends at column P - 1."""
    prompt_mask: torch.Tensor
    """(B, P) bool, True on prompt tokens."""
    completion_ids: torch.Tensor
    """(B, N) long, right-padded with the pad id; cut after the first stop token, which is kept."""
    completion_mask: torch.Tensor
    """(B, N) bool, True on completion tokens."""
    finished: torch.Tensor
    """(B,) bool: the completion ended with a stop token (False: it ran into max_new_tokens)."""
    texts: list[str]
    """Each completion decoded without special tokens."""
    token_logps: torch.Tensor | None = None
    """(B, N) float32 log-prob of each completion token (as :attr:`GenerationOutput.completion_token_logps`),
    0 on padding; None unless asked."""

    def outputs(self) -> list[GenerationOutput]:
        """One :class:`GenerationOutput` per row (token lists without padding)."""
        prompts, completions = self.prompt_ids.tolist(), self.completion_ids.tolist()
        prompt_lengths, lengths = self.prompt_mask.sum(1).tolist(), self.completion_mask.sum(1).tolist()
        logps = None if self.token_logps is None else self.token_logps.cpu().tolist()
        return [GenerationOutput(prompt_ids=prompts[r][len(prompts[r]) - prompt_lengths[r]:],
                                 completion_ids=completions[r][:lengths[r]], text=self.texts[r],
                                 finished=bool(self.finished[r]),
                                 completion_token_logps=None if logps is None else logps[r][:lengths[r]])
                for r in range(len(self.texts))]


def join_completions(parts: Sequence[PaddedCompletions], pad_id: int) -> PaddedCompletions:
    """The rows of ``parts`` in order, re-padded to the widest prompt and completion."""
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_n = max(p.completion_ids.shape[1] for p in parts)

    def cat(name: str, left: bool, value) -> torch.Tensor:
        tensors = [getattr(p, name) for p in parts]
        width = width_p if left else width_n
        return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]),
                                                  value=value) for t in tensors])

    return PaddedCompletions(
        prompt_ids=cat("prompt_ids", True, pad_id), prompt_mask=cat("prompt_mask", True, False),
        completion_ids=cat("completion_ids", False, pad_id), completion_mask=cat("completion_mask", False, False),
        finished=torch.cat([p.finished for p in parts]), texts=[t for p in parts for t in p.texts],
        token_logps=None if parts[0].token_logps is None else cat("token_logps", False, 0.0))


def select_rows(padded: PaddedCompletions, rows: torch.Tensor) -> PaddedCompletions:
    """The given rows of ``padded``, in the order of ``rows``."""
    rows = rows.to(padded.prompt_ids.device)
    pick = lambda t: None if t is None else t[rows]  # noqa: E731
    return PaddedCompletions(pick(padded.prompt_ids), pick(padded.prompt_mask), pick(padded.completion_ids),
                             pick(padded.completion_mask), pick(padded.finished),
                             [padded.texts[i] for i in rows.tolist()], pick(padded.token_logps))


def eos_token_ids(model, tokenizer) -> list[int]:
    """Ids that end a completion: the tokenizer's eos, then any other eos in the model's generation_config."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    config = getattr(transformers_model(unwrap_model(model)), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else list(extra or []):
        if i not in ids:
            ids.append(int(i))
    return ids


def stop_at_end_of_turn(lm, tokenizer) -> None:
    """Add the end-of-turn token to the model's generation_config eos ids (exported with the model)."""
    turn_end = end_of_turn_id(tokenizer)
    config = transformers_model(lm).generation_config
    current = config.eos_token_id
    ids = [current] if isinstance(current, int) else list(current or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    if turn_end is not None and turn_end not in ids:
        ids.append(turn_end)
    config.eos_token_id = ids[0] if len(ids) == 1 else ids


def neutral_generation_config(model, tokenizer, **decoding):
    """A ``GenerationConfig`` with only the special token ids set (plus ``decoding`` arguments):
    no repetition penalty, no top-k, nothing inherited from the model's authors."""
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
        pad_token_id=pad,
        **decoding,
    )


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    stop_at_eos: bool = True,
    seed: int | None = None,
    return_logps: bool = False,
    logps_temperature: float = 1.0,
    row_seeds: Sequence[int] | None = None,
) -> list[GenerationOutput]:
    """Complete every prompt (token ids, or strings encoded with ``tokenizer(prompt)``).

    temperature 0 is greedy; otherwise tokens are sampled at ``temperature`` with nucleus
    ``top_p`` (no top-k). ``stop_at_eos=False`` always generates ``max_new_tokens`` tokens.
    ``seed`` makes sampling reproducible without touching the global RNG.
    ``return_logps`` fills ``completion_token_logps`` from the logits seen while decoding, as
    ``log_softmax(logits / logps_temperature)``: RL passes its sampling temperature, so the
    log-probs are those of the distribution the tokens were drawn from (top-p aside).
    ``row_seeds`` (one per prompt; sampling only): prompt i's tokens are drawn by inverse CDF from
    uniforms of a generator seeded with ``row_seeds[i]``, from the same temperature / top-p
    distribution, so its completion does not depend on ``batch_size``, on the other prompts, or on
    the process that generates it (up to float rounding of the logits in another batch).
    Outputs are in the order of ``prompts``. The model is put in eval mode during the call and
    restored afterwards. :func:`generate_padded` returns the same as padded tensors on the device.
    """
    prompt_ids = [_as_ids(tokenizer, p, i) for i, p in enumerate(prompts)]
    results: list[GenerationOutput | None] = [None] * len(prompt_ids)
    for rows, padded in _generated_batches(model, tokenizer, prompt_ids, max_new_tokens, temperature, top_p,
                                           batch_size, stop_at_eos, seed, return_logps, logps_temperature, row_seeds,
                                           pad_id=0):  # padding is cut from the outputs: any id does
        for i, out in zip(rows, padded.outputs()):
            results[i] = out
    return results  # type: ignore[return-value]


def generate_padded(model, tokenizer, prompts: Sequence[Sequence[int]], *, pad_id: int, max_new_tokens: int = 64,
                    temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16, stop_at_eos: bool = True,
                    seed: int | None = None, return_logps: bool = False, logps_temperature: float = 1.0,
                    row_seeds: Sequence[int] | None = None) -> PaddedCompletions:
    """:func:`generate` (same arguments and completions) returning one :class:`PaddedCompletions` on the
    model's device, rows in the order of ``prompts``, padding holding ``pad_id``."""
    prompt_ids = [_as_ids(tokenizer, p, i) for i, p in enumerate(prompts)]
    parts, order = [], []
    for rows, padded in _generated_batches(model, tokenizer, prompt_ids, max_new_tokens, temperature, top_p,
                                           batch_size, stop_at_eos, seed, return_logps, logps_temperature, row_seeds,
                                           pad_id=pad_id):
        parts.append(padded), order.extend(rows)
    joined = join_completions(parts, pad_id)
    return select_rows(joined, torch.argsort(torch.tensor(order)))  # back to the order of the prompts


def _generated_batches(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
                       top_p: float, batch_size: int, stop_at_eos: bool, seed: int | None, return_logps: bool,
                       logps_temperature: float, row_seeds: Sequence[int] | None,
                       pad_id: int) -> Iterator[tuple[list[int], PaddedCompletions]]:
    """(rows, their completions) per batch of similar-length prompts (longest first: little padding)."""
    _check_args(max_new_tokens, temperature, top_p, batch_size)
    if logps_temperature <= 0:
        raise ValueError(f"logps_temperature must be > 0, got {logps_temperature}")
    if row_seeds is not None and len(row_seeds) != len(prompt_ids):
        raise ValueError(f"row_seeds has {len(row_seeds)} entries for {len(prompt_ids)} prompts; give one per prompt")
    inner = unwrap_model(model)
    sampling = temperature > 0
    per_row = sampling and row_seeds is not None
    config = neutral_generation_config(
        inner, tokenizer,
        max_new_tokens=max_new_tokens,
        do_sample=sampling and not per_row,  # per-row draws pick the token themselves (see _RowSampler)
        temperature=temperature if sampling and not per_row else None,
        top_p=top_p if sampling and not per_row else None,
        top_k=0 if sampling and not per_row else None,
        use_cache=True,
        cache_implementation="static",  # preallocated: the default cache grows by copying itself at every token
        return_dict_in_generate=True,
        output_logits=return_logps,
    )
    if not stop_at_eos:
        config.eos_token_id = None
    stop_ids = set(eos_token_ids(inner, tokenizer)) if stop_at_eos else set()
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    with _eval_mode(inner), _neutral_defaults(inner, config), _seeded(seed, _device(inner)):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            sampler = _RowSampler([row_seeds[i] for i in rows], max_new_tokens, temperature, top_p) if per_row else None
            yield rows, _generate_batch(inner, tokenizer, [prompt_ids[i] for i in rows], config, stop_ids,
                                        return_logps, logps_temperature, sampler, pad_id)


def generate_chat(model, tokenizer, conversations: Sequence[Sequence[dict]], **kwargs) -> list[GenerationOutput]:
    """Reply to each conversation (OpenAI-style messages) with the tokenizer's chat template.

    Each conversation is rendered with ``add_generation_prompt=True`` and encoded without
    adding special tokens again (the template writes its own); other arguments as in :func:`generate`.
    """
    if not tokenizer.chat_template:
        raise ValueError(
            "generate_chat: the tokenizer has no chat template; load it with posttrain.models.loading.load_tokenizer "
            "(which fills in ChatML) or set model.chat_template"
        )
    prompts = []
    for conversation in conversations:
        text = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return generate(model, tokenizer, prompts, **kwargs)


# --------------------------------------------------------------------------- one batch


def _generate_batch(model, tokenizer, batch: list[list[int]], config, stop_ids: set[int],
                    return_logps: bool, logps_temperature: float = 1.0, sampler: "_RowSampler | None" = None,
                    pad_id: int = 0) -> PaddedCompletions:
    input_ids, attention_mask = _left_pad(batch, config.pad_token_id or 0, _device(model))
    extra = {}
    if sampler is not None:
        sampler.start = input_ids.shape[1]
        extra["logits_processor"] = LogitsProcessorList([sampler])
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra)
    new_ids = out.sequences[:, input_ids.shape[1]:]  # (B, new)
    # Only generated tokens are searched for a stop token (padding never is); the first one is kept.
    is_stop = torch.isin(new_ids, torch.tensor(sorted(stop_ids), dtype=torch.long, device=new_ids.device))
    mask = (is_stop.long().cumsum(dim=1) - is_stop.long()) == 0  # no stop token before this one
    token_logps = None
    if return_logps:
        # out.logits: one (B, V) tensor per step, raw (before temperature / top-p).
        token_logps = torch.stack(
            [torch.log_softmax(step.float() / logps_temperature, dim=-1).gather(1, new_ids[:, t:t + 1]).squeeze(1)
             for t, step in enumerate(out.logits)],
            dim=1,
        ).masked_fill(~mask, 0.0)  # (B, new)
    lengths = mask.sum(dim=1).tolist()
    texts = [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(new_ids.tolist(), lengths)]
    prompt_mask = attention_mask.bool()
    return PaddedCompletions(prompt_ids=input_ids.masked_fill(~prompt_mask, pad_id), prompt_mask=prompt_mask,
                             completion_ids=new_ids.masked_fill(~mask, pad_id), completion_mask=mask,
                             finished=is_stop.any(dim=1), texts=texts, token_logps=token_logps)


class _RowSampler:
    """A logits processor that samples every row from its own uniforms, then leaves only the drawn
    token finite, so the greedy step of ``generate`` emits it.

    Row b's token at step t is the inverse CDF of softmax(logits / temperature) (restricted to the
    nucleus ``top_p``) at ``u[b, t]``, where ``u[b]`` comes from a generator seeded with the row's
    seed: the draw depends on that row's logits only, not on the batch it shares.
    """

    def __init__(self, seeds: Sequence[int], max_new_tokens: int, temperature: float, top_p: float):
        self.uniforms = torch.stack([torch.rand(max_new_tokens, dtype=torch.float64,
                                                generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        self.temperature, self.top_p = temperature, top_p
        self.start = 0
        """Width of the padded prompts: step t is at column start + t."""

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (B, V)
        if self.top_p < 1.0:  # keep the most likely tokens until their mass reaches top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
        cdf = probs.cumsum(dim=-1)
        u = self.uniforms[:, input_ids.shape[1] - self.start].to(cdf) * cdf[:, -1]
        # The first token whose cdf exceeds u: never one of probability 0.
        token = torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=cdf.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def _left_pad(batch: list[list[int]], pad_id: int, device) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(B, T) ids and attention mask, prompts aligned to the right so generation continues each one."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


# --------------------------------------------------------------------------- helpers


def _check_args(max_new_tokens: int, temperature: float, top_p: float, batch_size: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def _as_ids(tokenizer, prompt, index: int) -> list[int]:
    ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else [int(i) for i in prompt]
    if not ids:
        raise ValueError(f"prompt {index} is empty: there is no token to continue from")
    return ids


def _device(model) -> "torch.device":
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _neutral_defaults(model, config) -> Iterator[None]:
    # transformers fills every unset field of our config from model.generation_config; swap in
    # a config with nothing but token ids so the model's defaults cannot leak in.
    hf = transformers_model(unwrap_model(model))
    saved = hf.generation_config
    hf.generation_config = config.__class__(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    try:
        yield
    finally:
        hf.generation_config = saved


@contextlib.contextmanager
def _seeded(seed: int | None, device) -> Iterator[None]:
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    kwargs = {"devices": [device.index or 0], "device_type": "cuda"} if cuda else {"devices": []}
    with torch.random.fork_rng(**kwargs):
        torch.manual_seed(seed)
        yield
