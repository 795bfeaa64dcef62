"""data.format=raw (issue 21): a base model's plain prompt/completion strings are trained as written.

A tokenizer with no chat template gets raw text, not ChatML and its untrained markers: a prompt and
its completion are joined as written, with bos before them when the tokenizer puts one before every
text, eos after the completion, and the loss on the completion only.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import TINY_TEXT, save_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [{"prompt": f"TL;DR of story {i}: the fox ran.", "chosen": f" Fox {i} ran.", "rejected": f" The dog {i} sat down."}
         for i in range(12)]


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """A tiny Llama whose tokenizer has no chat template (a base model) and no pad token."""
    from posttrain.models.tiny import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(TINY_TEXT, vocab_size=400, chat_template=None)
    tokenizer.pad_token = None
    return save_tiny_llama(tmp_path_factory.mktemp("base"), tokenizer, seed=3, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS), encoding="utf-8")
    return path


def test_a_tokenizer_without_template_reads_raw_text_and_dpo_trains_on_exactly_the_file_strings(base_model_dir,
                                                                                                 pairs_file):
    from posttrain.data.config import DataConfig
    from posttrain.data.preference import tokenize_preferences
    from posttrain.data.readers import read_from_config
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(base_model_dir)))  # data.format auto
    assert "<|im_start|>" not in tokenizer.chat_template  # not ChatML
    records = read_from_config(DataConfig(), [str(pairs_file)], tokenizer).records
    examples, report = tokenize_preferences(tokenizer, records, max_length=256)
    assert report.kept == len(PAIRS)
    for pair, example in zip(PAIRS, examples):
        for side in ("chosen", "rejected"):
            seq = getattr(example, side)
            assert tokenizer.decode(seq.input_ids) == pair["prompt"] + pair[side] + tokenizer.eos_token
            trained = tokenizer.decode([t for t, m in zip(seq.input_ids, seq.loss_mask) if m])
            assert trained.endswith(pair[side].strip() + tokenizer.eos_token)
            assert pair["prompt"].split(":")[0] not in trained  # no prompt token in the loss


def test_raw_dpo_runs_from_the_command_line_and_exports_a_base_model(base_model_dir, pairs_file, tmp_path):
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from posttrain.cli import _register, app
    from posttrain.training.metrics import read_metrics

    _register()
    run_dir = tmp_path / "dpo"
    result = CliRunner().invoke(app, ["dpo", f"model.name_or_path={base_model_dir}", f"data.train=[{pairs_file}]",
                                      f"train.run_dir={run_dir}", "train.max_steps=2", "train.batch_size=4",
                                      "train.progress=false", "train.tensorboard=false", "kl_prompts=0"])
    assert result.exit_code == 0, result.output
    first = read_metrics(run_dir / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    exported = AutoTokenizer.from_pretrained(run_dir / "final")
    assert exported.chat_template is None and exported.pad_token is None  # still a base model, as it came


def test_data_format_chat_asks_for_chatml_and_raw_overrides_a_template(base_model_dir, tiny_model_dir):
    from posttrain.data.chat import is_raw, render_chat
    from posttrain.models.config import ModelConfig
    from posttrain.models.loading import load_tokenizer

    chatml = load_tokenizer(ModelConfig(name_or_path=str(base_model_dir)), "chat")
    assert "<|im_start|>" in chatml.chat_template
    raw = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)), "raw")  # it ships ChatML; raw wins
    assert is_raw(raw)
    example = render_chat(raw, [{"role": "user", "content": "Sort: b a."}, {"role": "assistant", "content": " a b."}])
    assert raw.decode(example.input_ids) == "Sort: b a. a b." + raw.eos_token


def test_raw_reward_and_ppo_run_on_the_base_model(base_model_dir, pairs_file, tmp_path):
    from typer.testing import CliRunner

    from posttrain.cli import _register, app
    from posttrain.training.metrics import read_metrics

    _register()
    common = ["train.progress=false", "train.tensorboard=false", f"model.name_or_path={base_model_dir}"]
    reward = CliRunner().invoke(app, ["reward", f"data.train=[{pairs_file}]", f"data.eval=[{pairs_file}]",
                                      f"train.run_dir={tmp_path / 'rm'}", "train.max_steps=2", "train.batch_size=4",
                                      "normalize=data", *common])
    assert reward.exit_code == 0, reward.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS), encoding="utf-8")
    ppo = CliRunner().invoke(app, ["ppo", f"data.train=[{prompts}]", f"rewards=[{tmp_path / 'rm' / 'final'}]",
                                   f"train.run_dir={tmp_path / 'ppo'}", "train.max_steps=1", "prompts_per_step=4",
                                   "train.batch_size=4", "max_new_tokens=6", *common])
    assert ppo.exit_code == 0, ppo.output
    assert read_metrics(tmp_path / "ppo" / "metrics.jsonl")[0]["kl"] == pytest.approx(0.0, abs=1e-5)
