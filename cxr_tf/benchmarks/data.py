"""Data benchmarks: conversion vs bare decoding (also of real-size imitations, with 1 and
more processes), the TFDS reader vs the batch parser, the input pipeline vs decoding PNGs,
and patients per batch by shard layout."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from cxr_tf.config import (
    BenchConvertConfig,
    BenchPipelineConfig,
    BenchReadConfig,
    BenchShardsConfig,
    ConfigError,
)


def synthetic_nih(root: Path, n: int, seed: int, image_size: int = 1024) -> Path:
    from cxr_tf.config import SynthConfig
    from cxr_tf.synthetic.layouts import generate_layout

    marker = root / ".bench_synth.json"
    want = {"n": n, "seed": seed, "image_size": image_size}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    if root.exists():
        shutil.rmtree(root)
    generate_layout(
        SynthConfig(out=str(root), n=n, seed=seed, image_size=image_size, prevalence="0.1")
    )
    marker.write_text(json.dumps(want))
    return root


def _bare_decode(paths: list[Path], workers: int) -> float:
    """Seconds to read + decode every PNG with TF's reader and decoder on `workers`
    threads (`tf.io.read_file`: the bytes never pass through Python)."""
    import tensorflow as tf

    decode = tf.function(
        lambda path: tf.io.decode_png(tf.io.read_file(path), channels=0),
        input_signature=[tf.TensorSpec([], tf.string)],
    )
    decode(str(paths[0]))  # trace outside the timing

    def one(path: Path) -> int:
        return int(decode(str(path)).shape[0])

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def check_layouts(config: BenchConvertConfig) -> None:
    """ConfigError unless each of `config.layouts` imitates another source than NIH (the
    imitations' registry lists them, above the config)."""
    from cxr_tf.synthetic.layouts import OTHER_LAYOUTS

    bad = [x for x in config.layouts if x not in OTHER_LAYOUTS]
    if bad:
        raise ConfigError(f"layouts: {bad}: choose from {', '.join(OTHER_LAYOUTS)}")


def bench_convert(config: BenchConvertConfig) -> dict:
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    check_layouts(config)
    workdir = Path(config.workdir)
    root = synthetic_nih(workdir / "nih", config.n, config.seed)
    paths = sorted((root / "images").glob("*.png"))
    workers = config.workers or os.cpu_count() or 1
    _bare_decode(paths[:8], workers)  # warm caches and TF
    decode_s = _bare_decode(paths, workers)
    results = {"images": len(paths), "workers": workers, "bare_decode_img_s": len(paths) / decode_s}
    for encoding in config.encodings:
        out = workdir / "tfrecords"
        convert_config = ConvertConfig(
            root=str(root),
            out_dir=str(out),
            name=f"bench_{config.stored_size}_{encoding}",
            stored_size=config.stored_size,
            encoding=encoding,
            workers=workers,
            split=SplitConfig(strategy="official", val_fraction=0.1),
        )
        shutil.rmtree(out / convert_config.name, ignore_errors=True)
        start = time.perf_counter()
        manifest = conversion.convert(convert_config, progress=False)
        seconds = time.perf_counter() - start
        shards = [s for _, s in manifest.shards()]
        records = sum(s.records for s in shards)
        size = sum(s.bytes for s in shards)
        timing = manifest.timing
        results[encoding] = {
            "convert_img_s": records / timing.write_s,
            "total_s": seconds,
            "fixed_s": timing.setup_s + timing.finish_s,
            "ratio_to_bare_decode": (timing.write_s / records) / (decode_s / len(paths)),
            "bytes_per_record": size / records,
            "shard_bytes": [s.bytes for s in shards],
        }
    print(f"convert benchmark: {len(paths)} synthetic 1024px PNGs, {workers} worker(s)")
    print(f"  bare PNG decode (tf.io.decode_png): {results['bare_decode_img_s']:8.1f} img/s")
    for encoding in config.encodings:
        r = results[encoding]
        print(
            f"  convert to {config.stored_size}px {encoding:>3}: {r['convert_img_s']:8.1f} img/s  "
            f"time/img = {r['ratio_to_bare_decode']:.2f}x bare decode  "
            f"{r['bytes_per_record'] / 1024:.1f} KiB/record  "
            f"(+{r['fixed_s']:.1f} s reading metadata, splitting, manifest)"
        )
    for layout in config.layouts:
        results[layout] = _bench_layout(config, layout, workers)
    for kind in config.real_size:
        results[kind] = bench_real_size(config, kind, workers)
    nih_images = 112_120
    best = max(results[e]["convert_img_s"] for e in config.encodings)
    per_core = best / workers
    print(
        f"  implied full NIH ({nih_images} images) on 16 cores at {per_core:.1f} img/s/core: "
        f"{nih_images / (per_core * 16) / 60:.1f} min (decode-bound; disk and archive "
        f"decompression not included)"
    )
    return results


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def _decode_file(path: Path) -> int:
    """Bare decoding of one file in its own format: TF's reader and decoders (the bytes
    never pass through Python); DICOM: pydicom and its LUTs."""
    import tensorflow as tf

    from cxr_tf.sources import dicom

    with open(path, "rb") as handle:
        head = handle.read(132)
    if dicom.is_dicom(head):
        return int(dicom.decode(path.read_bytes()).shape[0])
    data = tf.io.read_file(str(path))
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16:
        return int(tf.io.decode_png(data, channels=0, dtype=tf.uint16).shape[0])
    return int(tf.io.decode_image(data, channels=0, expand_animations=False).shape[0])


def _bench_layout(config: BenchConvertConfig, layout: str, workers: int) -> dict:
    """Converts an imitation of `layout` (raw storage) and times bare decoding of its files."""
    from cxr_tf.config import ConvertConfig, SynthConfig
    from cxr_tf.data import conversion
    from cxr_tf.synthetic.layouts import generate_layout

    workdir = Path(config.workdir)
    root = workdir / layout
    marker = root / ".bench_synth.json"
    want = {"n": config.n, "seed": config.seed, "layout": layout}
    if not (marker.exists() and json.loads(marker.read_text()) == want):
        shutil.rmtree(root, ignore_errors=True)
        generate_layout(
            SynthConfig(out=str(root), n=config.n, seed=config.seed, image_size=1024,
                        prevalence="0.1", layout=layout),  # fmt: skip
            progress=False,
        )
        marker.write_text(json.dumps(want))
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    for path in paths[:4]:  # warm up TF and the decoders
        _decode_file(path)
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(_decode_file, paths))
    decode_s = time.perf_counter() - start
    out = workdir / "tfrecords"
    name = f"bench_{layout}_{config.stored_size}_raw"
    shutil.rmtree(out / name, ignore_errors=True)
    manifest = conversion.convert(
        ConvertConfig(root=str(root), out_dir=str(out), name=name, stored_size=config.stored_size,
                      encoding="raw", workers=workers, views=("PA", "AP", "LATERAL", "?")),
        progress=False,
    )  # fmt: skip
    records = manifest.images
    write_s = manifest.timing.write_s
    result = {
        "source": manifest.source.kind,
        "files": len(paths),
        "records": records,
        "bare_decode_img_s": len(paths) / decode_s,
        "convert_img_s": records / write_s,
        "ratio_to_bare_decode": (write_s / records) / (decode_s / len(paths)),
        "fixed_s": manifest.timing.setup_s + manifest.timing.finish_s,
    }
    print(
        f"  {layout:>8} ({result['source']}, {len(paths)} files): bare decode "
        f"{result['bare_decode_img_s']:7.1f} img/s, convert to {config.stored_size}px raw "
        f"{result['convert_img_s']:7.1f} img/s = {result['ratio_to_bare_decode']:.2f}x bare "
        f"decode time/img (+{result['fixed_s']:.1f} s reading labels, splitting, manifest)"
    )
    return result


