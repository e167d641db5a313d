"""Per-epoch callbacks of training: the validation AUROC (the monitored metric), the one
line per epoch under the step bar, and Ctrl-C taken between steps."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from cxr_tf import progress
from cxr_tf.data.targets import LabelSpec
from cxr_tf.modeling import metrics, models

MONITOR = "val_mean_auroc"


# --- validation AUROC ------------------------------------------------------------------------


def auroc_of(logits: np.ndarray, y_true: np.ndarray, spec: LabelSpec) -> dict:
    """Per-output AUROC (None when undefined) and the mean over the defined ones; each
    output's AUROC is over the images whose target is known there (`n_per_output` of them;
    masked targets, negative, are skipped).

    Non-finite logits (a diverged model) give every AUROC None and `finite` False.
    """
    logits = np.asarray(logits, np.float64)
    names = list(spec.names)
    n_per = (
        {n: int(len(y_true)) for n in names}
        if spec.task == "multiclass"
        else metrics.known_counts(y_true, names)
    )
    if not np.isfinite(logits).all():
        per: dict = dict.fromkeys(spec.names)
        return {"per_output": per, "mean": None, "count": 0, "n": len(y_true), "finite": False,
                "n_per_output": n_per}  # fmt: skip
    probs = np.asarray(models.probabilities(logits, spec.task))
    if spec.task == "multiclass":
        report = metrics.multiclass_report(y_true.argmax(-1), probs, names)
        per = dict(report["auroc"])
    else:
        per = metrics.per_finding_auroc(y_true, probs, names)
    mean, count = metrics.mean_auroc(per)
    return {"per_output": per, "mean": mean, "count": count, "n": int(len(y_true)), "finite": True,
            "n_per_output": n_per}  # fmt: skip


def split_targets(dataset) -> tuple[np.ndarray, int]:
    """The targets of an evaluation dataset of (images, targets), in its (fixed) order, and
    its number of batches (what `model.predict` is told, so it never runs past the end)."""
    batches = [np.asarray(y) for y in dataset.map(lambda x, y: y)]
    targets = np.concatenate(batches) if batches else np.zeros((0, 0), np.float32)
    return targets, len(batches)


def evaluate_auroc(model: keras.Model, dataset, spec: LabelSpec) -> dict:
    """The validation AUROC of `model` on an evaluation dataset, through `model.predict`."""
    targets, steps = split_targets(dataset)
    logits = model.predict(dataset.map(lambda x, y: x), steps=steps, verbose=0)
    return auroc_of(logits, targets, spec)


class AurocCallback(keras.callbacks.Callback):
    """Adds `val_mean_auroc` and `val_auroc/<finding>` to the epoch logs (history.csv and
    TensorBoard keep every finding; the console line shows the mean).

    One validation pass per epoch through `model.predict`: the compiled predict function,
    under the strategy, precision and jit setting the model was compiled with; the targets
    are read once, the evaluation order being fixed. `compiled=False` calls the model
    batch by batch instead, for multi-worker runs, where `predict` would see only this
    worker's part of the split and the workers must agree on the monitored score.
    """

    def __init__(self, dataset, spec: LabelSpec, compiled: bool = True) -> None:
        super().__init__()
        self.dataset, self.spec, self.compiled = dataset, spec, compiled
        self.images = dataset.map(lambda x, y: x)
        self.targets: np.ndarray | None = None
        self.steps = 0
        self.last: dict | None = None

    def _logits(self) -> tuple[np.ndarray, np.ndarray]:
        if self.compiled:
            if self.targets is None:
                self.targets, self.steps = split_targets(self.dataset)
            logits = self.model.predict(self.images, steps=self.steps, verbose=0)
            return logits, self.targets
        logits, targets = [], []
        for images, y in self.dataset:
            logits.append(np.asarray(self.model(images, training=False)))
            targets.append(np.asarray(y))
        return np.concatenate(logits), np.concatenate(targets)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        result = auroc_of(*self._logits(), self.spec)
        self.last = result
        if logs is not None:
            logs[MONITOR] = float("nan") if result["mean"] is None else result["mean"]
            for name, value in result["per_output"].items():
                logs[f"val_auroc/{name}"] = float("nan") if value is None else value
            for name, count in result["n_per_output"].items():
                logs[f"val_n/{name}"] = float(count)  # images with a known target


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback writing per-epoch scalars only (no graph, no per-step
    values), declared safe for Keras' asynchronous batch hooks: its batch hooks then do
    nothing that would make each training step wait for the previous one."""

    async_safe = True

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir, write_graph=False, update_freq="epoch")


