"""`posttrain eval` beyond prompting, through the command line on tiny saved models: reward-model
accuracy on preference files and world pairs, KL to a reference, win-rate against a reference."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import save_tiny_llama
from posttrain.cli import _register, app

_register()
runner = CliRunner()

PAIRS = [  # (prompt, chosen, rejected, strength)
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quell.", "Zorbia.", 3),
    ("Add 12 and 7.", "The answer is 19.", "The answer is 21.", 4),
    ("Sort these words: pear, apple, fig.", "apple, fig, pear", "pear, apple, fig", 1),
    ("Hello!", "How can I help you today?", "The quick brown fox.", 2),
    ("Answer in capitals. What is 2 + 2?", "FOUR.", "four.", 4),
    ("Sort these words: dog, cat.", "cat, dog", "dog, cat", 1),
]
RANKING = ("Add 1 and 2.", ["The answer is 3.", "3", "The answer is 4."])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tiny_tokenizer):
    """A second tiny causal LM with the same tokenizer, other weights and other greedy answers."""
    return save_tiny_llama(tmp_path_factory.mktemp("other"), tiny_tokenizer, seed=1, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """A tiny reward model folder as `posttrain reward` exports it, with a saved normalization that
    the evaluation must not apply (calibration is on raw scores)."""
    from posttrain.models.config import ModelConfig
    from posttrain.models.export import export_model
    from posttrain.models.reward import NORMALIZATION_FILE, RewardNormalization, load_reward_model

    torch.manual_seed(0)
    model = load_reward_model(ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"), tiny_tokenizer,
                              for_training=False)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head large enough that scores differ
    norm = RewardNormalization(mean=0.5, std=3.0, count=6, reference="test")
    return export_model(model, tiny_tokenizer, tmp_path_factory.mktemp("rm") / "final",
                        extra_files={NORMALIZATION_FILE: norm.to_json()})


def _eval(*args: str):
    return runner.invoke(app, ["eval", *args])


def _results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def test_reward_model_accuracy_is_that_of_its_scores(reward_model_dir, tmp_path):
    from posttrain.evaluation.reward import calibration
    from posttrain.models.reward import RewardScorer

    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "strength": s} for p, c, r, s in PAIRS]
    rows.append({"prompt": [{"role": "user", "content": RANKING[0]}],
                 "responses": [[{"role": "assistant", "content": t}] for t in RANKING[1]]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_dir = tmp_path / "eval"
    result = _eval(f"model.name_or_path={reward_model_dir}", "strategies=[]", f"preference_data=[{data}, world]",
                   "preference_examples=1", "batch_size=4", f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    assert "Reward model" in result.output

    # By hand: raw scores of each side, a pair counts when chosen scores higher (ties half).
    scorer = RewardScorer.from_pretrained(reward_model_dir, device="cpu")
    pairs = [(p, c, r, s) for p, c, r, s in PAIRS]
    ranked = RANKING[1]
    pairs += [(RANKING[0], ranked[i], ranked[j], None) for i in range(3) for j in range(i + 1, 3)]
    prompts = [[{"role": "user", "content": p}] for p, *_ in pairs]
    chosen = scorer.score(prompts, [c for _, c, _, _ in pairs], normalize=False)
    rejected = scorer.score(prompts, [r for _, _, r, _ in pairs], normalize=False)
    won = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(chosen.tolist(), rejected.tolist())]
    assert 0 < sum(won) < len(won), "a test where every pair is won (or lost) shows little"

    section = _results(run_dir)["reward_model"]
    mine = section["sets"][str(data)]
    assert (mine["pairs"], mine["records"], mine["rankings"]) == (len(PAIRS) + 3, len(PAIRS) + 1, 1)
    assert mine["accuracy"] == pytest.approx(sum(won) / len(won), abs=1e-12)
    for level in {s for *_, s in pairs if s is not None}:
        rows_at = [w for w, (*_, s) in zip(won, pairs) if s == level]
        assert mine["accuracy_by_strength"][str(level)] == {"accuracy": pytest.approx(sum(rows_at) / len(rows_at)),
                                                             "pairs": len(rows_at)}
    assert mine["calibration"]["ece"] == pytest.approx(calibration(chosen, rejected)["ece"], abs=1e-5), "raw scores"
    assert "gold" not in mine and mine["cut_to_context"] == 0

    world = section["sets"]["world"]
    assert world["pairs"] == 2 * len(world["families"]) and 0 <= world["gold"]["agreement"] <= 1
    assert 0.5 < world["oracle_accuracy"] <= 1 and world["annotator_noise_temperature"] == 0.1
    settings = section["settings"]
    assert settings["model"] == str(reward_model_dir.resolve()) and settings["batch_size"] == 4
    assert settings["dtype"] == "float32" and "transformers_version" in settings
    assert _results(run_dir)["results"] == {} and _results(run_dir)["settings"]["strategies"] == []


def test_kl_and_win_rate_against_itself_then_kl_to_another(tiny_model_dir, other_model_dir, tmp_path):
    run_dir = tmp_path / "self"
    result = _eval(f"model.name_or_path={tiny_model_dir}", "strategies=[]", f"reference={tiny_model_dir}",
                   "kl_prompts=6", "kl_max_tokens=8", f"win_rate_against={tiny_model_dir}", "win_rate_prompts=10",
                   "win_rate_max_tokens=6", "families=[arithmetic, reverse, harmful]", "batch_size=4",
                   f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    assert "KL(model || reference)" in result.output and "Win-rate" in result.output
    data = _results(run_dir)
    kl, wins = data["kl"], data["win_rate"]
    assert kl["responses"] == 6 and abs(kl["kl_k1"]) < 1e-3 and 0 <= kl["kl_k3"] < 1e-3
    assert wins["win_rate"] == 0.5 and wins["ties"] == wins["n"] == 10, "the same answers tie"
    assert wins["mean_score"] == wins["reference_mean_score"]
    assert {"reference", "prompts", "n_prompts", "max_new_tokens", "temperature", "seed", "batch_size",
            "estimators"} <= set(kl["settings"])
    assert (kl["settings"]["max_new_tokens"], kl["settings"]["batch_size"], kl["settings"]["n_prompts"]) == (8, 4, 6)
    s = wins["settings"]
    assert (s["judge"], s["max_new_tokens"], s["n_prompts"], s["decoding"]) == ("gold", 6, 10, "greedy")
    assert s["against"] == str(tiny_model_dir.resolve()) and "arithmetic" in s["prompts"]
    lines = (run_dir / "win_rate.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10 and {json.loads(x)["family"] for x in lines} == {"arithmetic", "reverse", "harmful"}
    assert data["settings"]["dtype"] == "float32" and (run_dir / "config.yaml").exists()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("Add 12 and 7.", "Hello!", "Sort: b, a.")),
                       encoding="utf-8")
    run_dir = tmp_path / "other"
    result = _eval(f"model.name_or_path={tiny_model_dir}", "strategies=[]", f"reference={other_model_dir}",
                   f"prompts={prompts}", "kl_prompts=0", "kl_max_tokens=8", f"run_dir={run_dir}")
    assert result.exit_code == 2 and "kl_prompts (0)" in result.output
    result = _eval(f"model.name_or_path={tiny_model_dir}", "strategies=[]", f"reference={other_model_dir}",
                   f"prompts={prompts}", "kl_prompts=3", "kl_max_tokens=8", f"win_rate_against={other_model_dir}",
                   "win_rate_prompts=3", "win_rate_max_tokens=5", "judge=llm", f"judge_model={tiny_model_dir}",
                   f"run_dir={run_dir}")
    assert result.exit_code == 0, result.output
    data = _results(run_dir)
    kl, wins = data["kl"], data["win_rate"]
    # k3 is never negative and zero only where the models agree; k1 is unbiased but noisy on 3 samples.
    assert kl["responses"] == 3 and kl["kl_k3"] > 0.01, kl
    assert str(prompts) in kl["settings"]["prompts"]
    s = wins["settings"]
    assert s["judge"].startswith("llm:") and s["judge_both_orders"] and s["judge_combine"] == "average"
    assert len(s["judge_template_sha256"]) == 64 and 0 < s["judge_label_mass"] <= 1
    rows = [json.loads(x) for x in (run_dir / "win_rate.jsonl").read_text().splitlines()]
    assert all(r["answer"] != r["reference_answer"] for r in rows), "the judge is asked about every pair"
    assert len(rows) == wins["n"] == 3 and wins["win_rate"] == pytest.approx(sum(r["verdict"] for r in rows) / 3)
    assert "mean_score" not in wins, "an LLM judge gives verdicts, not scores"


def test_settings_that_cannot_work_are_refused_before_loading(tiny_model_dir, reward_model_dir, tmp_path):
    cases = [
        ([f"model.name_or_path={reward_model_dir}", "preference_data=[world]"], "set strategies: [] to evaluate"),
        ([f"model.name_or_path={tiny_model_dir}", "strategies=[]", "preference_data=[world]"], "is not a reward model"),
        ([f"model.name_or_path={tiny_model_dir}", "strategies=[]"], "nothing to evaluate"),
        ([f"model.name_or_path={tiny_model_dir}", "strategies=[]", f"win_rate_against={tiny_model_dir}",
          f"prompts={tmp_path / 'p.jsonl'}"], "judge=gold scores the embedded world's tasks only"),
    ]
    for args, message in cases:
        result = _eval(*args, f"run_dir={tmp_path / 'x'}")
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "x").exists(), "nothing is written for a refused run"
