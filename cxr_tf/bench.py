"""`python -m cxr_tf.bench <what>`: benchmarks that print figures next to a baseline measured
in the same run, on the same cores.

- `convert`: conversion images/s vs bare PNG decoding of the same 1024 px files;
- `read`: records/s through TFDS (`builder_from_directory`) vs the project's batch parser;
- `pipeline`: training batches/s from the shards vs a plain tf.data pipeline decoding the
  original 1024 px PNGs, and with augmentation moved onto the CPU;
- `fit`: seconds per epoch of `cxr_tf.fit` (validation and checkpoints included) vs a plain
  Keras loop doing the same work, start-up removed (runs of N and 3N epochs differenced).
- `shards`: distinct patients per training batch with contiguous (sorted-name) shards vs
  the converter's seeded random shards, against a fully shuffled reference.
- `serve`: requests/s and latency of the exported `serving_default` (encoded PNGs in) vs
  `model.predict` and a direct model call on preprocessed tensors, at batch 1 and 32, on CPU.
- `model`: training and inference images/s and ms/step of the project's model (in-model
  augmentation, resize and normalisation included) on in-memory uint8 batches, on any
  Keras backend (`KERAS_BACKEND=jax` imports no TensorFlow), per batch size, precision and
  jit setting; `--peer timm` times timm's DenseNet121 in PyTorch in the same run.

Each benchmark takes a typed config (`cxr_tf.config.Bench*Config`): one flag per field,
`--config FILE` for a JSON file of them, `--json PATH` to write the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import gc
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cxr_tf import config as config_lib
from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import (
    BenchConvertConfig,
    BenchFitConfig,
    BenchModelConfig,
    BenchPipelineConfig,
    BenchReadConfig,
    BenchServeConfig,
    BenchShardsConfig,
)


def _synth(root: Path, n: int, seed: int, image_size: int = 1024) -> Path:
    from cxr_tf.config import SynthConfig
    from cxr_tf.data import synthetic

    marker = root / ".bench_synth.json"
    want = {"n": n, "seed": seed, "image_size": image_size}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    if root.exists():
        shutil.rmtree(root)
    synthetic.generate(
        SynthConfig(out=str(root), n=n, seed=seed, image_size=image_size, prevalence="0.1")
    )
    marker.write_text(json.dumps(want))
    return root


def _bare_decode(paths: list[Path], workers: int) -> float:
    """Seconds to read + decode every PNG with TF's decoder on `workers` threads."""
    import tensorflow as tf

    decode = tf.function(
        lambda b: tf.io.decode_png(b, channels=0), input_signature=[tf.TensorSpec([], tf.string)]
    )
    decode(paths[0].read_bytes())  # trace outside the timing

    def one(path: Path) -> int:
        return int(decode(path.read_bytes()).shape[0])

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def bench_convert(config: BenchConvertConfig) -> dict:
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    workdir = Path(config.workdir)
    root = _synth(workdir / "nih", config.n, config.seed)
    paths = sorted((root / "images").glob("*.png"))
    workers = config.workers or os.cpu_count() or 1
    _bare_decode(paths[:8], workers)  # warm caches and TF
    decode_s = _bare_decode(paths, workers)
    results = {"images": len(paths), "workers": workers, "bare_decode_img_s": len(paths) / decode_s}
    for encoding in config.encodings:
        out = workdir / "tfrecords"
        convert_config = ConvertConfig(
            nih_root=str(root),
            out_dir=str(out),
            name=f"bench_{config.size}_{encoding}",
            image_size=config.size,
            encoding=encoding,
            workers=workers,
            split=SplitConfig(strategy="official", val_fraction=0.1),
        )
        shutil.rmtree(out / convert_config.dataset_name, ignore_errors=True)
        start = time.perf_counter()
        manifest = conversion.convert(convert_config, progress=False)
        seconds = time.perf_counter() - start
        shards = [s for e in manifest["splits"].values() for s in e["shards"]]
        records = sum(s["records"] for s in shards)
        size = sum(s["bytes"] for s in shards)
        timing = manifest["timing"]
        results[encoding] = {
            "convert_img_s": records / timing["write_s"],
            "total_s": seconds,
            "fixed_s": timing["setup_s"] + timing["finish_s"],
            "ratio_to_bare_decode": (timing["write_s"] / records) / (decode_s / len(paths)),
            "bytes_per_record": size / records,
            "shard_bytes": [s["bytes"] for s in shards],
        }
    print(f"convert benchmark: {len(paths)} synthetic 1024px PNGs, {workers} worker(s)")
    print(f"  bare PNG decode (tf.io.decode_png): {results['bare_decode_img_s']:8.1f} img/s")
    for encoding in config.encodings:
        r = results[encoding]
        print(
            f"  convert to {config.size}px {encoding:>3}: {r['convert_img_s']:8.1f} img/s  "
            f"time/img = {r['ratio_to_bare_decode']:.2f}x bare decode  "
            f"{r['bytes_per_record'] / 1024:.1f} KiB/record  "
            f"(+{r['fixed_s']:.1f} s reading metadata, splitting, manifest)"
        )
    nih_images = 112_120
    best = max(results[e]["convert_img_s"] for e in config.encodings)
    per_core = best / workers
    print(
        f"  implied full NIH ({nih_images} images) on 16 cores at {per_core:.1f} img/s/core: "
        f"{nih_images / (per_core * 16) / 60:.1f} min (decode-bound; disk and archive "
        f"decompression not included)"
    )
    return results


