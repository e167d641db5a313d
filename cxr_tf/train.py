"""Training: the one compile function, the callbacks, two-phase transfer learning, resume.

`fit(run)` writes the resolved config into the run directory before anything else, then
trains in two phases (head on a frozen backbone, then fine-tuning the top blocks or all
of it at a lower learning rate, BatchNorm kept in inference mode). Every epoch it
computes the per-finding validation AUROC and keeps:

- `best.keras`: the best model by validation mean AUROC (never overwritten by a worse one,
  also across a resume);
- `last.keras`, `history.csv`, TensorBoard logs under `logs/`;
- `state.json`: what a resumed run needs beyond Keras' `BackupAndRestore` (which restores
  weights, optimizer and epoch): the best score so far and the early-stopping and
  plateau counters.

Rerunning the same command (or `python -m cxr_tf.fit --resume RUN_DIR`) continues a killed
run from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_tf import config as config_lib
from cxr_tf import losses, metrics, models, pipeline
from cxr_tf.config import ConfigError, RunConfig

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
SUMMARY_FILE = "summary.json"
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
MONITOR = "val_mean_auroc"


# --- building blocks shared with tuning ---------------------------------------------------


def training_counts(run: RunConfig, spec: pipeline.LabelSpec, manifest: dict) -> tuple:
    """(per-output positive counts or class counts, training images for the task)."""
    if spec.task == "multiclass":
        counts = pipeline.class_counts(run.data, spec, "train")
        return counts.astype(np.float64), int(counts.sum())
    return spec.counts(manifest, "train")


def build_loss(run: RunConfig, spec: pipeline.LabelSpec, counts: np.ndarray, total: int):
    """The configured loss, with class weights from the training split's counts."""
    return losses.build_loss(
        run.train.loss,
        spec.task,
        pos_counts=counts,
        total=total,
        gamma=run.train.focal_gamma,
        alpha=run.train.focal_alpha,
    )


