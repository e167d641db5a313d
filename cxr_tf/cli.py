"""One command-line builder for every `python -m cxr_tf.<verb>`.

Flags are generated from a config dataclass: `--field` for its own fields and
`--section.field` for nested ones, plus `--config FILE` (JSON) whose values the flags
override. Booleans take `--flag/--no-flag`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.util
import inspect
import io
import json
import os
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cxr_tf.config import ConfigError, from_dict, merge_layers
from cxr_tf.recipes import split_metadata
from cxr_tf.testing import checking_args


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: its `help` metadata, else the comment on its line or the
    comment lines right above it in the dataclass source (the one place a field is
    described; `--help` and the docs read it from there)."""
    try:
        lines, first = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    code_lines = source.splitlines()
    docs: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and code_lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        text = " ".join(above + trailing).strip()
        if text:
            docs[node.target.id] = text
    for field in dataclasses.fields(cls):
        if field.metadata and field.metadata.get("help"):
            docs[field.name] = field.metadata["help"]
    return docs


def _field_help(cls: type, field: dataclasses.Field, default: Any) -> str:
    doc = field_docs(cls).get(field.name, "").replace("%", "%%")  # argparse formats help
    if default == "" or default == ():
        return doc or "(empty by default)"
    return f"{doc} (default: {default!r})".strip()


def _old_names(cls: type, name: str) -> list[str]:
    """The old names of field `name` (`renamed` of `cxr_tf.config.base.Config`): each is a
    flag of its own that sets the field, its help saying so."""
    return [old for old, new in getattr(cls, "renamed", {}).items() if new == name]


def _old_help(flag: str) -> str:
    return f"the old name of {flag}, still accepted"


def _add_fields(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str,
    choices: Mapping[str, Sequence[str]],
) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        dest = prefix + field.name
        if dataclasses.is_dataclass(tp):
            _add_fields(parser, tp, dest + ".", choices)
            continue
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        flag = "--" + dest
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        if tp is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                help=_field_help(cls, field, default),
                **kwargs,
            )
            for old in _old_names(cls, field.name):
                parser.add_argument(
                    f"--{prefix}{old}",
                    action=argparse.BooleanOptionalAction,
                    help=_old_help(flag),
                    **kwargs,
                )
            continue
        origin = typing.get_origin(tp)
        if origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        if dest in choices:
            kwargs["choices"] = list(choices[dest])
        if origin is tuple:
            kwargs["nargs"] = "*"
            kwargs["metavar"] = "VALUE"
        parser.add_argument(flag, help=_field_help(cls, field, default), **kwargs)
        for old in _old_names(cls, field.name):
            parser.add_argument(f"--{prefix}{old}", help=_old_help(flag), **kwargs)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, every flag's default shown (commands not built from a config)."""


def lazy_import(name: str) -> types.ModuleType:
    """`name`, imported on its first attribute access (`importlib.util.LazyLoader`).

    Command modules hold TensorFlow, Keras and the modules built on them this way, so that
    `--help` and argument errors answer at once and TensorFlow starts only when work does.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def add_quiet(parser: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    """The `--quiet` flag of every command that shows progress bars."""
    parser.add_argument("--quiet", action="store_true", help=help)


def build_parser(
    cls: type,
    description: str,
    prog: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    """An argparse parser with `--config FILE` and one flag per config field.

    `choices` (dotted field name -> its values) lists the choices of plain `str` fields
    whose values a layer above the config defines (the synth layouts); `--help` shows them
    and argparse refuses others. The command checks a `--config` file's value itself
    (`parse_config`'s `check`).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="JSON config file; flags override its values")
    if extra is not None:
        extra(parser)
    _add_fields(parser, cls, "", choices or {})
    return parser


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def read_config_file(path: str) -> dict[str, Any]:
    """A JSON config file's values, without the provenance block a recipe carries
    (`cxr_tf.recipes`), so that a copied recipe reads like any config file.

    Raises:
        OSError, json.JSONDecodeError: it cannot be read.
    """
    with open(path) as handle:
        data = json.load(handle)
    return split_metadata(data)[1] if isinstance(data, dict) else data


def parse_config(
    cls: type,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    base: dict[str, Any] | None = None,
    check: Callable[[Any], None] | None = None,
) -> tuple[Any, argparse.Namespace]:
    """Parses argv into (config, namespace); config errors exit with the field named.

    Precedence, lowest first: the defaults, `base` (e.g. a recipe), the `--config` file,
    the flags. `check(config)` may raise ConfigError for what the config itself cannot
    check (a value whose choices a layer above the config defines).
    """
    args = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(cls)}
    flat = {k: v for k, v in vars(args).items() if k.split(".")[0] in names}
    merged = dict(base or {})
    checking = checking_args()
    if args.config and not (checking and not os.path.exists(args.config)):
        try:
            merged = merge_layers(cls, merged, read_config_file(args.config))
        except (OSError, json.JSONDecodeError) as err:
            _config_error(parser, f"cannot read --config {args.config}: {err}")
    try:
        config = from_dict(cls, merge_layers(cls, merged, _nest(flat)))
        if check is not None:
            check(config)
    except (ConfigError, TypeError) as err:
        _config_error(parser, str(err))
    exit_if_checking(parser)
    return config, args


def exit_if_checking(parser: argparse.ArgumentParser) -> None:
    """With `CXR_TF_CHECK_ARGS=1` (a `cxr_tf.testing` seam) a command stops once its
    arguments parsed and validated (the README test checks every documented command this
    way, without running it; a `--config` file that does not exist is then skipped)."""
    if checking_args():
        parser.exit(0, f"{parser.prog}: arguments ok\n")


def value_error(parser: argparse.ArgumentParser, message: str) -> None:
    """Exits with one line naming the bad value (status 2), without the usage block."""
    _config_error(parser, message)


def _config_error(parser: argparse.ArgumentParser, message: str) -> None:
    """A bad value is not a usage mistake: one line naming the field, exit status 2."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")
