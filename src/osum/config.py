"""Typed configs: dataclasses filled from YAML and `key.sub=value` overrides, validated once, at the edge.

An unknown key is an error that names it and the closest valid names (FunASR silently ignores typos, so a
user "enables" an option that never runs). Values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import OsumError

T = TypeVar("T")


class ConfigError(ValueError, OsumError):
    """A config key or value that is not valid; the message says which and what would be.

    Raised by a dataclass's own __post_init__, its message starts with the key's path inside that dataclass
    (`config.hiden_size: ...`), and from_dict puts the section's path in front (`model.llm.config.hiden_size`).
    """


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert) a value against a type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
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
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} keys, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as err:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from err
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from err
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are ConfigErrors."""
    types_by_name = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in types_by_name:
            close = difflib.get_close_matches(str(key), list(types_by_name), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(types_by_name)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(value, types_by_name[key], path)
    try:
        obj = cls(**kwargs)
    except ConfigError as err:  # a field's own check, naming the key inside this section: prefix the section
        raise ConfigError(f"{where}.{err}" if where else str(err)) from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err
    return obj


def to_dict(obj: Any) -> Any:
    """A config as plain data (for YAML output)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` or FunASR/Hydra style `++a.b=3` -> (["a", "b"], 3); the value is parsed as YAML."""
    body = text[2:] if text.startswith("++") else text.lstrip("+")
    if "=" not in body:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = body.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def _set_path(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    """Set data[k1][k2]... = value; a number indexes a list (`data.train.0.path=...`)."""
    node: Any = data
    for depth, part in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {text!r}: '{part}' is not an index of a list of {len(node)}")
            index = int(part)
            if last:
                node[index] = value
                return
            if isinstance(node[index], str):  # a list entry given as a bare path takes more keys as {path: ...}
                node[index] = {"path": node[index]}
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
                return
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override {text!r}: '{keys[depth - 1]}' is not a section")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults <- YAML file <- overrides, validated into `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded or {}
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, keys, value, text)
    return from_dict(cls, data)


_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+(?:=[^#]*)?(?:#\s*(.*))?$")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment written beside it (or on the lines just above it) in the class source."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in source.splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            match = _FIELD_LINE.match(line)
            if match and not stripped.startswith(("def ", "return", "if ", "raise")):
                text = match.group(2) or " ".join(above)
                if text:
                    comments[match.group(1)] = text.strip()
            above = []
    return comments


def commented_yaml(obj: Any, indent: int = 0) -> str:
    """A config as YAML with every key, its value and its comment: the `--print-config` output."""
    comments = field_comments(type(obj))
    pad = "  " * indent
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        comment = f"  # {comments[f.name]}" if f.name in comments else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{comment}")
            lines.append(commented_yaml(value, indent + 1))
            continue
        text = yaml.safe_dump(to_dict(value), default_flow_style=True, allow_unicode=True, width=10_000).strip()
        text = text.removesuffix("...").strip()
        lines.append(f"{pad}{f.name}: {text}{comment}")
    return "\n".join(lines)
