"""Reward model and scorers: the score at the last real token (invariant to batch size, padding side
and neighbours, equal to plain transformers), normalization saved and applied, scorer protocol,
Llama 2's combination rule, and the evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.data.chat import Example, render_prompt_response
from posttrain.data.collate import pad_collate
from posttrain.data.packing import pack_examples
from posttrain.models.attention import use_packed_attention
from posttrain.evaluation.reward import (accuracy_by_strength, calibration, gold_agreement, oracle_accuracy,
                                         within_prompt_correlation,
                                         pairwise_accuracy)
from posttrain.models.config import ModelConfig
from posttrain.models.reward import (NORMALIZATION_FILE, CombinedScorer, FunctionScorer, RewardModel,
                                     RewardNormalization, RewardScorer, Scorer, fit_normalization, load_reward_model,
                                     pack_shared_prefix, padded_rewards, prefix_segments, shared_prefix_length,
                                     use_shared_prefix_attention)
from posttrain.rl.rewards import llama2_combined_reward, safety_gate

PROMPTS = [[{"role": "user", "content": "What is the capital of Zorbia?"}],
           [{"role": "system", "content": "Answer in capitals."}, {"role": "user", "content": "Add 12 and 7."}],
           [{"role": "user", "content": "Sort these words: pear, apple, fig."}]]
RESPONSES = ["The capital of Zorbia is Quell.", "THE ANSWER IS 19.", "apple, fig, pear. I hope this helps you today!"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward_lm(tiny_model_dir, tiny_tokenizer):
    torch.manual_seed(0)
    model = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"), tiny_tokenizer,
                              for_training=False)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head large enough that differences show
    return model


def _ids(tokenizer, i: int) -> list[int]:
    return render_prompt_response(tokenizer, PROMPTS[i], [{"role": "assistant", "content": RESPONSES[i]}]).input_ids


def test_scores_do_not_depend_on_batch_padding_side_or_neighbours(reward_lm, tiny_tokenizer):
    seqs = [_ids(tiny_tokenizer, i) for i in range(3)]
    assert len({len(s) for s in seqs}) == 3, "the sequences must differ in length for padding to matter"
    pad = tiny_tokenizer.pad_token_id
    alone = torch.stack([padded_rewards(reward_lm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool))[0]
                         for s in seqs])
    examples = [Example(s, [True] * len(s)) for s in seqs]
    for side in ("right", "left"):
        batch = pad_collate(examples, pad, padding_side=side)
        torch.testing.assert_close(padded_rewards(reward_lm, batch.input_ids, batch.attention_mask), alone,
                                   rtol=0, atol=1e-5)
    # Other neighbours: the first sequence next to a much longer, different one.
    longer = Example(seqs[2] * 3, [True] * (3 * len(seqs[2])))
    batch = pad_collate([examples[0], longer], pad, padding_side="left")
    torch.testing.assert_close(padded_rewards(reward_lm, batch.input_ids, batch.attention_mask)[0], alone[0],
                               rtol=0, atol=1e-5)
    # Packed side by side in one row (the training layout), with attention per sequence.
    with_packed = RewardModel(reward_lm)
    before = reward_lm.config._attn_implementation
    use_packed_attention(reward_lm)
    try:
        packed = with_packed(pack_examples(examples[::-1], pad))
    finally:
        reward_lm.set_attn_implementation(before)
    torch.testing.assert_close(packed, alone.flip(0), rtol=0, atol=1e-5)
    # And the scorer: any batch size, any order.
    scorer = RewardScorer(reward_lm, tiny_tokenizer)
    for batch_size in (1, 2, 3):
        torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES, batch_size=batch_size), alone, rtol=0, atol=1e-5)
    assert alone.std() > 0.01, "the three scores should differ"


def test_shared_prefix_layout_by_hand():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: each keeps its last token
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1  # one a prefix of the other
    batch = pack_shared_prefix([[[7, 8, 9], [7, 8, 5, 6]], [[4], [3, 3]]])
    assert batch.input_ids.tolist() == [[7, 8, 9, 5, 6, 4, 3, 3]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 2, 3, 0, 0, 1]]
    assert batch.score_columns.tolist() == [2, 4, 5, 7] and batch.num_sequence_tokens == 3 + 4 + 1 + 2
    # Segments: root [0, 3) (prefix + first rest), [3, 5) continues its first 2 tokens, then two roots.
    assert prefix_segments(batch.position_ids[0]) == [(0, 3, 0, 0), (3, 5, 0, 2), (5, 6, 5, 0), (6, 8, 6, 0)]
    with pytest.raises(ValueError, match="continue a prefix of 5"):
        prefix_segments(torch.tensor([0, 1, 5, 6]))


def test_shared_prefix_rewards_equal_separate_forwards(reward_lm, tiny_tokenizer):
    """Each prompt once, its responses continuing from it: the same rewards as scoring each sequence alone."""
    groups = [[_ids(tiny_tokenizer, i), render_prompt_response(tiny_tokenizer, PROMPTS[i], [
        {"role": "assistant", "content": RESPONSES[(i + 1) % 3]}]).input_ids] for i in range(3)]
    alone = torch.stack([padded_rewards(reward_lm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool))[0]
                         for g in groups for s in g])
    batch = pack_shared_prefix(groups)
    assert batch.num_tokens < batch.num_sequence_tokens - 20, "the prompts should be shared"
    before = reward_lm.config._attn_implementation
    use_shared_prefix_attention(reward_lm)
    try:
        shared = RewardModel(reward_lm)(batch)
        padded = pad_collate([Example(s, [True] * len(s)) for g in groups for s in g], tiny_tokenizer.pad_token_id)
        masked = padded_rewards(reward_lm, padded.input_ids, padded.attention_mask)  # masked calls: plain sdpa
    finally:
        reward_lm.set_attn_implementation(before)
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(masked, alone, rtol=0, atol=1e-5)


def test_score_is_read_from_the_mask_not_the_pad_id(reward_lm, tiny_tokenizer):
    """A response that ends in the pad id's token: searching for the pad id would stop too early."""
    seq = _ids(tiny_tokenizer, 0)
    pad = tiny_tokenizer.pad_token_id
    with_pad = seq + [pad, seq[-1]]  # the pad token as text, then more text
    mask = torch.ones(1, len(with_pad), dtype=torch.bool)
    ours = padded_rewards(reward_lm, torch.tensor([with_pad]), mask)
    batch = pad_collate([Example(with_pad, [True] * len(with_pad)), Example(seq, [True] * len(seq))], pad)
    torch.testing.assert_close(padded_rewards(reward_lm, batch.input_ids, batch.attention_mask)[0], ours[0],
                               rtol=0, atol=1e-5)


