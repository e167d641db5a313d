"""`python -m cxr_tf.bench <what>`: benchmarks that print figures next to a baseline measured
in the same run, on the same cores.

- `convert`: conversion images/s vs bare PNG decoding of the same 1024 px files;
- `read`: records/s through TFDS (`builder_from_directory`) vs the project's batch parser;
- `pipeline`: training batches/s from the shards vs a plain tf.data pipeline decoding the
  original 1024 px PNGs, and with augmentation moved onto the CPU;
- `fit`: `fit()` steps/s fed by the real pipeline vs the same model on in-memory tensors.
- `shards`: distinct patients per training batch with contiguous (sorted-name) shards vs
  the converter's seeded random shards, against a fully shuffled reference.
- `serve`: requests/s and latency of the exported `serving_default` (encoded PNGs in) vs
  `model.predict` and a direct model call on preprocessed tensors, at batch 1 and 32, on CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cxr_tf.cli import HelpFormatter, exit_if_checking


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


def bench_convert(args: argparse.Namespace) -> dict:
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    workdir = Path(args.workdir)
    root = _synth(workdir / "nih", args.n, args.seed)
    paths = sorted((root / "images").glob("*.png"))
    workers = args.workers or os.cpu_count() or 1
    _bare_decode(paths[:8], workers)  # warm caches and TF
    decode_s = _bare_decode(paths, workers)
    results = {"images": len(paths), "workers": workers, "bare_decode_img_s": len(paths) / decode_s}
    for encoding in args.encodings:
        out = workdir / "tfrecords"
        config = ConvertConfig(
            nih_root=str(root),
            out_dir=str(out),
            name=f"bench_{args.size}_{encoding}",
            image_size=args.size,
            encoding=encoding,
            workers=workers,
            split=SplitConfig(strategy="official", val_fraction=0.1),
        )
        shutil.rmtree(out / config.dataset_name, ignore_errors=True)
        start = time.perf_counter()
        manifest = conversion.convert(config, progress=False)
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
    for encoding in args.encodings:
        r = results[encoding]
        print(
            f"  convert to {args.size}px {encoding:>3}: {r['convert_img_s']:8.1f} img/s  "
            f"time/img = {r['ratio_to_bare_decode']:.2f}x bare decode  "
            f"{r['bytes_per_record'] / 1024:.1f} KiB/record  "
            f"(+{r['fixed_s']:.1f} s reading metadata, splitting, manifest)"
        )
    nih_images = 112_120
    best = max(results[e]["convert_img_s"] for e in args.encodings)
    per_core = best / workers
    print(
        f"  implied full NIH ({nih_images} images) on 16 cores at {per_core:.1f} img/s/core: "
        f"{nih_images / (per_core * 16) / 60:.1f} min (decode-bound; disk and archive "
        f"decompression not included)"
    )
    return results


def bench_read(args: argparse.Namespace) -> dict:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from cxr_tf.config import DataConfig, ModelConfig
    from cxr_tf.data import pipeline

    dataset_dir = Path(args.dataset)
    manifest = pipeline.load_manifest(dataset_dir)
    spec = pipeline.LabelSpec.from_config(ModelConfig(backbone="tiny"))
    batch = args.batch

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
        for epoch in range(args.epochs + 1):
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


def bench_pipeline(args: argparse.Namespace) -> dict:
    """Training input pipeline from shards vs a plain pipeline decoding the 1024 px PNGs."""
    import tensorflow as tf

    from cxr_tf.config import AugmentConfig, ConvertConfig, DataConfig, ModelConfig, SplitConfig
    from cxr_tf.data import conversion, nih, pipeline
    from cxr_tf.data import preprocessing as pp
    from cxr_tf.modeling import augment

    workdir = Path(args.workdir)
    root = _synth(workdir / "nih", args.n, args.seed)
    spec = pipeline.LabelSpec.from_config(ModelConfig(backbone="tiny"))
    results: dict = {"batch": args.batch, "stored_size": args.size}
    df = nih.read_data_entry(root / "Data_Entry_2017.csv")
    labels = nih.labels_matrix(df)
    paths = [str(root / "images" / n) for n in df["image_index"]]

    def png_pipeline() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths)).repeat()
        ds = ds.map(
            lambda p, y: (
                pp.bytes_to_stored(tf.io.read_file(p), args.size),
                spec.select(y[None])[0],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(args.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    results["png_decode_img_s"] = _rate(png_pipeline(), args.batches)
    for encoding in args.encodings:
        config = ConvertConfig(
            nih_root=str(root), out_dir=str(workdir / "tfrecords"),
            name=f"bench_{args.size}_{encoding}", image_size=args.size, encoding=encoding,
            split=SplitConfig(strategy="random", fractions=(0.9, 0.05, 0.05)),
        )  # fmt: skip
        if not (workdir / "tfrecords" / config.dataset_name / "manifest.json").exists():
            conversion.convert(config, progress=False)
        data = DataConfig(
            dataset=str(workdir / "tfrecords" / config.dataset_name), batch_size=args.batch,
            shuffle_buffer=1024, cache=args.cache,
        )  # fmt: skip
        ds = pipeline.make_dataset(data, spec, "train", training=True, repeat=True, seed=0)
        results[f"{encoding}_uint8_img_s"] = _rate(ds, args.batches)
        # The alternative placement: augmentation and float conversion on the CPU in tf.data.
        layer = augment.build_augmentation(AugmentConfig(), seed=0)
        cpu = ds.map(
            lambda x, y, layer=layer: (layer(tf.cast(x, tf.float32), training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        results[f"{encoding}_cpu_augment_float_img_s"] = _rate(cpu, args.batches)
    base = results["png_decode_img_s"]
    print(
        f"pipeline benchmark: batch {args.batch}, {args.size} px stored, "
        f"{os.cpu_count()} cores, {args.batches} batches after warm-up"
    )
    print(f"  plain tf.data decoding the 1024 px PNGs : {base:9.1f} img/s (baseline)")
    for encoding in args.encodings:
        for key, what in (
            ("uint8", "shards -> uint8 batches (augment on accelerator)"),
            ("cpu_augment_float", "shards -> CPU augmentation -> float32"),
        ):
            value = results[f"{encoding}_{key}_img_s"]
            print(f"  {encoding:>3} {what:<48}: {value:9.1f} img/s  ({value / base:5.1f}x)")
    return results


def bench_fit(args: argparse.Namespace) -> dict:
    """fit() steps/s fed by the real pipeline vs the same model on in-memory tensors."""
    import keras
    import tensorflow as tf

    from cxr_tf.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from cxr_tf.data import pipeline
    from cxr_tf.modeling import models
    from cxr_tf.training import optimization

    manifest = pipeline.load_manifest(args.dataset)
    run = RunConfig(
        data=DataConfig(dataset=args.dataset, batch_size=args.batch),
        model=ModelConfig(backbone=args.backbone, weights="", image_size=args.image_size),
        train=TrainConfig(head_epochs=0, epochs=1),
    )
    spec = pipeline.LabelSpec.from_config(run.model)
    real = pipeline.make_dataset(run.data, spec, "train", training=True, repeat=True, seed=0)
    images, targets = next(iter(real))
    memory = tf.data.Dataset.from_tensors((images, targets)).repeat()

    def steps_per_s(ds: tf.data.Dataset) -> float:
        model = models.build_model(
            run.model, stored_size=manifest["image"]["size"], augment=run.data.augment
        )
        optimization.compile_model(model, run, keras.losses.BinaryCrossentropy(from_logits=True),
                            1e-3, args.steps, 1)  # fmt: skip
        model.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
        return args.steps / (time.perf_counter() - start)

    results = {"memory_steps_s": steps_per_s(memory), "pipeline_steps_s": steps_per_s(real)}
    ratio = results["pipeline_steps_s"] / results["memory_steps_s"]
    results["pipeline_vs_memory"] = ratio
    print(
        f"fit benchmark: {args.backbone} at {args.image_size} px (stored "
        f"{manifest['image']['size']}), batch {args.batch}, {args.steps} steps"
    )
    print(f"  in-memory tensors : {results['memory_steps_s']:7.2f} steps/s")
    print(f"  real input pipeline: {results['pipeline_steps_s']:7.2f} steps/s  ({ratio:.3f}x)")
    return results


def _bench_images(args: argparse.Namespace, count: int) -> list[bytes]:
    """Encoded PNGs: files from --images, else synthetic gray chest-film-like images."""
    import numpy as np
    import tensorflow as tf

    if args.images:
        folder = Path(args.images)
        files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jp*g"))
        if not files:
            raise SystemExit(f"bench serve: no PNG/JPEG files in {folder}")
        return [files[i % len(files)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(args.seed)
    side = args.source_size
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


def bench_serve(args: argparse.Namespace) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the figures are CPU figures
    from cxr_tf.config import ExportConfig
    from cxr_tf.data import preprocessing
    from cxr_tf.serving import client, exporter
    from cxr_tf.training import runs

    run_dir = Path(args.run_dir)
    out = Path(args.workdir) / "serve_export"
    shutil.rmtree(out, ignore_errors=True)
    folder = exporter.export(
        ExportConfig(
            run_dir=str(run_dir), model=args.model, name="bench", version=1, out=str(out),
            warmup=False,
        ),
        verbose=False,
    )  # fmt: skip
    loaded = tf.saved_model.load(str(folder))
    serve_bytes = loaded.signatures[client.SERVING_SIGNATURE]
    serve_images = loaded.signatures[client.IMAGES_SIGNATURE]
    model = runs.load_model(run_dir, args.model)
    size = int(model.inputs[0].shape[1])
    encoded = _bench_images(args, max(args.batches))
    stored = np.stack([preprocessing.bytes_to_stored(b, size).numpy() for b in encoded])
    stored = stored.astype(np.float32)
    rows = []
    for batch in args.batches:
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
        for name, measured in _latencies(paths, args.repeats, args.min_seconds).items():
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
    source = args.images or f"synthetic {args.source_size}px gray PNGs"
    print(
        f"serve benchmark: {run_dir} ({runs.MODEL_FILES[args.model]}), stored size {size}, "
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


def _nih_like_patients(args: argparse.Namespace) -> list[str]:
    """Training image names ("PPPPPPPP_FFF.png") with NIH's patient structure."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    if args.data_entry:
        from cxr_tf.data import nih

        df = nih.read_data_entry(args.data_entry)
        names = df["image_index"].tolist()
    else:  # 112,120 images of 30,805 patients, most with one image, a few with hundreds
        counts = np.minimum(rng.geometric(30_805 / 112_120, size=30_805), 184)
        names = [f"{p + 1:08d}_{f:03d}.png" for p, n in enumerate(counts) for f in range(n)]
    patients = sorted({n[:8] for n in names})
    train = set(rng.permutation(patients)[: int(0.69 * len(patients))].tolist())
    return sorted(n for n in names if n[:8] in train)


