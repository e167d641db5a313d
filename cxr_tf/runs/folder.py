"""A training run's directory: where it is, its config, its model files.

`runs/<backbone>-<task>[-<finding>]-<config hash>` by default. It holds `config.json` (the
resolved config), `summary.json`, `best.keras` / `last.keras`, `history.csv` and the resume
state (`state.json`, `checkpoints/`, written by `cxr_tf.training.checkpoint`). The file names
are defined here, below training, evaluation and serving: training writes the folder,
evaluation and export read it back, and none of them imports the others for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from cxr_tf import config as config_lib
from cxr_tf.config import ConfigError, RunConfig
from cxr_tf.config.data import split_datasets
from cxr_tf.modeling import models

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.json"  # the resume state; its rename commits an epoch
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoints"  # one weights + optimizer file per committed epoch
# The committed epoch before the last one, kept so that a damaged last epoch can be replaced
FALLBACK_DIR = "fallback"
# `--model best|last` of evaluate, localize and export: the file each names.
MODEL_FILES = {"best": BEST_MODEL, "last": LAST_MODEL}


class ModelFileError(ValueError):
    """A model file exists but cannot be read; the message names it and says why."""


# --- run directory ---------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` via a temporary file and a rename (old copy kept until then)."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def config_hash(run: RunConfig) -> str:
    """8 hex digits of the resolved config, without `train.run_dir`."""
    data = config_lib.to_dict(run)
    data["train"]["run_dir"] = ""
    # hashed under the name the field had when run folders were first named, so that the
    # same command still finds a run begun before `model.image_size` became `input_size`
    data["model"]["image_size"] = data["model"].pop("input_size")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def default_run_dir(run: RunConfig) -> str:
    """`runs/<backbone>-<task>[-<finding>]-<config hash>`: stable for the same config."""
    parts = [run.model.backbone, run.model.task]
    if run.model.task == "binary":
        parts += [f.replace(" ", "_") for f in run.model.findings]
    return str(Path("runs") / "-".join([*parts, config_hash(run)]))


def run_dir_of(run: RunConfig) -> Path:
    """The run directory (set on `run` when it was empty); nothing is read or written.

    Raises:
        ConfigError: it is a file.
    """
    if not run.train.run_dir:
        run.train.run_dir = default_run_dir(run)
    run_dir = Path(run.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.run_dir: {run_dir} is a file, not a folder")
    return run_dir


def check_run_dir(run: RunConfig) -> Path:
    """The run directory (set on `run` when it was empty); nothing is written.

    A finished or killed run may be continued to more epochs: `train.epochs` is the one
    value that may differ from its config.json, when it is not below the epochs done.

    Raises:
        ConfigError: it is a file; or it holds a run with another config and finished
            epochs (the keys that differ are named). A run that never finished an epoch
            does not block.
    """
    run_dir = run_dir_of(run)
    path = run_dir / CONFIG_FILE
    if path.exists() and (run_dir / STATE_FILE).exists():
        earlier = config_lib.to_dict(load_run_config(run_dir))
        now = config_lib.to_dict(run)
        now["data"]["dataset"] = resolve_datasets(run.data.dataset)  # as recorded
        diff = sorted(
            f"{section}.{key}"
            for section in now
            for key in set(now[section]) | set(earlier[section])
            if now[section].get(key) != earlier[section].get(key)
            and key not in ("run_dir", "epochs")
        )
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(diff)}); "
                f"continue it with `--resume {run_dir}` and no change to those values (only "
                f"--train.epochs may differ), or choose another --train.run_dir"
            )
        done = epochs_done(run_dir)
        if done is not None and run.train.epochs < done:
            raise ConfigError(
                f"train.epochs: {run.train.epochs} is below the {done} epochs {run_dir} has "
                f"finished; a run is continued to more epochs, never cut back"
            )
    return run_dir


def epochs_done(run_dir: str | Path) -> int | None:
    """The epochs a run's state.json says are finished; None when it has none or it is
    unreadable (resuming then falls back, see `cxr_tf.training.checkpoint`)."""
    try:
        done = json.loads((Path(run_dir) / STATE_FILE).read_text()).get("epochs_done")
    except (OSError, ValueError, AttributeError):
        return None
    return done if isinstance(done, int) else None


def prepare_run_dir(run: RunConfig) -> Path:
    """`check_run_dir`, then creates the directory and writes config.json if needed (a new
    run, or a run continued to more epochs)."""
    run_dir = check_run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the dataset recorded absolute: the run answers from any working folder
    run.data.dataset = resolve_datasets(run.data.dataset)
    text = json.dumps(config_lib.to_dict(run), indent=2) + "\n"
    path = run_dir / CONFIG_FILE
    if not (run_dir / STATE_FILE).exists() or not path.exists() or path.read_text() != text:
        write_text_atomic(path, text)
    return run_dir


def resolve_datasets(dataset: str, bases: Sequence[Path] = ()) -> str:
    """`data.dataset` with each folder made absolute: a relative one is looked for from the
    working folder, then from each of `bases` (a run's own folder and its parents, for
    runs made before paths were recorded absolute); one found nowhere stays as given, so
    the error that follows names it as the user wrote it."""
    out = []
    for item in split_datasets(dataset):
        path = Path(item).expanduser()
        found = path if path.is_absolute() else None
        for base in (Path.cwd(), *bases):
            if found is None and (base / path).is_dir():
                found = base / path
        out.append(str(found.resolve()) if found is not None else item)
    return ",".join(out)


def _run_bases(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir).resolve()
    return [folder, *folder.parents]


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run was trained with, its dataset folders absolute: a run answers from
    any working folder (a relative path of an older run is resolved from the working
    folder, else from the run's own folder and its parents)."""
    run = config_lib.load(RunConfig, Path(run_dir) / CONFIG_FILE)
    run.data.dataset = resolve_datasets(run.data.dataset, _run_bases(run_dir))
    return run


# --- model files ---------------------------------------------------------------------------


def model_path(run_dir: str | Path, which: str = "best") -> Path:
    """RUN/best.keras or RUN/last.keras."""
    return Path(run_dir) / MODEL_FILES[which]


def load_model_file(path: str | Path) -> keras.Model:
    """A saved `.keras` model, with the project's registered layers and losses.

    Raises:
        FileNotFoundError: the file is missing.
        ModelFileError: "cannot read FILE: <reason>" when it exists but is not a readable
            Keras archive (truncated, overwritten, another format).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {path.parent} a finished training run?")
    if path.is_dir() or not zipfile.is_zipfile(path):
        size = "a folder" if path.is_dir() else f"{path.stat().st_size} bytes"
        raise ModelFileError(
            f"cannot read {path}: not a .keras (zip) archive, truncated or overwritten ({size})"
        )
    try:
        return keras.models.load_model(path, compile=False, custom_objects=models.custom_objects())
    # Keras reports a damaged archive member as ValueError, KeyError, OSError (h5py),
    # zipfile.BadZipFile or TypeError, depending on the part that is damaged.
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        raise ModelFileError(f"cannot read {path}: {type(err).__name__}: {reason}") from err


def load_model(run_dir: str | Path, which: str = "best") -> keras.Model:
    """The run's best.keras or last.keras (see `load_model_file` for the errors)."""
    return load_model_file(model_path(run_dir, which))


def file_identity(path: str | Path) -> dict[str, Any]:
    """`{"file": name, "size": bytes, "sha256": hex}` of a model file."""
    path = Path(path)
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"file": path.name, "size": path.stat().st_size, "sha256": digest}
