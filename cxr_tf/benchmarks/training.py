"""The training-loop benchmark: seconds per epoch of `cxr_tf.fit` vs a plain Keras loop."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from cxr_tf.benchmarks.data import synthetic_nih
from cxr_tf.config import (
    BenchFitConfig,
)


def _synthetic_dataset(config: BenchFitConfig) -> Path:
    """`config.images` synthetic NIH-like images converted at `input_size` (reused)."""
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion
    from cxr_tf.data.manifest import MANIFEST

    workdir = Path(config.workdir)
    root = synthetic_nih(workdir / "nih_fit", config.images, 0, image_size=256)
    convert_config = ConvertConfig(
        root=str(root), out_dir=str(workdir / "tfrecords"),
        name=f"bench_fit_{config.images}_{config.input_size}", stored_size=config.input_size,
        split=SplitConfig(strategy="official", val_fraction=0.2),
    )  # fmt: skip
    dataset = workdir / "tfrecords" / convert_config.name
    if not (dataset / MANIFEST).exists():
        conversion.convert(convert_config, progress=False)
    return dataset


def bench_fit(config: BenchFitConfig) -> dict:
    """Per-epoch seconds of `cxr_tf.fit` against a plain Keras loop doing the same work.

    Both train the same model with the same loss, optimizer, pipeline and steps; the plain
    loop is `model.fit` with a callback that runs a compiled `model.predict` over the
    validation split, computes its AUROC and saves the model, every epoch. `cxr_tf.fit`
    adds its checkpoint, state, history, TensorBoard and resume machinery. Start-up
    (graph building, data loading) is removed by differencing runs of N and 3N epochs.
    """
    import tempfile

    import keras
    import numpy as np

    from cxr_tf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from cxr_tf.data import reader
    from cxr_tf.modeling import metrics, models
    from cxr_tf.training import callbacks, optimization, trainer

    dataset = config.dataset or str(_synthetic_dataset(config))
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fit-", dir=config.workdir))

    def run_config(backbone: str, epochs: int, run_dir: Path) -> RunConfig:
        return RunConfig(
            data=DataConfig(dataset=dataset, batch_size=config.batch),
            model=ModelConfig(backbone=backbone, weights="", input_size=config.input_size),
            train=TrainConfig(
                run_dir=str(run_dir), head_epochs=0, epochs=epochs, schedule="constant",
                early_stopping_patience=epochs + 1, steps_per_epoch=config.steps, lr=1e-3,
            ),
        )  # fmt: skip

    def ours(backbone: str, epochs: int) -> float:
        run_dir = work / f"ours-{backbone}-{epochs}"
        start = time.perf_counter()
        trainer.fit(run_config(backbone, epochs, run_dir), verbose=0)
        seconds = time.perf_counter() - start
        shutil.rmtree(run_dir, ignore_errors=True)
        return seconds

    def plain(backbone: str, epochs: int) -> float:
        run = run_config(backbone, epochs, work / f"plain-{backbone}-{epochs}")
        out = Path(run.train.run_dir)
        out.mkdir(parents=True)
        start = time.perf_counter()
        keras.utils.set_random_seed(run.train.seed)
        data = trainer.TrainingData.load(run)
        model = models.build_model(
            run.model, stored_size=data.manifest.stored_size, augment=run.data.augment
        )
        loss = optimization.build_loss(run, data.spec, data.counts, data.known)
        optimization.compile_model(model, run, loss, run.train.lr, data.steps, epochs)
        read = reader.ReadOptions(
            training=True, repeat=True, seed=run.train.seed, steps_per_epoch=data.steps
        )
        train_ds = reader.make_dataset(run.data, data.spec, "train", read)
        images = data.val_ds.map(lambda x, y: x)
        targets, steps = callbacks.split_targets(data.val_ds)

        class ValidateAndSave(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logits = self.model.predict(images, steps=steps, verbose=0)
                probs = np.asarray(models.probabilities(logits, data.spec.task))
                per = metrics.per_finding_auroc(targets.astype(int), probs, list(data.spec.names))
                metrics.mean_auroc(per)
                self.model.save(out / "best.keras")

        model.fit(
            train_ds, epochs=epochs, steps_per_epoch=data.steps,
            callbacks=[ValidateAndSave()], verbose=0, shuffle=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        return seconds

    results: dict[str, Any] = {"dataset": dataset, "epochs": [config.epochs, 3 * config.epochs]}
    for backbone in config.backbones:
        times = {}
        for name, fn in (("plain", plain), ("cxr_tf", ours)):
            short, long = fn(backbone, config.epochs), fn(backbone, 3 * config.epochs)
            times[name] = {
                "seconds": [short, long],
                "per_epoch_s": (long - short) / (2 * config.epochs),
            }
        times["ratio"] = times["cxr_tf"]["per_epoch_s"] / times["plain"]["per_epoch_s"]
        results[backbone] = times
        print(
            f"fit per epoch, {backbone} at {config.input_size} px, batch {config.batch}, "
            f"{config.steps} steps: cxr_tf {times['cxr_tf']['per_epoch_s']:.2f} s, "
            f"plain Keras loop {times['plain']['per_epoch_s']:.2f} s, ratio "
            f"{times['ratio']:.3f} (target <= 1.05)"
        )
    shutil.rmtree(work, ignore_errors=True)
    return results
