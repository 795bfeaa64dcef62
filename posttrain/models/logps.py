"""Log-likelihoods of the tokens a loss reads, with the LM head run only where a target is.

A causal LM's (tokens, vocab) logits are the largest tensor of a step, and most of them are never
read: SFT's assistant-only loss and the preference losses look at the response tokens only. The
modules here run the backbone on every token and the LM head on the positions that predict a
target, so the rest of the logits are never made:

- :class:`TargetNLL`: the summed cross-entropy of a padded or packed batch's labels (SFT);
- :class:`SequenceLogps`: each sequence's summed log-prob of its response tokens, in the padded,
  packed and shared-prompt layouts of ``posttrain.data.preference`` (DPO and its relatives, the
  reference log-probs, sampled KL).

Architectures that transform their logits (soft-capping, scaling: :data:`LOGIT_TRANSFORMS`) take
the full forward instead, so every model gets its own logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from posttrain.data.collate import IGNORE_INDEX
from posttrain.data.packing import response_tokens
from posttrain.losses.sft import linear_token_logps, map_row_chunks, shift_labels, token_logps
from posttrain.models.wrappers import transformers_model

# Config fields of architectures whose logits are not a plain `lm_head(hidden)` (soft-capping, scaling).
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


def plain_lm_head(lm: torch.nn.Module) -> bool:
    """True when the model's logits are ``lm_head(last hidden state)``, nothing more (Llama, Qwen, Mistral...)."""
    config = transformers_model(lm).config
    return not any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS)


class TargetNLL(torch.nn.Module):
    """A causal LM whose forward returns the summed negative log-likelihood of a batch's target tokens.

    The backbone runs on every token, the LM head only on the positions that predict a target (with
    the assistant-only loss, most positions predict none), so the (tokens, vocab) logits of the rest
    are never made. Being a module, it is what DDP wraps, so gradients synchronize as usual.
    """

    def __init__(self, lm: torch.nn.Module, chunk_size: int = 0):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size or None

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, use_cache=False) -> torch.Tensor:
        # use_cache is always off: a KV cache would make packed examples attend to each other.
        hf = transformers_model(self.lm)
        targets = shift_labels(labels, IGNORE_INDEX)  # (B, T): position t predicts token t + 1
        if not plain_lm_head(self.lm):
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).logits  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, T, H)
        keep = targets != IGNORE_INDEX
        head = hf.get_output_embeddings()
        nll = map_row_chunks(lambda h, y: F.cross_entropy(head(h).float(), y, reduction="none"),
                             self.chunk_size, hidden[keep], targets[keep])  # (N,)
        return nll.sum()


class SequenceLogps(torch.nn.Module):
    """A causal LM whose forward returns each sequence's summed log-prob of its response tokens, (R,).

    The backbone runs on every token; the LM head only on the positions that predict a response
    token, so the (R, T, V) logits of prompts and padding are never made. Takes a padded, a packed
    or a shared-prompt layout (``posttrain.data.preference.SequenceBatch``, through
    :func:`sequence_inputs`): each response token is predicted by the token before it *in its own
    sequence*, which in a shared-prompt row (``posttrain.data.preference.collate_shared_prompt``) is
    the prompt's last token for the first token of each response
    (``posttrain.data.packing.previous_token_columns``). ``per_token=True`` returns the token
    log-probs instead, shaped like ``input_ids`` (the log-prob of token t + 1 at position t, 0 off
    the response; padded or plainly packed rows only). Being a module, it is what DDP wraps.
    """

    def __init__(self, lm: torch.nn.Module, chunk_size: int = 0):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size or 1 << 30

    def forward(self, input_ids, response_mask, num_sequences: int, attention_mask=None, position_ids=None,
                sequence_ids=None, per_token: bool = False) -> torch.Tensor:
        hf = transformers_model(self.lm)
        model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                        "use_cache": False}
        rows, cols, before, owner = response_tokens(response_mask, position_ids, sequence_ids)  # (N,) each
        targets = input_ids[rows, cols]  # (N,)
        head = hf.get_output_embeddings()
        if getattr(head, "bias", None) is not None or not plain_lm_head(self.lm):
            logits = self.lm(**model_inputs).logits[rows, before]  # (N, V)
            picked = token_logps(logits[None], targets[None])[0]
        else:
            hidden = hf.base_model(**model_inputs).last_hidden_state  # (R, T, H)
            picked = linear_token_logps(hidden[rows, before][None], head.weight, targets[None],
                                        chunk_size=self.chunk_size)[0]  # (N,)
        if per_token:
            if bool((before != cols - 1).any()):
                raise ValueError("per_token=True needs padded or plainly packed rows: in a shared-prompt row "
                                 "several responses are predicted from the same prompt position")
            return picked.new_zeros(input_ids.shape).index_put((rows, before), picked)
        # Summed in float64: a sum of hundreds of float32 log-probs would otherwise depend on their order.
        return picked.new_zeros(num_sequences, dtype=torch.float64).index_add(0, owner, picked.double()).float()


def sequence_inputs(batch) -> dict[str, Any]:
    """:class:`SequenceLogps` arguments for a padded or packed batch."""
    return {"input_ids": batch.input_ids, "response_mask": batch.response_mask, "num_sequences": batch.num_sequences,
            "attention_mask": batch.attention_mask, "position_ids": batch.position_ids,
            "sequence_ids": batch.sequence_ids}