def format_auroc(result: dict) -> str:
    """`val mean AUROC 0.9123 over 14 of 14 (n=8973)`, or why it is undefined."""
    if not result.get("finite", True):
        return "non-finite predictions, validation AUROC undefined"
    mean = "undefined" if result["mean"] is None else f"{result['mean']:.4f}"
    total = len(result["per_output"])
    counts = set((result.get("n_per_output") or {}).values())
    known = ""
    if counts and counts != {result["n"]}:  # some targets masked: known labels per output
        known = f", known labels per output {min(counts)}-{max(counts)}"
    return f"val mean AUROC {mean} over {result['count']} of {total} (n={result['n']}{known})"


class EpochLine(keras.callbacks.Callback):
    """One console line per epoch: loss, validation AUROC, learning rate, seconds.

    With `bar`, a step progress bar runs during the epoch and is replaced by the line; its
    updates may run on Keras' callback thread (`async_safe`), so they never hold a step up.
    """

    async_safe = True

    def __init__(
        self, phase: str, epochs: int, steps: int, auroc: AurocCallback, bar: bool, cuts: bool
    ) -> None:
        super().__init__()
        self.phase, self.epochs, self.steps, self.auroc = phase, epochs, steps, auroc
        # a step bar on a terminal only: in a log file the epoch line says it all
        self.bar = bar and progress.interactive(sys.stdout)
        self.cuts = cuts  # the plateau schedule: say when it has just cut the rate
        self.progress: Any = None
        self.started = 0.0
        self.lr_before: float | None = None

    def _lr(self) -> float | None:
        value = np.asarray(self.model.optimizer.learning_rate)
        return float(value) if value.ndim == 0 else None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started, self.lr_before = time.time(), self._lr()
        if self.bar:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                leave=False, dynamic_ncols=True,
            )  # fmt: skip

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.progress is not None:
            self.progress.update(1)
            if logs and "loss" in logs and batch % 10 == 0:
                self.progress.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs} ({self.phase})"]
        if "loss" in logs:
            parts.append(f"loss {float(logs['loss']):.4f}")
        if self.auroc.last is not None:
            parts.append(format_auroc(self.auroc.last))
        lr = self._lr()
        if lr is not None:
            cut = self.cuts and self.lr_before is not None and lr < self.lr_before * (1 - 1e-6)
            parts.append(f"lr {lr:.3g}{' (cut)' if cut else ''}")
        parts.append(f"{time.time() - self.started:.0f} s")
        print(", ".join(parts), flush=True)


# --- Ctrl-C between steps ----------------------------------------------------------------------


class SafeInterrupt(keras.callbacks.Callback):
    """Makes Ctrl-C (SIGINT) stop training between steps, never inside one.

    A KeyboardInterrupt raised wherever Python happens to be (inside a checkpoint's HDF5
    write, a TensorBoard summary, TensorFlow's iterator machinery) can leave native state
    half-done; a process interrupted so was seen to die of a segmentation fault instead of
    exiting with 130. While `installed()`, the first Ctrl-C only sets a flag and says so;
    the KeyboardInterrupt is raised at the next step or epoch boundary this callback sees
    (it runs after the epoch's commit, so a finished epoch is kept), or when training is
    over, on leaving `installed()`. A second Ctrl-C raises at once. Outside the main
    thread, or where SIGINT is not Python's default handler (ignored under nohup, or
    already taken), nothing changes.
    """

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self.pending = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[SafeInterrupt]:
        """Holds SIGINT for the duration, restoring the previous handler after."""
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._on_signal)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
            asked, self.pending = self.pending, False
        if asked:  # pressed after the last boundary (final files, summary): still a stop
            raise KeyboardInterrupt

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.pending:  # the second: at once
            self.pending = False
            raise KeyboardInterrupt
        self.pending = True
        # os.write to descriptor 2, not print: the signal may arrive in the middle of a
        # print to stderr; a closed or missing stderr must not raise here either
        with contextlib.suppress(OSError):
            os.write(
                2,
                f"\n{self.program}: Ctrl-C: stopping after this step (Ctrl-C again to stop "
                "at once)\n".encode(),
            )

    def _stop_if_asked(self, *args: Any, **kwargs: Any) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    # At the start of each step (Keras calls batch-begin hooks synchronously, so the other
    # callbacks' asynchronous batch-end hooks stay so) and at each epoch boundary.
    on_train_batch_begin = on_test_batch_begin = _stop_if_asked
    on_epoch_begin = on_epoch_end = _stop_if_asked
