"""Attention over the segments of a packed row, registered into transformers as an attention function.

Packed rows (:func:`posttrain.data.packing.pack_examples`) and shared-prefix rows
(:func:`posttrain.data.packing.pack_shared_prefix`) carry their layout in ``position_ids`` alone.
This module holds the attention that reads it: :func:`segment_attention` attends within each segment
(a continuation over its prefix and itself) with the model's sliding window and logit soft-capping,
:func:`use_segment_attention` installs it on a model, :func:`prepare_packing` installs it when the
model can take it or says why not, and :func:`segment_attention_unsupported` says which models cannot.
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from posttrain.data.packing import prefix_segments
from posttrain.models.wrappers import transformers_model


# --------------------------------------------------------------------------- attention over segments
#
# Packed rows (roots only) and shared-prefix rows (roots and continuations) carry their layout in
# position_ids alone. transformers' sdpa/eager attention would build a (T, T) mask for a row and compute
# attention across its examples only to mask it away; :func:`segment_attention` instead attends within
# each segment (a continuation over its prefix and itself), and honours what the model's own attention
# does, read from the arguments transformers passes to every attention function:
# - ``sliding_window`` (Mistral, Qwen2's sliding layers, Gemma 2/3's local layers, Phi-3): a query sees
#   the keys fewer than ``sliding_window`` positions behind it (transformers' ``sliding_window_overlay``);
# - ``softcap`` (Gemma 2's attention logit soft-capping): scores become ``cap * tanh(s / cap)`` before
#   the softmax, which sdpa cannot do, so such layers are computed eagerly (the model's own formula);
# - dropout, scaling and grouped-query heads.
# An argument it cannot honour (attention sinks) raises instead of being silently dropped. A model whose
# attention does not go through transformers' attention interface at all cannot be packed this way:
# :func:`segment_attention_unsupported` says why, and the recipes then pad instead.

SEGMENT_ATTENTION = "posttrain_segments"
"""Name under which :func:`use_segment_attention` registers :func:`segment_attention` with transformers
(no "sdpa" in it: transformers refuses anything named sdpa for models without sdpa support, e.g. Gemma 2)."""
PACKED_ATTENTION = SHARED_PREFIX_ATTENTION = SEGMENT_ATTENTION

_UNSUPPORTED_ARGUMENTS = ("s_aux", "sinks")
"""Attention-function arguments that change the result and that :func:`segment_attention` does not implement."""


def segment_attention_unsupported(model) -> str | None:
    """Why ``model`` (a transformers model; a peft wrapper is looked through) cannot use
    :func:`segment_attention`, or None when it can."""
    hf = transformers_model(model)
    config = hf.config
    name = type(hf).__name__
    if not getattr(hf, "_supports_attention_backend", False):
        return f"{name} does not route its attention through transformers' attention interface"
    if getattr(config, "attention_chunk_size", None):
        return f"{name} uses chunked attention (attention_chunk_size={config.attention_chunk_size})"
    for key in ("sinks", "s_aux"):
        if any(key in n for n, _ in hf.named_parameters()):
            return f"{name} has attention sinks"
    return None


def visible_keys(query_positions: torch.Tensor, key_positions: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """(m,) query and (n,) key positions -> (m, n) bool: causal, and within ``sliding_window`` when set
    (a key fewer than ``sliding_window`` positions behind the query, as transformers masks it)."""
    q, k = query_positions[:, None], key_positions[None, :]
    visible = k <= q
    if sliding_window:
        visible &= k > q - sliding_window
    return visible


def attend(module, query, key, value, visible: torch.Tensor | None, dropout: float, scaling: float | None,
           softcap: float | None) -> torch.Tensor:
    """Attention of query (1, Hq, m, D) over key/value (1, Hkv, n, D) -> (1, Hq, m, D).

    ``visible`` (m, n) bool, or None for plain causal attention (m == n). sdpa unless ``softcap`` is set;
    then eagerly, as Gemma 2's eager attention: scaled scores soft-capped, masked, softmax in fp32, dropout.
    """
    functional = torch.nn.functional
    if softcap is None:
        return functional.scaled_dot_product_attention(
            query, key, value, attn_mask=visible, dropout_p=dropout, scale=scaling, is_causal=visible is None,
            enable_gqa=query.shape[1] != key.shape[1])
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(2, 3) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    scores = softcap * torch.tanh(scores / softcap)
    if visible is None:
        visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    weights = functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = functional.dropout(weights, p=dropout, training=module.training)
    return weights @ value


def _model_attention(module, query, key, value, attention_mask, softcap, **kwargs):
    """A masked or cached call (padding, generation): the model's own eager attention when it soft-caps
    (sdpa cannot), transformers' sdpa otherwise; the mask is the matching one (:func:`_segment_mask`)."""
    if softcap is not None:
        return sys.modules[type(module).__module__].eager_attention_forward(
            module, query, key, value, attention_mask, softcap=softcap, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, sliding_window: int | None = None, softcap: float | None = None,
                      **kwargs):
    """A transformers attention function (query (B, Hq, T, D), key/value (B, Hkv, T, D) -> ((B, T, Hq, D),
    None)) for packed and :class:`~posttrain.data.packing.SharedPrefixBatch` rows: each root segment attends
    causally to itself, a continuation to [its prefix, itself] (the prefix fully visible, itself causal), with
    the model's sliding window and soft-capping (see the section comment). A row of examples then costs what
    the examples cost alone. Masked or cached calls (padding, generation) go to the model's own attention."""
    for name in _UNSUPPORTED_ARGUMENTS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"posttrain's packed attention does not implement {name!r} "
                                      f"({type(module).__name__}); set packing=false")
    length = query.shape[2]
    if attention_mask is not None or position_ids is None or key.shape[2] != length or length == 1:
        return _model_attention(module, query, key, value, attention_mask, softcap, dropout=dropout,
                                scaling=scaling, sliding_window=sliding_window, **kwargs)
    rows = []
    for b, (q, k, v) in enumerate(zip(query.split(1), key.split(1), value.split(1))):
        positions = position_ids[b if position_ids.shape[0] > 1 else 0]
        segments = _segments_of(positions)
        groups = _groups_of(segments)
        if _grouped_is_cheaper(segments, groups):
            rows.append(_attend_grouped(module, q, k, v, segments, groups, positions, dropout, scaling,
                                        sliding_window, softcap))
        else:
            rows.append(_attend_by_segment(module, q, k, v, segments, dropout, scaling, sliding_window, softcap))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


