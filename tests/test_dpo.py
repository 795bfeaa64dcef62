"""`posttrain dpo` on a tiny model: the response-only log-probs of the concatenated forward, every loss
variant at the start of training, the LoRA-disabled reference, the on-disk reference cache,
resume, live = precomputed reference, KTO's unpaired path and iterative rounds with a scorer."""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from posttrain.config import load_config
from posttrain.data.preference import collate_preferences, tokenize_preferences
from posttrain.data.records import Message, Preference
from posttrain.recipes.config import DPOConfig
from posttrain.training.metrics import read_metrics

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def records(n: int, offset: int = 0) -> list[Preference]:
    out = []
    for i in range(offset, offset + n):
        a, b = i % 13, i % 7
        prompt = [Message("user", f"What is {a} plus {b}?")]
        if i % 4 == 0:
            prompt = [Message("system", "Answer in capitals."), *prompt]
        out.append(Preference(prompt, [Message("assistant", f"{a} plus {b} is {a + b}.")],
                              [Message("assistant", f"It is {a + b + 1}, I think, since {a} and {b} make that.")],
                              1 + i % 4))
    return out


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    from posttrain.data.writers import write_jsonl

    folder = tmp_path_factory.mktemp("pairs")
    write_jsonl(records(48), folder / "train.jsonl")
    write_jsonl(records(8, offset=100), folder / "eval.jsonl")
    return folder


def args(model_dir: Path, pairs: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"data.train=[{pairs / 'train.jsonl'}]",
            f"data.eval=[{pairs / 'eval.jsonl'}]", f"train.run_dir={run_dir}", "data.max_length=96",
            f"train.max_steps={STEPS}", "train.batch_size=4", "train.grad_accum=2", "train.save_every=3",
            "train.keep_checkpoints=0", "train.lr=1e-3", "train.warmup_steps=1", "train.eval_every=3",
            "train.tensorboard=false", "train.progress=false", "loss.beta=0.5", "kl_prompts=4", "kl_max_tokens=6", *extra]


def run(*overrides: str, scorer=None) -> Path:
    from posttrain.recipes.dpo import dpo

    return dpo(load_config(DPOConfig, None, list(overrides)), scorer=scorer)


def metric(run_dir: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, pairs_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    run(*args(tiny_model_dir, pairs_dir, run_dir))
    return run_dir


def load(model_dir: Path, lora: bool = False):
    from posttrain.models.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_causal_lm, load_tokenizer

    cfg = ModelConfig(name_or_path=str(model_dir), lora=LoraConfig(enabled=lora, r=4, alpha=8))
    tokenizer = load_tokenizer(cfg)
    return load_causal_lm(cfg, tokenizer=tokenizer), tokenizer


def batch_of(tokenizer, n: int = 4):
    examples, _ = tokenize_preferences(tokenizer, records(n))
    return collate_preferences(examples, tokenizer.pad_token_id)


# --- scoring and losses ---------------------------------------------------------------------

def lora_at_work(lm) -> None:
    """Random LoRA B matrices (peft starts them at 0), so that the adapter changes the outputs."""
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("lora,packed", [(False, False), (True, False), (False, True), (True, True)])
def test_concatenated_forward_equals_each_sequence_scored_alone(tiny_model_dir, lora, packed):
    """Response-only LM head on the (2B, T) padded batch, or on the (1, N) row with each pair's prompt
    once (chosen and rejected continuing from it) == full logits of each prompt + response alone (fp32)."""
    from posttrain.data.preference import collate_examples as collate
    from posttrain.models.logps import SequenceLogps
    from posttrain.models.logps import sequence_inputs as inputs
    from posttrain.recipes.dpo import prepare_attention

    lm, tokenizer = load(tiny_model_dir, lora)
    if lora:
        lora_at_work(lm)
    prepare_attention(load_config(DPOConfig, None, [f"packing={packed}"]), lm)
    examples, _ = tokenize_preferences(tokenizer, records(5))  # prompts with and without a system turn
    batch = collate(examples, tokenizer.pad_token_id, packed=packed)
    padded = collate_preferences(examples, tokenizer.pad_token_id)
    lengths = padded.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) > 3  # pairs of different lengths
    if packed:  # one row, every prompt once
        prompts = sum(e.chosen.response_start for e in examples)
        assert batch.input_ids.shape == (1, int(lengths.sum()) - prompts)
    logps = SequenceLogps(lm)(**inputs(batch))
    assert logps.shape == (10,)
    for row in range(10):
        n = int(lengths[row])
        ids, mask = padded.input_ids[row, :n], padded.response_mask[row, :n]
        with torch.no_grad():
            full = torch.log_softmax(lm(input_ids=ids[None]).logits[0].float(), -1)  # (n, V)
        by_hand = sum(full[t - 1, ids[t]].item() for t in range(1, n) if mask[t])
        assert logps[row].item() == pytest.approx(by_hand, abs=1e-5, rel=1e-7)  # a float32 ulp at |logp| ~ 186
    logps.sum().backward()
    grads = {name: p.grad.clone() for name, p in lm.named_parameters() if p.grad is not None}
    assert grads and any(g.abs().sum() > 0 for g in grads.values())
    if packed:  # and the backward through the shared prompts is that of the padded batch
        lm.zero_grad()
        SequenceLogps(lm)(**inputs(padded)).sum().backward()
        for name, p in lm.named_parameters():
            if name in grads:
                scale = float(p.grad.abs().max())  # float32 rounding grows with the gradient's size
                torch.testing.assert_close(grads[name], p.grad, rtol=0, atol=1e-5 * max(scale, 1e-3))


