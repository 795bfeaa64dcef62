"""The command line: help lists every config field with its docstring; bad keys fail clearly."""

from typer.testing import CliRunner

import pytest

from posttrain.cli import CONFIGS, _register, app
from posttrain.config import describe

_register()
runner = CliRunner()


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_help_shows_every_field_doc(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    for name, _default, doc in describe(CONFIGS[command]):
        assert doc, f"{command}: config field {name} has no docstring"
        assert name in result.output
        assert doc.splitlines()[0] in result.output


def test_unknown_override_is_a_clear_error():
    result = runner.invoke(app, ["demo", "sed=3"])
    assert result.exit_code == 2
    assert "unknown key 'sed'" in result.output and "Did you mean 'seed'" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip()


def test_help_shows_the_recipes_own_section_defaults():
    dpo = runner.invoke(app, ["dpo", "--help"]).output
    assert "model.dropout = 0.0" in dpo and "train.lr = 5e-06" in dpo  # not ModelConfig's / TrainConfig's own
    assert "model.dropout = None" in runner.invoke(app, ["sft", "--help"]).output
