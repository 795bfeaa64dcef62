"""Evaluating a chat policy by what it answers: the world's gold reward on held-out prompts, and
the KL divergence of a policy from a reference model on prompts.

Both are what RLHF trades against each other (InstructGPT, Llama 2): the reward a policy reaches
on prompts it did not train on, and how far it moved from the model it started from. The KL is
measured the way the RL objective defines it, on the policy's own samples at temperature 1:

    KL(pi || pi_ref) = E_{y ~ pi(.|x)} sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)

estimated per response with k1 (the plain log-ratio sum, unbiased) and k3 (sum of r - 1 - log r
with r = pi_ref / pi, unbiased and never negative; Schulman 2020, "Approximating KL divergence").
"""

from __future__ import annotations

from statistics import fmean
from typing import Any, Sequence

import torch


def gold_by_family(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any]:
    """Mean gold reward of each answer to its world TaskExample: overall, per family, and the
    per-example scores (for win-rates against another model's answers to the same examples)."""
    from posttrain.world.gold import gold_reward

    scores = [gold_reward(e, a).total for e, a in zip(examples, answers, strict=True)]
    families: dict[str, list[float]] = {}
    for e, s in zip(examples, scores):
        families.setdefault(e.family, []).append(s)
    return {"mean": fmean(scores), "families": {f: fmean(v) for f, v in families.items()}, "scores": scores}


@torch.no_grad()
def sampled_kl(policy, reference, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 64,
               seed: int = 0, batch_size: int = 32) -> dict[str, float]:
    """KL(policy || reference) per response on the policy's samples at temperature 1: mean k1 and k3
    over responses, and how many responses were sampled."""
    from posttrain.rl.math import kl_k1, kl_k3
    from posttrain.rl.rollout import sample_rollouts, token_logps

    prompt_ids = [tokenizer(tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"] for c in conversations]
    k1, k3 = [], []
    for start in range(0, len(prompt_ids), batch_size):
        rollout = sample_rollouts(policy, tokenizer, prompt_ids[start:start + batch_size],
                                  max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size, seed=seed + start)
        device = next(reference.parameters()).device
        logits = reference(input_ids=rollout.input_ids.to(device), attention_mask=rollout.attention_mask.to(device),
                           position_ids=rollout.position_ids.to(device)).logits
        # Logits at column t predict token t + 1: the response tokens are predicted from P - 1 on.
        ref = token_logps(logits[:, rollout.prompt_width - 1:-1], rollout.response_ids.to(device)).cpu()
        mask = rollout.response_mask.float()
        k1 += (kl_k1(rollout.rollout_token_logps, ref) * mask).sum(-1).tolist()
        k3 += (kl_k3(rollout.rollout_token_logps, ref) * mask).sum(-1).tolist()
    return {"kl_k1": fmean(k1), "kl_k3": fmean(k3), "responses": len(k1)}
