"""Reward models: a language-model backbone with a scalar head, scored at the last real token.

A reward model here is a plain Hugging Face ``AutoModelForSequenceClassification`` with
``num_labels=1`` (for Llama: ``LlamaForSequenceClassification``, whose head is ``score``),
initialised from the SFT model's folder: the backbone keeps the SFT weights and the LM head is
replaced by a new ``hidden -> 1`` projection, as InstructGPT (Ouyang et al. 2022, §3.5) and
Llama 2 (Touvron et al. 2023, §3.2.2) do. The exported folder loads in plain ``transformers``.

posttrain computes the score itself (:func:`padded_rewards`, :func:`packed_rewards`): it runs
the backbone, finds each sequence's last real token **from the attention mask** (or from the
packed example spans), and applies the head there only. transformers' own forward finds it by
searching for the pad id, which breaks when pad == eos or the pad id occurs in the text, so it is
never used. Left-padded rows get position ids counted from their first real token, so a score
does not depend on the padding side, the batch size or the other sequences in the batch (up to
float rounding).

**Likelihood feature** (optional, ``likelihood: true`` in the reward recipe). A small backbone's
last token may not tell a right answer from a wrong one: that needs the answer compared with what
the model would have said, which its LM head does at the token *before* the answer. The feature
adds ``alpha * mean log p(response token)`` under the backbone's own LM head (the tied input
embeddings, so the sequence-classification folder still holds it), with ``alpha`` learned; it is
saved in the model config as :data:`LIKELIHOOD_COEF` and applied by every scorer here. Plain
transformers' forward ignores it (it returns the head's score only).

**Normalization.** After training, raw scores are standardized on a reference set (prompts and
the SFT model's responses): ``(raw - mean) / std``. The mean and std are saved beside the weights
in ``reward_normalization.json`` and :class:`RewardScorer` applies them by default, so a score of
0 means "as good as a typical SFT response" and 1 is one standard deviation better. Differences
of raw scores are Bradley-Terry logits; use ``normalize=False`` for them (e.g. calibration).

**Scorers.** A trained model (:class:`RewardScorer`), any Python function (:class:`FunctionScorer`)
and Llama 2's helpfulness + safety combination (:class:`CombinedScorer`) each have
``score(prompts, responses, batch_size=...) -> (B,) tensor`` and, called, are a
:class:`posttrain.scorers.Scorer`, the one kind of scorer PPO, DPO labelling, best-of-n and the
win-rate judges take.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from posttrain.data.chat import end_of_turn_id, render_prompt_response
from posttrain.data.collate import IGNORE_INDEX
from posttrain.data.packing import (  # noqa: F401 - the shared-prefix names are re-exported for older importers
    PackedBatch, SharedPrefixBatch, pack_shared_prefix, prefix_segments, response_tokens, shared_prefix_length,
)
from posttrain.losses.sft import linear_token_logps
from posttrain.models.attention import use_shared_prefix_attention  # noqa: F401 - re-exported, as above
from posttrain.models.config import ModelConfig
from posttrain.models.loading import (
    BORROWED_PAD, ModelLoadError, check_safetensors_folder, fit_embeddings, load_tokenizer, resolve_device,
    resolve_dtype, resolve_model_path, set_dropout,
)
from posttrain.models.wrappers import transformers_model, unwrap_model
from posttrain.rl.math import last_token_index
from posttrain.rl.rewards import llama2_combined_reward
from posttrain.scorers import Scorer  # noqa: F401 - the one scorer protocol, re-exported

if TYPE_CHECKING:
    from posttrain.data.collate import Batch
    from posttrain.models.config import ModelConfig

logger = logging.getLogger("posttrain.models")

NORMALIZATION_FILE = "reward_normalization.json"
"""File in a reward model's folder holding the mean and std its raw scores are standardized with."""

LIKELIHOOD_COEF = "posttrain_likelihood_coef"
"""Model-config key of the learned weight of the likelihood feature (absent: no feature)."""

Messages = Sequence[Any]
"""A chat prompt: ``{"role", "content"}`` dicts or ``posttrain.data.records.Message`` objects."""


# --------------------------------------------------------------------------- the score


