"""`posttrain reward` on a tiny model: the loss falls, packed = padded, resume reproduces the run, every
loss trains (margin from strengths, K-wise from rankings), the export holds its normalization, and
bad settings fail with messages that say what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posttrain.config import load_config
from posttrain.data.records import Message, Preference, Ranking
from posttrain.data.writers import write_jsonl
from posttrain.models.reward import NORMALIZATION_FILE, RewardScorer
from posttrain.recipes.config import RewardConfig
from posttrain.training.loop import TrainingError
from posttrain.training.metrics import read_metrics

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _prompt(i: int) -> list[Message]:
    rule = [Message("system", "Answer in capitals.")] if i % 4 == 0 else []
    return rule + [Message("user", f"What is {i} plus {i % 7}?")]


def _answers(i: int) -> list[str]:
    """Best first: the right sum, a verbose right sum, a wrong sum."""
    right = f"{i} plus {i % 7} is {i + i % 7}."
    return [right, right + " I hope this helps.", f"{i} plus {i % 7} is {i + i % 7 + 3}."]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prefs")
    reply = lambda t: [Message("assistant", t)]  # noqa: E731
    pairs = [Preference(_prompt(i), reply(_answers(i)[0]), reply(_answers(i)[2 - i % 2]), 1 + i % 4)
             for i in range(72)]
    rankings = [Ranking(_prompt(i), [reply(a) for a in _answers(i)][: 2 + i % 2]) for i in range(48)]
    write_jsonl(pairs, folder / "pairs.jsonl")
    write_jsonl(rankings, folder / "rankings.jsonl")
    return folder


def _args(model_dir: Path, data: list[Path], run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"data.train=[{','.join(map(str, data))}]", f"train.run_dir={run_dir}",
            f"train.max_steps={STEPS}", "train.batch_size=4", "train.grad_accum=2", "train.save_every=3",
            "train.keep_checkpoints=0", "train.lr=3e-3", "train.warmup_steps=1", "train.eval_every=3",
            "train.tensorboard=false", "train.progress=false", "eval_fraction=0.2", "normalize=data",
            "norm_prompts=16", *extra]


def _reward(*args: str) -> Path:
    from posttrain.recipes.reward import reward

    return reward(load_config(RewardConfig, None, list(args)))


def _metric(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


@pytest.fixture(scope="module")
def packed_run(tiny_model_dir, prefs, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("packed") / "run"
    _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], run_dir, "packing=true"))
    return run_dir


def test_run_trains_evaluates_and_exports_a_normalized_model(packed_run):
    losses = _metric(packed_run, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert np.mean([losses[5], losses[6]]) < np.mean([losses[1], losses[2]]), losses
    assert sorted(_metric(packed_run, "eval_accuracy")) == [3, 6]
    report = json.loads((packed_run / "eval" / "reward.json").read_text())
    assert report["pairs"] > 0 and set(report["accuracy_by_strength"]) <= {"1", "2", "3", "4"}

    final = packed_run / "final"
    norm = json.loads((final / NORMALIZATION_FILE).read_text())
    assert norm["count"] == 16 and norm["std"] > 0 and "preferred responses" in norm["reference"]
    scorer = RewardScorer.from_pretrained(final, device="cpu")
    prompts = [[m.to_dict() for m in _prompt(i)] for i in range(72)]
    preferred = [_answers(i)[0] for i in range(72)]
    # Normalization was measured on 16 of these prompts' preferred answers: over all 72 they are near 0 +- 1.
    z = scorer.score(prompts, preferred, batch_size=7)
    assert abs(float(z.mean())) < 0.75 and 0.4 < float(z.std()) < 2.0, (z.mean(), z.std())
    raw = scorer.score(prompts, preferred, batch_size=32, normalize=False)
    torch.testing.assert_close(z, (raw - norm["mean"]) / norm["std"], rtol=0, atol=1e-5)


def test_packed_and_padded_runs_have_the_same_loss_curve(packed_run, tiny_model_dir, prefs, tmp_path):
    padded = tmp_path / "padded"
    _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], padded, "packing=false"))
    for key in ("loss", "eval_loss", "accuracy"):
        a, b = _metric(packed_run, key), _metric(padded, key)
        assert a.keys() == b.keys()
        np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)


def test_resume_from_a_checkpoint_reproduces_the_run(packed_run, tiny_model_dir, prefs, tmp_path, capsys):
    run_dir = tmp_path / "resumed"
    shutil.copytree(packed_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-000006")  # as if it died after the step-3 checkpoint
    shutil.rmtree(run_dir / "final")
    _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], run_dir, "packing=true"))
    assert "resumed from" in capsys.readouterr().err
    a, b = _metric(packed_run, "loss"), _metric(run_dir, "loss")
    assert sorted(b) == sorted(a)
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-6)


def test_likelihood_runs_packed_and_padded_alike_resume_and_export_the_learned_weight(tiny_model_dir, prefs,
                                                                                     tmp_path, capsys):
    from posttrain.models.reward import LIKELIHOOD_COEF

    runs = {}
    for packing in ("true", "false"):
        runs[packing] = tmp_path / packing
        _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], runs[packing], f"packing={packing}", "likelihood=true"))
    for key in ("loss", "eval_loss"):
        a, b = _metric(runs["true"], key), _metric(runs["false"], key)
        np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    alpha = json.loads((runs["true"] / "final" / "config.json").read_text())[LIKELIHOOD_COEF]
    assert abs(alpha - 1.0) > 1e-3, "alpha is trained from likelihood_init=1"
    shutil.rmtree(runs["true"] / "checkpoints" / "step-000006")  # as if it died after the step-3 checkpoint
    shutil.rmtree(runs["true"] / "final")
    _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], runs["true"], "packing=true", "likelihood=true"))
    assert "resumed from" in capsys.readouterr().err
    resumed = json.loads((runs["true"] / "final" / "config.json").read_text())[LIKELIHOOD_COEF]
    assert resumed == pytest.approx(alpha, abs=1e-6)
    # A folder trained with the feature refuses to be trained further without it.
    with pytest.raises(TrainingError, match="likelihood=true"):
        _reward(*_args(runs["true"] / "final", [prefs / "pairs.jsonl"], tmp_path / "again"))


@pytest.mark.parametrize("loss", ["margin", "all_pairs", "plackett_luce"])
def test_every_loss_trains(loss, tiny_model_dir, prefs, tmp_path):
    data = [prefs / "pairs.jsonl"] if loss == "margin" else [prefs / "rankings.jsonl", prefs / "pairs.jsonl"]
    run_dir = tmp_path / loss
    _reward(*_args(tiny_model_dir, data, run_dir, f"loss={loss}", "train.eval_every=0", "normalize=none"))
    losses = _metric(run_dir, "loss")
    assert np.mean([losses[5], losses[6]]) < np.mean([losses[1], losses[2]]), losses
    assert 0.0 <= _metric(run_dir, "eval_accuracy")[STEPS] <= 1.0
    norm = json.loads((run_dir / "final" / NORMALIZATION_FILE).read_text())
    assert (norm["mean"], norm["std"], norm["count"]) == (0.0, 1.0, 0)


def test_rankings_become_pairs_for_pairwise_losses_and_pairs_rankings_of_two():
    from posttrain.recipes.reward import comparison_records

    ranking = Ranking(_prompt(1), [[Message("assistant", a)] for a in _answers(1)])
    pair = Preference(_prompt(2), [Message("assistant", "a")], [Message("assistant", "b")], 3)
    pairs = comparison_records([ranking, pair], ranking=False)
    assert len(pairs) == 3 + 1 and all(p.kind == "preference" for p in pairs)
    assert [p.chosen[0].content for p in pairs[:3]] == [_answers(1)[0], _answers(1)[0], _answers(1)[1]]
    assert comparison_records([ranking, pair], ranking=True) == [ranking, pair]


def test_comparisons_score_in_one_forward_best_first(tiny_tokenizer):
    from posttrain.recipes.reward import Comparison, collate

    comparisons = [Comparison([[1, 2, 3], [4, 5]], 2), Comparison([[6], [7, 8], [9, 9, 9, 9]], None)]
    batch = collate(comparisons, tiny_tokenizer.pad_token_id, packing=True)
    assert batch.mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.strength.tolist() == [2, 0]
    assert batch.sequences.input_ids.shape == (1, 3 + 2 + 1 + 2 + 4)  # every response, one row, no padding
    padded = collate(comparisons, tiny_tokenizer.pad_token_id, packing=False)
    assert padded.sequences.input_ids.shape == (5, 4)


def test_bad_settings_fail_with_a_fix(tiny_model_dir, prefs, tmp_path):
    rankings = [prefs / "rankings.jsonl"]
    with pytest.raises(TrainingError, match="no preference strength.*loss=bradley_terry"):
        _reward(*_args(tiny_model_dir, rankings, tmp_path / "a", "loss=margin"))
    with pytest.raises(TrainingError, match="center_coef"):
        _reward(*_args(tiny_model_dir, rankings, tmp_path / "b", "loss=all_pairs", "center_coef=0.01"))
    with pytest.raises(TrainingError, match="normalize=data or none"):
        _reward(*_args(_a_reward_folder(tiny_model_dir, tmp_path), [prefs / "pairs.jsonl"], tmp_path / "c",
                       "normalize=sft_samples", "train.max_steps=1"))


def _a_reward_folder(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A sequence-classification folder (not a causal LM) to start from."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "seqcls"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_lora_run_trains_the_head_and_exports_a_merged_plain_model(tiny_model_dir, prefs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    run_dir = tmp_path / "lora"
    final = _reward(*_args(tiny_model_dir, [prefs / "pairs.jsonl"], run_dir, "model.lora.enabled=true",
                           "model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-2", "normalize=none"))
    assert not (final / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (merged.state_dict()[q] - base.state_dict()[q]).abs().max() > 1e-4  # the adapter was merged in
    losses = _metric(run_dir, "loss")
    assert np.mean([losses[5], losses[6]]) < np.mean([losses[1], losses[2]]), losses
    scorer = RewardScorer.from_pretrained(final, device="cpu")
    prompts = [[m.to_dict() for m in _prompt(i)] for i in range(8)]
    scores = scorer.score(prompts, [_answers(i)[0] for i in range(8)])
    assert scores.std() > 0


def test_soft_labels_train_toward_the_labellers_probability(tiny_model_dir, prefs, tmp_path):
    """loss=soft_bradley_terry reads each pair's meta.p_chosen: on pairs labelled 50/50 the reward gap
    stays near 0, where the same pairs with hard labels open it."""
    from posttrain.data.readers import read_records

    pairs = read_records(prefs / "pairs.jsonl").records
    unsure = tmp_path / "unsure.jsonl"
    write_jsonl([Preference(p.prompt, p.chosen, p.rejected, None, {"p_chosen": 0.5}) for p in pairs], unsure)
    gaps = {}
    for loss in ("bradley_terry", "soft_bradley_terry"):
        run_dir = tmp_path / loss
        _reward(*_args(tiny_model_dir, [unsure], run_dir, f"loss={loss}", "train.eval_every=0", "normalize=none",
                       "train.max_steps=12"))
        gaps[loss] = _metric(run_dir, "margin")[12]
    assert abs(gaps["soft_bradley_terry"]) < 0.25 * gaps["bradley_terry"], gaps
    bad = tmp_path / "bad.jsonl"
    write_jsonl([Preference(pairs[0].prompt, pairs[0].chosen, pairs[0].rejected, None, {"p_chosen": 3})] * 40, bad)
    with pytest.raises(TrainingError, match="not a probability"):
        _reward(*_args(tiny_model_dir, [bad], tmp_path / "bad", "loss=soft_bradley_terry"))
