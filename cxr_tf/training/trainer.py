"""Training: the one two-phase loop (`run_phases`) and `fit(run)`, resumable.

`fit(run)` prints its run directory, builds the data and the model, only then writes the
resolved config into the run directory, and trains in two phases (head on a frozen
backbone, then fine-tuning the top blocks or all of it at a lower learning rate,
BatchNorm kept in inference mode). `run_phases` is that loop; tuning trials
(`cxr_tf.training.hypermodel`) run the same one without a run directory. Every epoch it computes
the per-finding validation AUROC and commits the epoch (`cxr_tf.training.checkpoint`):

- `best.keras`: the best model by validation mean AUROC (never overwritten by a worse one,
  also across a resume);
- `history.csv`, TensorBoard logs under `logs/`; `last.keras` when training ends;
- `state.json` + `checkpoints/`: weights, optimizer, counters and history of the last
  finished epoch.

The default run directory is `runs/<backbone>-<task>[-<finding>]-<config hash>`, so
rerunning the same command (or `python -m cxr_tf.fit --resume RUN_DIR`) continues a
killed run from its last finished epoch. Epoch k's batches, augmentation and dropout
depend on (seed, k) only, so with `--data.deterministic` a resumed run ends where an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_tf import config as config_lib
from cxr_tf import python_command
from cxr_tf.config import ConfigError, RunConfig
from cxr_tf.data import lock, reader
from cxr_tf.data.manifest import Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.modeling import models
from cxr_tf.runs.folder import (
    CHECKPOINT_DIR,
    STATE_FILE,
    SUMMARY_FILE,
    check_run_dir,
    prepare_run_dir,
    run_dir_of,
    write_text_atomic,
)
from cxr_tf.training import checkpoint, distribute
from cxr_tf.training.callbacks import (
    MONITOR,
    AurocCallback,
    EpochLine,
    EpochTensorBoard,
    SafeInterrupt,
)
from cxr_tf.training.distribute import is_chief, make_strategy
from cxr_tf.training.optimization import (
    build_loss,
    check_jit,
    compile_model,
    precision_policy,
    step_line,
)

# --- the training loop (shared with tuning) ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training with fixed trainable layers and learning rate."""

    name: str
    mode: str  # for models.set_backbone_trainable
    lr: float
    start: int  # first epoch (0-based)
    end: int  # epoch after the last


def training_phases(cfg: config_lib.TrainConfig) -> list[Phase]:
    """Head on a frozen backbone, then fine-tuning (either may be absent).

    Early stopping and the plateau schedule start afresh in each phase: the fine-tuning
    phase changes what trains and its learning rate, so the head's counters say nothing
    about it.
    """
    head = max(cfg.head_epochs, 0)
    phases = []
    if head > 0:
        phases.append(Phase("head", "frozen", cfg.lr, 0, head))
    if cfg.epochs > head:
        mode = "frozen" if cfg.finetune == "none" else cfg.finetune
        lr = cfg.finetune_lr if head > 0 else cfg.lr
        phases.append(Phase("finetune", mode, lr, head, cfg.epochs))
    return phases


def training_counts(run: RunConfig, spec: LabelSpec, manifest: Manifest) -> tuple:
    """(per-output positive counts or class counts, per-output images whose label is known,
    training images for the task)."""
    if spec.task == "multiclass":
        counts = reader.class_counts(run.data, spec, "train")
        total = int(counts.sum())
        return counts.astype(np.float64), np.full(len(counts), float(total)), total
    positives, known, total = spec.counts(manifest, "train")
    return positives, np.maximum(known, 1.0), total


def default_outputs(run: RunConfig) -> RunConfig:
    """`run` with its outputs made explicit from the training dataset(s) where they are
    not NIH's 14 (`reader.resolve_outputs`): what they label, the classes they have, names
    as they spell them. Runs on NIH keep the default (`model.findings` empty)."""
    model = reader.resolve_outputs(run.data, run.model)
    return run if model is run.model else dataclasses.replace(run, model=model)


def steps_per_epoch(run: RunConfig, images: int) -> int:
    if run.train.steps_per_epoch:
        return run.train.steps_per_epoch
    steps = images // run.data.batch_size
    if steps < 1:
        raise ConfigError(
            f"data.batch_size: {run.data.batch_size} exceeds the {images} training images"
        )
    return steps


