"""Evaluating a chat policy by what it answers: the world's gold reward on held-out prompts, and
the KL divergence of a policy from a reference model on prompts.

Both are what RLHF trades against each other (InstructGPT, Llama 2): the reward a policy reaches
on prompts it did not train on, and how far it moved from the model it started from. The KL is
measured the way the RL objective defines it, on the policy's own samples at temperature 1:

    KL(pi || pi_ref) = E_{y ~ pi(.|x)} sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)

estimated per response with k1 (the plain log-ratio sum, unbiased) and k3 (sum of r - 1 - log r
with r = pi_ref / pi, unbiased and never negative; Schulman 2020, "Approximating KL divergence").
:func:`sampled_kl` takes the reference as a causal LM; :func:`sampled_kl_scored` as a response
scorer (``posttrain.training.reference.ReferencePolicy``: the LoRA-disabled policy, a copy in
memory, or a model loaded for the measurement), as preference training holds it.

During preference training the gold reward is also compared with the starting policy's on the same
held-out prompts (:class:`GoldAgainstStart`: :func:`policy_answers`, :func:`gold_win_rates`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, Sequence

import torch

from posttrain.data.chat import PromptResponse
from posttrain.data.preference import UnpairedExample, collate_unpaired
from posttrain.files import write_json_atomic
from posttrain.generation import generate_chat
from posttrain.generation.best_of_n import sample_responses
from posttrain.models.logps import sequence_inputs
from posttrain.rl.math import kl_k1, kl_k3
from posttrain.rl.rollout import sample_rollouts, token_logps
from posttrain.world.gold import gold_reward

if TYPE_CHECKING:
    from posttrain.models.logps import SequenceLogps
    from posttrain.training.reference import ReferencePolicy

EVAL_SAMPLES = 2
"""Sampled answers per held-out world prompt in the gold evaluation of preference training."""


def gold_by_family(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any]:
    """Mean gold reward of each answer to its world TaskExample: overall, per family, and the
    per-example scores (for win-rates against another model's answers to the same examples)."""
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
        ref = token_logps(logits[:, rollout.prompt_width - 1:-1], rollout.response_ids.to(device))
        ref = ref.to(rollout.rollout_token_logps.device)
        mask = rollout.response_mask.float()
        k1 += (kl_k1(rollout.rollout_token_logps, ref) * mask).sum(-1).tolist()
        k3 += (kl_k3(rollout.rollout_token_logps, ref) * mask).sum(-1).tolist()
    return {"kl_k1": fmean(k1), "kl_k3": fmean(k3), "responses": len(k1)}


@torch.no_grad()
def sampled_kl_scored(policy: "SequenceLogps", reference: "ReferencePolicy", tokenizer, prompts: list,
                      max_new_tokens: int, seed: int, batch_size: int = 32) -> dict:
    """KL(policy || reference) per response, from responses sampled by the policy at temperature 1:
    k1 = sum_t log pi/pi_ref (unbiased), k3 = sum_t (r - 1 - log r) with r = pi_ref/pi (unbiased,
    never negative); Schulman 2020, "Approximating KL divergence"."""
    outputs = [o for o in generate_chat(policy.lm, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                        temperature=1.0, seed=seed, return_logps=True) if o.completion_ids]
    rows = [UnpairedExample(PromptResponse(o.prompt_ids + o.completion_ids,
                                           [False] * len(o.prompt_ids) + [True] * len(o.completion_ids),
                                           len(o.prompt_ids)), True) for o in outputs]
    scorer, device = reference.loaded(), next(policy.parameters()).device
    k1 = k3 = 0.0
    for start in range(0, len(rows), batch_size):
        batch = collate_unpaired(rows[start:start + batch_size], tokenizer.pad_token_id).to(device)
        # (b, T) padded: token t + 1's log-prob at position t
        ref_tokens = scorer(**sequence_inputs(batch), per_token=True).float().cpu()
        for i, out in enumerate(outputs[start:start + batch_size]):
            where = batch.response_mask[i].nonzero().flatten().cpu() - 1
            pol, q = torch.tensor(out.completion_token_logps), ref_tokens[i, where]
            k1 += float(kl_k1(pol, q).sum())
            k3 += float(kl_k3(pol, q).sum())
    del scorer
    n = max(1, len(rows))
    return {"kl_k1": k1 / n, "kl_k3": k3 / n, "kl_responses": len(rows)}


def kl_prompt_sample(prompts: Sequence[list[dict]], n: int, seed: str) -> list[list[dict]]:
    """``n`` distinct prompts (message lists) for a sampled-KL measurement, in an order shuffled by ``seed``."""
    if n <= 0:
        return []
    picked = [json.loads(p) for p in dict.fromkeys(json.dumps(p) for p in prompts)]
    random.Random(seed).shuffle(picked)
    return picked[:n]


def policy_answers(lm, tokenizer, examples: Sequence[Any], max_new_tokens: int, seed: int,
                   samples: int = EVAL_SAMPLES) -> dict[str, dict[str, list[str]]]:
    """Each example's greedy answer and ``samples`` answers sampled at temperature 1 (the policy
    itself, whose expected reward DPO optimizes), by example id."""
    prompts = [e.messages for e in examples]
    greedy = generate_chat(lm, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=64)
    sampled = sample_responses(lm, tokenizer, prompts, samples, max_new_tokens, seed=seed)
    return {"greedy": {e.id: [o.text.strip()] for e, o in zip(examples, greedy)},
            "sampled": {e.id: s for e, s in zip(examples, sampled)}}


def gold_win_rates(examples: Sequence[Any], answers: dict, baseline: dict) -> dict:
    """Held-out gold reward of the policy's answers (:func:`policy_answers`), greedy and sampled, and
    the gold win-rate of each against the starting policy's answer to the same prompt (``baseline``;
    the i-th sample against its i-th; ties count half): overall, and per family under "families"."""
    out, families = {}, {}
    for mode, suffix in (("greedy", ""), ("sampled", "_sampled")):
        rows = [(e.family, gold_reward(e, a).total, gold_reward(e, b).total)
                for e in examples for a, b in zip(answers[mode][e.id], baseline[mode][e.id])]
        for family in [None, *dict.fromkeys(f for f, _, _ in rows)]:
            mine = [(g, b) for f, g, b in rows if family in (None, f)]
            wins = [1.0 if g > b else 0.5 if g == b else 0.0 for g, b in mine]
            scores = {f"gold{suffix}": sum(g for g, _ in mine) / len(mine),
                      f"gold_start{suffix}": sum(b for _, b in mine) / len(mine),
                      f"win_rate{suffix}": sum(wins) / len(wins)}
            (out if family is None else families.setdefault(family, {})).update(scores)
    return {**out, "held_out_prompts": len(examples), "families": families}


class GoldAgainstStart:
    """Held-out gold reward of a policy, greedy and sampled, and its gold win-rate against the starting
    policy's answers to the same world examples. The starting answers are made once, from ``lm``
    before training, and kept in ``path`` (a resumed or next round reuses them)."""

    def __init__(self, examples: Sequence[Any], lm, tokenizer, max_new_tokens: int, seed: int, path: Path,
                 write: bool = True):
        self.examples, self.max_new_tokens, self.seed = list(examples), max_new_tokens, seed
        if path.exists():
            self.baseline = json.loads(path.read_text(encoding="utf-8"))
        else:
            self.baseline = self.answers(lm, tokenizer)
            if write:
                write_json_atomic(path, self.baseline)

    def answers(self, lm, tokenizer) -> dict[str, dict[str, list[str]]]:
        """The same decoding for the starting policy and the trained one."""
        return policy_answers(lm, tokenizer, self.examples, self.max_new_tokens, seed=self.seed)

    def __call__(self, lm, tokenizer) -> dict:
        return gold_win_rates(self.examples, self.answers(lm, tokenizer), self.baseline)
