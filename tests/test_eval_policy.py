"""Policy evaluation: the sampled KL to a reference and the world's gold reward by family."""

import math

import torch

from posttrain.evaluation.policy import gold_by_family, sampled_kl
from posttrain.models.tiny import tiny_llama

PROMPTS = [[{"role": "user", "content": text}] for text in ("hello there", "what is two plus two", "sort b a c", "hi")]


@torch.no_grad()
def _exact_next_token_kl(policy, reference, tokenizer, conversation):
    """KL(policy || reference) of the first response token, summed over the whole vocabulary."""
    ids = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    p = torch.log_softmax(policy(ids).logits[0, -1].float(), -1)
    q = torch.log_softmax(reference(ids).logits[0, -1].float(), -1)
    return float((p.exp() * (p - q)).sum())


def _peaked(seed, vocab):
    """A random tiny model whose next-token distributions are far from uniform."""
    model = tiny_llama(vocab, hidden_size=32, num_layers=1, seed=seed, tie_word_embeddings=False).eval()
    model.model.norm.weight.data.fill_(20.0)
    return model


def test_sampled_kl_is_zero_against_itself_and_matches_the_exact_one_token_kl(tiny_tokenizer):
    policy, reference = _peaked(0, len(tiny_tokenizer)), _peaked(1, len(tiny_tokenizer))
    same = sampled_kl(policy, policy, tiny_tokenizer, PROMPTS, max_new_tokens=8)
    assert abs(same["kl_k1"]) < 1e-4 and abs(same["kl_k3"]) < 1e-4 and same["responses"] == len(PROMPTS)
    # One-token responses: the Monte Carlo estimate over many samples approaches the exact KL.
    many = [PROMPTS[0]] * 400
    estimate = sampled_kl(policy, reference, tiny_tokenizer, many, max_new_tokens=1, batch_size=400)
    exact = _exact_next_token_kl(policy, reference, tiny_tokenizer, PROMPTS[0])
    assert exact > 0.05
    assert math.isclose(estimate["kl_k1"], exact, rel_tol=0.25) and math.isclose(estimate["kl_k3"], exact, rel_tol=0.25), (estimate, exact)


def test_gold_by_family_averages_each_family():
    from posttrain.world import make_world
    from posttrain.world.tasks import make_tasks

    world = make_world(0)
    examples = make_tasks(world, 0, "fact_lookup", "heldout", 3) + make_tasks(world, 0, "arithmetic", "heldout", 2)
    answers = [e.target for e in examples[:3]] + ["I don't know."] * 2
    out = gold_by_family(examples, answers)
    assert out["families"]["fact_lookup"] > out["families"]["arithmetic"]
    assert math.isclose(out["mean"], sum(out["scores"]) / 5)
