"""Preference data from sampled responses: sample -> score -> rank -> pairs.

Iterative DPO (each round's pairs), the reward model's on-policy comparisons and best-of-n all
start from a pool of responses per prompt: samples of a policy, and in the embedded world its
candidate responses of known kinds (:func:`response_pools`). A ranker orders a pool best first:
by the rewards of any scorer (:mod:`posttrain.scorers`: the world's gold reward, a reward model, a
Python function; :func:`score_ranker`) or by a draw of the world's simulated annotators
(:func:`annotator_ranker`). :func:`label_pairs` turns ranked pools into preference records.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from posttrain.data.records import Message, Preference
from posttrain.generation.best_of_n import sample_responses
from posttrain.scorers import Scorer
from posttrain.world.annotators import Annotator, candidate_responses

Ranker = Callable[[int, list[str]], "list[str] | None"]
"""rank(prompt index, responses) -> the responses best first, or None when the labeler finds them all equal."""


def response_pools(examples: Sequence | None, samples: list[list[str]] | None, n_prompts: int,
                   skip_kinds: tuple[str, ...] = ()) -> list[list[str]]:
    """Each prompt's responses: the world's candidates of ``examples`` (kinds other than ``skip_kinds``;
    none without examples), then its ``samples`` (none when None)."""
    pools: list[list[str]] = [[] for _ in range(n_prompts)]
    if examples is not None:
        pools = [[c.text for c in candidate_responses(e) if c.kind not in skip_kinds] for e in examples]
    if samples is not None:
        pools = [pool + list(s) for pool, s in zip(pools, samples)]
    return pools


def score_ranker(scorer: Scorer, prompts: list, pools: list[list[str]], records: Sequence | None) -> Ranker:
    """A ranker by ``scorer``'s rewards, each distinct response of each pool scored once (ties keep pool order)."""
    flat = [(i, t) for i, pool in enumerate(pools) for t in dict.fromkeys(pool)]
    values = scorer([prompts[i] for i, _ in flat], [t for _, t in flat],
                    [records[i] for i, _ in flat] if records is not None else [None] * len(flat))
    score = dict(zip(flat, values.flatten().tolist()))

    def rank(i: int, responses: list[str]) -> list[str] | None:
        order = sorted(responses, key=lambda t: -score[i, t])  # stable: ties keep pool order
        return None if score[i, order[0]] == score[i, order[-1]] else order

    return rank


def annotator_ranker(annotator: Annotator, examples: Sequence, aspect: str) -> Ranker:
    """A ranker by the world's simulated annotators: a Plackett-Luce draw around the gold scores."""
    return lambda i, responses: [responses[j] for j in annotator.rank(examples[i], responses, aspect)]


def label_pairs(prompts: list, pools: list[list[str]], rank: Ranker, pairing: str, pairs_per_prompt: int, seed: int,
                metas: list[dict]) -> tuple[list[Preference], int]:
    """Preference records from each prompt's pool of distinct responses, ordered by ``rank``.

    pairing="best_worst": one pair per prompt, the best of the pool against the worst (as iterative
    DPO builds its pairs, Xu et al. 2023; Pang et al. 2024); "random": ``pairs_per_prompt`` random
    pairs. Returns the records and the number of tied pairs skipped."""
    rng, out, ties = random.Random(f"dpo-pairs:{seed}"), [], 0
    for i, (prompt, pool) in enumerate(zip(prompts, pools)):
        pool = list(dict.fromkeys(pool))
        if len(pool) < 2:
            continue
        candidates = [pool] if pairing == "best_worst" else [rng.sample(pool, 2) for _ in range(pairs_per_prompt)]
        for responses in candidates:
            order = rank(i, responses)
            if order is None:
                ties += 1
                continue
            out.append(Preference([Message(m["role"], m["content"]) for m in prompt], [Message("assistant", order[0])],
                                  [Message("assistant", order[-1])], None, dict(metas[i])))
    return out, ties


def sample_and_label(lm, tokenizer, prompts: list, examples: Sequence | None, ranker: Callable[[list], Ranker], *,
                     samples_per_prompt: int, max_new_tokens: int, temperature: float, seed: int, sample: bool,
                     candidates: bool, pairing: str, pairs_per_prompt: int) -> tuple[list[Preference], str]:
    """Pairs labelled from each prompt's pool: ``samples_per_prompt`` samples of ``lm`` (``sample``) and/or
    the world's candidates of ``examples`` (``candidates``; not the worked solutions: a policy answers
    directly, and gold scores brevity against the direct answer, so a chosen chain of thought would teach
    a style that costs reward), ranked by ``ranker(pools)``. Returns the records and a line saying how."""
    samples = None
    if sample:
        samples = sample_responses(lm, tokenizer, prompts, samples_per_prompt, max_new_tokens,
                                   temperature=temperature, seed=seed)
    pools = response_pools(examples if candidates else None, samples, len(prompts), skip_kinds=("cot",))
    metas = [{"task_id": e.id, "family": e.family} if examples else {} for e in (examples or prompts)]
    records, ties = label_pairs(prompts, pools, ranker(pools), pairing, pairs_per_prompt, seed, metas)
    sources = [f"{samples_per_prompt} policy samples"] * sample + ["the world's candidates"] * candidates
    return records, (f"{len(records)} pairs from {len(prompts)} prompts ({' + '.join(sources)} each); "
                     f"{ties} tied pairs skipped")
