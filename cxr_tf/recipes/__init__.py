"""Published training setups as named config files: `python -m cxr_tf.fit --recipe NAME`.

Each `<name>.json` beside this file is a `RunConfig` file (`data`, `model`, `train`, every
field written out, so that a changed default never changes a recipe) plus a `recipe` block
with its provenance: the source, the split it assumes, the figure it is expected to reach,
the hardware and time it needs and the command that makes its dataset. That block is not
configuration: `read` strips it before the config is built, and `--config FILE` does the
same for a copied recipe. Flags override a recipe like any config file.
"""

from __future__ import annotations

import json
import textwrap
from importlib import resources
from typing import Any

from cxr_tf.config import ConfigError, RunConfig, from_dict, merge_layers, to_dict

METADATA_KEY = "recipe"
# Every recipe's `recipe` block has these; `evaluate` (extra evaluate flags) and `notes`
# (how it departs from its source) are optional.
REQUIRED = ("title", "source", "split", "expected_mean_auroc", "hardware", "data")


def names() -> list[str]:
    """The shipped recipes, sorted."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in resources.files(__name__).iterdir()
        if entry.name.endswith(".json")
    )


def split_metadata(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `recipe` block or {}, the config without it) of a config file's contents."""
    config = dict(data)
    return config.pop(METADATA_KEY, {}), config


def read(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, config dict) of recipe `name`.

    Raises:
        ConfigError: no such recipe, or its file lacks a required metadata key.
    """
    if name not in names():
        raise ConfigError(f"--recipe: unknown recipe {name!r}; one of {', '.join(names())}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text()
    metadata, config = split_metadata(json.loads(text))
    missing = [key for key in REQUIRED if not metadata.get(key)]
    if missing:
        raise ConfigError(f"recipe {name}: its {METADATA_KEY!r} block lacks {missing}")
    return metadata, config


def load(name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Recipe `name` as a RunConfig, with dotted overrides (`{"train.epochs": 3}`)."""
    over: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        node = over
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return from_dict(RunConfig, merge_layers(RunConfig, read(name)[1], over))


def differences(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[tuple]:
    """(dotted key, before, after) for every leaf of two nested dicts that differs."""
    found = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append((prefix + key, old, new))
    return found


def overrides_line(reference: RunConfig, final: RunConfig, against: str = "recipe") -> str:
    """`overrides: train.epochs=3 (recipe: 20), ...`, or `overrides: none`."""
    changed = differences(to_dict(reference), to_dict(final))
    if not changed:
        return "overrides: none"
    return "overrides: " + ", ".join(
        f"{key}={json.dumps(new)} ({against}: {json.dumps(old)})" for key, old, new in changed
    )


def _field(label: str, text: str, wrap: bool = True) -> str:
    indent = f"  {label + ':':<10}"
    if not wrap:  # a command stays on one line, to be pasted
        return indent + text
    return textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=" " * 12)


def header(name: str, metadata: dict[str, Any], dataset: str) -> str:
    """What fit prints first when it runs a recipe (`dataset`: the one it reads)."""
    return "\n".join(
        [
            f"recipe {name}: {metadata['title']}",
            _field("source", metadata["source"]),
            _field("split", metadata["split"]),
            _field("expected", metadata["expected_mean_auroc"]),
            _field("data", f"{dataset}, made by: {metadata['data']}", wrap=False),
        ]
    )


def listing() -> str:
    """Every recipe with its provenance (`python -m cxr_tf.fit --recipe list`)."""
    blocks = []
    for name in names():
        metadata, config = read(name)
        lines = [
            header(name, metadata, config["data"]["dataset"]),
            _field("hardware", metadata["hardware"]),
        ]
        if metadata.get("evaluate"):
            evaluate = f"python -m cxr_tf.evaluate --run_dir RUN {metadata['evaluate']}"
            lines.append(_field("evaluate", evaluate, wrap=False))
        lines += [_field("note", note) for note in metadata.get("notes", [])]
        lines.append(_field("run", f"python -m cxr_tf.fit --recipe {name}", wrap=False))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