def test_reference_table_does_not_depend_on_the_layout(tiny_model_dir):
    """The cached reference log-probs are keyed by data, not layout: packed and padded scoring agree."""
    from posttrain.models.logps import SequenceLogps
    from posttrain.recipes.dpo import prepare_attention
    from posttrain.training.reference import score_examples

    lm, tokenizer = load(tiny_model_dir)
    prepare_attention(load_config(DPOConfig, None, ["packing=true"]), lm)
    examples, _ = tokenize_preferences(tokenizer, records(7))
    ctx = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))  # all score_examples reads
    tables = [score_examples(ctx, SequenceLogps(lm), examples, tokenizer.pad_token_id, 3, packed=p)
              for p in (True, False)]
    assert tables[0].shape == (7, 2)
    torch.testing.assert_close(tables[0], tables[1], rtol=0, atol=1e-5)


STARTING_LOSS = {  # at step 0 the policy is its own reference: log-ratios are 0
    "sigmoid": lambda cfg, lengths: math.log(2),
    "cdpo": lambda cfg, lengths: math.log(2),
    "ipo": lambda cfg, lengths: (1 / (2 * cfg.loss["beta"])) ** 2,
    "kto": lambda cfg, lengths: 0.5,  # lambda * (1 - sigmoid(0)), z0 = 0
}


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo", "ipo", "simpo", "orpo", "kto"])
def test_every_loss_variant_at_the_start_of_training(tiny_model_dir, loss):
    from posttrain.data.preference import collate_unpaired, preferences_to_unpaired, tokenize_unpaired
    from posttrain.models.logps import SequenceLogps
    from posttrain.losses.dpo import resolve_loss
    from posttrain.training.steps import Micro, preference_loss_fn
    from posttrain.training.reference import column_logps as columns

    lm, tokenizer = load(tiny_model_dir)
    cfg = load_config(DPOConfig, None, [f"loss.name={loss}", *([] if loss == "orpo" else ["loss.beta=0.5"])])
    model = SequenceLogps(lm)
    if loss == "kto":
        examples, _ = tokenize_unpaired(tokenizer, preferences_to_unpaired(records(3)))
        batch = collate_unpaired(examples, tokenizer.pad_token_id)
    else:
        batch = batch_of(tokenizer, 3)
    with torch.no_grad():
        reference = columns(batch, model)
    total, metrics = preference_loss_fn(*resolve_loss(cfg.loss), lambda micro: micro.reference, cfg.nll_weight)(
        model, Micro(batch, reference))
    units = 6 if loss == "kto" else 3
    if loss in STARTING_LOSS:
        assert total.item() / units == pytest.approx(STARTING_LOSS[loss](cfg, None), rel=1e-5)
    else:  # reference-free: by hand from the policy's own log-probs and response lengths
        chosen, rejected = reference[:, 0], reference[:, 1]  # the policy's own log-probs, scored above
        lc, lr = batch.split(batch.response_lengths().float())
        if loss == "simpo":
            z = cfg.loss["beta"] * chosen / lc - cfg.loss["beta"] * rejected / lr - cfg.loss["gamma"]
            expected = torch.nn.functional.softplus(-z).mean()
        else:
            mc, mr = chosen / lc, rejected / lr
            log_odds = (mc - torch.log(-torch.expm1(mc))) - (mr - torch.log(-torch.expm1(mr)))
            expected = -chosen.sum() / lc.sum() + cfg.loss["lam"] * torch.nn.functional.softplus(-log_odds).mean()
        assert total.item() / units == pytest.approx(expected.item(), rel=1e-4)
    total.backward()
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert sum(float(p.grad.abs().sum()) for p in lm.parameters() if p.grad is not None) > 0