_CALL_COST = 2 ** 13
"""Attention scores that one segment's own call costs in time (launches, Python), roughly: rows of many
short segments (small models, one-word answers) run faster as one masked call over all of them."""


def _groups_of(segments: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """(start, end) of each root segment with the continuations that follow it (a pair's prompt, chosen
    and rejected): nothing outside a group attends into it."""
    groups: list[list[int]] = []
    for start, end, root, _ in segments:
        if root == start:
            groups.append([start, end])
        else:
            groups[-1][1] = end
    return [(s, e) for s, e in groups]


def _grouped_is_cheaper(segments: list[tuple[int, int, int, int]], groups: list[tuple[int, int]]) -> bool:
    """Whether one masked call over the groups, each padded to the longest, costs less than a call per segment."""
    if len(segments) == 1:
        return False
    width = max(end - start for start, end in groups)
    scores = sum((end - start) * (prefix + end - start) for start, end, _, prefix in segments)
    return len(groups) * width * width <= scores + _CALL_COST * len(segments)


_last_segments: tuple = (None, None)


def _segments_of(positions: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """:func:`prefix_segments` of a row, remembered for the next call (every layer reads the same row)."""
    global _last_segments
    seen, segments = _last_segments
    if seen is not None and seen.shape == positions.shape and seen.device == positions.device \
            and torch.equal(seen, positions):
        return segments
    segments = prefix_segments(positions)
    _last_segments = (positions.clone(), segments)
    return segments


def segment_mask(segments: list[tuple[int, int, int, int]], positions: torch.Tensor,
                 sliding_window: int | None = None, columns: torch.Tensor | None = None) -> torch.Tensor:
    """(T, T) bool, or (..., n, n) for the row's ``columns`` (..., n): which keys each query of a packed
    or shared-prefix row sees, as :func:`segment_attention` attends segment by segment: its own segment's
    tokens up to itself, and for a continuation its root's first ``prefix`` tokens; within
    ``sliding_window`` positions when set."""
    device = positions.device
    sizes = torch.tensor([end - start for start, end, _, _ in segments], device=device)
    own, root, prefix = (torch.repeat_interleave(torch.tensor([s[i] for s in segments], device=device), sizes)
                         for i in (0, 2, 3))
    column = torch.arange(len(positions), device=device) if columns is None else columns
    own, root, prefix, position = own[column], root[column], prefix[column], positions[column]
    query, key = (lambda x: x[..., :, None]), (lambda x: x[..., None, :])
    causal = (query(own) == key(own)) & (key(column) <= query(column))
    in_prefix = (query(root) == key(own)) & (key(position) < query(prefix)) & (query(prefix) > 0)
    visible = causal | in_prefix
    if sliding_window:
        visible &= key(position) > query(position) - sliding_window
    return visible


def _attend_grouped(module, q, k, v, segments, groups, positions, dropout, scaling, sliding_window,
                    softcap) -> torch.Tensor:
    """One row (1, H, T, D) as one masked call over its groups (G, H, W, D), each padded to the longest W."""
    device, width = q.device, max(end - start for start, end in groups)
    starts = torch.tensor([start for start, _ in groups], device=device)
    lengths = torch.tensor([end - start for start, end in groups], device=device)
    offset = torch.arange(width, device=device)
    real = offset[None, :] < lengths[:, None]  # (G, W)
    columns = torch.where(real, starts[:, None] + offset[None, :], starts[:, None])  # padding repeats the first
    visible = segment_mask(segments, positions, sliding_window, columns) & real[:, None, :]  # (G, W, W)

    def grouped(x):  # (1, H, T, D) -> (G, H, W, D)
        return x[0][:, columns.flatten()].unflatten(1, columns.shape).transpose(0, 1)

    out = attend(module, grouped(q), grouped(k), grouped(v), visible[:, None], dropout, scaling, softcap)
    return out.transpose(0, 1).flatten(1, 2)[:, real.flatten()][None]  # the real tokens, in row order


def _attend_by_segment(module, q, k, v, segments, dropout, scaling, sliding_window, softcap) -> torch.Tensor:
    """One row (1, H, T, D), one attention call per segment."""
    # split, not slicing: the backward of a slice makes a zero tensor as large as the whole row for each
    # segment (quadratic in the row), that of a split concatenates the segments' gradients once.
    sizes = [end - start for start, end, _, _ in segments]
    qs, ks, vs = q.split(sizes, dim=2), k.split(sizes, dim=2), v.split(sizes, dim=2)
    where = {start: i for i, (start, _, _, _) in enumerate(segments)}
    parts = []
    for i, (start, end, root, prefix) in enumerate(segments):
        own = torch.arange(prefix, prefix + end - start, device=q.device)
        if prefix == 0:
            keys, values = ks[i], vs[i]
            visible = None if not sliding_window or end - start <= sliding_window \
                else visible_keys(own, own, sliding_window)
        else:  # query j (position prefix + j) sees the prefix and its own tokens up to itself
            r = where[root]
            keys = torch.cat([ks[r][:, :, :prefix], ks[i]], dim=2)
            values = torch.cat([vs[r][:, :, :prefix], vs[i]], dim=2)
            visible = visible_keys(own, torch.arange(prefix + end - start, device=q.device), sliding_window)
        parts.append(attend(module, qs[i], keys, values, visible, dropout, scaling, softcap))
    return torch.cat(parts, dim=2)


def _segment_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, config=None,
                  **kwargs):
    """The mask for :func:`segment_attention`: none for a training forward (it reads the segments from
    position_ids); for padded or cached calls the mask the model's own attention takes (eager's additive
    mask for soft-capping models, sdpa's boolean one otherwise)."""
    if attention_mask is None and q_offset == 0 and q_length == kv_length:
        return None
    build = eager_mask if getattr(config, "attn_logit_softcapping", None) is not None else sdpa_mask
    return build(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                 kv_offset=kv_offset, attention_mask=attention_mask, config=config, **kwargs)


def use_segment_attention(model) -> str:
    """Switch a transformers model (a peft wrapper is looked through) to :func:`segment_attention`, which
    runs packed rows, shared-prefix rows and padded batches alike; return the implementation it had.
    Only the running model changes: ``config.json`` does not record the attention implementation, so an
    exported model loads with transformers' default. Raises ValueError when the model cannot use it
    (:func:`segment_attention_unsupported`)."""
    reason = segment_attention_unsupported(model)
    if reason:
        raise ValueError(f"packed attention: {reason}; set packing=false")
    AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, _segment_mask)
    hf = transformers_model(model)
    before = hf.config._attn_implementation
    hf.set_attn_implementation(SEGMENT_ATTENTION)
    return before


