"""Best-of-n: nested selection, the kept sample is the best by the scorer, reproducible sampling, and
the kept answers written as SFT data that the readers load back."""

from __future__ import annotations

import pytest
import torch

from posttrain.generation.best_of_n import (BestOfN, best_of_n, rejection_sampling_data, sample_responses,
                                            score_samples, select_best)
from posttrain.models.reward import FunctionScorer

PROMPTS = [[{"role": "user", "content": "What is the capital of Zorbia?"}],
           [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "Add 12 and 7."}]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_select_best_looks_only_at_the_first_n_samples():
    scores = torch.tensor([[0.1, 0.9, 0.3, 2.0],
                           [0.5, 0.5, 0.7, 0.1]])
    assert select_best(scores, 1).tolist() == [0, 0]
    assert select_best(scores, 2).tolist() == [1, 0]  # a tie keeps the earlier sample
    assert select_best(scores, 3).tolist() == [1, 2]
    assert select_best(scores, 4).tolist() == [3, 2]
    with pytest.raises(ValueError, match="1 <= n <= 4"):
        select_best(scores, 5)


def test_best_of_n_keeps_the_sample_the_scorer_likes_best(tiny_model, tiny_tokenizer):
    shortest = FunctionScorer(lambda prompts, responses: [-float(len(r)) for r in responses], "shortest")
    results = best_of_n(tiny_model, tiny_tokenizer, PROMPTS, shortest, n=4, max_new_tokens=12, seed=3)
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        assert len(r.samples) == len(r.scores) == 4
        assert r.scores == [-float(len(s)) for s in r.samples]
        assert r.response == min(r.samples, key=len) and r.score == max(r.scores)
    again = sample_responses(tiny_model, tiny_tokenizer, PROMPTS, 4, max_new_tokens=12, seed=3)
    assert again == [r.samples for r in results], "same seed, same samples"
    assert len({s for r in results for s in r.samples}) > 2, "sampling at temperature 1 should vary"
    with pytest.raises(ValueError, match="temperature"):
        sample_responses(tiny_model, tiny_tokenizer, PROMPTS, 2, temperature=0.0)


def test_score_samples_pairs_each_sample_with_its_prompt():
    echo = FunctionScorer(lambda prompts, responses: [len(p) * 10 + len(r) for p, r in zip(prompts, responses)])
    scores = score_samples(echo, PROMPTS, [["a", "bb"], ["ccc", "d"]])
    assert scores.tolist() == [[11, 12], [23, 21]]


def test_rejection_sampling_data_is_sft_data(tmp_path):
    from posttrain.data.readers import read_records

    results = [BestOfN(PROMPTS[0], ["Quell.", "Zorbia."], [0.9, -0.2], 0),
               BestOfN(PROMPTS[1], ["19.", "NINETEEN."], [-1.0, -0.5], 1)]
    counts = rejection_sampling_data(results, tmp_path / "best.jsonl", min_score=0.0)
    assert counts == {"written": 1, "dropped": 1}
    records = read_records(tmp_path / "best.jsonl").expect("conversation")
    assert [m.to_dict() for m in records[0].messages] == PROMPTS[0] + [{"role": "assistant", "content": "Quell."}]
    assert records[0].meta == {"reward": 0.9, "n": 2, "sample": 0}
    assert rejection_sampling_data(results, tmp_path / "all.jsonl") == {"written": 2, "dropped": 0}
