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
    restored afterwards.
    """
    _check_args(max_new_tokens, temperature, top_p, batch_size)
    if logps_temperature <= 0:
        raise ValueError(f"logps_temperature must be > 0, got {logps_temperature}")
    prompt_ids = [_as_ids(tokenizer, p, i) for i, p in enumerate(prompts)]
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
        return_dict_in_generate=True,
        output_logits=return_logps,
    )
    if not stop_at_eos:
        config.eos_token_id = None
    stop_ids = set(eos_token_ids(inner, tokenizer)) if stop_at_eos else set()
    # Longest first: similar lengths share a batch, so there is little padding.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[GenerationOutput | None] = [None] * len(prompt_ids)
    with _eval_mode(inner), _neutral_defaults(inner, config), _seeded(seed, _device(inner)):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = [prompt_ids[i] for i in rows]
            sampler = _RowSampler([row_seeds[i] for i in rows], max_new_tokens, temperature, top_p) if per_row else None
            outputs = _generate_batch(inner, tokenizer, batch, config, stop_ids, return_logps, logps_temperature,
                                      sampler)
            for i, out in zip(rows, outputs):
                results[i] = out
    return results  # type: ignore[return-value]


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
                    return_logps: bool, logps_temperature: float = 1.0,
                    sampler: "_RowSampler | None" = None) -> list[GenerationOutput]:
    input_ids, attention_mask = _left_pad(batch, config.pad_token_id or 0, _device(model))
    extra = {}
    if sampler is not None:
        sampler.start = input_ids.shape[1]
        extra["logits_processor"] = LogitsProcessorList([sampler])
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **extra)
    new_ids = out.sequences[:, input_ids.shape[1]:]  # (B, new)
    token_logps = None
    if return_logps:
        # out.logits: one (B, V) tensor per step, raw (before temperature / top-p).
        token_logps = torch.stack(
            [torch.log_softmax(step.float() / logps_temperature, dim=-1).gather(1, new_ids[:, t:t + 1]).squeeze(1)
             for t, step in enumerate(out.logits)],
            dim=1,
        ).cpu()  # (B, new)
    outputs = []
    for row, prompt in enumerate(batch):
        ids = new_ids[row].tolist()
        end = _first_stop(ids, stop_ids)
        completion = ids if end is None else ids[:end + 1]
        logps = None if token_logps is None else token_logps[row, :len(completion)].tolist()
        outputs.append(GenerationOutput(
            prompt_ids=list(prompt),
            completion_ids=completion,
            text=tokenizer.decode(completion, skip_special_tokens=True),
            finished=end is not None,
            completion_token_logps=logps,
        ))
    return outputs


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


def _first_stop(ids: list[int], stop_ids: set[int]) -> int | None:
    # Only generated tokens are searched, and for a stop token: padding is never looked for.
    return next((t for t, i in enumerate(ids) if i in stop_ids), None)


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
