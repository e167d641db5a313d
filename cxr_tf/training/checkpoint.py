"""Run state that survives a kill at any moment: one commit point per epoch.

At the end of every epoch, after the AUROC, early-stopping and plateau callbacks have
updated, `EpochCommit` (the last callback) writes, in this order:

1. `checkpoints/epoch-NNNN.npz`: model weights and optimizer variables (temporary file,
   then rename; the previous epoch's file is kept);
2. `state.json` (temporary file, then rename): epochs done, the checkpoint's name, the
   best score and epoch, the early-stopping and plateau counters and every history row.
   **This rename is the moment the epoch counts**;
3. derived files, each rewritten atomically from the committed state: `best.keras` (only
   when the epoch is the best) and `history.csv`; then the previous epoch's checkpoint moves
   to `fallback/` (replacing the one there) and any other is removed.

Each checkpoint file also carries the state its epoch committed, so a run whose
`state.json` or last checkpoint was damaged later (truncated, overwritten) resumes from the
last intact committed epoch (`load_state`): the same epoch when only `state.json` is
damaged, the one in `fallback/` when the last checkpoint is; it says so on stderr.

`last.keras` is written once, when training ends (finished, stopped early or diverged:
the last committed epoch); during a run the latest epoch is the checkpoint of step 1, so
no full model file is written for it every epoch.

A kill before step 2 loses the epoch in progress; after it, the resumed run first redoes
step 3 (`finalize`), which is idempotent, so no history row is ever duplicated and
`best.keras` always matches `state.json`.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_tf.runs.folder import (
    BEST_MODEL,
    CHECKPOINT_DIR,
    FALLBACK_DIR,
    HISTORY_FILE,
    LAST_MODEL,
    STATE_FILE,
    write_text_atomic,
)
from cxr_tf.testing import fault_point

# The step boundaries of the epoch-end sequence where the kill/resume tests stop the
# process (`cxr_tf.testing.fault_point(epoch, step)`, epoch 1-based).
FAULT_STEPS = ("monitors", "checkpoint", "commit", "best", "last", "history", "cleanup")


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """`model.save(path)` through a temporary file in the same folder."""
    tmp = path.with_name(f"tmp-{path.name}")  # Keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, path)


STATE_KEY = "state_json"  # the array of a checkpoint holding its epoch's state (UTF-8)
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.npz")


class CheckpointError(RuntimeError):
    """The run's state or checkpoint is damaged and no intact epoch is left to resume from."""