def test_lora_disabled_reference_equals_a_separately_loaded_reference(tiny_model_dir):
    from posttrain.models.logps import SequenceLogps
    from posttrain.models.logps import sequence_inputs as inputs
    from posttrain.recipes.dpo import load_reference_lm
    from posttrain.training.reference import ReferencePolicy, weights_fingerprint

    policy, tokenizer = load(tiny_model_dir, lora=True)
    lora_at_work(policy)  # so that policy != reference
    plain, _ = load(tiny_model_dir)
    batch = batch_of(tokenizer)
    cfg = load_config(DPOConfig, None, ["reference=live"])
    scored = SequenceLogps(policy)
    reference = ReferencePolicy(scored, partial(load_reference_lm, cfg, tokenizer), cfg.reference_model,
                                live=cfg.reference == "live")
    assert reference.copy is None  # no second model in memory
    with torch.no_grad():
        disabled = reference(**inputs(batch))
        separate, active = SequenceLogps(plain)(**inputs(batch)), scored(**inputs(batch))
    torch.testing.assert_close(disabled, separate, rtol=0, atol=1e-5)
    assert (active - separate).abs().max() > 1e-2  # the adapter is on outside the reference
    assert weights_fingerprint(policy) == weights_fingerprint(plain)
    with torch.no_grad():
        next(plain.parameters()).add_(1e-3)
    assert weights_fingerprint(policy) != weights_fingerprint(plain)


# --- the recipe ----------------------------------------------------------------------------------

def test_run_logs_preference_metrics_kl_and_exports(base_run):
    from transformers import AutoModelForCausalLM

    losses = metric(base_run, "loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[1] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the first step
    last = read_metrics(base_run / "metrics.jsonl")
    keys = set().union(*(r.keys() for r in last))
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "eval_loss", "eval_rewards/accuracies", "kl_k1", "kl_k3", "pairs_per_s"):
        assert key in keys, key
    kl = metric(base_run, "kl_k3")
    assert kl[STEPS] > 0 and all(v >= 0 for v in kl.values())
    margins = metric(base_run, "eval_rewards/margins")
    assert margins[STEPS] > 0  # the held-out pairs are the same kind: chosen gains on rejected
    AutoModelForCausalLM.from_pretrained(base_run / "final")
    summary = json.loads((base_run / "rounds.json").read_text())
    assert summary[0]["steps"] == STEPS and summary[0]["pairs"] == 48


