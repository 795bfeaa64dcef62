"""Batched generation: independent of batching, stops at eos, log-probs, seeded sampling, chat."""

from __future__ import annotations

import pytest
import torch

from posttrain.generation import generate, generate_chat

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The capital of Zorbia is",
    "Add",
    "Sort these words: pear, apple,",
    "Hello!",
    "What is the capital of Zorbia? The capital",
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    """A random tiny Llama with larger weights, so greedy decoding does not repeat one token."""
    from posttrain.models.tiny import tiny_llama

    return tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.3).eval()


def _full_forward_token_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(completion_ids) - 1)
    return logps[positions, torch.tensor(completion_ids)]


def test_greedy_does_not_depend_on_batch_composition(model, tiny_tokenizer):
    token_prompts = [tiny_tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(p) for p in token_prompts}) >= 4  # mixed lengths: real left padding
    together = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS))
    alone = [generate(model, tiny_tokenizer, [p], max_new_tokens=10)[0] for p in token_prompts]
    in_threes = generate(model, tiny_tokenizer, token_prompts[::-1], max_new_tokens=10, batch_size=3)[::-1]
    for a, b, c, prompt in zip(together, alone, in_threes, token_prompts):
        assert a.prompt_ids == b.prompt_ids == c.prompt_ids == prompt
        assert a.completion_ids == b.completion_ids == c.completion_ids
        assert len(a.completion_ids) == 10 and not a.finished
    assert len({tuple(o.completion_ids) for o in together}) > 1
    # Same tokens as transformers on the unpadded prompt.
    for out in together:
        ids = torch.tensor([out.prompt_ids])
        plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                               do_sample=False, eos_token_id=None, pad_token_id=tiny_tokenizer.pad_token_id,
                               repetition_penalty=1.0)
        assert plain[0, ids.shape[1]:].tolist() == out.completion_ids


def test_completions_stop_after_eos_and_ignore_model_defaults(model, tiny_tokenizer):
    free = generate(model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=8, stop_at_eos=False)
    stop = free[0].completion_ids[2]
    saved = model.generation_config
    try:
        model.generation_config = type(saved)(eos_token_id=stop, repetition_penalty=5.0, top_k=1)
        stopped = generate(model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=8, batch_size=2)
        running = generate(model, tiny_tokenizer, PROMPTS[:2], max_new_tokens=8, stop_at_eos=False)
    finally:
        model.generation_config = saved
    cut = free[0].completion_ids.index(stop)
    assert stopped[0].completion_ids == free[0].completion_ids[:cut + 1] and stopped[0].finished
    assert stopped[0].text == tiny_tokenizer.decode(stopped[0].completion_ids, skip_special_tokens=True)
    # The other prompt in the batch ran on after the first one stopped: no padding in its tokens.
    second_cut = free[1].completion_ids.index(stop) + 1 if stop in free[1].completion_ids else 8
    assert stopped[1].completion_ids == free[1].completion_ids[:second_cut]
    # The model's repetition penalty and top-k never leak into posttrain's decoding.
    assert [o.completion_ids for o in running] == [o.completion_ids for o in free]


def test_token_logps_match_a_full_forward(model, tiny_tokenizer):
    outputs = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=6, temperature=1.3, top_p=0.9,
                       batch_size=2, seed=0, return_logps=True)
    for out in outputs:
        expected = _full_forward_token_logps(model, out.prompt_ids, out.completion_ids)
        torch.testing.assert_close(torch.tensor(out.completion_token_logps), expected, atol=1e-4, rtol=0)
        assert out.completion_logps == pytest.approx(float(expected.sum()), abs=1e-3)
    assert generate(model, tiny_tokenizer, PROMPTS[:1], max_new_tokens=2)[0].completion_logps is None


def test_sampling_is_seeded_without_touching_the_global_rng(model, tiny_tokenizer):
    rng = torch.get_rng_state()
    first = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
    second = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
    assert torch.equal(rng, torch.get_rng_state())
    assert [o.completion_ids for o in first] == [o.completion_ids for o in second]
    greedy = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8)
    assert [o.completion_ids for o in first] != [o.completion_ids for o in greedy]
    # A nucleus this small keeps only the most likely token: sampling becomes greedy.
    nucleus = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3)
    assert [o.completion_ids for o in nucleus] == [o.completion_ids for o in greedy]


def test_generate_chat_renders_the_template_with_a_generation_prompt(model, tiny_tokenizer):
    conversations = [
        [{"role": "user", "content": "Add 12 and 7."}],
        [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "Hello!"}],
    ]
    model.train()
    outputs = generate_chat(model, tiny_tokenizer, conversations, max_new_tokens=5)
    assert model.training  # mode restored
    model.eval()
    header = tiny_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for conversation, out in zip(conversations, outputs):
        text = tiny_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert out.prompt_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert out.prompt_ids[-len(header):] == header
        assert out.completion_ids == generate(model, tiny_tokenizer, [out.prompt_ids], max_new_tokens=5)[0].completion_ids


def test_bad_arguments_are_explained(model, tiny_tokenizer):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tiny_tokenizer, [[5, 6], []])
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(model, tiny_tokenizer, ["Add"], temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        generate(model, tiny_tokenizer, ["Add"], temperature=1.0, top_p=0.0)
