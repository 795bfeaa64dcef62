"""The embedded world as a data source: ``world:<name>`` in data.train / data.eval reads like a file,
into the same records, and a recipe given the name explicitly runs as with its default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.data.config import DataConfig
from posttrain.data.readers import read_from_config
from posttrain.errors import UserError
from posttrain.recipes.config import PPOConfig, PretrainConfig, WorldCorpusConfig, WorldPreferenceConfig
from posttrain.training.metrics import read_metrics
from posttrain.world.tasks import task_examples

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_world_sources_read_into_records_with_locations_and_a_report():
    world = WorldPreferenceConfig(seed=3, families=["arithmetic", "sorting"], examples=4, eval_examples=2)
    result = read_from_config(DataConfig(train=["world:prompts", "world:preferences"]), "train", world=world)
    tasks = [r for r in result if r.kind == "task"]
    assert [t.id for t in tasks] == [e.id for e in task_examples(3, ["arithmetic", "sorting"], "train", 4)]
    assert tasks[0].as_dicts() == tasks[0].messages  # a task reads as a prompt record does
    pairs = [r for r in result if r.kind == "preference"]
    assert len(pairs) == 2 * 8 and all(p.chosen != p.rejected for p in pairs)  # pairs_per_prompt x prompts
    assert result.locations[0] == "world:prompts[0]" and result.locations[8] == "world:preferences[0]"
    assert dict(result.report.kinds) == {"task": 8, "preference": 16}
    held = read_from_config(DataConfig(eval=["world:prompts"]), "eval", world=world)
    assert {r.meta["split"] for r in held} == {"heldout"} and len(held) == 4
    corpus = WorldCorpusConfig(corpus_mb=0.02, eval_corpus_mb=0.01)
    train_docs = read_from_config(DataConfig(train=["world:corpus"]), "train", world=corpus).records
    held_docs = read_from_config(DataConfig(eval=["world:corpus"]), "eval", world=corpus).records
    assert {r.kind for r in train_docs} == {"text"} and not {r.text for r in train_docs} & {r.text for r in held_docs}
    with pytest.raises(UserError, match="unknown world source 'world:prefs'; the world provides world:sft"):
        read_from_config(DataConfig(train=["world:prefs"]), "train", world=world)
    with pytest.raises(UserError, match="world.families: unknown task families"):
        read_from_config(DataConfig(train=["world:sft"]), "train", world=WorldPreferenceConfig(families=["nope"]))


def _ppo_args(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"train.run_dir={run_dir}", "train.max_steps=2",
            "train.batch_size=4", "train.progress=false", "train.tensorboard=false", "train.save_every=0",
            "prompts_per_step=4", "max_new_tokens=6", "ppo_epochs=1", "world.families=[arithmetic]",
            "world.examples=8", "eval_examples=2", "rewards=[world_gold]", *extra]


def test_ppo_on_world_prompts_named_equals_the_default_and_mixes_with_files(tiny_model_dir, tmp_path):
    from posttrain.recipes.ppo import ppo

    default, named, mixed = tmp_path / "default", tmp_path / "named", tmp_path / "mixed"
    ppo(load_config(PPOConfig, None, _ppo_args(tiny_model_dir, default)))
    ppo(load_config(PPOConfig, None, _ppo_args(tiny_model_dir, named, "data.train=[world:prompts]")))
    drop = ("time", "elapsed", "per_s", "tokens_per_s", "episodes_per_s", "seconds")
    strip = lambda rs: [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in rs]  # noqa: E731
    assert strip(read_metrics(default / "metrics.jsonl")) == strip(read_metrics(named / "metrics.jsonl"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say {i}."}]}) + "\n"
                               for i in range(8)), encoding="utf-8")
    with pytest.raises(UserError, match="world_gold scores the embedded world's task prompts only"):
        ppo(load_config(PPOConfig, None, _ppo_args(tiny_model_dir, mixed, f"data.train=[world:prompts, {prompts}]")))
    mixed = tmp_path / "mixed-brevity"
    ppo(load_config(PPOConfig, None, _ppo_args(tiny_model_dir, mixed, f"data.train=[world:prompts, {prompts}]",
                                               "rewards=[test_world_source:brevity]")))
    config = (mixed / "config.yaml").read_text()
    assert "world:prompts" in config and str(prompts) in config
    records = read_metrics(mixed / "metrics.jsonl")
    assert any("reward/test_world_source:brevity" in r for r in records)
    assert not any("reward/gold" in r for r in records)  # files and the world mixed: no gold for every row


def brevity(prompts, responses):
    return [-len(r) / 10 for r in responses]


def test_pretrain_reads_world_corpus_as_its_default(tmp_path):
    cfg = load_config(PretrainConfig, None, ["world.corpus_mb=0.05", "world.eval_corpus_mb=0.01"])
    named = load_config(PretrainConfig, None, ["world.corpus_mb=0.05", "world.eval_corpus_mb=0.01",
                                               "data.train=[world:corpus]"])
    from posttrain.recipes.pretrain import load_documents

    class Quiet:
        def print(self, *args, **kwargs):
            pass

    assert load_documents(cfg, Quiet()) == load_documents(named, Quiet())
    train, held = load_documents(cfg, Quiet())
    assert train and held and not set(train) & set(held)


def test_sft_mixes_the_world_task_families_with_files(tiny_model_dir, tmp_path):
    from posttrain.models.loading import load_tokenizer
    from posttrain.recipes.config import SFTConfig
    from posttrain.recipes.sft import build_mixture

    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Name {i}."},
                                                       {"role": "assistant", "content": f"Name {i}, done."}]}) + "\n"
                             for i in range(6)), encoding="utf-8")
    lines = []

    class Log:
        def print(self, *args, **kwargs):
            lines.append(" ".join(map(str, args)))

    settings = [f"model.name_or_path={tiny_model_dir}", "world.families=[arithmetic, sorting]", "world.examples=5",
                "data.max_length=128"]
    cfg = load_config(SFTConfig, None, [*settings, f"data.train=[world:sft, {chats}]",
                                        "source_epochs={sorting: 2.0}"])
    tokenizer = load_tokenizer(cfg.model, cfg.data.format)
    examples = build_mixture(cfg, tokenizer, Log())
    assert len(examples) == 5 + 2 * 5 + 6  # arithmetic once, sorting twice, the file once
    assert any("arithmetic" in line and "sorting" in line and "chats.jsonl" in line for line in lines), lines
    world_only = build_mixture(load_config(SFTConfig, None, settings), tokenizer, Log())
    named = build_mixture(load_config(SFTConfig, None, [*settings, "data.train=[world:sft]"]), tokenizer, Log())
    assert [e.input_ids for e in world_only] == [e.input_ids for e in named] and len(named) == 10
    with pytest.raises(UserError, match="sft trains on world:sft"):
        build_mixture(load_config(SFTConfig, None, [*settings, "data.train=[world:preferences]"]), tokenizer, Log())
