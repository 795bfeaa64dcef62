from dataclasses import dataclass, field
from pathlib import Path

import pytest

from posttrain.config import ConfigError, field_docs, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-3
    """Learning rate."""
    names: list[str] = field(default_factory=list)
    """Some names."""


@dataclass
class Outer:
    steps: int = 10
    """How many steps."""
    flag: bool = False
    """A flag."""
    inner: Inner = field(default_factory=Inner)
    """Nested section."""


def test_field_docs_are_read_from_source():
    assert field_docs(Outer) == {"steps": "How many steps.", "flag": "A flag.", "inner": "Nested section."}
    assert field_docs(Inner)["lr"] == "Learning rate."


def test_yaml_then_dotted_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.lr=1e-4", "flag=true", "inner.names=[a, b]"])
    assert cfg.steps == 3 and cfg.flag is True
    assert cfg.inner.lr == pytest.approx(1e-4)
    assert cfg.inner.names == ["a", "b"]


def test_unknown_key_suggests_the_close_one(tmp_path: Path):
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        load_config(Outer, None, ["stesp=3"])


def test_wrong_type_names_the_field(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"c.yaml.inner.lr: expected a number"):
        load_config(Outer, path)


def test_saved_config_round_trips_with_docs(tmp_path: Path):
    cfg = load_config(Outer, None, ["steps=7", "inner.names=[x]"])
    out = tmp_path / "config.yaml"
    save_config(cfg, out)
    text = out.read_text()
    assert "# How many steps." in text and "# Learning rate." in text
    assert load_config(Outer, out) == cfg


def test_a_partial_section_keeps_the_recipes_own_section_defaults():
    """Overriding one key of a section must not reset the rest to the section class's defaults:
    PPO's train section defaults to its own learning rate, not TrainConfig's."""
    from posttrain.recipes.config import PPOConfig
    from posttrain.training.config import TrainConfig

    recipe_lr = PPOConfig().train.lr
    assert recipe_lr != TrainConfig().lr  # otherwise this test could not fail
    cfg = load_config(PPOConfig, None, ["train.max_steps=3"])
    assert cfg.train.max_steps == 3 and cfg.train.lr == recipe_lr