def test_exported_folder_is_plain_transformers_and_normalization_is_applied(reward_lm, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from posttrain.models.export import export_model

    norm = RewardNormalization(mean=0.7, std=2.0, count=3, reference="three test responses")
    folder = export_model(reward_lm, tiny_tokenizer, tmp_path / "rm", extra_files={NORMALIZATION_FILE: norm.to_json()})
    raw = RewardScorer(reward_lm, tiny_tokenizer).score(PROMPTS, RESPONSES, normalize=False)

    plain = AutoModelForSequenceClassification.from_pretrained(folder)
    seqs = [_ids(tiny_tokenizer, i) for i in range(3)]
    batch = pad_collate([Example(s, [True] * len(s)) for s in seqs], tiny_tokenizer.pad_token_id)
    with torch.no_grad():  # right padding, pad id from config.json: transformers' own pooling agrees here
        logits = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.squeeze(-1)
    torch.testing.assert_close(logits, raw, rtol=0, atol=1e-5)

    scorer = RewardScorer.from_pretrained(folder, device="cpu")
    assert scorer.normalization == norm
    torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES), (raw - 0.7) / 2.0, rtol=0, atol=1e-5)
    torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES, normalize=False), raw, rtol=0, atol=1e-5)
    unnormalized = RewardScorer.from_pretrained(folder, device="cpu", normalize=False)
    torch.testing.assert_close(unnormalized.score(PROMPTS, RESPONSES), raw, rtol=0, atol=1e-5)
    conversations = [p + [{"role": "assistant", "content": r}] for p, r in zip(PROMPTS, RESPONSES)]
    torch.testing.assert_close(scorer.score_conversations(conversations, normalize=False), raw, rtol=0, atol=1e-5)


