"""`python -m cxr_tf.bench <what>`: benchmarks that print figures next to a baseline measured
in the same run, on the same cores.

- `convert`: conversion images/s vs bare PNG decoding of the same 1024 px files;
- `read`: records/s through TFDS (`builder_from_directory`) vs the project's batch parser.
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


def _synth(root: Path, n: int, seed: int, image_size: int = 1024) -> Path:
    from cxr_tf import synth

    marker = root / ".bench_synth.json"
    want = {"n": n, "seed": seed, "image_size": image_size}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    if root.exists():
        shutil.rmtree(root)
    synth.generate(
        synth.SynthConfig(out=str(root), n=n, seed=seed, image_size=image_size, prevalence="0.1")
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
    from cxr_tf import convert
    from cxr_tf.config import ConvertConfig, SplitConfig

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
        manifest = convert.convert(config, progress=False)
        seconds = time.perf_counter() - start
        shards = [s for e in manifest["splits"].values() for s in e["shards"]]
        records = sum(s["records"] for s in shards)
        size = sum(s["bytes"] for s in shards)
        results[encoding] = {
            "convert_img_s": records / seconds,
            "ratio_to_bare_decode": (seconds / records) / (decode_s / len(paths)),
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
            f"{r['bytes_per_record'] / 1024:.1f} KiB/record"
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

    from cxr_tf import schema

    dataset_dir = Path(args.dataset)
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    features = schema.build_features(manifest["image"]["size"], manifest["image"]["encoding"])
    files = sorted(str(dataset_dir / s["file"]) for s in manifest["splits"]["train"]["shards"])
    batch = args.batch

    def project() -> tf.data.Dataset:
        ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        ds = ds.batch(batch).map(
            lambda s: schema.parse_batch(s, features), num_parallel_calls=tf.data.AUTOTUNE
        )
        return ds.prefetch(tf.data.AUTOTUNE)

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
    print(f"  cxr_tf parse_batch         : {results['project_img_s']:9.1f} img/s")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxr_tf.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    conv = sub.add_parser("convert", help="conversion vs bare PNG decode")
    conv.add_argument("--n", type=int, default=200, help="synthetic 1024 px images")
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--size", type=int, default=256, help="stored image size")
    conv.add_argument("--encodings", nargs="+", default=["png", "raw"], choices=["png", "raw"])
    conv.add_argument("--workers", type=int, default=0, help="0: every core")
    conv.add_argument("--workdir", default="bench_out", help="scratch folder (reused)")
    conv.add_argument("--json", help="also write the figures to this JSON file")
    read = sub.add_parser("read", help="TFDS reader vs the project's batch parser")
    read.add_argument("dataset", help="a converted dataset folder")
    read.add_argument("--batch", type=int, default=64)
    read.add_argument("--epochs", type=int, default=2, help="timed passes after one warm-up")
    read.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = {"convert": bench_convert, "read": bench_read}[args.what](args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