def bench_shards(args: argparse.Namespace) -> dict:
    import numpy as np
    import tensorflow as tf

    from cxr_tf.config import ConvertConfig
    from cxr_tf.data import conversion, pipeline

    names = _nih_like_patients(args)
    config = ConvertConfig(nih_root=".", image_size=args.size, shard_mb=args.shard_mb)
    random_plan = conversion.plan_shards({"train": names}, config)["train"]
    count = len(random_plan)
    bounds = np.linspace(0, len(names), count + 1).round().astype(int)
    contiguous = [names[bounds[i] : bounds[i + 1]] for i in range(count)]
    layouts = {"contiguous": contiguous, "seeded random": [s["images"] for s in random_plan]}
    work = Path(args.workdir) / "shards"
    spec = {"patient": tf.io.FixedLenFeature([], tf.int64)}
    results: dict = {"train_images": len(names), "shards": count, "batch": args.batch,
                     "shuffle_buffer": args.buffer}  # fmt: skip

    def per_batch(patients: np.ndarray) -> tuple[float, float]:
        usable = len(patients) // args.batch * args.batch
        batches = patients[:usable].reshape(-1, args.batch)
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
        ds = ds.shuffle(args.buffer, seed=pipeline.epoch_seed(0, 0)).batch(4096)
        patients = np.concatenate([tf.io.parse_example(b, spec)["patient"].numpy() for b in ds])
        distinct, most = per_batch(patients)
        results[layout] = {"distinct_patients_per_batch": distinct, "most_images_of_one": most}
    reference = np.array([int(n[:8]) for n in names])[
        np.random.default_rng(0).permutation(len(names))
    ]
    distinct, most = per_batch(reference)
    results["full shuffle"] = {"distinct_patients_per_batch": distinct, "most_images_of_one": most}
    print(
        f"{len(names)} training images in {count} shards; batches of {args.batch}, interleave "
        f"of {min(count, 8)} shards, shuffle buffer {args.buffer}"
    )
    for layout in ("contiguous", "seeded random", "full shuffle"):
        row = results[layout]
        print(
            f"  {layout:>14}: {row['distinct_patients_per_batch']:5.1f} distinct patients per "
            f"batch, at most {row['most_images_of_one']:4.1f} images of one patient (mean)"
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxr_tf.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    conv = sub.add_parser(
        "convert",
        formatter_class=HelpFormatter,
        help="conversion vs bare PNG decode",
    )
    conv.add_argument("--n", type=int, default=200, help="synthetic 1024 px images")
    conv.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    conv.add_argument("--size", type=int, default=256, help="stored image size")
    conv.add_argument(
        "--encodings",
        nargs="+",
        default=["png", "raw"],
        choices=["png", "raw"],
        help="storage encodings to time",
    )
    conv.add_argument("--workers", type=int, default=0, help="threads (0: every core)")
    conv.add_argument("--workdir", default="bench_out", help="scratch folder (reused)")
    conv.add_argument("--json", help="also write the figures to this JSON file")
    read = sub.add_parser(
        "read",
        formatter_class=HelpFormatter,
        help="TFDS reader vs the project's batch parser",
    )
    read.add_argument("dataset", help="a converted dataset folder")
    read.add_argument("--batch", type=int, default=64, help="records per batch")
    read.add_argument("--epochs", type=int, default=2, help="timed passes after one warm-up")
    read.add_argument("--json", help="also write the figures to this JSON file")
    pipe = sub.add_parser(
        "pipeline",
        formatter_class=HelpFormatter,
        help="training input pipeline vs decoding PNGs",
    )
    pipe.add_argument("--n", type=int, default=300, help="synthetic 1024 px images")
    pipe.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    pipe.add_argument("--size", type=int, default=256, help="stored image size")
    pipe.add_argument("--batch", type=int, default=64, help="images per batch")
    pipe.add_argument("--batches", type=int, default=30, help="timed batches")
    pipe.add_argument(
        "--encodings",
        nargs="+",
        default=["png", "raw"],
        choices=["png", "raw"],
        help="storage encodings to time",
    )
    pipe.add_argument("--cache", action="store_true", help="cache parsed records in memory")
    pipe.add_argument("--workdir", default="bench_out", help="scratch folder (reused)")
    pipe.add_argument("--json", help="also write the figures to this JSON file")
    fitp = sub.add_parser(
        "fit",
        formatter_class=HelpFormatter,
        help="fit() on the real pipeline vs in-memory tensors",
    )
    fitp.add_argument("dataset", help="a converted dataset folder")
    fitp.add_argument("--backbone", default="tiny", help="model.backbone of the timed model")
    fitp.add_argument("--image_size", type=int, default=64, help="network input side")
    fitp.add_argument("--batch", type=int, default=32, help="images per step")
    fitp.add_argument("--steps", type=int, default=60, help="timed steps")
    fitp.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    fitp.add_argument("--json", help="also write the figures to this JSON file")
    shards = sub.add_parser(
        "shards",
        formatter_class=HelpFormatter,
        help="patients per batch: contiguous vs random shards",
    )
    shards.add_argument(
        "--data_entry", help="an NIH label file; without one, NIH-like synthetic patients"
    )
    shards.add_argument("--size", type=int, default=256, help="stored size (sets shard count)")
    shards.add_argument("--shard_mb", type=float, default=150.0, help="as in convert")
    shards.add_argument("--batch", type=int, default=32, help="images per batch")
    shards.add_argument("--buffer", type=int, default=2048, help="shuffle buffer (records)")
    shards.add_argument("--seed", type=int, default=0, help="split and patient seed")
    shards.add_argument("--workdir", default="bench_out", help="scratch folder (reused)")
    shards.add_argument("--json", help="also write the figures to this JSON file")
    serve = sub.add_parser(
        "serve",
        formatter_class=HelpFormatter,
        help="exported serving_default vs model.predict, on CPU",
    )
    serve.add_argument("--run_dir", required=True, help="a training run (exported to --workdir)")
    serve.add_argument(
        "--model", default="best", choices=["best", "last"], help="checkpoint of the run"
    )
    serve.add_argument(
        "--batches", type=int, nargs="+", default=[1, 32], help="batch sizes to time"
    )
    serve.add_argument("--images", help="folder of PNG/JPEG files (default: synthetic PNGs)")
    serve.add_argument("--source_size", type=int, default=1024, help="synthetic image side")
    serve.add_argument("--repeats", type=int, default=10, help="least timed calls per path")
    serve.add_argument("--min_seconds", type=float, default=2.0, help="least time per path")
    serve.add_argument("--seed", type=int, default=0, help="synthetic image seed")
    serve.add_argument("--workdir", default="bench_out", help="scratch folder (reused)")
    serve.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    exit_if_checking(parser)
    commands = {
        "convert": bench_convert,
        "read": bench_read,
        "pipeline": bench_pipeline,
        "fit": bench_fit,
        "serve": bench_serve,
        "shards": bench_shards,
    }
    results = commands[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
