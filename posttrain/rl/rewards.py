"""Combining several reward models into the one reward an RL step optimizes.

Llama 2 (Touvron et al. 2023, §3.2.3, "RLHF: PPO") trains a helpfulness model R_h and a safety
model R_s on their own preference data and uses, for prompt p and generation g,

    R_c(g | p) = R_s(g | p)   if IS_SAFETY(p) or R_s(g | p) < 0.15
                 R_h(g | p)   otherwise

where IS_SAFETY(p) flags prompts known to be adversarial (from the safety prompt set) and R_s,
R_h are the models' scores as probabilities; the combined score is then turned back into a logit
and whitened before the KL penalty is subtracted: WHITEN(LOGIT(R_c)).

Here reward models output logits (raw or standardized scores), so the probability is
``sigmoid(score)`` and LOGIT(R_c) is the selected logit itself. Whitening is
``posttrain.rl.math``'s job (over the batch, in the RL recipe). Imports only torch.
"""

from __future__ import annotations

import torch

LLAMA2_SAFETY_THRESHOLD = 0.15
"""Llama 2's threshold on the safety model's score as a probability (§3.2.3)."""


def safety_gate(safety: torch.Tensor, unsafe_prompt_mask: torch.Tensor,
                threshold: float = LLAMA2_SAFETY_THRESHOLD) -> torch.Tensor:
    """(B,) bool: where Llama 2's rule uses the safety score, i.e. the prompt is flagged unsafe or
    ``sigmoid(safety) < threshold``. Shapes: safety (B,) logits, unsafe_prompt_mask (B,) bool."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is a probability in (0, 1), got {threshold}")
    if safety.shape != unsafe_prompt_mask.shape:
        raise ValueError(f"safety {tuple(safety.shape)} and unsafe_prompt_mask {tuple(unsafe_prompt_mask.shape)} "
                         f"must have the same shape (B,)")
    return unsafe_prompt_mask.bool() | (torch.sigmoid(safety) < threshold)


def llama2_combined_reward(helpfulness: torch.Tensor, safety: torch.Tensor, unsafe_prompt_mask: torch.Tensor,
                           threshold: float = LLAMA2_SAFETY_THRESHOLD) -> torch.Tensor:
    """Llama 2's combined reward LOGIT(R_c) (§3.2.3): the safety logit where :func:`safety_gate`
    holds, the helpfulness logit elsewhere. Shapes: helpfulness, safety (B,) logits; mask (B,) bool -> (B,)."""
    if helpfulness.shape != safety.shape:
        raise ValueError(f"helpfulness {tuple(helpfulness.shape)} and safety {tuple(safety.shape)} must both be (B,)")
    return torch.where(safety_gate(safety, unsafe_prompt_mask, threshold), safety, helpfulness)