def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone returning ``last_hidden_state``, scalar head) of a sequence-classification model."""
    hf = transformers_model(unwrap_model(model))
    head = getattr(hf, "score", None)
    head = getattr(hf, "classifier", None) if head is None else head
    if head is None or getattr(hf.config, "num_labels", None) != 1:
        raise TypeError(f"{type(hf).__name__} is not a reward model: expected an AutoModelForSequenceClassification "
                        f"with num_labels=1 and a `score` head; load it with posttrain.models.reward.load_reward_model")
    return getattr(hf, hf.base_model_prefix), head


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids counting real tokens from 0, so a left-padded row has the positions it has alone."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


Coef = "torch.Tensor | float | None"
"""Weight of the likelihood feature: a tensor (trained), a float, or None (the model config's, if any)."""


def stored_likelihood_coef(model: torch.nn.Module) -> float | None:
    """The likelihood feature's weight saved in the model config, or None (no feature)."""
    value = getattr(transformers_model(unwrap_model(model)).config, LIKELIHOOD_COEF, None)
    return None if value is None else float(value)


def likelihood_head(model: torch.nn.Module) -> torch.Tensor:
    """(V, H) LM-head weight of a reward model's backbone: its input embeddings, when they are tied."""
    hf = transformers_model(unwrap_model(model))
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    if not getattr(config, "tie_word_embeddings", False):
        raise ValueError(f"the likelihood feature needs a model whose LM head is its input embeddings "
                         f"(tie_word_embeddings), which a sequence-classification model keeps; "
                         f"{config.model_type} here has a separate head; set likelihood=false")
    return hf.get_input_embeddings().weight


def mean_response_logps(model: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                        response_mask: torch.Tensor, num_sequences: int, position_ids: torch.Tensor | None = None,
                        sequence_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) mean log-prob of each sequence's response tokens under the backbone's LM head.

    hidden (R, T, H) final normed hidden states of rows ``input_ids`` (R, T); ``response_mask`` (R, T)
    marks the tokens scored; padded rows (``position_ids`` None) hold one sequence each, packed and
    shared-prefix rows say the sequence of each column in ``sequence_ids``.
    """
    tokens = response_tokens(response_mask, position_ids, sequence_ids)
    picked = linear_token_logps(hidden[tokens.rows, tokens.before][None], likelihood_head(model),
                                input_ids[tokens.rows, tokens.cols][None])[0]  # (N_tokens,)
    total = picked.new_zeros(num_sequences).index_add(0, tokens.owner, picked)
    count = picked.new_zeros(num_sequences).index_add(0, tokens.owner, torch.ones_like(picked))
    return total / count.clamp(min=1.0)


def _with_likelihood(model, scores: torch.Tensor, coef: Coef, **features) -> torch.Tensor:
    coef = stored_likelihood_coef(model) if coef is None else coef
    if coef is None:
        return scores
    if features.get("response_mask") is None:
        raise ValueError("this reward model adds the response's likelihood to its score, so it needs to know "
                         "which tokens are the response: pass response_mask (or response_masks)")
    return scores + coef * mean_response_logps(model, num_sequences=scores.shape[0], **features)


def padded_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor | None = None, likelihood_coef: Coef = None) -> torch.Tensor:
    """Raw rewards (B,) float32 of a padded batch: the head applied at each row's last real token
    (plus the likelihood feature of the ``response_mask`` tokens, if the model has one)."""
    backbone, head = backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=positions_from_mask(attention_mask), use_cache=False).last_hidden_state  # (B, T, H)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    scores = head(hidden[rows, last_token_index(attention_mask.bool())]).squeeze(-1).float()  # (B,)
    return _with_likelihood(model, scores, likelihood_coef, hidden=hidden, input_ids=input_ids,
                            response_mask=response_mask)


def packed_rewards(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Raw rewards (N,) of a packed batch, in the order the N examples were given to ``pack_examples``."""
    if stored_likelihood_coef(model) is not None:
        raise ValueError("packed_rewards: a reward model with the likelihood feature scores padded or "
                         "shared-prefix batches only")
    backbone, head = backbone_and_head(model)
    hidden = backbone(**batch.model_inputs()).last_hidden_state  # (R, T, H)
    n = sum(len(spans) for spans in batch.example_spans)
    rows, cols = [0] * n, [0] * n
    for r, (spans, index) in enumerate(zip(batch.example_spans, batch.example_index)):
        for (_, end), i in zip(spans, index):
            rows[i], cols[i] = r, end - 1
    device = hidden.device
    last = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (N, H)
    return head(last).squeeze(-1).float()


# --------------------------------------------------------------------------- shared-prefix packing
#
# The responses of one comparison share their prompt: packed with it once (posttrain.data.packing's
# SharedPrefixBatch), each response continuing from it, the whole comparison costs its distinct tokens.


def shared_prefix_rewards(model: torch.nn.Module, batch: SharedPrefixBatch, likelihood_coef: Coef = None) -> torch.Tensor:
    """Raw rewards (N,) of a :class:`SharedPrefixBatch` (the model needs :func:`use_shared_prefix_attention`);
    the likelihood feature reads the batch's ``target_mask`` as the response tokens."""
    backbone, head = backbone_and_head(model)
    hidden = backbone(**batch.model_inputs()).last_hidden_state  # (1, T, H)
    scores = head(hidden[0, batch.score_columns]).squeeze(-1).float()
    return _with_likelihood(model, scores, likelihood_coef, hidden=hidden, input_ids=batch.input_ids,
                            response_mask=batch.target_mask, position_ids=batch.position_ids,
                            sequence_ids=batch.sequence_ids)


class RewardModel(torch.nn.Module):
    """A sequence-classification model whose forward returns one raw reward per sequence.

    ``forward(batch)`` takes a padded :class:`~posttrain.data.collate.Batch`, a packed
    :class:`~posttrain.data.packing.PackedBatch` or a :class:`SharedPrefixBatch` and returns (N,)
    float32. Being a module, it is what DDP wraps in training. ``likelihood=True`` trains the
    likelihood feature's weight (from the model config's, or ``likelihood_init``); a padded batch's
    labels and a shared-prefix batch's target mask then mark the response tokens.
    :meth:`store_likelihood_coef` writes the trained weight into the model config for export.
    """

    def __init__(self, model: torch.nn.Module, likelihood: bool = False, likelihood_init: float = 1.0):
        super().__init__()
        self.model = model
        backbone_and_head(model)  # fail early on a model without a scalar head
        stored = stored_likelihood_coef(model)
        self.likelihood_coef = None
        if likelihood:
            likelihood_head(model)  # fail early on an untied model
            start = likelihood_init if stored is None else stored
            self.likelihood_coef = torch.nn.Parameter(torch.tensor(float(start)))
        elif stored is not None:
            raise ValueError(f"this reward model adds the response's likelihood to its score ({LIKELIHOOD_COEF}="
                             f"{stored:g} in its config); train it with likelihood=true")

    def forward(self, batch: "Batch | PackedBatch | SharedPrefixBatch") -> torch.Tensor:
        if isinstance(batch, SharedPrefixBatch):
            return shared_prefix_rewards(self.model, batch, self.likelihood_coef)
        if hasattr(batch, "example_spans"):
            return packed_rewards(self.model, batch)
        response = batch.labels != IGNORE_INDEX if self.likelihood_coef is not None else None
        return padded_rewards(self.model, batch.input_ids, batch.attention_mask, response, self.likelihood_coef)

    def store_likelihood_coef(self) -> None:
        """Write the trained likelihood weight into the model config (saved with the exported folder)."""
        if self.likelihood_coef is not None:
            config = transformers_model(unwrap_model(self.model)).config
            setattr(config, LIKELIHOOD_COEF, round(float(self.likelihood_coef.detach()), 8))


# --------------------------------------------------------------------------- loading


def load_reward_model(cfg: "ModelConfig", tokenizer=None, for_training: bool = True) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` (num_labels=1) from ``cfg.name_or_path``: a causal LM
    folder (the SFT model: its LM head is dropped and a new scalar head initialised from the current
    torch seed) or a reward-model folder (its head is kept).

    The model config's ``pad_token_id`` is set to the tokenizer's, so transformers' own forward works
    on the exported folder too; give the tokenizer a pad that no sequence ends with first
    (:func:`ensure_distinct_pad`), or transformers' forward scores the wrong token. ``cfg.lora.enabled`` (training only) adds a LoRA adapter on the
    backbone and trains the head in full (peft ``SEQ_CLS``). for_training=False: eval mode, frozen.
    """
    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    kwargs: dict[str, Any] = dict(num_labels=1, dtype=resolve_dtype(cfg.dtype, device), use_safetensors=True,
                                  trust_remote_code=cfg.trust_remote_code)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if Path(path).is_dir():
        check_safetensors_folder(path)
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    level = transformers_logger.level
    transformers_logger.setLevel(logging.ERROR)  # "score.weight newly initialized" is expected; said below
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.name_or_path: cannot load {path} as a reward model (a causal LM or "
                             f"sequence-classification folder): {e}") from None
    finally:
        transformers_logger.setLevel(level)
    if not any(a.endswith("ForSequenceClassification") for a in model.config.architectures or []):
        logger.info("%s: the LM head is dropped and a new scalar head initialised (a reward model from a causal LM)",
                    path)
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
        model.config.pad_token_id = tokenizer.pad_token_id
    if for_training and cfg.lora.enabled:
        model = _apply_seq_cls_lora(model, cfg.lora)
    model.to(device)
    if for_training:
        set_dropout(model, cfg.dropout)
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


PAD_TOKEN = "<|pad|>"
"""The pad token added to a reward model's tokenizer that has no pad of its own other than eos."""


def ensure_distinct_pad(tokenizer) -> None:
    """Give ``tokenizer`` a pad token that no rendered sequence ends with.

    transformers' ``*ForSequenceClassification`` scores the last token that is not ``pad_token_id``.
    Tokenizers whose pad is their eos (Llama 3, Mistral, Phi-3, GPT-2 as posttrain loads them) end
    every assistant turn with that very token, so plain transformers would score the token before it
    while posttrain (which finds sequence ends with the attention mask) scores the eos. A pad that is
    neither eos nor the end-of-turn marker fixes both to the same token: the tokenizer's own pad if it
    is one, else its unk token, else a new ``<|pad|>`` special token (one embedding row more, never
    attended to).
    """
    ends = {tokenizer.eos_token_id, end_of_turn_id(tokenizer) if tokenizer.chat_template else None}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in ends:
        return
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in ends | {tokenizer.bos_token_id}:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    setattr(tokenizer, BORROWED_PAD, False)
    logger.info("reward model: pad token set to %s (id %d), which no sequence ends with, so transformers' "
                "sequence-classification forward scores the same token as posttrain",
                tokenizer.pad_token, tokenizer.pad_token_id)


def _apply_seq_cls_lora(model, lora_cfg):
    targets = list(lora_cfg.target_modules)
    from peft import LoraConfig as PeftLoraConfig, get_peft_model  # deferred, as in posttrain.models.lora

    peft_cfg = PeftLoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                              target_modules="all-linear" if targets == ["all-linear"] else targets,
                              task_type="SEQ_CLS", bias="none")  # SEQ_CLS trains the `score` head in full
    return get_peft_model(model, peft_cfg)


# --------------------------------------------------------------------------- normalization


@dataclass(frozen=True)
class RewardNormalization:
    """``(raw - mean) / std``, measured on a reference set of prompts and responses."""

    mean: float = 0.0
    std: float = 1.0
    count: int = 0
    """Responses the statistics were measured on (0: identity, not measured)."""
    reference: str = ""
    """What the reference set was, in words."""

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / NORMALIZATION_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, folder: str | Path) -> "RewardNormalization | None":
        """The normalization saved in ``folder``, or None when there is none."""
        path = Path(folder) / NORMALIZATION_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data.get("std"), (int, float)) and data["std"] > 0 and math.isfinite(data["std"])):
            raise ValueError(f"{path}: std must be a positive number, got {data.get('std')!r}")
        return cls(**data)


def fit_normalization(raw: torch.Tensor, reference: str) -> RewardNormalization:
    """Mean and (population) std of raw rewards (N,), N >= 2; a zero std is an error (a constant model)."""
    raw = raw.double()
    if raw.numel() < 2:
        raise ValueError(f"normalization needs at least 2 reference responses, got {raw.numel()}")
    std = float(raw.std(unbiased=False))
    if not std > 1e-8:
        raise ValueError(f"every reference response gets the same reward ({float(raw[0]):.6g}): the reward model "
                         f"does not tell them apart, so it cannot be normalized; check its training")
    return RewardNormalization(float(raw.mean()), std, int(raw.numel()), reference)


# --------------------------------------------------------------------------- scorers


class ScoreMethod:
    """What makes the scorer objects below a :class:`posttrain.scorers.Scorer`: calling one is its
    ``.score(prompts, responses)`` (records are not needed: they read the text)."""

    def __call__(self, prompts: Sequence[Messages], responses: Sequence[str], records: Sequence | None = None):
        return self.score(prompts, responses, batch_size=self.batch_size)


class FunctionScorer(ScoreMethod):
    """A Python function ``fn(prompts, responses) -> sequence of floats`` as a :class:`Scorer`
    (a rule-based reward, a verifier)."""

    def __init__(self, fn: Callable[[Sequence[Messages], Sequence[str]], Sequence[float]], name: str = "function"):
        self.fn, self.name, self.batch_size = fn, name, 16

    def score(self, prompts: Sequence[Messages], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        _check_lengths(prompts, responses)
        values = torch.as_tensor(list(self.fn(prompts, responses)), dtype=torch.float32)
        if values.shape != (len(prompts),):
            raise ValueError(f"scorer {self.name!r} returned {tuple(values.shape)} values for {len(prompts)} responses")
        return values


def _check_lengths(prompts: Sequence, responses: Sequence) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt "
                         f"(repeat a prompt to score several responses to it)")


def as_dicts(messages: Messages) -> list[dict[str, str]]:
    """Chat messages as ``{"role", "content"}`` dicts (accepts dicts and Message records)."""
    return [dict(m) if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]


class RewardScorer(ScoreMethod):
    """A trained reward model ready to score: tokenizer, model, normalization; a :class:`Scorer`.

    >>> scorer = RewardScorer.from_pretrained("runs/reward-world/final")
    >>> scorer.score([[{"role": "user", "content": "What is 2 + 3?"}]], ["2 + 3 = 5."])   # (1,) normalized

    Sequences are rendered with the tokenizer's chat template, sorted by length into batches of
    ``batch_size`` and right-padded; results come back in input order and do not depend on
    ``batch_size`` (up to float rounding; ``batch_size`` is the default of calls without one).
    ``max_length`` (None: no limit) cuts longer sequences from the left, keeping the response: each
    cut is counted in ``truncated`` and logged.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, normalization: RewardNormalization | None = None,
                 max_length: int | None = None, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.normalization = normalization or RewardNormalization()
        self.max_length = max_length
        self.truncated = 0
        backbone_and_head(model)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", dtype: str = "auto",
                        max_length: int | None = None, normalize: bool = True, batch_size: int = 16) -> "RewardScorer":
        """Load an exported reward-model folder; ``normalize=False`` ignores its saved normalization."""
        cfg = ModelConfig(name_or_path=str(path), device=device, dtype=dtype)
        tokenizer = load_tokenizer(cfg)
        model = load_reward_model(cfg, tokenizer, for_training=False)
        normalization = RewardNormalization.load(resolve_model_path(str(path))) if normalize else None
        if normalize and normalization is None:
            logger.warning("%s has no %s: scores are raw (not standardized)", path, NORMALIZATION_FILE)
        return cls(model, tokenizer, normalization, max_length, batch_size)

    def score(self, prompts: Sequence[Messages], responses: Sequence[str], batch_size: int = 16,
              normalize: bool = True) -> torch.Tensor:
        """(B,) rewards of ``responses[i]`` to ``prompts[i]``; normalized unless ``normalize=False``."""

        _check_lengths(prompts, responses)
        return self._score_rendered([(as_dicts(p), [{"role": "assistant", "content": r}])
                                     for p, r in zip(prompts, responses)], batch_size, normalize)

    def score_conversations(self, conversations: Sequence[Messages], batch_size: int = 16,
                            normalize: bool = True) -> torch.Tensor:
        """(B,) rewards of whole conversations, each ending with the assistant turn being judged."""
        turns = [as_dicts(c) for c in conversations]
        return self._score_rendered([(c[:-1], c[-1:]) for c in turns], batch_size, normalize)

    def _score_rendered(self, parts: list[tuple[list, list]], batch_size: int, normalize: bool) -> torch.Tensor:
        rendered = [render_prompt_response(self.tokenizer, prompt, response) for prompt, response in parts]
        return self.score_ids([r.input_ids for r in rendered], batch_size, normalize,
                              response_masks=[r.loss_mask for r in rendered])

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 16, normalize: bool = True,
                  response_masks: Sequence[Sequence[bool]] | None = None) -> torch.Tensor:
        """(B,) rewards of token-id sequences (chat-rendered prompt + response), on the CPU.

        ``response_masks`` (one per sequence, True on response tokens) is needed by a model with the
        likelihood feature; :meth:`score` and :meth:`score_conversations` make them.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if response_masks is None and stored_likelihood_coef(self.model) is not None:
            raise ValueError("score_ids: this reward model adds the response's likelihood to its score; pass "
                             "response_masks (True on the response tokens), or use score()")
        masks = [list(m) for m in response_masks] if response_masks is not None else [[False] * len(s) for s in sequences]
        sequences = [self._fit(list(s), i) for i, s in enumerate(sequences)]
        masks = [m[len(m) - len(s):] for m, s in zip(masks, sequences)]  # cut from the left like their sequences
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.empty(len(sequences), dtype=torch.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            for rows in _length_batches([len(s) for s in sequences], batch_size):
                width = len(sequences[rows[0]])
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.bool)
                response = torch.zeros((len(rows), width), dtype=torch.bool)
                for r, i in enumerate(rows):
                    input_ids[r, :len(sequences[i])] = torch.tensor(sequences[i])
                    mask[r, :len(sequences[i])] = True
                    response[r, :len(sequences[i])] = torch.tensor(masks[i], dtype=torch.bool)
                out[rows] = padded_rewards(self.model, input_ids.to(device), mask.to(device), response.to(device)).cpu()
        finally:
            self.model.train(was_training)
        return self.normalization.apply(out) if normalize else out

    def _fit(self, ids: list[int], index: int) -> list[int]:
        if not ids:
            raise ValueError(f"sequence {index} is empty: nothing to score")
        if self.max_length is None or len(ids) <= self.max_length:
            return ids
        self.truncated += 1
        logger.warning("reward scorer: sequence %d has %d tokens, cut from the left to max_length=%d "
                       "(%d cut so far)", index, len(ids), self.max_length, self.truncated)
        return ids[-self.max_length:]


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` longest first, cut into batches of at most ``batch_size`` rows and at most
    ``batch_size`` x the mean length in tokens, padding included: a few long sequences get a batch of
    their own instead of padding ``batch_size - 1`` short ones to their length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = batch_size * sum(lengths) / max(len(lengths), 1)
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class CombinedScorer(ScoreMethod):
    """Llama 2's helpfulness + safety reward (:func:`posttrain.rl.rewards.llama2_combined_reward`):
    the safety model's score where the prompt is flagged unsafe (``unsafe_prompt``) or the safety
    score's sigmoid falls below ``threshold``, the helpfulness model's score elsewhere."""

    def __init__(self, helpfulness: Scorer, safety: Scorer, unsafe_prompt: Callable[[Messages], bool] | None = None,
                 threshold: float = 0.15, batch_size: int = 16):
        self.helpfulness, self.safety, self.batch_size = helpfulness, safety, batch_size
        self.unsafe_prompt = unsafe_prompt or (lambda prompt: False)
        self.threshold = threshold

    def score(self, prompts: Sequence[Messages], responses: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        _check_lengths(prompts, responses)
        helpful = self.helpfulness.score(prompts, responses, batch_size=batch_size)
        safe = self.safety.score(prompts, responses, batch_size=batch_size)
        flagged = torch.tensor([bool(self.unsafe_prompt(p)) for p in prompts], dtype=torch.bool)
        return llama2_combined_reward(helpful, safe, flagged, self.threshold)