def test_resume_reuses_the_reference_cache_and_reproduces_the_run(base_run, tiny_model_dir, pairs_dir, tmp_path,
                                                                   monkeypatch, capsys):
    import posttrain.training.reference as reference

    run_dir = tmp_path / "resumed"
    shutil.copytree(base_run, run_dir)
    # As if the run had died after its step-3 checkpoint.
    shutil.rmtree(run_dir / "checkpoints" / "step-000006")
    shutil.rmtree(run_dir / "final")
    calls = []
    monkeypatch.setattr(reference, "score_examples", lambda *a, **k: calls.append(1))  # what scores a table
    run(*args(tiny_model_dir, pairs_dir, run_dir))
    err = capsys.readouterr().err.replace("\n", "")
    assert calls == [] and err.count("reused") == 2  # train and eval tables from the cache
    assert f"resumed from {run_dir / 'checkpoints' / 'step-000003'}" in err
    a, b = metric(base_run, "loss"), metric(run_dir, "loss")
    assert sorted(b) == sorted(a)
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-6)


def test_cache_key_follows_the_data(base_run, tiny_model_dir, pairs_dir, tmp_path):
    cache = base_run / "reference_logps"
    before = set(cache.iterdir())
    run(*args(tiny_model_dir, pairs_dir, tmp_path / "short", "data.max_length=40", "train.max_steps=1",
              f"reference_cache={cache}", "kl_prompts=0"))
    added = set(cache.iterdir()) - before
    assert len(added) == 2  # other tokens (cut at 40), so other keys; nothing stale is reused


def test_live_reference_and_padding_give_the_same_run_as_precomputed_and_packed(base_run, tiny_model_dir, pairs_dir,
                                                                              tmp_path):
    live = tmp_path / "live"
    run(*args(tiny_model_dir, pairs_dir, live, "reference=live", "packing=false", "kl_prompts=0"))
    assert not (live / "reference_logps").exists()
    a, b = metric(base_run, "loss"), metric(live, "loss")
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    for key in ("logps/chosen", "logps/rejected"):  # packed with shared prompts, or padded: the same log-probs
        a, b = metric(base_run, key), metric(live, key)
        np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-6, atol=1e-5)


def test_lora_and_kto_runs(tiny_model_dir, pairs_dir, tmp_path):
    lora = tmp_path / "lora"
    run(*args(tiny_model_dir, pairs_dir, lora, "model.lora.enabled=true", "model.lora.r=4", "train.max_steps=2",
              "train.eval_every=0", "kl_prompts=2"))
    assert metric(lora, "loss")[1] == pytest.approx(math.log(2), abs=1e-5) and metric(lora, "kl_k1")
    kto = tmp_path / "kto"
    run(*args(tiny_model_dir, pairs_dir, kto, "loss.name=kto", "train.max_steps=2", "kl_prompts=0"))
    assert metric(kto, "loss")[1] == pytest.approx(0.5, abs=1e-5) and "kl" in read_metrics(kto / "metrics.jsonl")[0]


def test_iterative_rounds_label_fresh_samples_with_a_scorer(tiny_model_dir, pairs_dir, tmp_path):
    calls = []

    def shorter_is_better(prompts, responses):
        calls.append(len(responses))
        return torch.tensor([-float(len(r)) for r in responses])

    run_dir = tmp_path / "iter"
    overrides = args(tiny_model_dir, pairs_dir, run_dir, "rounds=2", "train.max_steps=2", "train.eval_every=0",
                     "world.samples_per_prompt=3", "world.pairs_per_prompt=1", "world.sample_max_tokens=8",
                     "kl_prompts=0")
    final = run(*overrides, scorer=shorter_is_better)
    assert final == run_dir / "final" and (final / "config.json").exists()
    assert len(calls) == 1  # round 1 trains on data.train; round 2 labels its own samples
    summary = json.loads((run_dir / "rounds.json").read_text())
    assert [s["round"] for s in summary] == [1, 2]
    round2 = [json.loads(line) for line in (run_dir / "round-2" / "pairs.jsonl").read_text().splitlines()]
    assert round2 and all(len(p["chosen"][0]["content"]) < len(p["rejected"][0]["content"]) for p in round2)
    # Round 2's reference is round 1's model: its cache key differs from round 1's.
    keys = [{p.name for p in (run_dir / f"round-{k}" / "reference_logps").iterdir()} for k in (1, 2)]
    assert keys[0].isdisjoint(keys[1])
    run(*overrides, scorer=shorter_is_better)  # finished rounds are not run again
    assert len(calls) == 1