def make_optimizer(run: RunConfig, lr: float, steps_per_epoch: int, epochs: int):
    """Adam/AdamW with a constant rate or cosine decay with linear warm-up."""
    train = run.train
    rate: Any = lr
    if train.schedule == "cosine":
        total = max(1, steps_per_epoch * epochs)
        warmup = min(int(train.warmup_epochs * steps_per_epoch), total - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr,
            decay_steps=total - warmup,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=train.weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def compile_model(
    model: keras.Model,
    run: RunConfig,
    loss: Any,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
) -> keras.Model:
    """The one place that compiles a classifier (training and tuning both call it)."""
    model.compile(
        optimizer=make_optimizer(run, lr, steps_per_epoch, epochs),
        loss=loss,
        jit_compile=run.train.xla,
    )
    return model


def make_strategy(name: str):
    """The tf.distribute strategy named in the config."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _patch_multi_worker_log_reduction() -> None:
    """Works around Keras 3 averaging scalar step logs across workers along axis 0.

    Under MultiWorkerMirroredStrategy Keras 3.15's TF trainer reduces each per-step log
    value (scalars: the loss, metrics) with `strategy.reduce("MEAN", v, axis=0)`, which
    fails ("Invalid reduction dimension 0 for input with 0 dimensions", reported as
    tensorflow/tensorflow#72388). Averaging over replicas (`axis=None`) is what is meant;
    gradients are unaffected.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "patched_by_cxr_tf", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(  # noqa: SLF001
            strategy
        ):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.patched_by_cxr_tf = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster


# --- validation AUROC ------------------------------------------------------------------------


def evaluate_auroc(model: keras.Model, dataset, spec: pipeline.LabelSpec) -> dict:
    """Per-output validation AUROC (None when undefined) and the mean over defined ones."""
    logits, targets = [], []
    for images, y in dataset:
        logits.append(np.asarray(model(images, training=False)))
        targets.append(np.asarray(y))
    logits_all = np.concatenate(logits).astype(np.float64)
    y_true = np.concatenate(targets)
    probs = np.asarray(models.probabilities(logits_all, spec.task))
    if spec.task == "multiclass":
        report = metrics.multiclass_report(y_true.argmax(-1), probs, list(spec.names))
        per = dict(report["auroc"])
    else:
        per = metrics.per_finding_auroc(y_true.astype(int), probs, list(spec.names))
    mean, count = metrics.mean_auroc(per)
    return {"per_output": per, "mean": mean, "count": count, "n": int(len(y_true))}


class AurocCallback(keras.callbacks.Callback):
    """Adds `val_mean_auroc` and `val_auroc/<finding>` to the epoch logs and prints them."""

    def __init__(self, dataset, spec: pipeline.LabelSpec, verbose: bool = True) -> None:
        super().__init__()
        self.dataset, self.spec, self.verbose = dataset, spec, verbose
        self.last: dict | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        result = evaluate_auroc(self.model, self.dataset, self.spec)
        self.last = result
        if logs is not None:
            logs[MONITOR] = float("nan") if result["mean"] is None else result["mean"]
            for name, value in result["per_output"].items():
                logs[f"val_auroc/{name}"] = float("nan") if value is None else value
        if self.verbose:
            print(format_auroc(epoch + 1, result), flush=True)


def format_auroc(epoch: int, result: dict) -> str:
    parts = [
        f"{name} {'undefined' if v is None else f'{v:.3f}'}"
        for name, v in result["per_output"].items()
    ]
    mean = "undefined" if result["mean"] is None else f"{result['mean']:.4f}"
    total = len(result["per_output"])
    return (
        f"epoch {epoch}: val mean AUROC {mean} over {result['count']} of {total} "
        f"(n={result['n']}): " + ", ".join(parts)
    )


# --- resumable state -------------------------------------------------------------------------


class RunState:
    """`state.json`: best score, counters and phase progress that Keras does not restore."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "best": None,
            "best_epoch": None,
            "early_stopping_wait": 0,
            "plateau_wait": 0,
            "learning_rate": None,
            "head_done": False,
            "epochs_done": 0,
            "stopped_early": False,
        }
        if path.exists():
            self.data.update(json.loads(path.read_text()))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


class StateCallback(keras.callbacks.Callback):
    """Records the best score and the counters after every epoch (before the backup)."""

    def __init__(self, state: RunState, early: Any, plateau: Any) -> None:
        super().__init__()
        self.state, self.early, self.plateau = state, early, plateau

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get(MONITOR)
        data = self.state.data
        if score is not None and not math.isnan(score):
            if data["best"] is None or score > data["best"]:
                data["best"], data["best_epoch"] = float(score), epoch + 1
        data["epochs_done"] = epoch + 1
        data["early_stopping_wait"] = int(getattr(self.early, "wait", 0))
        data["plateau_wait"] = int(getattr(self.plateau, "wait", 0)) if self.plateau else 0
        lr = self.model.optimizer.learning_rate
        data["learning_rate"] = float(np.asarray(lr)) if np.ndim(np.asarray(lr)) == 0 else None
        self.state.save()


class _ResumesFromState:
    """Mixin: after Keras resets a monitor callback, restore its best score and counter."""

    wait_key = ""

    def __init__(self, state: RunState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)  # type: ignore[misc]
        if self.state.data["best"] is not None:
            self.best = self.state.data["best"]
            self.wait = self.state.data[self.wait_key]


class ResumableEarlyStopping(_ResumesFromState, keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from the saved best score and patience counter."""

    wait_key = "early_stopping_wait"


class ResumablePlateau(_ResumesFromState, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that starts from the saved best score and wait counter."""

    wait_key = "plateau_wait"


class SaveLast(keras.callbacks.Callback):
    """Writes `last.keras` after every epoch (atomically: a kill never leaves half a file)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        tmp = self.path.with_name("tmp_" + self.path.name)
        self.model.save(tmp)
        os.replace(tmp, self.path)


class BestCheckpoint(keras.callbacks.Callback):
    """Writes `best.keras` when the monitored score beats the best so far (atomically)."""

    def __init__(self, path: Path, state: RunState) -> None:
        super().__init__()
        self.path, self.state = path, state

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get(MONITOR)
        best = self.state.data["best"]
        if score is None or math.isnan(score):
            return
        # StateCallback runs first and has already recorded a new best for this epoch.
        if best is not None and score >= best and self.state.data["best_epoch"] == epoch + 1:
            tmp = self.path.with_name("tmp_" + self.path.name)
            self.model.save(tmp)
            os.replace(tmp, self.path)


# --- the run -------------------------------------------------------------------------------


def default_run_dir(run: RunConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{stamp}-{run.model.backbone}-{run.model.task}")


def prepare_run_dir(run: RunConfig) -> Path:
    """Creates the run directory and writes config.json, or checks an earlier run matches.

    A run directory that already holds a different config is refused (the differing keys
    are named), so a resumed run always continues the same experiment.
    """
    if not run.train.run_dir:
        run.train.run_dir = default_run_dir(run)
    run_dir = Path(run.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    if path.exists():
        earlier = config_lib.to_dict(config_lib.load(RunConfig, path))
        now = config_lib.to_dict(run)
        diff = sorted(
            f"{section}.{key}"
            for section in now
            for key in set(now[section]) | set(earlier[section])
            if now[section].get(key) != earlier[section].get(key)
        )
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(diff)}); "
                f"resume it with `--resume {run_dir}` or choose another --train.run_dir"
            )
    else:
        config_lib.save(run, path)
    return run_dir


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run was trained with."""
    return config_lib.load(RunConfig, Path(run_dir) / CONFIG_FILE)


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stretch of training with fixed trainable layers and learning rate."""

    name: str
    mode: str  # for models.set_backbone_trainable
    lr: float
    start: int  # first epoch (0-based)
    end: int  # epoch after the last


def training_phases(cfg: config_lib.TrainConfig) -> list[Phase]:
    """Head on a frozen backbone, then fine-tuning (either may be absent)."""
    phases = []
    if cfg.head_epochs > 0:
        phases.append(Phase("head", "frozen", cfg.lr, 0, cfg.head_epochs))
    if cfg.epochs > cfg.head_epochs:
        mode = "frozen" if cfg.finetune == "none" else cfg.finetune
        lr = cfg.finetune_lr if cfg.head_epochs > 0 else cfg.lr
        phases.append(Phase("finetune", mode, lr, cfg.head_epochs, cfg.epochs))
    return phases


def steps_per_epoch(run: RunConfig, images: int) -> int:
    if run.train.steps_per_epoch:
        return run.train.steps_per_epoch
    steps = images // run.data.batch_size
    if steps < 1:
        raise ConfigError(
            f"data.batch_size: {run.data.batch_size} exceeds the {images} training images"
        )
    return steps


def fit(run: RunConfig, verbose: int = 2) -> dict:
    """Trains `run` (resuming its run directory if it has one); returns the summary."""
    import tensorflow as tf

    # A multi-worker strategy configures collective ops, which must precede any other op.
    strategy = make_strategy(run.train.strategy)
    if run.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(run.train.seed)
    manifest = pipeline.check_compatible(run.data, run.model)
    run_dir = prepare_run_dir(run)
    chief = is_chief()
    # Non-chief workers of a multi-worker run write their copies to a scratch folder.
    out_dir = run_dir if chief else run_dir / f"worker_{os.getpid()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = pipeline.LabelSpec.from_config(run.model)
    counts, total = training_counts(run, spec, manifest)
    steps = steps_per_epoch(run, total)
    val_steps = run.train.validation_steps or None
    train_ds = pipeline.make_dataset(
        run.data, spec, "train", training=True, repeat=True, seed=run.train.seed,
        manifest=manifest,
    )  # fmt: skip
    val_ds = pipeline.make_dataset(run.data, spec, "validation", training=False, manifest=manifest)
    if val_steps:
        val_ds = val_ds.take(val_steps)
    if run.train.strategy != "default":
        # Keras reduces the first distributed batch across replicas to build the model;
        # collective reductions take no uint8, so distributed runs ship float32.
        train_ds = train_ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    state = RunState(out_dir / STATE_FILE)
    with strategy.scope():
        model = models.build_model(
            run.model, stored_size=manifest["image"]["size"], augment=run.data.augment
        )
    if (out_dir / LAST_MODEL).exists():
        model.load_weights(out_dir / LAST_MODEL)  # the end of the last finished epoch
    loss = build_loss(run, spec, counts, total)

    start = time.time()
    history: dict[str, list] = {}
    for name, mode, lr, first, last in (
        (p.name, p.mode, p.lr, p.start, p.end) for p in training_phases(run.train)
    ):
        if state.data["stopped_early"]:
            break
        if (name == "head" and state.data["head_done"]) or state.data["epochs_done"] >= last:
            continue
        models.set_backbone_trainable(model, run.model, mode)
        with strategy.scope():
            compile_model(model, run, loss, lr, steps, last - first)
            if run.train.strategy != "default":
                # Keras 3 builds the loss/optimizer state from the first batch, which under
                # a distribution strategy is a per-replica value it cannot read; build it
                # from a plain batch of the right shapes instead.
                size = manifest["image"]["size"]
                model._symbolic_build(  # noqa: SLF001 - no public equivalent in Keras 3.15
                    data_batch=(
                        np.zeros((1, size, size, 1), np.float32),
                        np.zeros((1, spec.size), np.float32),
                    )
                )
                # Keras 3.15 would otherwise all-reduce the first distributed batch (which
                # fails under MultiWorkerMirroredStrategy) just to build what is built now;
                # fit() runs inside strategy.scope(), so the strategy still applies.
                model._distribute_strategy = None  # noqa: SLF001
                _patch_multi_worker_log_reduction()
        auroc = AurocCallback(val_ds, spec, verbose=verbose > 0 and chief)
        early = ResumableEarlyStopping(
            state, monitor=MONITOR, mode="max", patience=run.train.early_stopping_patience
        )
        plateau = (
            ResumablePlateau(
                state,
                monitor=MONITOR,
                mode="max",
                factor=run.train.plateau_factor,
                patience=run.train.plateau_patience,
                min_lr=lr * 1e-3,
                verbose=1 if chief else 0,
            )
            if run.train.schedule == "plateau"
            else None
        )
        callbacks = [
            auroc,
            StateCallback(state, early, plateau),
            BestCheckpoint(out_dir / BEST_MODEL, state),
            SaveLast(out_dir / LAST_MODEL),
            early,
            *([plateau] if plateau else []),
            keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False),
            keras.callbacks.BackupAndRestore(str(out_dir / "backup" / name)),
            keras.callbacks.TerminateOnNaN(),
        ]
        with strategy.scope():
            result = model.fit(
                train_ds,
                epochs=last,
                initial_epoch=first,
                steps_per_epoch=steps,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the pipeline shuffles
            )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        if early.stopped_epoch:
            state.data["stopped_early"] = True
        if name == "head":
            state.data["head_done"] = True
        state.save()
    summary = {
        "run_dir": str(run_dir),
        "best_val_mean_auroc": state.data["best"],
        "best_epoch": state.data["best_epoch"],
        "epochs_done": state.data["epochs_done"],
        "stopped_early": state.data["stopped_early"],
        "train_images": total,
        "steps_per_epoch": steps,
        "seconds_this_session": round(time.time() - start, 1),
        "outputs": list(spec.names),
        "task": spec.task,
        "dataset": run.data.dataset,
        "dataset_fingerprint": manifest.get("fingerprint"),
        "image_size": run.model.image_size,
        "stored_size": manifest["image"]["size"],
        "history_this_session": history,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    if chief:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
