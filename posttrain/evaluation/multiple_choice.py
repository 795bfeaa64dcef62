"""Multiple-choice scoring by log-probability: which option does the model find most likely?

Each option is written out as a full continuation of the prompt (the Winograd way: "The trophy
doesn't fit in the suitcase because the trophy ..." vs "... the suitcase ..."), and the model's
log-probability of every continuation token is summed. The prediction is the option with the
highest **sum**, or the highest **mean per token** (length-normalized, which stops short
options from winning just for being short).

Prompt and continuation are tokenized separately and concatenated, as lm-evaluation-harness
does; the continuation starts with the space that follows "A:". Sequences are right-padded, so
the real tokens' positions and causal attention do not change with padding or batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContinuationScore:
    logp: float
    """Summed log-probability of the continuation tokens given the context."""
    num_tokens: int
    """Continuation tokens scored."""

    @property
    def mean_logp(self) -> float:
        return self.logp / max(self.num_tokens, 1)


def encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), encoded separately so the boundary is exact."""
    ctx = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens; there is nothing to score")
    return ctx, cont


def continuation_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                          batch_size: int = 32, add_special_tokens: bool = True,
                          max_length: int | None = None) -> tuple[list[ContinuationScore], int]:
    """Score log p(continuation | context) for each pair; returns (scores in input order, contexts truncated).

    Contexts longer than ``max_length`` (default: the model's max_position_embeddings) lose tokens
    from the left; the number of pairs truncated so is returned, never hidden.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; pass one of each per pair")
    limit = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9
    pairs, truncated = [], 0
    for ctx_text, cont_text in zip(contexts, continuations):
        ctx, cont = encode_pair(tokenizer, ctx_text, cont_text, add_special_tokens)
        if len(ctx) + len(cont) > limit:
            ctx = ctx[len(ctx) + len(cont) - limit:]
            truncated += 1
        if not ctx:
            raise ValueError(f"continuation {cont_text[:40]!r}... alone is longer than the model's {limit} positions")
        pairs.append((ctx, cont))
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    scores: list[ContinuationScore | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch_scores = _score_batch(model, [pairs[i] for i in rows], pad_id, device)
                for i, s in zip(rows, batch_scores):
                    scores[i] = s
    finally:
        model.train(was_training)
    return scores, truncated  # type: ignore[return-value]


def _score_batch(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, device) -> list[ContinuationScore]:
    width = max(len(c) + len(k) for c, k in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    target_mask = torch.zeros((len(pairs), width), dtype=torch.bool)  # (B, T): continuation tokens
    for row, (ctx, cont) in enumerate(pairs):
        ids = ctx + cont
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = True
        target_mask[row, len(ctx):len(ids)] = True
    input_ids, attention_mask, target_mask = input_ids.to(device), attention_mask.to(device), target_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long()).logits.float()  # (B, T, V)
    logps = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    token_logps = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    mask = target_mask[:, 1:]
    sums = (token_logps * mask).sum(-1).tolist()
    counts = mask.sum(-1).tolist()
    return [ContinuationScore(float(s), int(n)) for s, n in zip(sums, counts)]


def pick(scores: Sequence[ContinuationScore], normalized: bool) -> int:
    """Index of the best option (first on ties): highest sum, or highest mean per token."""
    values = [s.mean_logp if normalized else s.logp for s in scores]
    return max(range(len(values)), key=lambda i: (values[i], -i))
