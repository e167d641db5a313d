"""What every config dataclass shares: the error, the checks, old field names, JSON.

A config is a dataclass deriving from `Config`. Its `Literal`-typed fields (and tuples of
them) are checked against their choices here, once for all configs; its own
`__post_init__` checks the rest and calls `super().__post_init__()`. A field that was
renamed keeps its old name in the class's `renamed` map (`class C(Config,
renamed={"old": "new"})`): JSON files, `--config` files and flags written with the old name
still work (`rename_old_keys`, and `cxr_tf.cli` adds the old flag).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def require(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError("<field>: <message>") unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def literal_choices(tp: Any) -> tuple | None:
    """The choices of a `Literal[...]` type or of `tuple[Literal[...], ...]`; None otherwise."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return literal_choices(args[0]) if args else None
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Config:
    """Base of every config dataclass.

    Class keywords: `section`, the dotted prefix its fields carry in messages when the
    config is nested in another (`"model"`: `model.backbone: ...`), and `renamed`, old
    field name -> current name.
    """

    # Not annotated: annotations would read as config fields.
    section = ""
    renamed = types.MappingProxyType({})

    def __init_subclass__(
        cls, section: str = "", renamed: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.section = section
        cls.renamed = types.MappingProxyType(dict(renamed or {}))

    def __post_init__(self) -> None:
        check_choices(self)


def check_choices(config: Any) -> None:
    """Every `Literal` field of `config` (each item, for a tuple of them) is one of its
    choices; ConfigError naming the field otherwise."""
    hints = _hints(type(config))
    prefix = f"{config.section}." if getattr(config, "section", "") else ""
    for field in dataclasses.fields(config):
        choices = literal_choices(hints[field.name])
        if choices is None:
            continue
        value = getattr(config, field.name)
        name, listed = prefix + field.name, ", ".join(str(c) for c in choices)
        if typing.get_origin(hints[field.name]) is tuple:
            bad = [v for v in value if v not in choices]
            require(not bad, name, f"one or more of {listed}, not {bad}")
        else:
            require(value in choices, name, f"must be one of {listed}, not {value!r}")


# --- old field names ------------------------------------------------------------------------


def rename_old_keys(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of config dict `data` (for `cls`, nested sections included) with old field
    names replaced by the current ones; where both are given, the current one wins."""
    out = dict(data)
    for old, new in getattr(cls, "renamed", {}).items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    hints = _hints(cls)
    for key, value in out.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            out[key] = rename_old_keys(tp, value)
    return out


def current_name(cls: type, dotted: str) -> str:
    """A dotted field name (`model.image_size`) under its current names (`model.input_size`)."""
    parts, node = dotted.split("."), cls
    for index, part in enumerate(parts):
        part = getattr(node, "renamed", {}).get(part, part)
        parts[index] = part
        node = _hints(node).get(part) if dataclasses.is_dataclass(node) else None
        if node is None or not dataclasses.is_dataclass(node):
            break
    return ".".join(parts)


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with the values of `over` put in, nested dicts merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def merge_layers(cls: type, *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Config dicts for `cls` merged, later ones winning; each is renamed first, so a later
    layer's old name beats an earlier layer's current one."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge_dicts(merged, rename_old_keys(cls, layer))
    return merged


# --- JSON (de)serialisation -------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{field}.")
    if origin is Literal:
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value else []
        args = typing.get_args(tp)
        inner = args[0] if args else str
        return tuple(_coerce(inner, v, field) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{field}: expected a boolean, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{field}: expected {tp.__name__}, got {value!r}") from err
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds config `cls` from a (possibly partial) dict, old field names accepted,
    rejecting unknown keys."""
    data = rename_old_keys(cls, data)
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + u for u in unknown]}; "
            f"known: {sorted(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def save(config: Any, path: str | Path) -> None:
    """Writes a config as indented JSON."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type, path: str | Path) -> Any:
    """Reads a config file written by `save` (or by hand)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    return from_dict(cls, data)