class RealKind(NamedTuple):
    """A real-size imitation: its files' sides, detector noise (grey levels, set so the
    files' sizes match the release's average), suffix and what they are."""

    width: int
    height: int
    noise: float
    suffix: str
    what: str


REAL_SIZE: dict[str, RealKind] = {
    # MIMIC-CXR-JPG: 570.3 GB for 377,110 images, 1.51 MB each on average (1.58 MB here)
    "jpeg_3k": RealKind(2544, 3056, 2.0, ".jpg", "8-bit JPEGs, quality 95, 1.6 MB"),
    # CheXpert's full-size release: 439 GB for 224,316 images, 1.96 MB (1.81 MB here)
    "jpeg_2800": RealKind(2320, 2828, 3.0, ".jpg", "8-bit JPEGs, quality 95, 1.8 MB"),
    "dicom_12bit": RealKind(2500, 3000, 3.0, ".dcm", "12-bit CR DICOMs, a quarter RLE Lossless"),
    "png16_2800": RealKind(2800, 2800, 3.0, ".png", "16-bit PNGs"),
    # NIH's files: 401 KB on average (45 GB, 112,120 images), rows mostly Average- and
    # Paeth-filtered (410 KB here, every row Paeth)
    "png_1024": RealKind(1024, 1024, 1.0, ".png", "8-bit PNGs encoded as NIH's are"),
    # the real thing: NIH PNGs from `--nih_images` (the 96-image sample next to the repo)
    "png_nih": RealKind(1024, 1024, 0.0, ".png", "real NIH PNGs (--nih_images)"),
}


