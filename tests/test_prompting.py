"""Prompting strategies, log-prob multiple choice, exact match, and `posttrain eval`."""

from __future__ import annotations

import json
import math

import pytest

from posttrain.evaluation import prompting as P
from posttrain.evaluation.multiple_choice import ContinuationScore, continuation_logprobs, pick
from posttrain.evaluation.scoring import difference_se, proportion_ci
from posttrain.world.answers import exact_match
from posttrain.world import tasks as T


@pytest.fixture(scope="module")
def suite():
    return T.task_suite(0, n_train=100, n_heldout=20)


# --------------------------------------------------------------------------- prompts


def test_zero_shot_prompt_is_the_question_in_corpus_qa_form(suite):
    ex = suite["fact_lookup"]["heldout"][0]
    assert P.plain_prompt(ex, "zero_shot") == f"Q: {ex.question}\nA:"
    assert P.plain_prompt(ex, "zero_shot_cot") == f"Q: {ex.question}\nA: {P.ZERO_SHOT_COT_TRIGGER}"


def test_few_shot_and_cot_prompts_show_k_solved_train_examples(suite):
    ex, pool = suite["arithmetic"]["heldout"][0], suite["arithmetic"]["train"]
    shots = P.select_shots(ex, pool, 3, seed=0)
    assert len(shots) == 3 and all(s.meta["split"] == "train" for s in shots)
    assert shots == P.select_shots(ex, pool, 3, seed=0), "shots are deterministic"
    assert shots != P.select_shots(ex, pool, 3, seed=1)
    cot = P.plain_prompt(ex, "cot", shots)
    blocks = cot.split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == f"Q: {ex.question}\nA:"
    assert [b.split("\nA: ")[1] for b in blocks[:3]] == [s.cot for s in shots]
    assert P.plain_prompt(ex, "few_shot", shots) == cot, "a worked family's few-shot examples are worked"
    ex, pool = suite["sorting"]["heldout"][0], suite["sorting"]["train"]
    shots = P.select_shots(ex, pool, 3, seed=0)
    few = P.plain_prompt(ex, "few_shot", shots)
    assert [b.split("\nA: ")[1] for b in few.split("\n\n")[:3]] == [s.answer for s in shots] != [s.cot for s in shots]
    assert P.plain_prompt(ex, "zero_shot", shots) == P.plain_prompt(ex, "zero_shot"), "zero-shot ignores shots"


def test_shots_under_a_system_rule_share_the_rule(suite):
    pool = suite["chat_rule"]["train"]
    for ex in suite["chat_rule"]["heldout"][:8]:
        assert all(s.rule == ex.rule for s in P.select_shots(ex, pool, 3, seed=0))


def test_chat_prompts_use_the_template_with_shots_as_earlier_turns(suite, tiny_tokenizer):
    ex = suite["chat_rule"]["heldout"][0]
    shots = P.select_shots(ex, suite["chat_rule"]["train"], 2, seed=0)
    turns = P.chat_messages(ex, "few_shot", shots)
    assert turns[0] == ex.messages[0] and sum(t["role"] == "system" for t in turns) == 1
    assert turns[-1] == ex.messages[-1]
    expected = []
    for source, final in [(s, s.answer) for s in shots] + [(ex, None)]:
        expected += [m["content"] for m in source.messages if m["role"] == "assistant"]
        expected += [final] if final else []
    assert [t["content"] for t in turns if t["role"] == "assistant"] == expected
    text = P.build_prompt(ex, "few_shot", shots, chat=True, tokenizer=tiny_tokenizer)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>user") == sum(t["role"] == "user" for t in turns)
    assert P.build_prompt(ex, "zero_shot_cot", chat=True, tokenizer=tiny_tokenizer).endswith(
        "assistant\n" + P.ZERO_SHOT_COT_TRIGGER)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        P.build_prompt(ex, "few_shot", shots, chat=True)
    with pytest.raises(ValueError, match="unknown prompting strategy"):
        P.plain_prompt(ex, "tree_of_thought")


def test_completions_are_read_to_the_end_of_their_first_line(suite):
    ex = suite["fact_lookup"]["heldout"][0]
    assert P.completion_answer(f" {ex.answer}\n\nQ: next question") == ex.answer
    assert exact_match(ex, P.completion_answer(f" {ex.cot}\nQ: more"))
    assert not exact_match(ex, P.completion_answer("\n" + ex.answer))


# --------------------------------------------------------------------------- multiple choice