def write_checkpoint(model: keras.Model, path: Path, state: dict | None = None) -> None:
    """Model weights, optimizer variables and the epoch's `state`, atomically, as one .npz."""
    arrays = {f"model_{i:05d}": np.asarray(v) for i, v in enumerate(model.weights)}
    if state is not None:
        text = json.dumps(state, default=float).encode()
        arrays[STATE_KEY] = np.frombuffer(text, dtype=np.uint8)
    optimizer = getattr(model, "optimizer", None)
    for i, v in enumerate(optimizer.variables if optimizer is not None else []):
        arrays[f"optimizer_{i:05d}"] = np.asarray(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def restore_checkpoint(model: keras.Model, path: Path, optimizer: bool) -> None:
    """Loads a `write_checkpoint` file; the optimizer part only when `optimizer`.

    Raises:
        ValueError: the file does not fit the model (another architecture or phase).
    """
    with np.load(path) as data:
        weights = sorted(k for k in data.files if k.startswith("model_"))
        if len(weights) != len(model.weights):
            raise ValueError(
                f"{path}: {len(weights)} weight arrays, the model has {len(model.weights)}"
            )
        for variable, key in zip(model.weights, weights, strict=True):
            variable.assign(data[key])
        if not optimizer:
            return
        saved = sorted(k for k in data.files if k.startswith("optimizer_"))
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if len(saved) != len(model.optimizer.variables):
            raise ValueError(
                f"{path}: {len(saved)} optimizer arrays, the optimizer has "
                f"{len(model.optimizer.variables)}"
            )
        for variable, key in zip(model.optimizer.variables, saved, strict=True):
            variable.assign(data[key])


class RunState:
    """`state.json`: everything a resumed run needs beyond the checkpoint's arrays."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "epochs_done": 0,
            "phase": None,  # phase of the last committed epoch
            "checkpoint": None,  # file under checkpoints/ holding that epoch's state
            "best": None,
            "best_epoch": None,
            "learning_rate": None,
            "monitors": {},  # callback name -> its counters, within the current phase
            "stopped_early": [],  # phases ended by early stopping
            "history": [],  # one row per committed epoch
        }
        if path is not None and path.exists():
            self.data.update(_checked_state(json.loads(path.read_text())))

    def save(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(self.data, indent=2, default=float) + "\n")


def _checked_state(data: Any) -> dict:
    """`data` when it has the shape of a state.json; ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    for key, kind in (("epochs_done", int), ("history", list), ("stopped_early", list)):
        if not isinstance(data.get(key, [] if kind is list else 0), kind):
            raise ValueError(f"{key!r} is {data.get(key)!r}")
    if not isinstance(data.get("checkpoint"), str | None):
        raise ValueError(f"'checkpoint' is {data.get('checkpoint')!r}")
    return data


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint file (missing, not a whole archive, a member failing
    its CRC); None when it is intact."""
    if not path.is_file():
        return f"{path} is missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"{path} is damaged ({err})"
    return f"{path} is damaged ({bad} fails its checksum)" if bad else None


def _epoch_state(path: Path) -> dict | None:
    """The state a checkpoint file carries, when intact and its own (else None)."""
    if checkpoint_problem(path) is not None:
        return None
    try:
        with np.load(path) as data:
            if STATE_KEY not in data.files:
                return None  # written by an earlier cxr_tf version
            state = _checked_state(json.loads(data[STATE_KEY].tobytes()))
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return state if state.get("checkpoint") == path.name else None


def _epoch_of(path: Path) -> int | None:
    match = _EPOCH_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else None


def load_state(run_dir: Path, write: bool = True) -> tuple[RunState, str | None]:
    """The run's committed state, and a note when it had to fall back.

    When `state.json` cannot be read, or the checkpoint it names is missing or damaged,
    the state comes from the newest intact checkpoint file of `checkpoints/` or
    `fallback/` below the damaged epoch (each carries its epoch's state); that file is put
    back under `checkpoints/` and, with `write`, `state.json` is rewritten from it.

    Raises:
        CheckpointError: something is damaged and no intact epoch is left.
    """
    path = run_dir / STATE_FILE
    try:
        state = RunState(path)
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        problem, below = f"{path} is damaged ({err})", None
    else:
        name = state.data["checkpoint"]
        if not state.data["epochs_done"] or not name:
            return state, None  # nothing committed, or a state of an earlier version
        problem = checkpoint_problem(run_dir / CHECKPOINT_DIR / name)
        if problem is None:
            return state, None
        below = state.data["epochs_done"]
    candidates = [
        p
        for folder in (CHECKPOINT_DIR, FALLBACK_DIR)
        for p in (run_dir / folder).glob("epoch-*.npz")
        if _epoch_of(p) is not None and (below is None or _epoch_of(p) < below)  # type: ignore[operator]
    ]
    for candidate in sorted(candidates, key=_epoch_of, reverse=True):  # type: ignore[arg-type]
        data = _epoch_state(candidate)
        if data is None:
            continue
        target = run_dir / CHECKPOINT_DIR / candidate.name
        if write and candidate != target:
            tmp = target.with_name(f".tmp-{target.name}")
            shutil.copyfile(candidate, tmp)
            os.replace(tmp, target)
        restored = RunState(None)
        restored.data.update(data)
        restored.path = path
        if write:
            restored.save()
        return restored, (
            f"{problem}; resuming from epoch {data['epochs_done']}, the last intact committed epoch"
        )
    raise CheckpointError(
        f"{problem}, and no intact earlier epoch is kept to fall back to; delete {run_dir} "
        f"or choose another --train.run_dir to start over"
    )


def _scalar(value: Any) -> float | None:
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def current_lr(optimizer: Any) -> float | None:
    """The optimizer's current learning rate (a schedule's value at this step)."""
    return _scalar(optimizer.learning_rate)


class _Resumable:
    """Mixin: a monitor callback whose counters come from and go to `RunState.monitors`."""

    key = ""
    fields: tuple[str, ...] = ()

    def __init__(self, restore: dict | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.restore = restore

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # type: ignore[misc]
        for name, value in (self.restore or {}).items():
            setattr(self, name, value)

    def counters(self) -> dict:
        return {name: getattr(self, name) for name in self.fields}


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    """EarlyStopping that continues from saved counters."""

    key = "early_stopping"
    fields = ("wait", "best", "best_epoch")


class ResumablePlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that continues from saved counters."""

    key = "plateau"
    fields = ("wait", "best", "cooldown_counter")


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and describes where it happened.

    `async_safe`: Keras may run its batch hook on a worker thread, so checking the loss
    does not make every training step wait for the previous one to finish.
    """

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = _scalar((logs or {}).get("loss"))
        if self.message is None and loss is not None and not math.isfinite(loss):
            lr = current_lr(self.model.optimizer)
            self.message = (
                f"the training loss became {loss} in epoch {self.epoch + 1}, step {batch + 1} "
                f"(learning rate {lr:.3g}); try a lower --train.lr / --train.finetune_lr, "
                f"--no-train.mixed_precision, or --train.loss bce"
            )
            self.model.stop_training = True


class EpochSeeds(keras.callbacks.Callback):
    """Sets every random layer's seed state from (seed, layer index, epoch) at epoch start.

    Augmentation and dropout of epoch k then depend on (seed, k) only, not on how many
    epochs this process has run, so a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            value = (self.seed * 1_000_003 + index * 7_919 + epoch * 104_729) % 2**31
            state.assign(np.array([value, 0], dtype=state.dtype))


def finalize(model: keras.Model, state: RunState, out_dir: Path) -> None:
    """Rewrites the files derived from the committed state (idempotent).

    `model` holds the committed epoch's weights.
    """
    data = state.data
    epoch = data["epochs_done"]
    if data["best_epoch"] == epoch and data["best"] is not None:
        save_model_atomic(model, out_dir / BEST_MODEL)
    fault_point(epoch, "best")
    write_text_atomic(out_dir / HISTORY_FILE, history_csv(data["history"]))
    fault_point(epoch, "history")
    fallback = out_dir / FALLBACK_DIR
    for old in (out_dir / CHECKPOINT_DIR).glob("*"):
        if old.name == data["checkpoint"]:
            continue
        number = _epoch_of(old)
        if number is not None and number < epoch:  # an earlier committed epoch: kept aside
            fallback.mkdir(exist_ok=True)
            os.replace(old, fallback / old.name)
        else:  # a temporary file, or an epoch lost to a fault (never committed)
            old.unlink(missing_ok=True)
    kept = sorted((p for p in fallback.glob("*") if (_epoch_of(p) or epoch) < epoch), key=_epoch_of)
    for old in fallback.glob("*"):
        if not kept or old != kept[-1]:
            old.unlink(missing_ok=True)
    fault_point(epoch, "cleanup")


def write_last(model: keras.Model, state: RunState, out_dir: Path) -> None:
    """`last.keras` from `model`, which holds the last committed epoch's weights."""
    save_model_atomic(model, out_dir / LAST_MODEL)
    fault_point(state.data["epochs_done"], "last")


def history_csv(rows: list[dict]) -> str:
    """The history rows as CSV (columns in first-seen order)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class EpochCommit(keras.callbacks.Callback):
    """The last callback of an epoch: records it and, with `out_dir`, commits it to disk."""

    def __init__(
        self,
        state: RunState,
        out_dir: Path | None,
        phase: str,
        monitors: list[Any],
        guard: DivergenceGuard,
        monitor: str,
    ) -> None:
        super().__init__()
        self.state, self.out_dir, self.phase = state, out_dir, phase
        self.monitors, self.guard, self.monitor = monitors, guard, monitor

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.guard.message is not None:
            return  # a diverged epoch never counts
        done = epoch + 1
        fault_point(done, "monitors")
        data = copy.deepcopy(self.state.data)
        row: dict[str, Any] = {"epoch": epoch}
        for key, value in (logs or {}).items():
            number = _scalar(value)
            if number is not None:
                row[key] = number
        score = row.get(self.monitor)
        if score is not None and math.isfinite(score):
            if data["best"] is None or score > data["best"]:
                data["best"], data["best_epoch"] = score, done
        data["history"] = [r for r in data["history"] if r["epoch"] < epoch] + [row]
        data["epochs_done"] = done
        data["phase"] = self.phase
        data["learning_rate"] = current_lr(self.model.optimizer)
        data["monitors"] = {m.key: m.counters() for m in self.monitors}
        if self.model.stop_training and self.phase not in data["stopped_early"]:
            data["stopped_early"] = [*data["stopped_early"], self.phase]
        if self.out_dir is None:
            self.state.data = data
            return
        name = f"epoch-{done:04d}.npz"
        data["checkpoint"] = name
        write_checkpoint(self.model, self.out_dir / CHECKPOINT_DIR / name, data)
        fault_point(done, "checkpoint")
        self.state.data = data
        self.state.save()  # the commit point
        fault_point(done, "commit")
        finalize(self.model, self.state, self.out_dir)
