"""Rollouts (posttrain.rl.rollout): layout of the padded tensors, grouping by prompt, seeding, and
the sampler's log-probs against the trainer's forward pass over the same tensors."""

from __future__ import annotations

import pytest
import torch

from posttrain.models.value import ActorCritic, ValueHead, response_logits
from posttrain.rl.rollout import collate_rollout, sample_rollouts, token_logps

STOP = list(range(5, 400, 8))
PROMPTS = ["What is the capital of Zorbia?", "Add 12 and 7.", "Sort these words: pear, apple, fig. Then"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture()
def model(tiny_model, tiny_tokenizer):
    # Every eighth token stops a response: a random model then emits responses of many lengths.
    tiny_model.generation_config.eos_token_id = STOP
    return tiny_model.eval()


def _ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def test_layout_left_padded_prompts_right_padded_responses(model, tiny_tokenizer):
    prompts = _ids(tiny_tokenizer)
    rollout = sample_rollouts(model, tiny_tokenizer, prompts, samples_per_prompt=2, max_new_tokens=12,
                              temperature=1.0, seed=0)
    assert rollout.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]  # grouped by prompt, as RLOO/GRPO expect
    P = rollout.prompt_width
    assert P == max(len(p) for p in prompts)
    lengths = rollout.response_lengths.tolist()
    assert len(set(lengths)) > 1, "the test needs responses of different lengths"
    for row, prompt_row in enumerate(rollout.prompt_index.tolist()):
        prompt = prompts[prompt_row]
        assert rollout.input_ids[row, P - len(prompt):P].tolist() == prompt
        assert not rollout.attention_mask[row, :P - len(prompt)].any()  # left padding
        n = lengths[row]
        assert rollout.response_mask[row, :n].all() and not rollout.response_mask[row, n:].any()  # right padding
        assert rollout.attention_mask[row, P:].tolist() == rollout.response_mask[row].tolist()
        assert (rollout.rollout_token_logps[row, n:] == 0).all() and (rollout.rollout_token_logps[row, :n] < 0).all()
        assert bool(rollout.finished[row]) == (rollout.response_ids[row, n - 1].item() in STOP)
        assert rollout.texts[row] == tiny_tokenizer.decode(rollout.response_ids[row, :n], skip_special_tokens=True)
    # Position ids count real tokens, as generate numbers them.
    first = rollout.attention_mask.long().argmax(dim=1)
    for row in range(len(rollout)):
        assert rollout.position_ids[row, first[row]:P + lengths[row]].tolist() == list(range(P + lengths[row] - first[row]))


def test_sampling_is_seeded_and_temperature_zero_is_greedy(model, tiny_tokenizer):
    prompts = _ids(tiny_tokenizer)
    a = sample_rollouts(model, tiny_tokenizer, prompts, samples_per_prompt=3, max_new_tokens=8, seed=5)
    b = sample_rollouts(model, tiny_tokenizer, prompts, samples_per_prompt=3, max_new_tokens=8, seed=5)
    c = sample_rollouts(model, tiny_tokenizer, prompts, samples_per_prompt=3, max_new_tokens=8, seed=6)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    greedy = sample_rollouts(model, tiny_tokenizer, prompts, samples_per_prompt=2, max_new_tokens=8, temperature=0)
    assert torch.equal(greedy.input_ids[0::2], greedy.input_ids[1::2])  # both samples of a prompt are the argmax


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_the_trainer_forward_over_the_rollout(model, tiny_tokenizer, temperature):
    """The log-probs kept from KV-cached decoding are those a full forward pass over the padded
    rollout gives (the rollout-vs-trainer difference PPO logs is float rounding only)."""
    rollout = sample_rollouts(model, tiny_tokenizer, _ids(tiny_tokenizer), samples_per_prompt=2, max_new_tokens=10,
                              temperature=temperature, seed=1)
    actor = ActorCritic(model, ValueHead(model.config.hidden_size))
    with torch.no_grad():
        out = actor(**rollout.model_inputs())
    trainer = token_logps(out.logits, rollout.response_ids, temperature)
    mask = rollout.response_mask
    torch.testing.assert_close(trainer[mask], rollout.rollout_token_logps[mask], atol=1e-4, rtol=0)
    # ... and each row alone, unpadded, gives the same numbers: padding changes nothing.
    for row in range(len(rollout)):
        n = int(rollout.response_lengths[row])
        ids = rollout.input_ids[row][rollout.attention_mask[row]].unsqueeze(0)
        with torch.no_grad():
            alone = torch.log_softmax(model(ids).logits[0, -n - 1:-1].float() / temperature, dim=-1)
        expected = alone.gather(1, ids[0, -n:, None]).squeeze(1)
        torch.testing.assert_close(trainer[row, :n], expected, atol=1e-4, rtol=0)
    assert out.values.shape == mask.shape and torch.all(out.values == 0)  # zero-initialised head


