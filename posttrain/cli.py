"""The `posttrain` command line: `posttrain <command> [--config x.yaml] [key=value ...]`.

Every recipe command is registered with :func:`recipe_command`: its options are the fields of
its config dataclass, given as dotted ``key=value`` overrides after an optional YAML file, and
its ``--help`` lists every field with its default and docstring.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from posttrain import __version__
from posttrain.config import ConfigError, describe, load_config
from posttrain.errors import UserError
from posttrain.recipes import config as rc

app = typer.Typer(
    name="posttrain",
    help="Post-training for causal language models: SFT, reward models, PPO, DPO, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True, soft_wrap=True)
CONFIGS: dict[str, type] = {}
"""Config class of every registered recipe command, by command name."""


def _fields_help(config_cls: type) -> str:
    rows = describe(config_cls)
    # \b keeps click from rewrapping the block.
    lines = ["\b", "Config keys (set in the YAML file or as key=value):"]
    for name, default, doc in rows:
        lines.append(f"  {name} = {default}")
        if doc:
            lines.extend(f"      {line}" for line in doc.splitlines())
    if hasattr(config_cls, "help_lines"):  # what a field's value chooses among (e.g. DPO's losses)
        lines.extend(["", "\b", *config_cls.help_lines()])
    return "\n".join(lines)


class _RecipeCommand(typer.core.TyperCommand):
    """A recipe command whose config-keys epilog is built only when its help is shown, so that
    starting `posttrain` imports nothing heavy."""

    def format_epilog(self, ctx, formatter) -> None:
        self.epilog = _fields_help(CONFIGS[self.name])
        super().format_epilog(ctx, formatter)


USER_ERROR_EXIT = 2
"""Exit status of a mistake the user can fix (bad data, config, path); 1 is left to internal errors."""
DEBUG = {"traceback": bool(os.environ.get("POSTTRAIN_DEBUG"))}
"""Whether user errors are printed with their traceback (``posttrain --debug ...`` or POSTTRAIN_DEBUG=1)."""


def _user_error(kind: str, error: Exception) -> None:
    """Print a user error as one message (its traceback only with --debug) and exit with status 2."""
    if DEBUG["traceback"]:
        console.print_exception()
    console.print(f"[red]{kind}:[/red] {error}", highlight=False)
    raise typer.Exit(USER_ERROR_EXIT)


def recipe_command(name: str, config_cls: type, target: str, summary: str, positional: str | None = None) -> None:
    """Register `posttrain <name>`: load ``config_cls`` from --config + overrides, call ``target``.

    ``target`` is "module:function", imported only when the command runs, so that
    `posttrain --help` stays fast. ``positional``: a config field that a first argument without
    "=" sets (`posttrain synth distill ...` is `posttrain synth method=distill ...`).
    """

    CONFIGS[name] = config_cls

    def command(
        ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    ) -> None:
        args = list(ctx.args)
        if positional and args and "=" not in args[0]:
            args[0] = f"{positional}={args[0]}"
        try:
            cfg = load_config(config_cls, config, args)
        except ConfigError as e:
            _user_error("config error", e)
        module, func = target.split(":")
        run: Callable[[Any], Any] = getattr(importlib.import_module(module), func)
        try:
            run(cfg)
        except UserError as e:
            _user_error("error", e)

    command.__doc__ = summary
    app.command(
        name,
        help=summary,
        cls=_RecipeCommand,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(command)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of user errors too (bad data, config or "
                                                        "paths end in a message and exit status 2 without it)."),
) -> None:
    """Post-training for causal language models: SFT, reward models, PPO, DPO, evaluation."""
    DEBUG["traceback"] = DEBUG["traceback"] or debug
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


COMMANDS = (
    ("demo", "DemoConfig", "posttrain.demo:run_demo",
     "Run the end-to-end journey on the embedded world, stage by stage."),
    ("pretrain", "PretrainConfig", "posttrain.recipes.pretrain:pretrain",
     "Pretrain a causal LM on text (next-token prediction), from scratch or from a checkpoint."),
    ("eval", "EvalConfig", "posttrain.evaluation.run:run_eval",
     "Prompt a model on the world's task families: zero-shot, few-shot, CoT and multiple choice."),
    ("contamination", "ContaminationConfig", "posttrain.evaluation.contamination:run_contamination",
     "Check evaluation sets for training-data contamination: word n-gram overlap, reported per set."),
    ("export-lm-eval", "LmEvalExportConfig", "posttrain.evaluation.lm_eval_export:run_export",
     "Export world task families as lm-evaluation-harness tasks (YAML + local JSONL)."),
    ("compare", "CompareConfig", "posttrain.compare:run_compare",
     "The same prompts to several checkpoints side by side, judged against the first: terminal table, HTML page, "
     "win-rates."),
    ("sft", "SFTConfig", "posttrain.recipes.sft:sft",
     "Supervised fine-tuning on conversations: assistant-token loss, packing, LoRA, data mixing and rehearsal."),
    ("reward", "RewardConfig", "posttrain.recipes.reward:reward",
     "Train a reward model on comparisons: Bradley-Terry, Llama 2 margins, K-wise rankings; normalized export."),
    ("ppo", "PPOConfig", "posttrain.recipes.ppo:ppo",
     "RLHF against reward models or functions with a KL penalty: PPO, RLOO or GRPO, with reward-hacking diagnostics."),
    ("dpo", "DPOConfig", "posttrain.recipes.dpo:dpo",
     "Preference optimization without a reward model: DPO, cDPO, IPO, SimPO, ORPO, KTO; iterative rounds."),
    ("label", "LabelConfig", "posttrain.synth.label:label",
     "AI feedback (RLAIF): a judge model (the world's, a local model or any OpenAI-compatible server) labels "
     "preference pairs in both orders; soft labels, ties, agreement with existing labels and gold."),
    ("synth", "SynthConfig", "posttrain.synth.run:synth",
     "Make instruction data with a teacher: posttrain synth <self-instruct|evol-instruct|self-chat|distill|gatt> "
     "[key=value ...]; the teacher is the world's simulated one, a local model, or any OpenAI-compatible server."),
)
"""Every command: (name, config class in ``posttrain.recipes.config``, "module:function" it runs, summary).
Config classes live in a light module (no torch import), so `posttrain --help` is instant; the
function's module is imported only when its command runs."""


POSITIONAL = {"synth": "method"}
"""Commands whose first argument sets a config field."""


def _register() -> None:
    """Register every command of :data:`COMMANDS` with typer (once)."""
    for name, config, target, summary in COMMANDS:
        if name not in CONFIGS:
            recipe_command(name, getattr(rc, config), target, summary, POSITIONAL.get(name))


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register()
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