def test_chosen_nll_by_hand_and_added_to_the_pair_loss(tiny_model_dir):
    from posttrain.losses.dpo import chosen_nll
    from posttrain.models.logps import SequenceLogps
    from posttrain.losses.dpo import resolve_loss
    from posttrain.training.steps import Micro, preference_loss_fn
    from posttrain.training.reference import column_logps as columns

    nll = chosen_nll(torch.tensor([-6.0, -3.0]), torch.tensor([3, 1]))
    assert nll.item() == pytest.approx((6 / 3 + 3 / 1) / 2)
    with pytest.raises(ValueError, match="positive"):
        chosen_nll(torch.tensor([-1.0]), torch.tensor([0]))
    lm, tokenizer = load(tiny_model_dir)
    model, batch = SequenceLogps(lm), batch_of(tokenizer, 3)
    with torch.no_grad():
        reference = columns(batch, model)
    cfg = load_config(DPOConfig, None, ["nll_weight=0.5"])
    total, metrics = preference_loss_fn(*resolve_loss(cfg.loss), lambda micro: micro.reference, cfg.nll_weight)(
        model, Micro(batch, reference))
    lengths = batch.split(batch.response_lengths())[0].float()
    expected = math.log(2) + 0.5 * (-(reference[:, 0] / lengths).mean().item())
    assert total.item() / 3 == pytest.approx(expected, rel=1e-5)
    assert metrics["nll"].item() / 3 == pytest.approx(-(reference[:, 0] / lengths).mean().item(), rel=1e-5)


def test_without_held_out_data_nothing_empty_is_logged(tiny_model_dir, pairs_dir, tmp_path, capsys):
    no_eval = tmp_path / "no_eval"
    run(*[a for a in args(tiny_model_dir, pairs_dir, no_eval, "train.max_steps=3", "kl_prompts=0")
          if not a.startswith("data.eval=")])
    rows = read_metrics(no_eval / "metrics.jsonl")
    assert rows and all(set(r) - {"step"} for r in rows)  # no row that holds only its step
    assert not [line for line in capsys.readouterr().out.splitlines() if line.strip().endswith(":")
                and line.strip().startswith("step ")]


def test_iterative_rounds_label_fresh_samples_with_a_judge_behind_an_openai_server(tiny_model_dir, pairs_dir, tmp_path):
    """labeler=judge: a judge model served over HTTP (here one that prefers the shorter response) compares
    every two samples of a prompt in both orders; round 2 trains on its best-against-worst pairs."""
    from chat_server import chat_server  # tests/chat_server.py

    from posttrain.synth.prompts import judged_parts

    asked = []

    def shorter(messages):
        _, a, b = judged_parts(messages[-1]["content"])
        asked.append((a, b))
        return 200, "A" if len(a) < len(b) else "B"

    run_dir = tmp_path / "judged"
    with chat_server(shorter) as url:
        run(*args(tiny_model_dir, pairs_dir, run_dir, "rounds=2", "train.max_steps=2", "train.eval_every=0",
                  "world.samples_per_prompt=3", "world.pairs_per_prompt=1", "world.sample_max_tokens=8", "kl_prompts=0",
                  "labeler=judge", "judge.kind=openai", f"judge.base_url={url}", "judge.model=judge"))
    round2 = [json.loads(line) for line in (run_dir / "round-2" / "pairs.jsonl").read_text().splitlines()]
    assert asked and round2 and all(len(p["chosen"][0]["content"]) < len(p["rejected"][0]["content"]) for p in round2)
    assert {(b, a) for a, b in asked} == set(asked)  # each comparison in both orders