@dataclasses.dataclass
class TrainingData:
    """What the loop needs from the dataset: labels, class counts, steps, validation."""

    manifest: Manifest
    spec: LabelSpec
    counts: np.ndarray
    known: np.ndarray  # per output: training images whose label is known
    total: int
    steps: int
    val_ds: Any

    @classmethod
    def load(cls, run: RunConfig, counts: tuple | None = None) -> TrainingData:
        manifest = reader.check_compatible(run.data, run.model)
        spec = LabelSpec.from_config(run.model, manifest, run.train.uncertain)
        count, known, total = counts or training_counts(run, spec, manifest)
        val_ds = reader.make_dataset(run.data, spec, "validation")
        if run.train.validation_steps:
            val_ds = val_ds.take(run.train.validation_steps)
        return cls(manifest, spec, count, known, total, steps_per_epoch(run, total), val_ds)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


def run_phases(
    model: keras.Model,
    run: RunConfig,
    data: TrainingData,
    state: checkpoint.RunState,
    out_dir: Path | None = None,
    strategy: Any = None,
    restore_from: Path | None = None,
    first_epoch: int = 0,
    end_epoch: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    chief: bool = True,
    interrupt: SafeInterrupt | None = None,
) -> dict[str, list]:
    """The one two-phase training loop, for `fit` and for tuning trials.

    Trains the epochs of `training_phases` from `state.epochs_done` (or `first_epoch`) to
    `end_epoch`. With `out_dir` every epoch is committed there (`cxr_tf.training.checkpoint`);
    `restore_from` is the folder whose committed checkpoint the model starts from.
    `callbacks` (e.g. keras-tuner's) run after the AUROC and monitor callbacks;
    `interrupt` last of all, so that a Ctrl-C it holds stops after the epoch's commit.
    Returns this session's Keras history.

    Raises:
        TrainingDiverged: the loss became non-finite (the last committed epoch is kept).
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    end_epoch = run.train.epochs if end_epoch is None else min(end_epoch, run.train.epochs)
    size = data.manifest.stored_size
    shard = distribute.worker_shard() if run.train.strategy == "multi_worker" else None
    history: dict[str, list] = {}
    restored = False
    for phase in training_phases(run.train):
        done = state.data["epochs_done"]
        start, end = max(phase.start, done, first_epoch), min(phase.end, end_epoch)
        if phase.name in state.data["stopped_early"] or start >= end:
            continue
        models.set_backbone_trainable(model, run.model, phase.mode)
        loss = build_loss(run, data.spec, data.counts, data.known)
        with strategy.scope():
            compile_model(model, run, loss, phase.lr, data.steps, phase.end - phase.start)
            if run.train.strategy == "multi_worker":
                distribute.prepare(model, size, data.spec.size)
            same_phase = state.data["phase"] == phase.name
            if not restored and restore_from is not None and state.data["checkpoint"]:
                # Optimizer state belongs to the phase it was saved in.
                path = restore_from / CHECKPOINT_DIR / state.data["checkpoint"]
                checkpoint.restore_checkpoint(model, path, optimizer=same_phase)
                if out_dir is not None:
                    checkpoint.finalize(model, state, out_dir)
            restored = True
        read = reader.ReadOptions(
            training=True, repeat=True, seed=run.train.seed, first_epoch=start,
            steps_per_epoch=data.steps, shard=shard,
        )  # fmt: skip
        train_ds = reader.make_dataset(run.data, data.spec, "train", read)
        if run.train.strategy != "default":
            # Collective reductions take no uint8, so distributed runs ship float32.
            train_ds = train_ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        restore = state.data["monitors"] if same_phase else {}
        early = checkpoint.ResumableEarlyStopping(
            restore.get("early_stopping"),
            monitor=MONITOR,
            mode="max",
            patience=run.train.early_stopping_patience,
        )
        monitors: list[Any] = [early]
        if run.train.schedule == "plateau":
            monitors.append(
                checkpoint.ResumablePlateau(
                    restore.get("plateau"),
                    monitor=MONITOR,
                    mode="max",
                    factor=run.train.plateau_factor,
                    patience=run.train.plateau_patience,
                    min_lr=phase.lr * 1e-2,
                    verbose=0,  # EpochLine shows the new rate
                )
            )
        guard = checkpoint.DivergenceGuard()
        val_ds = data.val_ds
        if run.train.strategy != "default":
            val_ds = val_ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        auroc = AurocCallback(val_ds, data.spec, compiled=shard is None)
        extra = (
            [EpochTensorBoard(str(out_dir / "logs"))]
            if out_dir is not None
            else []
        )
        all_callbacks = [
            guard,
            checkpoint.EpochSeeds(run.train.seed),
            auroc,
            *monitors,
            *extra,
            *callbacks,
            checkpoint.EpochCommit(state, out_dir, phase.name, monitors, guard, MONITOR),
            *([EpochLine(
                phase.name, run.train.epochs, data.steps, auroc, bar=verbose == 1,
                cuts=run.train.schedule == "plateau",
            )]
              if chief and verbose else []),
            *([interrupt] if interrupt is not None else []),
        ]  # fmt: skip
        with strategy.scope():
            result = model.fit(
                train_ds,
                epochs=end,
                initial_epoch=start,
                steps_per_epoch=data.steps,
                callbacks=all_callbacks,
                verbose=0,  # EpochLine prints one line per epoch instead
                shuffle=False,  # the pipeline orders each epoch
            )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        if guard.message is not None:
            kept = state.data["epochs_done"]
            if out_dir is None or not kept:
                raise TrainingDiverged(guard.message)
            path = out_dir / CHECKPOINT_DIR / state.data["checkpoint"]
            checkpoint.restore_checkpoint(model, path, optimizer=False)
            checkpoint.write_last(model, state, out_dir)
            raise TrainingDiverged(
                f"{guard.message}. {out_dir} keeps the {kept} finished epoch(s) and "
                f"best.keras (epoch {state.data['best_epoch']})"
            )
    if not restored and restore_from is not None and state.data["checkpoint"]:
        # Nothing left to train, but a kill may have come between the last commit and
        # its derived files.
        path = restore_from / CHECKPOINT_DIR / state.data["checkpoint"]
        checkpoint.restore_checkpoint(model, path, optimizer=False)
        if out_dir is not None:
            checkpoint.finalize(model, state, out_dir)
    if out_dir is not None and state.data["epochs_done"]:
        checkpoint.write_last(model, state, out_dir)
    return history


# --- the run -------------------------------------------------------------------------------


def fit(run: RunConfig, verbose: int = 2) -> dict:
    """Trains `run` (resuming its run directory if it has one); returns the summary.

    Prints the run directory first (and the epoch a resumed run continues at). The
    directory, config.json included, is written only once the data and the model were
    built, so a failed start leaves nothing that blocks the corrected command. On several
    replicas `train.batch_scaling` sets the global batch and learning rates
    (`config.for_replicas`); that line is printed after the run directory.

    The run directory is held by this process while it trains (`cxr_tf.data.lock`). A
    run continued to more epochs (`train.epochs` raised) trains the new epochs in the
    phase they fall in; that phase's cosine schedule is laid over its new length, so the
    rate at the first new epoch is what a run planned that long from the start would have
    there (it rises again from the old schedule's end); plateau and constant rates go on
    from where they were.

    Raises:
        ConfigError, DatasetError, models.WeightsUnavailable: a bad config.
        FolderInUse: another process holds the run directory.
        CheckpointError: its state is damaged and no intact epoch is kept.
        TrainingDiverged: the loss became non-finite.
        DataVanished: a dataset file vanished or was damaged while training.
        Interrupted: Ctrl-C (a KeyboardInterrupt).
    """
    import tensorflow as tf

    # A multi-worker strategy configures collective ops, which must precede any other op.
    strategy = make_strategy(run.train.strategy)
    run = default_outputs(run)
    run_dir = run_dir_of(run)
    chief = is_chief()
    # Non-chief workers write their copies to scratch folders keyed by task index (stable
    # across restarts); every worker resumes from the chief's state when it can see it.
    out_dir = run_dir if chief else run_dir / f"worker_{distribute.worker_shard()[0]}"
    interrupt = SafeInterrupt("fit")
    try:
        with interrupt.installed(), lock.hold(out_dir, "fit"):
            return _fit_held(run, run_dir, out_dir, strategy, chief, verbose, interrupt)
    except KeyboardInterrupt as err:
        raise Interrupted(
            f"its finished epochs are kept in {run_dir}; resume with "
            f"`{python_command()} -m cxr_tf.fit --resume {run_dir}`"
        ) from err
    except tf.errors.DataLossError as err:  # a shard damaged since conversion
        raise DataVanished(_vanished_message(run, run_dir, err, damaged=True)) from err
    except tf.errors.NotFoundError as err:  # a shard deleted while training
        raise DataVanished(_vanished_message(run, run_dir, err, damaged=False)) from err


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says where the run is kept and how to resume."""


class DataVanished(RuntimeError):
    """A file of the dataset vanished or was damaged while training; the message names it."""


def _vanished_message(run: RunConfig, run_dir: Path, err: Exception, damaged: bool) -> str:
    if damaged:
        for dataset in run.data.datasets:
            try:
                return reader.read_error_message(dataset, err)
            except Exception:  # the dataset is gone altogether: the plain reason below
                continue
    reason = " ".join(str(getattr(err, "message", err)).split("\n")[-1].split())[:200]
    return (
        f"a file of {run.data.dataset} vanished or was damaged during training ({reason}); "
        f"{run_dir} keeps its finished epochs: restore the dataset (or convert it again) and "
        f"resume with `--resume {run_dir}`"
    )


def _fit_held(
    run: RunConfig,
    run_dir: Path,
    out_dir: Path,
    strategy: Any,
    chief: bool,
    verbose: int,
    interrupt: SafeInterrupt,
) -> dict:
    """`fit` once the run directory is held by this process."""
    import tensorflow as tf

    check_run_dir(run)
    restore_from = run_dir if (run_dir / STATE_FILE).exists() else out_dir
    state, note = checkpoint.load_state(restore_from, write=restore_from == out_dir)
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    done = state.data["epochs_done"]
    if done and not state.data["checkpoint"]:
        raise ConfigError(
            f"{run_dir}: state.json of an earlier cxr_tf version (no per-epoch checkpoint); "
            f"it cannot be resumed, choose another --train.run_dir"
        )
    # The run as configured is what config.json keeps; `scaled` is how it trains here.
    replicas = strategy.num_replicas_in_sync
    scaled = config_lib.for_replicas(run, replicas)
    if chief and verbose:
        if done >= run.train.epochs:
            print(f"{run_dir} has finished all {done} epochs", flush=True)
        elif done:
            print(f"resuming {run_dir} at epoch {done + 1}", flush=True)
        else:
            print(f"run directory: {run_dir}", flush=True)
        if replicas > 1 or run.train.batch_scaling != "none":
            print(config_lib.describe_scaling(run, replicas), flush=True)
    start = time.time()
    with precision_policy(run):
        keras.utils.set_random_seed(run.train.seed)
        data = TrainingData.load(scaled)
        with strategy.scope():
            model = models.build_model(
                run.model,
                stored_size=data.manifest.stored_size,
                augment=run.data.augment,
                seed=run.train.seed,
            )
        if run.train.xla:  # stops before the run directory is written
            check_jit(model)
        if chief and verbose:
            print(step_line(run), flush=True)
        if chief:
            prepare_run_dir(run)
        out_dir.mkdir(parents=True, exist_ok=True)
        state.path = out_dir / STATE_FILE
        history = run_phases(
            model, scaled, data, state, out_dir=out_dir, strategy=strategy,
            restore_from=restore_from, verbose=verbose, chief=chief, interrupt=interrupt,
        )  # fmt: skip
    summary = {
        "run_dir": str(run_dir),
        "best_val_mean_auroc": state.data["best"],
        "best_epoch": state.data["best_epoch"],
        "epochs_done": state.data["epochs_done"],
        "resumed_at_epoch": done + 1 if done else None,
        "stopped_early": bool(state.data["stopped_early"]),
        "train_images": data.total,
        "steps_per_epoch": data.steps,
        "replicas": replicas,
        "global_batch": scaled.data.batch_size,
        "seconds_this_session": round(time.time() - start, 1),
        "outputs": list(data.spec.names),
        "task": data.spec.task,
        "dataset": run.data.dataset,
        "dataset_fingerprint": data.manifest.fingerprint,
        "input_size": run.model.input_size,
        "stored_size": data.manifest.stored_size,
        "history_this_session": history,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    if chief:
        write_text_atomic(
            run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=float) + "\n"
        )
    return summary