# The names the recipes and benches know it by.
use_packed_attention = use_shared_prefix_attention = use_segment_attention


def prepare_packing(model, shared_prefix: bool = True) -> str | None:
    """Make ``model`` (a peft wrapper is looked through) ready for packed rows, or say why it cannot take
    them (the caller then pads its batches, and says so once).

    sdpa and eager attention are replaced by :func:`segment_attention`. Flash attention reads plainly
    packed rows from position_ids itself (variable-length kernels), but not shared-prefix rows.
    """
    hf = transformers_model(model)
    impl = str(hf.config._attn_implementation or "")
    if impl == SEGMENT_ATTENTION:
        return None
    if impl not in ("sdpa", "eager"):
        return f"attn_implementation {impl!r} cannot read rows that share a prompt" if shared_prefix else None
    reason = segment_attention_unsupported(hf)
    if reason is None:
        use_segment_attention(hf)
    return reason


def packing_kept(model, shared_prefix: bool, say=print) -> bool:
    """:func:`prepare_packing`, for a recipe: True when ``model`` takes packed rows; otherwise ``say`` why,
    once, and False (the recipe pads its batches instead)."""
    reason = prepare_packing(model, shared_prefix)
    if reason is not None:
        say(f"packing: {reason}; padding batches instead")
    return reason is None