def radiograph_pixels(rng: object, width: int, height: int, noise: float = 3.0) -> object:
    """0-255 float pixels with a radiograph's texture: smooth anatomy-like shading from a
    coarse random field, a vertical falloff, and detector noise of standard deviation
    `noise` grey levels (so files compress as real ones do, not as flat synthetic drawings;
    `REAL_SIZE` sets it per kind to match real releases' file sizes)."""
    import numpy as np
    from PIL import Image

    coarse = (rng.random((12, 10)) * 160 + 40).astype(np.float32)  # type: ignore[attr-defined]
    field = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC))
    falloff = np.linspace(1.0, 0.75, height, dtype=np.float32)[:, None]
    grain = rng.normal(0, noise, (height, width)).astype(np.float32)  # type: ignore[attr-defined]
    return np.clip(field * falloff + grain, 0, 255)


def _real_nih_files(folder: str, n: int) -> list[Path]:
    """The first `n` NIH PNGs (by name) in `folder`, all of them when it holds fewer (they
    are then copied over again, `real_size_folder`); ConfigError when it holds under 2."""
    files = sorted(Path(folder).glob("*.png")) if folder else []
    if len(files) < 2:
        where = f"{folder} holds {len(files)}" if folder else "--nih_images is not set"
        raise ConfigError(f"nih_images: png_nih needs 2 or more real NIH PNGs; {where}")
    return files[:n]


def real_size_folder(root: Path, kind: str, n: int, seed: int, nih_images: str = "") -> Path:
    """`n` files of real-size imitation `kind` (REAL_SIZE; `png_nih`: copies of the real
    PNGs in `nih_images`, each copied again in turn when it holds fewer than `n`) in two
    class folders (the "folders" source, one patient per image), reused while the same
    files would be written."""
    import numpy as np

    from cxr_tf.synthetic import dicom as synth_dicom
    from cxr_tf.synthetic.common import paeth_png, save_jpeg, save_png, to_uint8

    marker = root / ".bench_synth.json"
    want = {"n": n, "seed": seed, "kind": kind, "spec": list(REAL_SIZE[kind])}
    if kind == "png_nih":
        real = _real_nih_files(nih_images, n)
        want["files"] = [str(real[i % len(real)]) for i in range(n)]  # what each copy is
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    spec = REAL_SIZE[kind]
    copied = [Path(f) for f in want.get("files", [])]
    rng = np.random.default_rng([seed, len(kind)])
    for i in range(n):
        folder = root / ("normal" if i % 2 else "effusion")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:04d}{spec.suffix}"
        if copied:  # a real file, again from the first when the folder holds fewer than n
            shutil.copyfile(copied[i], path)
            continue
        pixels = radiograph_pixels(rng, spec.width, spec.height, spec.noise)
        if kind in ("jpeg_3k", "jpeg_2800"):
            save_jpeg(path, to_uint8(pixels), quality=95)
        elif kind == "png_1024":
            path.write_bytes(paeth_png(to_uint8(pixels)))
        elif kind == "png16_2800":
            save_png(path, np.round(pixels * 257).astype(np.uint16))
        else:  # 12 bits stored in 16, with its window; every fourth RLE Lossless
            uids = [f"1.2.826.0.1.3680043.8.498.{seed}.{i}.{k}" for k in (1, 2, 3)]
            tags = {"PatientID": f"p{i}", "Modality": "CR", "ViewPosition": "PA"}
            data = synth_dicom.dicom_bytes(to_uint8(pixels), "mono2_16bit", i % 4 == 3, tags, uids)
            path.write_bytes(data)
    marker.write_text(json.dumps(want))
    return root