def bench_read(config: BenchReadConfig) -> dict:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from cxr_tf.config import DataConfig, ModelConfig
    from cxr_tf.data import pipeline

    dataset_dir = Path(config.dataset)
    manifest = pipeline.load_manifest(dataset_dir)
    spec = pipeline.LabelSpec.from_config(ModelConfig(backbone="tiny"))
    batch = config.batch

    def project() -> tf.data.Dataset:
        data = DataConfig(dataset=str(dataset_dir), batch_size=batch)
        ds = pipeline.make_dataset(data, spec, "train", training=False, manifest=manifest)
        return ds.map(lambda x, y: {"image": x, "labels": y})

    def tfds_path() -> tf.data.Dataset:
        builder = tfds.builder_from_directory(str(dataset_dir))
        ds = builder.as_dataset(split="train", read_config=tfds.ReadConfig(try_autocache=False))
        ds = ds.map(lambda r: {"image": r["image"], "labels": r["labels"]})
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    def rate(make: object) -> float:
        count, start = 0, None
        for epoch in range(config.epochs + 1):
            if epoch == 1:
                count, start = 0, time.perf_counter()
            for item in make():  # type: ignore[operator]
                count += int(item["image"].shape[0])
        return count / (time.perf_counter() - start)

    results = {"tfds_img_s": rate(tfds_path), "project_img_s": rate(project)}
    print(f"read benchmark: {dataset_dir.name}, train split, batch {batch}, uint8 images + labels")
    print(f"  tfds.builder_from_directory: {results['tfds_img_s']:9.1f} img/s")
    print(f"  cxr_tf.data.pipeline (eval mode): {results['project_img_s']:9.1f} img/s")
    return results


def _rate(dataset: object, batches: int) -> float:
    """Images/s over `batches` batches after one warm-up batch."""
    iterator = iter(dataset)  # type: ignore[call-overload]
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        count += int(next(iterator)[0].shape[0])
    return count / (time.perf_counter() - start)