def test_likelihood_feature_adds_the_mean_response_logprob_in_every_layout(reward_lm, tiny_model_dir, tiny_tokenizer,
                                                                         tmp_path):
    """head score + alpha * mean log p(response tokens) under the causal LM the backbone came from, the
    same padded one by one, padded together, in a shared-prefix row, and from the exported folder."""
    from transformers import AutoModelForCausalLM

    from posttrain.models.export import export_model
    from posttrain.models.reward import LIKELIHOOD_COEF
    from posttrain.recipes.reward import Comparison, collate

    rendered = [render_prompt_response(tiny_tokenizer, PROMPTS[i], [{"role": "assistant", "content": r}])
                for i in range(3) for r in (RESPONSES[i], RESPONSES[(i + 1) % 3])]
    head_only = RewardScorer(reward_lm, tiny_tokenizer).score_ids([r.input_ids for r in rendered], normalize=False)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = []
    with torch.no_grad():
        for r, score in zip(rendered, head_only):
            logps = torch.log_softmax(lm(torch.tensor([r.input_ids])).logits[0, :-1], -1)
            picked = logps.gather(1, torch.tensor(r.input_ids[1:])[:, None])[:, 0]
            expected.append(score + 0.7 * picked[torch.tensor(r.loss_mask[1:])].mean())
    expected = torch.stack(expected)
    assert (expected - head_only).abs().min() > 0.1, "the feature should change every score"

    setattr(reward_lm.config, LIKELIHOOD_COEF, 0.7)
    try:
        scorer = RewardScorer(reward_lm, tiny_tokenizer)
        ids, masks = [r.input_ids for r in rendered], [r.loss_mask for r in rendered]
        for batch_size in (1, 6):
            torch.testing.assert_close(scorer.score_ids(ids, batch_size, normalize=False, response_masks=masks),
                                       expected, rtol=0, atol=1e-4)
        with pytest.raises(ValueError, match="response_masks"):
            scorer.score_ids(ids, normalize=False)
        comparisons = [Comparison(ids[2 * i:2 * i + 2], None, masks[2 * i:2 * i + 2]) for i in range(3)]
        model = RewardModel(reward_lm, likelihood=True)  # alpha from the config: 0.7
        padded = collate(comparisons, tiny_tokenizer.pad_token_id, packing=False, responses=True)
        torch.testing.assert_close(model(padded.sequences), expected, rtol=0, atol=1e-4)
        before = reward_lm.config._attn_implementation
        use_shared_prefix_attention(reward_lm)
        try:
            shared = collate(comparisons, tiny_tokenizer.pad_token_id, packing=True, responses=True)
            assert shared.sequences.num_tokens < shared.sequences.num_sequence_tokens
            torch.testing.assert_close(model(shared.sequences), expected, rtol=0, atol=1e-4)
        finally:
            reward_lm.set_attn_implementation(before)
        with pytest.raises(ValueError, match="likelihood=true"):
            RewardModel(reward_lm)
        folder = export_model(reward_lm, tiny_tokenizer, tmp_path / "rm")
    finally:
        delattr(reward_lm.config, LIKELIHOOD_COEF)
    loaded = RewardScorer.from_pretrained(folder, device="cpu", normalize=False)
    torch.testing.assert_close(loaded.score([PROMPTS[i] for i in range(3) for _ in range(2)],
                                            [r for i in range(3) for r in (RESPONSES[i], RESPONSES[(i + 1) % 3])]),
                               expected, rtol=0, atol=1e-4)


def test_fit_normalization_standardizes_and_refuses_a_constant_model(tmp_path):
    raw = torch.tensor([1.0, 2.0, 3.0, 6.0])
    norm = fit_normalization(raw, "four")
    assert norm.mean == pytest.approx(3.0) and norm.std == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4))
    z = norm.apply(raw)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-6) and z.std(unbiased=False).item() == pytest.approx(1.0)
    norm.save(tmp_path)
    assert RewardNormalization.load(tmp_path) == norm
    assert RewardNormalization.load(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="same reward"):
        fit_normalization(torch.full((5,), 0.3), "constant")
    (tmp_path / NORMALIZATION_FILE).write_text('{"mean": 0, "std": 0}')
    with pytest.raises(ValueError, match="positive"):
        RewardNormalization.load(tmp_path)