def _direct_logp(model, tokenizer, context: str, continuation: str) -> float:
    import torch

    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return sum(logps[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def test_continuation_logprobs_match_a_direct_computation_for_any_batch_size(tiny_model, tiny_tokenizer):
    contexts = ["Q: What is 2 + 3?\nA:", "Q: Is Zorbia a city?\nA:", "Q: Sort these numbers: 3, 1, 2\nA:"] * 2
    continuations = [" 2 + 3 = 5.", " Zorbia is a city.", " 1, 2, 3.", " 6.", " It is a person, I think.", " no"]
    expected = [_direct_logp(tiny_model, tiny_tokenizer, c, k) for c, k in zip(contexts, continuations)]
    for batch_size in (1, 2, 6):
        scores, truncated = continuation_logprobs(tiny_model, tiny_tokenizer, contexts, continuations, batch_size)
        assert truncated == 0
        assert [s.logp for s in scores] == pytest.approx(expected, abs=1e-4)
    counts = [s.num_tokens for s in scores]
    assert counts == [len(tiny_tokenizer(k, add_special_tokens=False)["input_ids"]) for k in continuations]


def test_long_contexts_are_cut_from_the_left_and_counted(tiny_model, tiny_tokenizer):
    scores, truncated = continuation_logprobs(tiny_model, tiny_tokenizer, ["word " * 50, "short"], [" end", " end"],
                                              max_length=20)
    assert truncated == 1 and all(math.isfinite(s.logp) for s in scores)


def test_pick_by_sum_or_by_mean_per_token():
    scores = [ContinuationScore(-3.0, 1), ContinuationScore(-4.0, 4)]
    assert pick(scores, normalized=False) == 0
    assert pick(scores, normalized=True) == 1
    assert pick([ContinuationScore(-1.0, 1)] * 2, normalized=False) == 0, "ties go to the first option"


def test_confidence_intervals_shrink_with_n():
    assert proportion_ci(100, 200) == pytest.approx(1.96 * math.sqrt(0.25 / 203.84), rel=1e-3)
    assert 0 < proportion_ci(0, 200) < 0.03 and proportion_ci(50, 50) < 0.08
    # 200 per family: a 10-point gap between two strategies is > 2 standard errors of the difference.
    assert 0.10 > 2 * difference_se(0.5, 200, 0.4, 200)


# --------------------------------------------------------------------------- evaluation


def test_evaluate_suite_on_a_tiny_model_fills_every_cell(tiny_model, tiny_tokenizer):
    from posttrain.evaluation.run import EvalReport, evaluate_suite

    saved = tiny_model.generation_config.eos_token_id
    report = evaluate_suite(tiny_model, tiny_tokenizer, families=["arithmetic", "harmful"], n=6, shots=2,
                            batch_size=4, max_new_tokens=8, max_prompt_tokens=120)
    assert isinstance(report, EvalReport)
    assert tiny_model.generation_config.eos_token_id == saved, "the line-end stop ids are removed afterwards"
    assert set(report.cells["arithmetic"]) == {*P.STRATEGIES, "mc_sum", "mc_norm"}
    assert set(report.cells["harmful"]) == set(P.STRATEGIES), "no choices, no multiple-choice columns"
    cell = report.cells["arithmetic"]["few_shot"]
    assert cell.n == 6 and len(cell.predictions) == 6 and 0 <= cell.correct <= 6
    assert report.cells["arithmetic"]["mc_sum"].chance == pytest.approx(0.25)
    assert report.cells["arithmetic"]["cot"].shots_dropped > 0, "worked shots do not fit 120 tokens"

    chat = evaluate_suite(tiny_model, tiny_tokenizer, families=["chat_rule", "fact_lookup"],
                          strategies=["few_shot", "mc"], n=4, shots=1, batch_size=4, max_new_tokens=6, chat=True)
    assert chat.settings["prompt_format"] == "chat" and chat.settings["chat_template"] == tiny_tokenizer.chat_template
    import hashlib

    assert chat.settings["chat_template_sha256"] == hashlib.sha256(tiny_tokenizer.chat_template.encode()).hexdigest()
    assert report.settings["chat_template_sha256"] is None and report.settings["dtype"] == "float32"
    assert chat.cells["chat_rule"]["few_shot"].n == 4 and chat.cells["fact_lookup"]["mc_norm"].n == 4
    assert tiny_model.generation_config.eos_token_id == saved


def test_posttrain_eval_writes_results_with_every_setting(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from posttrain.cli import _register, app

    _register()
    run_dir = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", f"model.name_or_path={tiny_model_dir}", f"run_dir={run_dir}",
                                      "families=[sorting, chat_rule]", "n_per_family=4", "shots=1",
                                      "max_new_tokens=6", "batch_size=4"])
    assert result.exit_code == 0, result.output
    assert "sorting" in result.output and "few_shot" in result.output
    data = json.loads((run_dir / "results.json").read_text())
    settings = data["settings"]
    for key in ("n_per_family", "shots", "seed", "batch_size", "prompt_format", "tasks_version",
                "posttrain_version", "model", "max_prompt_tokens", "split", "strategies", "max_new_tokens",
                "mc_shots", "chat_template_sha256", "dtype", "device", "torch_version", "transformers_version"):
        assert key in settings, key
    assert settings["model"] == str(tiny_model_dir.resolve()) and settings["dtype"] == "float32"
    assert settings["strategies"] == ["zero_shot", "few_shot", "cot", "zero_shot_cot", "mc"]
    assert (settings["shots"], settings["batch_size"], settings["max_new_tokens"]) == (1, 4, 6)
    assert data["results"]["sorting"]["zero_shot"]["n"] == 4
    assert (run_dir / "config.yaml").exists()
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4 * 2 + 4 * 2  # 4 strategies x 2 families + 2 mc columns for sorting


# --------------------------------------------------------------------------- the shipped base model

BASE_N = 80
"""Examples per family for the base-model test: enough that a 15-point gain is > 2 standard errors."""


@pytest.fixture(scope="module")
def base_model():
    """The shipped base model, or a freshly trained one named by POSTTRAIN_TEST_BASE_MODEL."""
    import os

    import torch

    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer
    from posttrain.world import base_model_path

    path = os.environ.get("POSTTRAIN_TEST_BASE_MODEL")
    if not path:
        try:
            path = str(base_model_path())
        except FileNotFoundError as e:
            pytest.skip(str(e))
    cfg = ModelConfig(name_or_path=path, device="cpu")
    # A model this small gains nothing from a second thread, and on a busy machine two threads
    # contending with other processes run many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm(cfg, for_training=False), load_tokenizer(cfg)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_report(base_model):
    from posttrain.evaluation.run import evaluate_suite

    model, tokenizer = base_model
    return evaluate_suite(model, tokenizer, strategies=["zero_shot", "few_shot", "mc"], n=BASE_N, shots=3,
                          batch_size=64, max_prompt_tokens=512)


@pytest.mark.xfail(strict=False, reason=(
    "issue 23 open: the base model of 2026-12-07 copies from its context (+2.61 nats/token), but 3 shots beat "
    "zero-shot beyond noise on one family only, multi-step sums with worked shots (61.5% -> 84.0%, n=200); "
    "facts, sums, reverse +2 to +2.5 points; chat_rule, harmful and classification stay at 0-5% with or "
    "without shots. A corpus kind of Q/A threads in formats shown only by earlier answers (in_context) "
    "taught the formats, not the copying, and broke zero-shot answers (world/corpus.py)"))
def test_few_shot_beats_zero_shot_on_three_families(base_report):
    """On the shipped base model few-shot beats zero-shot, beyond noise, on at least three families."""
    gains = {}
    for family, cols in base_report.cells.items():
        zero, few = cols["zero_shot"], cols["few_shot"]
        gap = few.accuracy - zero.accuracy
        if gap > 2 * difference_se(few.accuracy, few.n, zero.accuracy, zero.n):
            gains[family] = round(gap, 3)
    assert len(gains) >= 3, {f: (c["zero_shot"].accuracy, c["few_shot"].accuracy) for f, c in base_report.cells.items()}


def test_log_prob_multiple_choice_beats_chance(base_report):
    for family in ("fact_lookup", "sorting"):
        cell = base_report.cells[family]["mc_norm"]
        assert cell.accuracy > cell.chance + 3 * math.sqrt(cell.chance * (1 - cell.chance) / cell.n), (family, cell)


# --------------------------------------------------------------------------- copying (induction) probe


class _Copier:
    """A hand-made induction head as a model: after the tokens (w, x) it predicts whatever followed
    their last earlier occurrence (logit 8), else nothing in particular. What the probe must detect."""

    def __init__(self, vocab: int):
        import torch

        self.vocab, self.training = vocab, False
        self._param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self._param

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, attention_mask=None):
        import torch
        from types import SimpleNamespace

        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            last = {}
            for t in range(1, len(row)):
                key = (row[t - 1], row[t])
                if key in last:
                    logits[b, t, row[last[key] + 1]] = 8.0
                last[key] = t
        return SimpleNamespace(logits=logits)


def test_copying_probe_sees_an_induction_head_and_no_gain_without_one(tiny_tokenizer, tiny_model):
    from posttrain.evaluation.copying import copying_gain

    copier = copying_gain(_Copier(len(tiny_tokenizer)), tiny_tokenizer, n=8)
    assert copier.gain > 3.0 and copier.second > -2.0, copier  # nearly every repeated token predicted
    random_model = copying_gain(tiny_model, tiny_tokenizer, n=8)
    assert abs(random_model.gain) < 0.3, random_model


def test_the_base_model_copies_from_its_context(base_model):
    from posttrain.evaluation.copying import copying_gain

    model, tokenizer = base_model
    score = copying_gain(model, tokenizer)
    assert score.gain > 1.0, score
