"""Every YAML shipped under configs/ parses with its recipe's config class: no unknown keys, right types.

``configs/<name>/*.yaml`` is read with the config class of the command ``posttrain <name>``; a
folder not named after a command needs an entry in ``FOLDER_CONFIGS``. A folder with neither fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.cli import CONFIGS, _register
from posttrain.config import load_config, save_config

_register()

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"

FOLDER_CONFIGS: dict[str, type] = {}
"""configs/ folders that are not named after a command -> their config class."""


def config_class(folder: str) -> type | None:
    return FOLDER_CONFIGS.get(folder) or CONFIGS.get(folder)


YAML_FILES = sorted(p for p in CONFIG_ROOT.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def test_every_config_folder_has_a_config_class():
    folders = sorted(p.name for p in CONFIG_ROOT.iterdir() if p.is_dir())
    unmapped = [f for f in folders if config_class(f) is None]
    assert not unmapped, (f"configs/{unmapped[0]}/ is not a command name and has no entry in "
                          f"FOLDER_CONFIGS of tests/test_configs.py")
    loose = [p.name for p in CONFIG_ROOT.glob("*.y*ml")]
    assert not loose, f"YAML files directly under configs/ have no recipe: {loose}; put them in configs/<command>/"


def test_there_are_configs_to_check():
    assert YAML_FILES, f"no YAML files under {CONFIG_ROOT}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_parses_with_its_recipe_class(path: Path, tmp_path: Path):
    cls = config_class(path.relative_to(CONFIG_ROOT).parts[0])
    assert cls is not None, f"{path}: no config class for its folder"
    cfg = load_config(cls, path)  # unknown keys and wrong types raise ConfigError naming file and field
    # The run folder's config.yaml (written with save_config) must read back to the same config.
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(cls, tmp_path / "config.yaml") == cfg
