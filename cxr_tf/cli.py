"""One command-line builder for every `python -m cxr_tf.<verb>`.

Flags are generated from a config dataclass: `--field` for its own fields and
`--section.field` for nested ones, plus `--config FILE` (JSON) whose values the flags
override. Booleans take `--flag/--no-flag`. The paths a command is given (datasets, run
directories, model files) are checked here too, before TensorFlow is imported.
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
from pathlib import Path
from typing import Any, NoReturn

from cxr_tf.config import ConfigError, from_dict, merge_layers
from cxr_tf.config.data import split_datasets
from cxr_tf.recipes import split_metadata
from cxr_tf.testing import checking_args


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: its `help` metadata, else the comment on its line or the
    comment lines right above it in the source of the dataclass that declares it (the one
    place a field is described; `--help` and the docs read it from there). A class made
    of others (`tune`'s command config) takes its bases' comments."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not cls and dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """`field_docs` from the source of `cls` itself."""
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


class Parser(argparse.ArgumentParser):
    """argparse as every command uses it: whole flag names only (`--train.epoch` is not
    taken for `--train.epochs`), and a mistake answered with one line, not the usage
    block (`--help` shows that)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def run_command(main: Callable[[], int | None], prog: str) -> NoReturn:
    """`sys.exit(main())` for a command run as `python -m cxr_tf.<prog>`: Ctrl-C anywhere
    in it, TensorFlow's import included (seconds, before the command's own handling
    starts), ends with one line and status 130, never a traceback."""
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


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
    parser = Parser(
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


# --- paths checked before TensorFlow starts ---------------------------------------------------
#
# A wrong dataset, run directory, root or model path would otherwise be found only once the
# work starts, after TensorFlow has loaded (half a minute on some machines). Each command
# checks the paths it was given right after parsing, with these: each returns "" when the
# path is fine, else what is wrong; `bad_inputs` prints the first. They look at file names
# only (the layers that own these files import TensorFlow); the deeper checks stay where
# they were.

# The file a converted dataset's folder holds (`cxr_tf.data.manifest.MANIFEST`), and the
# files of a training run (`cxr_tf.runs.folder`).
MANIFEST_FILE = "manifest.json"
RUN_CONFIG_FILE = "config.json"
RUN_MODEL_FILES = {"best": "best.keras", "last": "last.keras"}
SAVED_MODEL_FILE = "saved_model.pb"


def folder_problem(flag: str, value: str, what: str = "folder") -> str:
    """Why `value` is not an existing folder ("" when it is one); `what` names it."""
    path = Path(value).expanduser()
    if not path.exists():
        return f"{flag}: {value} is not a {what} (nothing is there)"
    if not path.is_dir():
        return f"{flag}: {value} is not a {what} (it is a file)"
    return ""


def dataset_problem(flag: str, value: str) -> str:
    """Why a dataset value (one converted dataset folder, or several separated by commas)
    names something that is not a finished conversion; "" when each one is."""
    for folder in split_datasets(value):
        if problem := folder_problem(flag, folder, "converted dataset folder"):
            return f"{problem}; python -m cxr_tf.convert writes one"
        if not (Path(folder).expanduser() / MANIFEST_FILE).is_file():
            return (
                f"{flag}: {folder} has no {MANIFEST_FILE}, so it is not a finished conversion "
                f"(run python -m cxr_tf.convert, or rerun it to finish)"
            )
    return ""


def run_problem(flag: str, value: str, model: str = "") -> str:
    """Why `value` is not a training run directory (with `model`'s file, best or last, when
    given); "" when it is one."""
    if problem := folder_problem(flag, value, "training run directory"):
        return problem
    run_dir = Path(value).expanduser()
    if not (run_dir / RUN_CONFIG_FILE).is_file():
        return (
            f"{flag}: {value} has no {RUN_CONFIG_FILE}, so it is not a training run "
            f"(python -m cxr_tf.fit makes one)"
        )
    if model and not (run_dir / RUN_MODEL_FILES[model]).is_file():
        return (
            f"{flag}: {value} has no {RUN_MODEL_FILES[model]} yet (the run has not finished "
            f"an epoch)"
        )
    return ""


def model_problem(flag: str, value: str) -> str:
    """Why `value` is none of what `predict` reads: a run directory, a .keras file, a
    SavedModel folder or an export folder of numbered versions; "" when it is one."""
    path = Path(value).expanduser()
    if not path.exists():
        return f"{flag}: {value} does not exist"
    if path.is_file() and path.suffix == ".keras":
        return ""
    if path.is_dir():
        if (path / SAVED_MODEL_FILE).exists() or (path / RUN_MODEL_FILES["best"]).exists():
            return ""
        if any(p.name.isdigit() and (p / SAVED_MODEL_FILE).exists() for p in path.iterdir()):
            return ""
    return (
        f"{flag}: {value}: expected a run directory (with best.keras), a .keras file, a "
        f"SavedModel folder (with {SAVED_MODEL_FILE}) or an export folder of numbered versions"
    )


def file_problem(flag: str, value: str) -> str:
    """Why `value` is not an existing file ("" when it is one, or when it is empty)."""
    path = Path(value).expanduser()
    if not value or path.is_file():
        return ""
    return f"{flag}: {value} is not a file ({'a folder' if path.is_dir() else 'nothing is there'})"


def weights_problem(flag: str, value: str) -> str:
    """Why a `model.weights` value ("imagenet", "" or a local weights file) cannot be read."""
    return "" if value in ("imagenet", "") else file_problem(flag, value)


def bad_inputs(command: str, *problems: str) -> bool:
    """Whether any of `problems` (the `*_problem` helpers above) is one; the first is
    printed as `command: error: ...`. A command returns exit status 2 on True, before it
    imports TensorFlow."""
    for problem in problems:
        if problem:
            print(f"{command}: error: {problem}", file=sys.stderr)
            return True
    return False
