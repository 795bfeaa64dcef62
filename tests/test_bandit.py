"""The enumerable bandit problem: exact probabilities, the closed-form optimum, Bradley-Terry labels,
and rollouts through posttrain.generation that sample exactly the enumerated distribution."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.world.bandit import kl_divergence, kl_to_optimum, make_bandit


@pytest.fixture(scope="module")
def problem():
    return make_bandit()


def test_completions_are_the_whole_output_space(problem):
    """pi(y|x) over the listed completions sums to 1 with no renormalization, for any model."""
    assert problem.num_completions == problem.vocab_size ** problem.completion_length == 9
    assert len({tuple(c) for c in problem.completions.tolist()}) == problem.num_completions
    assert len({tuple(p) for p in problem.prompts.tolist()}) == problem.num_prompts
    for model in (problem.reference_model(), make_bandit(seed=3).reference_model()):
        with torch.no_grad():
            total = problem.sequence_logps(model).exp().sum(-1)
        assert torch.allclose(total, torch.ones(problem.num_prompts), atol=1e-5)
    # The reference is clearly not uniform, so pi* depends on it.
    ref = problem.ref_logps.exp()
    assert (ref.max(-1).values > 2.0 / problem.num_completions).all()


def test_sequence_logps_match_token_by_token_scoring(problem):
    model = problem.reference_model()
    p, k = 2, 5
    ids = torch.cat([problem.prompts[p], problem.completions[k]])[None]
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    start = problem.prompt_length
    by_hand = sum(logps[t - 1, ids[0, t]].item() for t in range(start, ids.shape[1]))
    assert problem.ref_logps[p, k].item() == pytest.approx(by_hand, abs=1e-5)
    assert problem.reference_model() is not model  # a fresh copy each call, same weights
    assert torch.equal(problem.reference_model().lm_head.weight, model.lm_head.weight)


def test_optimum_is_the_closed_form_and_maximizes_the_regularized_reward(problem):
    beta = 0.7
    opt = problem.optimum_logps(beta)
    # log pi* - log pi_ref - r / beta is the same constant (-log Z(x)) for every completion of a prompt.
    residual = opt - problem.ref_logps - problem.rewards / beta
    assert torch.allclose(residual, residual[:, :1].expand_as(residual), atol=1e-5)

    def objective(logps):  # E_pi[r] - beta KL(pi || pi_ref), per prompt
        return (logps.exp() * problem.rewards).sum(-1) - beta * kl_divergence(logps, problem.ref_logps)

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.log_softmax(opt + 0.3 * torch.randn(opt.shape, generator=g), -1)
        assert (objective(other) < objective(opt)).all()
    # Known limits: beta -> infinity gives pi_ref, beta -> 0 the argmax of r.
    assert torch.allclose(problem.optimum_logps(1e6).exp(), problem.ref_logps.exp(), atol=1e-4)
    assert torch.equal(problem.optimum_logps(1e-3).argmax(-1), problem.rewards.argmax(-1))


def test_kl_to_optimum_of_the_reference_is_far_from_zero(problem):
    ref_model = problem.reference_model()
    by_hand = 0.0
    opt = problem.optimum_logps(1.0).exp()
    for p in range(problem.num_prompts):
        by_hand += sum(opt[p, k].item() * (math.log(opt[p, k].item()) - problem.ref_logps[p, k].item())
                       for k in range(problem.num_completions)) / problem.num_prompts
    assert kl_to_optimum(ref_model, problem, 1.0) == pytest.approx(by_hand, rel=1e-4)
    assert by_hand > 0.3  # the 0.05 target of training is a real change from the reference
    assert problem.kl_to_reference(ref_model) == pytest.approx(0.0, abs=1e-6)
    expected = (problem.ref_logps.exp() * problem.rewards).sum(-1).mean().item()
    assert problem.expected_reward(ref_model) == pytest.approx(expected, rel=1e-5)


def test_bradley_terry_labels_follow_the_reward(problem):
    pairs = problem.sample_preferences(60_000, seed=1)
    assert len(pairs) == 60_000 and bool((pairs.chosen != pairs.rejected).all())
    again = problem.sample_preferences(60_000, seed=1)
    assert torch.equal(pairs.chosen, again.chosen) and torch.equal(pairs.prompt, again.prompt)
    # For the most compared unordered pair, the win frequency is sigmoid(r_a - r_b).
    lo, hi = torch.minimum(pairs.chosen, pairs.rejected), torch.maximum(pairs.chosen, pairs.rejected)
    key = pairs.prompt * 100 + lo * 10 + hi
    top = torch.bincount(key).argmax().item()
    p, a, b = top // 100, (top // 10) % 10, top % 10
    picked = key == top
    wins = (pairs.chosen[picked] == a).float().mean().item()
    expected = torch.sigmoid(problem.rewards[p, a] - problem.rewards[p, b]).item()
    n = int(picked.sum())
    assert abs(wins - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    # Labels agree with the reward order much more often than chance.
    agree = (problem.rewards[pairs.prompt, pairs.chosen] > problem.rewards[pairs.prompt, pairs.rejected]).float().mean()
    assert agree > 0.7


def test_reward_lookup_and_indices(problem):
    prompts = problem.prompts[[1, 3]]
    completions = problem.completions[[0, 8]]
    assert problem.completion_index(completions).tolist() == [0, 8]
    assert problem.reward(prompts, completions).tolist() == [problem.rewards[1, 0].item(), problem.rewards[3, 8].item()]
    unknown = torch.tensor([[9 % problem.vocab_size] * problem.prompt_length])
    if not (problem.prompts == unknown).all(-1).any():
        with pytest.raises(ValueError, match="not prompts"):
            problem.prompt_index(unknown)
    with pytest.raises(ValueError, match="completion ids"):
        problem.completion_index(torch.tensor([[0, problem.vocab_size]]))


def test_preference_examples_mark_the_completion(problem):
    pairs = problem.sample_preferences(3, seed=0)
    examples = problem.preference_examples(pairs)
    first = examples[0]
    assert first.chosen.input_ids == problem.prompts[pairs.prompt[0]].tolist() + problem.completions[pairs.chosen[0]].tolist()
    assert first.chosen.loss_mask == [False] * problem.prompt_length + [True] * problem.completion_length
    assert first.rejected.response_start == problem.prompt_length


def test_generate_samples_the_enumerated_distribution(problem):
    """posttrain.generation rolls out exactly L tokens and its log-probs are the table's."""
    from posttrain.generation import generate

    model, tokenizer = problem.reference_model(), problem.tokenizer()
    assert tokenizer.decode(problem.completions[5].tolist()) == "b c"
    prompts = [problem.prompts[0].tolist()] * 400
    outputs = generate(model, tokenizer, prompts, max_new_tokens=problem.completion_length, temperature=1.0,
                       stop_at_eos=False, seed=0, batch_size=400, return_logps=True)
    completions = torch.tensor([o.completion_ids for o in outputs])
    index = problem.completion_index(completions)
    logps = torch.tensor([o.completion_logps for o in outputs])
    assert torch.allclose(logps, problem.ref_logps[0, index], atol=1e-4)
    freq = torch.bincount(index, minlength=problem.num_completions).float() / len(outputs)
    probs = problem.ref_logps[0].exp()
    assert (freq - probs).abs().max() < 4 * math.sqrt(0.25 / len(outputs))