def bench_pipeline(config: BenchPipelineConfig) -> dict:
    """Training input pipeline from shards vs a plain pipeline decoding the 1024 px PNGs."""
    import tensorflow as tf

    from cxr_tf.config import AugmentConfig, ConvertConfig, DataConfig, ModelConfig, SplitConfig
    from cxr_tf.data import conversion, nih, pipeline
    from cxr_tf.data import preprocessing as pp
    from cxr_tf.modeling import augment

    workdir = Path(config.workdir)
    root = _synth(workdir / "nih", config.n, config.seed)
    spec = pipeline.LabelSpec.from_config(ModelConfig(backbone="tiny"))
    results: dict = {"batch": config.batch, "stored_size": config.size}
    df = nih.read_data_entry(root / "Data_Entry_2017.csv")
    labels = nih.labels_matrix(df)
    paths = [str(root / "images" / n) for n in df["image_index"]]

    def png_pipeline() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths)).repeat()
        ds = ds.map(
            lambda p, y: (
                pp.bytes_to_stored(tf.io.read_file(p), config.size),
                spec.select(y[None])[0],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(config.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    results["png_decode_img_s"] = _rate(png_pipeline(), config.batches)
    for encoding in config.encodings:
        convert_config = ConvertConfig(
            nih_root=str(root), out_dir=str(workdir / "tfrecords"),
            name=f"bench_{config.size}_{encoding}", image_size=config.size, encoding=encoding,
            split=SplitConfig(strategy="random", fractions=(0.9, 0.05, 0.05)),
        )  # fmt: skip
        if not (workdir / "tfrecords" / convert_config.dataset_name / "manifest.json").exists():
            conversion.convert(convert_config, progress=False)
        data = DataConfig(
            dataset=str(workdir / "tfrecords" / convert_config.dataset_name),
            batch_size=config.batch, shuffle_buffer=1024, cache=config.cache,
        )  # fmt: skip
        ds = pipeline.make_dataset(data, spec, "train", training=True, repeat=True, seed=0)
        results[f"{encoding}_uint8_img_s"] = _rate(ds, config.batches)
        # The alternative placement: augmentation and float conversion on the CPU in tf.data.
        layer = augment.build_augmentation(AugmentConfig(), seed=0)
        cpu = ds.map(
            lambda x, y, layer=layer: (layer(tf.cast(x, tf.float32), training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        results[f"{encoding}_cpu_augment_float_img_s"] = _rate(cpu, config.batches)
    base = results["png_decode_img_s"]
    print(
        f"pipeline benchmark: batch {config.batch}, {config.size} px stored, "
        f"{os.cpu_count()} cores, {config.batches} batches after warm-up"
    )
    print(f"  plain tf.data decoding the 1024 px PNGs : {base:9.1f} img/s (baseline)")
    for encoding in config.encodings:
        for key, what in (
            ("uint8", "shards -> uint8 batches (augment on accelerator)"),
            ("cpu_augment_float", "shards -> CPU augmentation -> float32"),
        ):
            value = results[f"{encoding}_{key}_img_s"]
            print(f"  {encoding:>3} {what:<48}: {value:9.1f} img/s  ({value / base:5.1f}x)")
    return results


def _synthetic_dataset(config: BenchFitConfig) -> Path:
    """`config.images` synthetic NIH-like images converted at `image_size` (reused)."""
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    workdir = Path(config.workdir)
    root = _synth(workdir / "nih_fit", config.images, 0, image_size=256)
    convert_config = ConvertConfig(
        nih_root=str(root), out_dir=str(workdir / "tfrecords"),
        name=f"bench_fit_{config.images}_{config.image_size}", image_size=config.image_size,
        split=SplitConfig(strategy="official", val_fraction=0.2),
    )  # fmt: skip
    dataset = workdir / "tfrecords" / convert_config.dataset_name
    if not (dataset / "manifest.json").exists():
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
    from cxr_tf.data import pipeline
    from cxr_tf.evaluation import metrics
    from cxr_tf.modeling import models
    from cxr_tf.training import callbacks, optimization, trainer

    dataset = config.dataset or str(_synthetic_dataset(config))
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fit-", dir=config.workdir))

    def run_config(backbone: str, epochs: int, run_dir: Path) -> RunConfig:
        return RunConfig(
            data=DataConfig(dataset=dataset, batch_size=config.batch),
            model=ModelConfig(backbone=backbone, weights="", image_size=config.image_size),
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
            run.model, stored_size=data.manifest["image"]["size"], augment=run.data.augment
        )
        loss = optimization.build_loss(run, data.spec, data.counts, data.total)
        optimization.compile_model(model, run, loss, run.train.lr, data.steps, epochs)
        train_ds = pipeline.make_dataset(
            run.data, data.spec, "train", training=True, repeat=True, seed=run.train.seed,
            manifest=data.manifest, steps_per_epoch=data.steps,
        )  # fmt: skip
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
            f"fit per epoch, {backbone} at {config.image_size} px, batch {config.batch}, "
            f"{config.steps} steps: cxr_tf {times['cxr_tf']['per_epoch_s']:.2f} s, "
            f"plain Keras loop {times['plain']['per_epoch_s']:.2f} s, ratio "
            f"{times['ratio']:.3f} (target <= 1.05)"
        )
    shutil.rmtree(work, ignore_errors=True)
    return results


def _bench_images(config: BenchServeConfig, count: int) -> list[bytes]:
    """Encoded PNGs: files from --images, else synthetic gray chest-film-like images."""
    import numpy as np
    import tensorflow as tf

    if config.images:
        folder = Path(config.images)
        files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jp*g"))
        if not files:
            raise SystemExit(f"bench serve: no PNG/JPEG files in {folder}")
        return [files[i % len(files)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(config.seed)
    side = config.source_size
    ramp = np.linspace(40, 200, side, dtype=np.float32)
    images = []
    for _ in range(min(count, 8)):  # 8 distinct images, cycled
        noise = rng.normal(0, 6, (side, side)).astype(np.float32)
        image = np.clip(ramp[None, :] * 0.5 + ramp[:, None] * 0.5 + noise, 0, 255)
        images.append(tf.io.encode_png(image.astype(np.uint8)[..., None]).numpy())
    return [images[i % len(images)] for i in range(count)]


def _latencies(calls: dict, repeats: int, min_seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each path, timed in rounds of one call per path.

    Interleaving spreads any drift in machine load (shared cores) over every path alike.
    Two untimed warm-up calls per path; then rounds until each path has `repeats` calls
    and the rounds took `min_seconds` per path.
    """
    for call in calls.values():
        for _ in range(2):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    begin = time.perf_counter()
    while True:
        enough = min(len(t) for t in times.values()) >= repeats
        if enough and time.perf_counter() - begin >= min_seconds * len(calls):
            break
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def bench_serve(config: BenchServeConfig) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the figures are CPU figures
    from cxr_tf.config import ExportConfig
    from cxr_tf.data import preprocessing
    from cxr_tf.serving import client, exporter
    from cxr_tf.training import runs

    run_dir = Path(config.run_dir)
    out = Path(config.workdir) / "serve_export"
    shutil.rmtree(out, ignore_errors=True)
    folder = exporter.export(
        ExportConfig(
            run_dir=str(run_dir), model=config.model, name="bench", version=1, out=str(out),
            warmup=False,
        ),
        verbose=False,
    )  # fmt: skip
    loaded = tf.saved_model.load(str(folder))
    serve_bytes = loaded.signatures[client.SERVING_SIGNATURE]
    serve_images = loaded.signatures[client.IMAGES_SIGNATURE]
    model = runs.load_model(run_dir, config.model)
    size = int(model.inputs[0].shape[1])
    encoded = _bench_images(config, max(config.batches))
    stored = np.stack([preprocessing.bytes_to_stored(b, size).numpy() for b in encoded])
    stored = stored.astype(np.float32)
    rows = []
    for batch in config.batches:
        data = tf.constant(encoded[:batch], dtype=tf.string)
        x_np = stored[:batch]
        x_tf = tf.constant(x_np)
        paths = {
            "SavedModel serving_default (PNG bytes)": lambda d=data: serve_bytes(image_bytes=d),
            "SavedModel predict_images (tensors)": lambda x=x_tf: serve_images(images=x),
            "Keras model.predict (tensors)": lambda x=x_np, b=batch: model.predict(
                x, batch_size=b, verbose=0
            ),
            "Keras model(x) direct call (tensors)": lambda x=x_tf: model(x, training=False),
        }
        for name, measured in _latencies(paths, config.repeats, config.min_seconds).items():
            times = np.array(measured)
            rows.append(
                {
                    "batch": batch,
                    "path": name,
                    "calls": int(len(times)),
                    "requests_s": float(1.0 / times.mean()),
                    "images_s": float(batch / times.mean()),
                    "p50_ms": float(np.percentile(times, 50) * 1000),
                    "p95_ms": float(np.percentile(times, 95) * 1000),
                }
            )
    source = config.images or f"synthetic {config.source_size}px gray PNGs"
    print(
        f"serve benchmark: {run_dir} ({runs.MODEL_FILES[config.model]}), stored size {size}, "
        f"CPU ({os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}), "
        f"images: {source}, one client, sequential calls interleaved across paths"
    )
    print(f"  {'batch':>5}  {'path':<40} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for r in rows:
        print(
            f"  {r['batch']:>5}  {r['path']:<40} {r['requests_s']:8.2f} {r['images_s']:8.1f} "
            f"{r['p50_ms']:8.1f} {r['p95_ms']:8.1f}"
        )
    return {"run_dir": str(run_dir), "stored_size": size, "source": source, "rows": rows}


def _nih_like_patients(config: BenchShardsConfig) -> list[str]:
    """Training image names ("PPPPPPPP_FFF.png") with NIH's patient structure."""
    import numpy as np

    rng = np.random.default_rng(config.seed)
    if config.data_entry:
        from cxr_tf.data import nih

        df = nih.read_data_entry(config.data_entry)
        names = df["image_index"].tolist()
    else:  # 112,120 images of 30,805 patients, most with one image, a few with hundreds
        counts = np.minimum(rng.geometric(30_805 / 112_120, size=30_805), 184)
        names = [f"{p + 1:08d}_{f:03d}.png" for p, n in enumerate(counts) for f in range(n)]
    patients = sorted({n[:8] for n in names})
    train = set(rng.permutation(patients)[: int(0.69 * len(patients))].tolist())
    return sorted(n for n in names if n[:8] in train)


def bench_shards(config: BenchShardsConfig) -> dict:
    import numpy as np
    import tensorflow as tf

    from cxr_tf.config import ConvertConfig
    from cxr_tf.data import conversion, pipeline

    names = _nih_like_patients(config)
    convert_config = ConvertConfig(nih_root=".", image_size=config.size, shard_mb=config.shard_mb)
    random_plan = conversion.plan_shards({"train": names}, convert_config)["train"]
    count = len(random_plan)
    bounds = np.linspace(0, len(names), count + 1).round().astype(int)
    contiguous = [names[bounds[i] : bounds[i + 1]] for i in range(count)]
    layouts = {"contiguous": contiguous, "seeded random": [s["images"] for s in random_plan]}
    work = Path(config.workdir) / "shards"
    spec = {"patient": tf.io.FixedLenFeature([], tf.int64)}
    results: dict = {"train_images": len(names), "shards": count, "batch": config.batch,
                     "shuffle_buffer": config.buffer}  # fmt: skip

    def per_batch(patients: np.ndarray) -> tuple[float, float]:
        usable = len(patients) // config.batch * config.batch
        batches = patients[:usable].reshape(-1, config.batch)
        distinct = [len(set(b.tolist())) for b in batches]
        most = [np.bincount(np.unique(b, return_inverse=True)[1]).max() for b in batches]
        return float(np.mean(distinct)), float(np.mean(most))

    for layout, shards in layouts.items():
        folder = work / layout.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, shard in enumerate(shards):
            path = folder / f"train-{i:05d}.tfrecord"
            with tf.io.TFRecordWriter(str(path)) as writer:
                for name in shard:
                    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(name[:8])]))
                    example = tf.train.Example(
                        features=tf.train.Features(feature={"patient": feature})
                    )
                    writer.write(example.SerializeToString())
            files.append(str(path))
        # The order make_dataset gives a training epoch: seeded files, interleave, shuffle.
        ds = pipeline._records(files, pipeline.epoch_seed(0, 0))
        ds = ds.shuffle(config.buffer, seed=pipeline.epoch_seed(0, 0)).batch(4096)
        patients = np.concatenate([tf.io.parse_example(b, spec)["patient"].numpy() for b in ds])
        distinct, most = per_batch(patients)
        results[layout] = {"distinct_patients_per_batch": distinct, "most_images_of_one": most}
    reference = np.array([int(n[:8]) for n in names])[
        np.random.default_rng(0).permutation(len(names))
    ]
    distinct, most = per_batch(reference)
    results["full shuffle"] = {"distinct_patients_per_batch": distinct, "most_images_of_one": most}
    print(
        f"{len(names)} training images in {count} shards; batches of {config.batch}, interleave "
        f"of {min(count, 8)} shards, shuffle buffer {config.buffer}"
    )
    for layout in ("contiguous", "seeded random", "full shuffle"):
        row = results[layout]
        print(
            f"  {layout:>14}: {row['distinct_patients_per_batch']:5.1f} distinct patients per "
            f"batch, at most {row['most_images_of_one']:4.1f} images of one patient (mean)"
        )
    return results


# --- bench model: the project's network on any Keras backend, and a timm peer --------------

# Synthetic multi-label targets: about one positive in ten, like NIH's findings.
_PREVALENCE = 0.1


def step_figures(window_seconds: Sequence[float], steps: int, batch: int) -> dict:
    """ms/step and images/s of the median timed window (each `steps` steps long)."""
    per_step = sorted(seconds / steps for seconds in window_seconds)
    middle = len(per_step) // 2
    median = (
        per_step[middle] if len(per_step) % 2 else (per_step[middle - 1] + per_step[middle]) / 2
    )
    return {
        "ms_step": median * 1000,
        "img_s": batch / median,
        "ms_step_windows": [seconds / steps * 1000 for seconds in window_seconds],
    }


def _time_windows(run_steps: Callable[[int], object], config: BenchModelConfig) -> list[float]:
    """Seconds of each timed window; `run_steps(n)` runs n steps and returns once they
    finished on the device. The warm-up (compilation included) is not timed."""
    run_steps(config.warmup)
    seconds = []
    for _ in range(config.windows):
        start = time.perf_counter()
        run_steps(config.steps)
        seconds.append(time.perf_counter() - start)
    return seconds


def _environment(backend: str) -> dict:
    """Versions and device of the Keras backend (importing only that backend)."""
    import keras

    info: dict = {
        "keras_backend": backend,
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        info.update(
            backend_version=jax.__version__, device=f"{device.platform} ({device.device_kind})"
        )
    elif backend == "torch":
        import torch

        cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if cuda else ""
        info.update(backend_version=torch.__version__, device=f"cuda ({name})" if cuda else "cpu")
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        name = details.get("device_name", "GPU")
        info.update(backend_version=tf.__version__, device=f"gpu ({name})" if gpus else "cpu")
    return info


def _reset_peak_memory(backend: str) -> None:
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def _peak_memory(backend: str) -> int | None:
    """Peak device bytes where the backend reports them (not for CPUs). JAX keeps one
    process-wide peak that cannot be reset: its figure is the peak so far in the run."""
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy `name` while the block runs (layers read it when built)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _cycle(items: list) -> Iterator:
    while True:
        yield from items


def _jit_blockers(model: Any) -> list[str]:
    """Classes of the layers that declare `supports_jit=False` (Keras' RandomZoom and
    RandomRotation): Keras compiles a model holding one without jit, whatever was asked."""
    flat = model._flatten_layers()
    return sorted({type(layer).__name__ for layer in flat if not layer.supports_jit})


def _time_keras_model(config: BenchModelConfig, precision: str, jit: bool, batch: int) -> dict:
    """One row: the project's model built, compiled and fed as `fit` does, on two
    in-memory uint8 batches cycled (no input pipeline)."""
    import keras
    import numpy as np

    from cxr_tf.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
    from cxr_tf.modeling import losses, models
    from cxr_tf.training import optimization

    run = RunConfig(
        model=ModelConfig(backbone=config.backbone, weights="", image_size=config.image_size),
        train=TrainConfig(epochs=1, xla=jit, seed=config.seed),
    )
    outputs = len(run.model.output_names)
    rng = np.random.default_rng(config.seed)
    side = config.stored_size
    batches = [
        (
            rng.integers(0, 256, (batch, side, side, 1), dtype=np.uint8),
            (rng.random((batch, outputs)) < _PREVALENCE).astype(np.float32),
        )
        for _ in range(2)
    ]
    backend = keras.backend.backend()
    with _dtype_policy(precision):
        # No keras.utils.set_random_seed: it imports TensorFlow wherever installed, and
        # the timing does not depend on the initial weights.
        model = models.build_model(
            run.model,
            stored_size=side,
            augment=AugmentConfig() if config.augment else None,
            seed=config.seed,
        )
        loss = losses.build_loss(
            run.train.loss, run.model.task, gamma=run.train.focal_gamma, alpha=run.train.focal_alpha
        )
        optimization.compile_model(model, run, loss, run.train.lr, config.steps, 1)
        _reset_peak_memory(backend)

        def train(steps: int) -> None:  # fit() returns once the last loss is on the host
            model.fit(_cycle(batches), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

        row: dict = {
            "model": f"cxr_tf {config.backbone}",
            "batch": batch,
            "precision": precision,
            "jit": "on" if jit else "off",
            "jit_effective": bool(model.jit_compile),
            "jit_blocked_by": _jit_blockers(model) if jit and not model.jit_compile else [],
            "train": step_figures(_time_windows(train, config), config.steps, batch),
        }
        if config.inference:
            images = [(x,) for x, _ in batches]  # (inputs,): a generator yields tuples

            def infer(steps: int) -> None:
                model.predict(_cycle(images), steps=steps, verbose=0)

            row["inference"] = step_figures(_time_windows(infer, config), config.steps, batch)
        row["peak_memory_bytes"] = _peak_memory(backend)
    return row


def _time_timm(
    config: BenchModelConfig, precision: str, jit: bool, batch: int, outputs: int
) -> dict:
    """One row of the timm peer (imports torch and timm, which the caller checked)."""
    import timm
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision)
    torch.manual_seed(config.seed)
    model = timm.create_model(config.peer_model, pretrained=False, num_classes=outputs)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)  # as fp16 AMP
    criterion = torch.nn.BCEWithLogitsLoss()
    net = torch.compile(model) if jit else model
    size = config.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, outputs, device=device) < _PREVALENCE).float()

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def sync() -> None:  # CUDA runs ahead of Python: wait for the device
        if cuda:
            torch.cuda.synchronize()

    def train(steps: int) -> None:
        net.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = criterion(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        sync()

    def infer(steps: int) -> None:
        net.eval()
        with torch.no_grad(), autocast():
            for _ in range(steps):
                net(x)
        sync()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    row: dict = {
        "model": f"timm {config.peer_model}",
        "batch": batch,
        "precision": precision,
        "jit": "on" if jit else "off",
        "jit_effective": jit,
        "train": step_figures(_time_windows(train, config), config.steps, batch),
    }
    if config.inference:
        row["inference"] = step_figures(_time_windows(infer, config), config.steps, batch)
    row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
    return row


def _peer_timm(config: BenchModelConfig, outputs: int) -> dict:
    """timm's model in PyTorch at the same batch sizes, as timm's own benchmark runs it:
    device-resident float batches at the network size, channels_last, AMP for the mixed
    policies, torch.compile when jit is on; Adam and BCE-with-logits as the project's."""
    try:
        import timm
        import torch
    except ImportError as err:
        missing = err.name or str(err)
        return {"skipped": f"peer timm skipped: {missing} is not installed (it needs torch, timm)"}
    rows = []
    for precision in config.precision:
        for jit in config.jit:
            for batch in config.batch_sizes:
                try:
                    rows.append(_time_timm(config, precision, jit == "on", batch, outputs))
                except Exception as err:
                    rows.append(_error_row(f"timm {config.peer_model}", precision, jit, batch, err))
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    cuda = torch.cuda.is_available()
    size = config.image_size
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu",
        "input": f"float32 (batch, 3, {size}, {size}) on the device, no augmentation",
        "rows": rows,
    }


def _error_row(model: str, precision: str, jit: str, batch: int, err: Exception) -> dict:
    """A setting that failed (e.g. an op XLA cannot compile): the reason instead of figures."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
    for line in lines:  # XLA names the op it cannot compile on one line of a long message
        if "unsupported operations" in line or "No registered" in line:
            reason = f"{type(err).__name__}: {line.strip()}"
            break
    return {"model": model, "batch": batch, "precision": precision, "jit": jit, "error": reason}


def _table_line(row: dict) -> str:
    if "error" in row:
        return (
            f"  {row['model']:<22} {row['precision']:<15} {row['jit']:<7} {row['batch']:>5} "
            f"failed: {row['error']}"
        )
    jit = row["jit"] if row["jit_effective"] == (row["jit"] == "on") else "on->off"
    infer = row.get("inference")
    memory = row["peak_memory_bytes"]
    return (
        f"  {row['model']:<22} {row['precision']:<15} {jit:<7} {row['batch']:>5} "
        f"{row['train']['img_s']:>11.1f} {row['train']['ms_step']:>9.1f} "
        + (
            f"{infer['img_s']:>11.1f} {infer['ms_step']:>9.1f} "
            if infer
            else f"{'-':>11} {'-':>9} "
        )
        + (f"{memory / 2**20:>9.0f}" if memory is not None else f"{'-':>9}")
    )


def bench_model(config: BenchModelConfig) -> dict:
    """Train-step and predict speed of `models.build_model` on in-memory uint8 batches, on
    the Keras backend in use (`KERAS_BACKEND`), with an optional timm peer."""
    import keras

    from cxr_tf.config import ModelConfig

    backend = keras.backend.backend()
    environment = _environment(backend)
    rows = []
    for precision in config.precision:
        for jit in config.jit:
            for batch in config.batch_sizes:
                try:
                    rows.append(_time_keras_model(config, precision, jit == "on", batch))
                except Exception as err:
                    rows.append(_error_row(f"cxr_tf {config.backbone}", precision, jit, batch, err))
                keras.backend.clear_session()  # free the model before the next one
                gc.collect()
    outputs = len(ModelConfig(backbone=config.backbone, weights="").output_names)
    peer = _peer_timm(config, outputs) if config.peer == "timm" else None
    augment = "on" if config.augment else "off"
    print(
        f"model benchmark: {config.backbone} (random init, augmentation {augment}), uint8 "
        f"{config.stored_size} px in -> {config.image_size} px, {outputs} outputs; keras "
        f"{environment['keras']} on {backend} {environment.get('backend_version', '')}, "
        f"{environment.get('device', '?')}, {environment['cpu_count']} CPUs (load "
        f"{environment['load_average_1min']:.1f}); median of {config.windows} windows of "
        f"{config.steps} steps after {config.warmup} warm-up steps"
    )
    print(
        f"  {'model':<22} {'precision':<15} {'jit':<7} {'batch':>5} {'train img/s':>11} "
        f"{'ms/step':>9} {'infer img/s':>11} {'ms/step':>9} {'peak MiB':>9}"
    )
    for row in rows + (peer or {}).get("rows", []):
        print(_table_line(row))
    blocked = sorted({name for row in rows for name in row.get("jit_blocked_by", [])})
    if blocked:
        print(
            f"  on->off: Keras ran the model without jit ({', '.join(blocked)} declare "
            f"supports_jit=False); --no-augment times it with jit"
        )
    if backend == "jax" and any(row.get("peak_memory_bytes") for row in rows):
        print("  peak MiB on jax: the process's peak so far (JAX cannot reset it)")
    if peer is not None and "skipped" in peer:
        print(f"  {peer['skipped']}")
    return {
        "config": config_lib.to_dict(config),
        "environment": environment,
        "rows": rows,
        "peer": peer,
    }


# --- command line -----------------------------------------------------------------------------

PROG = "python -m cxr_tf.bench"

MODEL_EXAMPLES = """
Examples:
  # CPU: DenseNet121 at batch 32, jitted and not (the README's JAX rows)
  KERAS_BACKEND=jax python -m cxr_tf.bench model --batch_sizes 32 --precision float32 \\
      --jit on off --no-augment --warmup 1 --steps 1 --windows 3
  # a GPU, timm's densenet121 timed in the same run (benchmarks/gpu_model_bench.sh)
  KERAS_BACKEND=jax python -m cxr_tf.bench model --batch_sizes 64 128 \\
      --precision mixed_bfloat16 --jit on --no-augment --peer timm --json gpu.json
"""

# name -> (config, function, one-line summary)
COMMANDS: dict[str, tuple[type, Callable[[Any], dict], str]] = {
    "convert": (BenchConvertConfig, bench_convert, "conversion vs bare PNG decode"),
    "read": (BenchReadConfig, bench_read, "TFDS reader vs the project's batch parser"),
    "pipeline": (BenchPipelineConfig, bench_pipeline, "training input pipeline vs decoding PNGs"),
    "fit": (BenchFitConfig, bench_fit, "per-epoch seconds: cxr_tf.fit vs a plain Keras loop"),
    "shards": (BenchShardsConfig, bench_shards, "patients per batch: contiguous vs random shards"),
    "serve": (BenchServeConfig, bench_serve, "exported serving_default vs model.predict, on CPU"),
    "model": (BenchModelConfig, bench_model, "train/predict img/s of the model, any backend"),
}

# Benchmarks reading a dataset take it as their first argument too (`bench read DATASET`).
_POSITIONAL = {"read": "dataset", "fit": "dataset"}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (_, _, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary)
    return parser


def parser_for(what: str) -> argparse.ArgumentParser:
    """The parser of one benchmark: a flag per field of its config (`cxr_tf.cli`)."""
    cls, _, summary = COMMANDS[what]

    def extra(parser: argparse.ArgumentParser) -> None:
        if what in _POSITIONAL:
            field = _POSITIONAL[what]
            parser.add_argument(
                field, nargs="?", default=argparse.SUPPRESS, help=f"same as --{field}"
            )
        parser.add_argument("--json", metavar="PATH", help="also write the figures to this file")

    description = f"{summary}.\n\n{inspect.cleandoc(cls.__doc__ or '')}\n"
    description += MODEL_EXAMPLES if what == "model" else ""
    return build_parser(cls, description, f"{PROG} {what}", extra=extra)


def parse(argv: Sequence[str] | None = None) -> tuple[str, Any, argparse.Namespace]:
    """(benchmark name, its typed config, the parsed namespace) from the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = _top_parser()
        top.parse_args(argv)  # --help, or the usage error listing the benchmarks
        top.error(f"the first argument names the benchmark: {', '.join(COMMANDS)}")
    what = argv[0]
    config, args = parse_config(COMMANDS[what][0], parser_for(what), argv[1:])
    return what, config, args


def main(argv: Sequence[str] | None = None) -> int:
    what, config, args = parse(argv)
    results = COMMANDS[what][1](config)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