def _bare_decode_real(path: Path) -> int:
    """What a user would write to decode one file: TF's reader and decoders for PNG
    (16-bit kept) and JPEG; pydicom with its modality and VOI LUTs for DICOM."""
    import tensorflow as tf

    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM":
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = pydicom.dcmread(path)
        return int(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).shape[0])
    data = tf.io.read_file(str(path))
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        dtype = tf.uint16 if head[24] == 16 else tf.uint8
        return int(tf.io.decode_png(data, channels=1, dtype=dtype).shape[0])
    return int(tf.io.decode_jpeg(data, channels=1).shape[0])


@contextlib.contextmanager
def one_core() -> Iterator[bool]:
    """Every thread of this process (and the threads they start) held to one CPU while the
    block runs, so that "1 core" figures use one core: the converter's main thread, which
    reads files and writes records while its decoding thread decodes, and TensorFlow's own
    threads included. Yields False where CPU affinity cannot be set (not Linux), and the
    block then runs unpinned."""
    if not hasattr(os, "sched_setaffinity"):
        yield False
        return
    before = os.sched_getaffinity(0)
    one = {max(before)}  # not CPU 0, where interrupts tend to land

    def pin(cpus: set[int]) -> None:
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                os.sched_setaffinity(int(task.name), cpus)

    pin(one)
    try:
        yield True
    finally:
        pin(before)


def _timed_decode(paths: list[Path], threads: int) -> float:
    """Images/s of `_bare_decode_real` over `paths` on `threads` threads."""
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(_bare_decode_real, paths))
    return len(paths) / (time.perf_counter() - start)


def _convert_real(config: BenchConvertConfig, root: Path, name: str, **settings) -> object:
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    out = Path(config.workdir) / "tfrecords"
    shutil.rmtree(out / name, ignore_errors=True)
    files = sum(1 for p in root.rglob("*") if p.suffix in _IMAGE_SUFFIXES)
    return conversion.convert(
        ConvertConfig(root=str(root), out_dir=str(out), name=name, source="folders",
                      stored_size=config.stored_size, encoding="raw",
                      # shards of 1/8 of the files: 4 train, 2 validation, 2 test, so that 2
                      # or 4 processes get equal shares
                      shard_mb=(config.stored_size**2 + 400) * files / 8e6 * 1.01,
                      split=SplitConfig(strategy="random", fractions=(0.5, 0.25, 0.25)),
                      **settings),
        progress=False,
    )  # fmt: skip