def test_select_drops_all_padding_columns_and_keeps_every_number(model, tiny_tokenizer):
    rollout = sample_rollouts(model, tiny_tokenizer, _ids(tiny_tokenizer), samples_per_prompt=2, max_new_tokens=12,
                              seed=0)
    longest_prompt = int(torch.tensor([len(p) for p in _ids(tiny_tokenizer)]).argmax())
    rows = [r for r in range(len(rollout)) if rollout.prompt_index[r] != longest_prompt][:2]
    part = rollout.select(rows)
    assert part.prompt_width < rollout.prompt_width  # the longest prompt's padding went with it
    assert part.response_length == int(rollout.response_lengths[rows].max())
    assert part.texts == [rollout.texts[r] for r in rows]
    with torch.no_grad():
        full = token_logps(response_logits(model, **rollout.model_inputs())[0], rollout.response_ids)
        small = token_logps(response_logits(model, **part.model_inputs())[0], part.response_ids)
    for i, r in enumerate(rows):
        n = int(rollout.response_lengths[r])
        torch.testing.assert_close(small[i, :n], full[r, :n], atol=1e-5, rtol=0)
        assert torch.equal(part.rollout_token_logps[i, :n], rollout.rollout_token_logps[r, :n])


def test_collate_rollout_says_what_is_wrong():
    with pytest.raises(ValueError, match="row 1 has 1 prompt tokens, 0 completion tokens"):
        collate_rollout([[1], [2]], [[3], []], [[-0.1], []], [True, True], ["a", ""], [0, 1], pad_id=0)
    with pytest.raises(ValueError, match="one entry per row"):
        collate_rollout([[1]], [[3], [4]], [[-0.1]], [True], ["a"], [0], pad_id=0)


def test_token_logps_is_log_softmax_at_temperature():
    logits = torch.randn(2, 3, 5)
    ids = torch.randint(0, 5, (2, 3))
    expected = torch.log_softmax(logits / 0.5, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logps(logits, ids, 0.5), expected)


def test_separate_critic_values_are_those_of_each_row_alone(model, tiny_tokenizer):
    """The policy and a separate critic run each row without its left padding and without an
    attention mask (``drop_left_padding``): the values at the response positions are the critic's
    on the row alone, unpadded, and the logits the policy's."""
    from posttrain.models.tiny import tiny_llama
    from posttrain.models.value import Critic

    rollout = sample_rollouts(model, tiny_tokenizer, _ids(tiny_tokenizer), samples_per_prompt=2, max_new_tokens=10,
                              seed=2)
    backbone = tiny_llama(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=7).model.eval()
    head = ValueHead(32)
    torch.nn.init.normal_(head.summary.weight)
    actor = ActorCritic(model, critic=Critic(backbone, head))
    with torch.no_grad():
        out = actor(**rollout.model_inputs())
    assert out.values.shape == rollout.response_mask.shape
    for row in range(len(rollout)):
        n = int(rollout.response_lengths[row])
        ids = rollout.input_ids[row][rollout.attention_mask[row]].unsqueeze(0)
        with torch.no_grad():
            alone = head(backbone(input_ids=ids).last_hidden_state)[0, -n - 1:-1]
            logits = model(ids).logits[0, -n - 1:-1]
        torch.testing.assert_close(out.values[row, :n], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits[row, :n], logits, atol=1e-5, rtol=0)
    assert torch.isfinite(out.values).all() and torch.isfinite(out.logits).all()  # padding gives finite numbers
