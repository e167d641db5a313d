"""Run state that survives a kill at any moment: one commit point per epoch.

At the end of every epoch, after the AUROC, early-stopping and plateau callbacks have
updated, `EpochCommit` (the last callback) writes, in this order:

1. `checkpoints/epoch-NNNN.npz`: model weights and optimizer variables (temporary file,
   then rename; the previous epoch's file is kept);
2. `state.json` (temporary file, then rename): epochs done, the checkpoint's name, the
   best score and epoch, the early-stopping and plateau counters and every history row.
   **This rename is the moment the epoch counts**;
3. derived files, each rewritten atomically from the committed state: `best.keras` (only
   when the epoch is the best) and `history.csv`; then older checkpoints are removed.

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
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_tf.runs.folder import (
    BEST_MODEL,
    CHECKPOINT_DIR,
    HISTORY_FILE,
    LAST_MODEL,
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


def write_checkpoint(model: keras.Model, path: Path) -> None:
    """Model weights and optimizer variables, atomically, as one .npz file."""
    arrays = {f"model_{i:05d}": np.asarray(v) for i, v in enumerate(model.weights)}
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
            self.data.update(json.loads(path.read_text()))

    def save(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(self.data, indent=2, default=float) + "\n")


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
    for old in (out_dir / CHECKPOINT_DIR).glob("*"):
        if old.name != data["checkpoint"]:
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
        write_checkpoint(self.model, self.out_dir / CHECKPOINT_DIR / name)
        fault_point(done, "checkpoint")
        data["checkpoint"] = name
        self.state.data = data
        self.state.save()  # the commit point
        fault_point(done, "commit")
        finalize(self.model, self.state, self.out_dir)