def bench_real_size(config: BenchConvertConfig, kind: str, workers: int) -> dict:
    """Converts `config.real_n` files of real-size imitation `kind` to raw storage, against
    bare decoding of the same files: on one core (one process, one thread, against bare
    decoding on one thread), on every core in one process (`workers` threads), and with
    each of `config.processes` worker processes. Rates count writing only (the encoder is
    built before the clock starts); for processes also the rate inside the workers, from
    the first shard begun to the last one finished (the manifest's `timing.shards_s`: their
    start-up left out; they start their shards together), against the same figure on one
    core. With `config.repeats` > 1 every figure is the median of that many rounds, each
    measuring all of them in turn (this machine's figures move by 10-30% between runs)."""
    import statistics

    workdir = Path(config.workdir)
    root = real_size_folder(
        workdir / f"real_{kind}", kind, config.real_n, config.seed, config.nih_images
    )
    paths = sorted(p for p in root.rglob("*") if p.suffix in _IMAGE_SUFFIXES)
    for path in paths[:2]:  # warm up TF and the decoders
        _bare_decode_real(path)
    rounds = [_real_size_round(config, kind, root, paths, workers) for _ in range(config.repeats)]
    result: dict = {"files": len(paths), "size": "{}x{}".format(*REAL_SIZE[kind][:2]),
                    "repeats": config.repeats}  # fmt: skip
    for key, value in rounds[0].items():
        if isinstance(value, float):
            result[key] = statistics.median(r[key] for r in rounds)
            if config.repeats > 1:
                result[f"{key}_rounds"] = [r[key] for r in rounds]
    result["pixel_mappings"] = rounds[0]["pixel_mappings"]
    result["same_fingerprint"] = len({f for r in rounds for f in r["fingerprints"]}) == 1
    t1, tn = result["convert_img_s_t1"], result[f"convert_img_s_t{workers}"]
    bare_1, bare_n = result["bare_decode_img_s_1_thread"], result["bare_decode_img_s"]
    line = (
        f"  {kind:>11} ({len(paths)} x {result['size']}) -> {config.stored_size}px raw"
        f"{f', median of {config.repeats} rounds' if config.repeats > 1 else ''}: "
        f"1 core {t1:6.1f} img/s ({result['ratio_to_bare_decode_t1']:.2f}x bare {bare_1:.1f}), "
        f"{workers} threads {tn:6.1f} ({result[f'ratio_to_bare_decode_t{workers}']:.2f}x bare "
        f"{bare_n:.1f}, {tn / t1:.2f}x 1 core)"
    )
    for processes in (p for p in config.processes if p > 1):
        line += (
            f", {processes} processes {result[f'convert_img_s_p{processes}']:6.1f} with their "
            f"{result[f'startup_s_p{processes}']:.1f} s start-up, "
            f"{result[f'in_workers_img_s_p{processes}']:.1f} inside the workers "
            f"({result[f'scaling_p{processes}']:.2f}x 1 core's {result['shards_img_s_t1']:.1f})"
        )
    if "convert_img_s_t1_full_decode" in result:
        decoded = ", ".join(f"{v} {k}" for k, v in sorted(result["pixel_mappings"].items()))
        line += (
            f"; decoded at full size 1 core {result['convert_img_s_t1_full_decode']:6.1f} "
            f"img/s ({result['ratio_to_bare_decode_t1_full_decode']:.2f}x bare; reduced: "
            f"{decoded})"
        )
    print(line + f"; same fingerprint: {result['same_fingerprint']}")
    return result


def _real_size_round(
    config: BenchConvertConfig, kind: str, root: Path, paths: list[Path], workers: int
) -> dict:
    """One round of `bench_real_size`'s figures (floats), pixel mappings and fingerprints."""
    with one_core():
        bare_1 = _timed_decode(paths, 1)
    bare_n = _timed_decode(paths, workers)
    result: dict = {"bare_decode_img_s_1_thread": bare_1, "bare_decode_img_s": bare_n}
    fingerprints = set()
    for threads in (1, workers):
        with one_core() if threads == 1 else contextlib.nullcontext():
            manifest = _convert_real(config, root, f"bench_{kind}_t{threads}", workers=threads)
        fingerprints.add(manifest.fingerprint)
        rate = manifest.images / manifest.timing.write_s
        result[f"convert_img_s_t{threads}"] = rate
        result[f"ratio_to_bare_decode_t{threads}"] = (bare_1 if threads == 1 else bare_n) / rate
        result[f"shards_img_s_t{threads}"] = manifest.images / manifest.timing.shards_s
        result["pixel_mappings"] = dict(manifest.source.pixel_mappings)
    if REAL_SIZE[kind].suffix == ".jpg":  # the same files decoded at full size, for comparison
        with one_core():
            manifest = _convert_real(
                config, root, f"bench_{kind}_full", workers=1, jpeg_decode="full"
            )
        result["convert_img_s_t1_full_decode"] = manifest.images / manifest.timing.write_s
        result["ratio_to_bare_decode_t1_full_decode"] = (
            bare_1 / result["convert_img_s_t1_full_decode"]
        )
    for processes in (p for p in config.processes if p > 1):
        manifest = _convert_real(config, root, f"bench_{kind}_p{processes}", processes=processes)
        fingerprints.add(manifest.fingerprint)
        timing = manifest.timing
        result[f"convert_img_s_p{processes}"] = manifest.images / timing.write_s
        result[f"startup_s_p{processes}"] = timing.write_s - timing.shards_s
        inside = manifest.images / timing.shards_s
        result[f"in_workers_img_s_p{processes}"] = inside
        result[f"scaling_p{processes}"] = inside / result["shards_img_s_t1"]
    result["fingerprints"] = sorted(fingerprints)
    return result