def test_scorer_truncates_from_the_left_and_counts_it(reward_lm, tiny_tokenizer, caplog):
    full = RewardScorer(reward_lm, tiny_tokenizer)
    seq = _ids(tiny_tokenizer, 2)
    cut = RewardScorer(reward_lm, tiny_tokenizer, max_length=len(seq) - 3)
    expected = full.score_ids([seq[3:]], normalize=False)
    torch.testing.assert_close(cut.score(PROMPTS[2:], RESPONSES[2:], normalize=False), expected)
    assert cut.truncated == 1 and "cut from the left" in caplog.text
    with pytest.raises(ValueError, match="one response per prompt"):
        full.score(PROMPTS, RESPONSES[:2])


def test_llama2_combination_rule_by_hand():
    helpful = torch.tensor([2.0, 0.5, -1.0, 1.5])
    safety = torch.tensor([1.0, -2.0, 0.0, 3.0])  # sigmoid: 0.73, 0.12, 0.5, 0.95
    flagged = torch.tensor([False, False, False, True])
    # row 0: safe enough, benign -> helpfulness; row 1: sigmoid(-2) = 0.119 < 0.15 -> safety;
    # row 2: 0.5 -> helpfulness; row 3: flagged prompt -> safety whatever its value.
    assert safety_gate(safety, flagged).tolist() == [False, True, False, True]
    assert llama2_combined_reward(helpful, safety, flagged).tolist() == [2.0, -2.0, -1.0, 3.0]
    # A higher threshold (0.6) also takes row 2's safety score (sigmoid 0.5 < 0.6).
    assert llama2_combined_reward(helpful, safety, flagged, threshold=0.6).tolist() == [2.0, -2.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="probability"):
        safety_gate(safety, flagged, threshold=1.5)


