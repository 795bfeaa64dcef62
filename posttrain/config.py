"""Typed configs: dataclasses with one docstring per field, read from YAML, overridden from
the command line with ``key=value`` (dotted for nested sections), saved with every run.

A config class is a plain ``@dataclass`` whose fields are followed by a string literal, the
field's documentation (the attribute-docstring convention of PEP 257)::

    @dataclass
    class OptimConfig:
        lr: float = 3e-4
        \"\"\"Peak learning rate reached after warmup.\"\"\"

The docstrings are read from the source with ``ast``, so they are written once and show in
``posttrain <cmd> --help`` and in the saved ``config.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from posttrain.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message says where and why."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert where YAML gives a near type (int->float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and origin is list:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if args else Any
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, (datetime.date, datetime.datetime)):  # YAML reads 2026-12-07 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _unknown_key_error(cls: type, key: str, where: str) -> ConfigError:
    moved = getattr(cls, "MOVED_KEYS", {})
    if key in moved:
        return ConfigError(f"{where}: '{key}' is now '{moved[key]}' (set {moved[key]}=... or write it in that section)")
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(names)}."
    return ConfigError(f"{where}: unknown key '{key}' for {cls.__name__}.{hint}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and types."""
    hints = _resolved_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in fields:
            raise _unknown_key_error(cls, key, where)
        if isinstance(value, dict) and _is_dataclass_type(hints[key]):
            # A section given in part keeps this class's own defaults for the rest (a recipe's
            # train section may default to another learning rate than TrainConfig does).
            value = {**_section_default(fields[key]), **value}
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    obj = cls(**kwargs)
    for key, problem in getattr(obj, "problems", lambda: [])():
        raise ConfigError(f"{where}.{key}: {problem}")
    return obj


def _section_default(f: dataclasses.Field) -> dict[str, Any]:
    """The default of a section field as a plain mapping ({} when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return {}
    return to_dict(default) if dataclasses.is_dataclass(default) else {}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config, for YAML and logging."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value), reading the value as YAML (so 3 is an int)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string; numbers in scientific notation are common for rates.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` override into the nested mapping ``data`` (in place)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``key=value`` overrides.

    A mistake is blamed where it was made: the file's keys are checked first (errors name the file),
    then each override as typed on the command line (errors name the override).
    """
    data = read_yaml(path) if path else {}
    where = str(path) if path else "config"
    cfg = from_dict(cls, data, where)
    for text in overrides or []:
        try:
            apply_overrides(data, [text])
            cfg = from_dict(cls, data, "config")
        except ConfigError as e:
            raise ConfigError(f"command-line override '{text}': {e}") from None
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, each field preceded by its docstring as a comment."""
    Path(path).write_text(dump_yaml(cfg), encoding="utf-8")


def dump_yaml(cfg: Any, indent: int = 0) -> str:
    lines: list[str] = []
    docs = field_docs(type(cfg))
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        doc = docs.get(f.name)
        if doc:
            lines.extend(f"{pad}# {line}" for line in doc.splitlines())
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(dump_yaml(value, indent + 1).rstrip("\n"))
        else:
            if isinstance(value, tuple):
                value = list(value)
            dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
            dumped = dumped.removesuffix("...").strip()
            lines.append(f"{pad}{f.name}: {dumped}")
    return "\n".join(lines) + "\n"


def describe(cls: type, prefix: str = "", defaults: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """(dotted name, default, doc) for every field of ``cls``, nested sections flattened. A section's
    defaults are the enclosing class's (``defaults``: a recipe's train section may set another lr)."""
    rows = []
    docs = field_docs(cls)
    hints = _resolved_types(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows.extend(describe(tp, name + ".", {**_section_default(f), **defaults.get(f.name, {})}))
            continue
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((name, repr(default), docs.get(f.name, "")))
    return rows