def bench_read(config: BenchReadConfig) -> dict:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from cxr_tf.config import DataConfig, ModelConfig
    from cxr_tf.data import reader
    from cxr_tf.data.targets import LabelSpec

    dataset_dir = Path(config.dataset)
    spec = LabelSpec.from_config(ModelConfig(backbone="tiny"))
    batch = config.batch

    def project() -> tf.data.Dataset:
        data = DataConfig(dataset=str(dataset_dir), batch_size=batch)
        ds = reader.make_dataset(data, spec, "train")
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
    print(f"  cxr_tf.data.reader (eval mode): {results['project_img_s']:6.1f} img/s")
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
    import numpy as np
    import tensorflow as tf

    from cxr_tf.config import AugmentConfig, ConvertConfig, DataConfig, ModelConfig, SplitConfig
    from cxr_tf.data import conversion, reader
    from cxr_tf.data import preprocessing as pp
    from cxr_tf.data.manifest import MANIFEST
    from cxr_tf.data.targets import LabelSpec
    from cxr_tf.labels import FINDINGS
    from cxr_tf.modeling import augment
    from cxr_tf.sources import registry

    workdir = Path(config.workdir)
    root = synthetic_nih(workdir / "nih", config.n, config.seed)
    spec = LabelSpec.from_config(ModelConfig(backbone="tiny"))
    results: dict = {"batch": config.batch, "stored_size": config.stored_size}
    df = registry.read_catalog("nih", root).frame  # Data_Entry's rows, in its order
    labels = df[list(FINDINGS)].to_numpy(np.uint8)  # NIH's 14: 0 negative, 1 positive
    paths = [str(root / "images" / n) for n in df["image_index"]]

    def png_pipeline() -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels)).shuffle(len(paths)).repeat()
        ds = ds.map(
            lambda p, y: (
                pp.bytes_to_stored(tf.io.read_file(p), config.stored_size),
                spec.select(y[None])[0],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.batch(config.batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    results["png_decode_img_s"] = _rate(png_pipeline(), config.batches)
    for encoding in config.encodings:
        convert_config = ConvertConfig(
            root=str(root), out_dir=str(workdir / "tfrecords"),
            name=f"bench_{config.stored_size}_{encoding}", stored_size=config.stored_size,
            encoding=encoding,
            split=SplitConfig(strategy="random", fractions=(0.9, 0.05, 0.05)),
        )  # fmt: skip
        if not (workdir / "tfrecords" / convert_config.name / MANIFEST).exists():
            conversion.convert(convert_config, progress=False)
        data = DataConfig(
            dataset=str(workdir / "tfrecords" / convert_config.name),
            batch_size=config.batch, shuffle_buffer=1024, cache=config.cache,
        )  # fmt: skip
        read = reader.ReadOptions(training=True, repeat=True, seed=0)
        ds = reader.make_dataset(data, spec, "train", read)
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
        f"pipeline benchmark: batch {config.batch}, {config.stored_size} px stored, "
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


def _nih_like_patients(config: BenchShardsConfig) -> list[str]:
    """Training image names ("PPPPPPPP_FFF.png") with NIH's patient structure."""
    import numpy as np

    rng = np.random.default_rng(config.seed)
    if config.data_entry:
        from cxr_tf.sources.base import read_csv

        names = read_csv(config.data_entry)["Image Index"].str.strip().tolist()
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
    from cxr_tf.data import conversion, reader

    names = _nih_like_patients(config)
    convert_config = ConvertConfig(
        root=".", stored_size=config.stored_size, shard_mb=config.shard_mb
    )
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
        ds = reader.interleaved_records(files, reader.epoch_seed(0, 0))
        ds = ds.shuffle(config.buffer, seed=reader.epoch_seed(0, 0)).batch(4096)
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