def test_function_and_combined_scorers_follow_the_protocol():
    lengths = FunctionScorer(lambda prompts, responses: [len(r) / 10 for r in responses], "length")
    unsafe_words = FunctionScorer(lambda prompts, responses: [-3.0 if "poison" in r else 2.0 for r in responses])
    assert isinstance(lengths, Scorer) and isinstance(unsafe_words, Scorer)
    prompts = [[{"role": "user", "content": "How do I poison the river?"}],
               [{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour."}]]
    responses = ["Sorry, I can't help with that.", "Here is how to poison it, then 4.", "Blue."]
    combined = CombinedScorer(lengths, unsafe_words, unsafe_prompt=lambda p: "poison" in p[-1]["content"])
    # Prompt 0 is flagged: its safety score (2.0). Prompt 1's response is unsafe (sigmoid(-3) < 0.15): -3.
    # Prompt 2: helpfulness, len("Blue.") / 10.
    assert combined.score(prompts, responses).tolist() == pytest.approx([2.0, -3.0, 0.5])
    with pytest.raises(ValueError, match=r"returned \(1,\) values for 3"):
        FunctionScorer(lambda p, r: [1.0]).score(prompts, responses)


def test_evaluation_metrics_by_hand():
    chosen = torch.tensor([2.0, 0.0, 1.0, 1.0])
    rejected = torch.tensor([1.0, 1.0, 1.0, -1.0])
    assert pairwise_accuracy(chosen, rejected) == pytest.approx((1 + 0 + 0.5 + 1) / 4)  # a tie counts 1/2
    by = accuracy_by_strength(chosen, rejected, [4, 1, None, 4])
    assert by == {"1": {"accuracy": 0.0, "pairs": 1}, "4": {"accuracy": 1.0, "pairs": 2}}
    # Gold orders pair 1 the other way round (the label was noise) and ties on pair 3.
    gold_c, gold_r = [0.9, 0.2, 0.5, 0.5], [0.1, 0.8, 0.3, 0.5]
    assert oracle_accuracy(gold_c, gold_r) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    # Over pairs with different gold: pair 0 agrees (2 > 1), pair 1: gold prefers rejected and so
    # does the model (1 > 0), pair 2: a model tie counts 1/2.
    assert gold_agreement(chosen, rejected, gold_c, gold_r) == {"agreement": pytest.approx(2.5 / 3), "pairs": 3}


def test_within_prompt_correlation_by_hand():
    # prompt a: scores follow gold exactly (r = 1); b: reversed (r = -1); c: gold all equal (tied, skipped)
    scores = [1.0, 2.0, 3.0, 5.0, 4.0, 0.0, 7.0]
    gold = [0.1, 0.2, 0.3, 0.0, 1.0, 0.5, 0.5]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    out = within_prompt_correlation(scores, gold, groups)
    assert out["correlation"] == pytest.approx(0.0) and (out["prompts"], out["tied"]) == (2, 1)
    assert out["se"] == pytest.approx(math.sqrt(2) / math.sqrt(2))  # std of (1, -1) over sqrt(2)
    # a constant score over different gold ranks nothing either; a lone response is tied
    out = within_prompt_correlation([2.0, 2.0, 1.0], [0.0, 1.0, 0.3], ["a", "a", "b"])
    assert math.isnan(out["correlation"]) and (out["prompts"], out["tied"]) == (0, 2)


def test_calibration_by_hand():
    # Differences of 0 (predicts 0.5) and log 4 (predicts 0.8), each pair entered in both orientations.
    chosen, rejected = torch.tensor([0.0, math.log(4.0)]), torch.tensor([0.0, 0.0])
    report = calibration(chosen, rejected, bins=4)
    bins = {tuple(b["bin"]): b for b in report["bins"]}
    assert set(bins) == {(0.0, 0.25), (0.5, 0.75), (0.75, 1.0)}
    assert bins[(0.0, 0.25)]["predicted"] == pytest.approx(0.2) and bins[(0.0, 0.25)]["observed"] == 0.0
    assert bins[(0.5, 0.75)]["predicted"] == pytest.approx(0.5) and bins[(0.5, 0.75)]["count"] == 2
    assert bins[(0.5, 0.75)]["observed"] == 0.5
    assert bins[(0.75, 1.0)]["predicted"] == pytest.approx(0.8) and bins[(0.75, 1.0)]["observed"] == 1.0
    assert report["ece"] == pytest.approx((0.2 + 0 + 0 + 0.2) / 4)


def test_scorer_batches_cut_by_rows_and_by_tokens():
    from posttrain.models.reward import _length_batches

    # Mean length 4, so a batch of at most 2 rows holds at most 8 tokens, padding included.
    assert _length_batches([2, 10, 2, 2], batch_size=2) == [[1], [0, 2], [3]]
    assert _length_batches([3, 3, 3, 3], batch_size=4) == [[0, 1, 2, 3]]  # no padding: one full batch


def test_reward_input_ids_scores_each_rollout_row_as_sampled(reward_lm, tiny_tokenizer):
    from types import SimpleNamespace

    from posttrain.errors import TrainingError
    from posttrain.rl.prompts import PromptSet, reward_function
    from posttrain.rl.rollout import collate_rollout

    scorer = RewardScorer(reward_lm, tiny_tokenizer)
    prompt_ids = [_ids(tiny_tokenizer, 0)[:5], _ids(tiny_tokenizer, 1)[:9], _ids(tiny_tokenizer, 2)[:3]]
    completions = [[7, 8, 9], [10], [11, 12, 13, 14, 15]]  # rows of other lengths: left and right padding
    rollout = collate_rollout(prompt_ids, completions, [[0.0] * len(c) for c in completions], [True] * 3,
                              ["a", "b", "c"], [0, 1, 2], tiny_tokenizer.pad_token_id)
    prompts = PromptSet(prompt_ids, PROMPTS[:3], [None] * 3)
    scores = reward_function([("rm", 1.0, scorer)], prompts, ids_from=tiny_tokenizer)([0, 1, 2], rollout)["score"]
    alone = [scorer.score_ids([p + c], normalize=True) for p, c in zip(prompt_ids, completions)]
    torch.testing.assert_close(scores, torch.cat(alone))  # each row's own tokens, without the padding
    other = SimpleNamespace(get_vocab=lambda: {"x": 0})
    with pytest.raises(TrainingError, match="another vocabulary than the policy"):
        reward_function([("rm", 1.0, scorer)], prompts, ids_from=other)
