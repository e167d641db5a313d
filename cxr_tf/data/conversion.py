"""Conversion of a dataset folder (read into a `cxr_tf.sources.catalog.Catalog` by its source's
reader) into a converted dataset folder: the shard plan, resumable shard writing, the
manifest and the TFDS metadata. The command and what it writes are described in
`cxr_tf.convert`. Shards are written in this process (a thread pool decodes), in worker
processes each writing whole shards (`--processes`, `write_task`), or on Apache Beam
(`cxr_tf.data.beam`); the same shard gives the same bytes whichever writes it."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf import __version__
from cxr_tf.config import SPLIT_NAMES, ConvertConfig, rename_old_keys, to_dict
from cxr_tf.data import lock, schema, splits
from cxr_tf.data.manifest import (
    MANIFEST,
    ImageInfo,
    Manifest,
    ShardInfo,
    SourceInfo,
    SplitInfo,
    Timing,
    shard_fingerprint,
)
from cxr_tf.labels import STATES
from cxr_tf.sources import catalog, registry
from cxr_tf.sources.catalog import Catalog
from cxr_tf.sources.images import ImageSource

PLAN = "plan.json"
PARTS = ".parts"
ARCHIVE_INDEX = ".archive_index"
BAD_REPORT = "bad_images.csv"
ABSENT_REPORT = "absent_images.txt"
TFDS_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
# Fields of ConvertConfig that do not change what a shard holds (safe to change on resume).
_RESUME_FREE = ("workers", "processes", "runner", "beam_options", "skip_bad", "out_dir", "name")


class ConversionError(RuntimeError):
    """Conversion cannot go on; the message says which files or images and why."""


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00016.tfrecord` (TFDS's `{SPLIT}-{SHARD_X_OF_Y}` template)."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _bytes_per_record(config: ConvertConfig) -> float:
    pixels = config.stored_size**2
    # PNG of a resized radiograph is ~0.55 bytes/pixel (measured on the NIH samples at 256).
    return (pixels if config.encoding == "raw" else 0.55 * pixels) + 400


def plan_shards(split_images: dict[str, list[str]], config: ConvertConfig) -> dict[str, list]:
    """Each split's images in a seeded random order, cut into shards of ~`shard_mb` each.

    Sorted image names are runs of one patient after another, so contiguous shards would
    each hold a narrow window of patients; a seeded permutation (`shard_seed`, the split's
    position) makes every shard a random sample of its split, reproducibly. Records are
    written in this order too.
    """
    per_shard = max(1, int(config.shard_mb * 1e6 / _bytes_per_record(config)))
    plan: dict[str, list] = {}
    for position, split in enumerate(SPLIT_NAMES):
        names = sorted(split_images.get(split, []))
        if not names:
            continue
        order = np.random.default_rng([config.shard_seed, position]).permutation(len(names))
        shuffled = [names[i] for i in order]
        count = max(1, math.ceil(len(names) / per_shard))
        bounds = np.linspace(0, len(names), count + 1).round().astype(int)
        plan[split] = [
            {"file": shard_name(split, i, count), "images": shuffled[bounds[i] : bounds[i + 1]]}
            for i in range(count)
        ]
    return plan


class _Encoder:
    """Runs the shared preprocessing as one compiled TF function (releases the GIL).

    DICOM files are decoded by `cxr_tf.sources.dicom` (pixel data, rescale, VOI LUT,
    MONOCHROME1, INVERSE) to a 0-255 grayscale image, then resized by the same TF function
    as the other formats. Each image also gives the name of its pixel mapping (`png
    16-bit, sBIT 12`, `dicom MONOCHROME2, window`...), counted in the manifest."""

    def __init__(self, config: ConvertConfig) -> None:
        import tensorflow as tf

        from cxr_tf.data import preprocessing

        size, png = config.stored_size, config.encoding == "png"
        self.resize = resize = config.resize  # boxes follow the same geometry (_write_shard)

        def store(gray: tf.Tensor) -> tf.Tensor:
            stored = preprocessing.resize_to_stored(gray, size, resize)
            return preprocessing.encode_png(stored) if png else stored

        jpeg = config.jpeg_decode

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def encode(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            gray, mapping = preprocessing.decode_and_describe(data, jpeg, size, resize)
            shape = preprocessing.source_shape(data, gray, mapping)  # not a reduced one's
            return store(gray), shape, mapping

        @tf.function(input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
        def encode_gray(gray: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return store(gray), tf.shape(gray)[:2]

        def gray8_graph(factors: tuple[int, int] | None) -> Any:
            @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
            def encode_gray8(data: tf.Tensor) -> tf.Tensor:
                stored = preprocessing.gray8_to_stored(data, size, resize, factors)
                return preprocessing.encode_png(stored) if png else stored

            return encode_gray8.get_concrete_function()

        self._encode, self._encode_gray = encode, encode_gray
        self._gray8_graph = gray8_graph
        self._encode_gray8: dict[tuple[int, int] | None, Any] = {}  # pool factors -> graph
        self._jpeg = jpeg
        self._size = size
        self._encode_jpeg: dict[int, Any] = {}  # scale -> grayscale JPEG graph, when needed

        def jpeg_graph(ratio: int) -> Any:
            @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
            def encode_jpeg(data: tf.Tensor) -> tf.Tensor:
                stored = preprocessing.gray_jpeg_to_stored(data, ratio, size, resize)
                return preprocessing.encode_png(stored) if png else stored

            return encode_jpeg.get_concrete_function()

        self._jpeg_graph = jpeg_graph
        self._lock = threading.Lock()

    def _jpeg_encoder(self, ratio: int) -> Any:
        """The grayscale JPEG graph for `ratio`, built on first use (decoding threads share
        the encoder)."""
        with self._lock:
            if ratio not in self._encode_jpeg:
                self._encode_jpeg[ratio] = self._jpeg_graph(ratio)
            return self._encode_jpeg[ratio]

    def _gray8_encoder(self, factors: tuple[int, int] | None) -> Any:
        """The 8-bit grayscale PNG graph for `factors` (`pool_factors`), built on first use."""
        with self._lock:
            if factors not in self._encode_gray8:
                self._encode_gray8[factors] = self._gray8_graph(factors)
            return self._encode_gray8[factors]

    def trace(self, jpeg: bool = False) -> None:
        """Builds and runs the TF graphs once on tiny images now rather than on the first
        images of a shard, so their start-up (tracing, graph optimisation on the first run:
        ~0.1 s for the general graph) counts as setup, not as writing (the benchmarks'
        img/s); the grayscale JPEG graphs too when `jpeg` (the source has JPEG files)."""
        import tensorflow as tf

        from cxr_tf.data import preprocessing

        gray = tf.zeros([2, 2, 1], tf.uint8)
        self._gray8_encoder(None)(tf.io.encode_png(gray))
        # and the pooled one NIH's 1,024 px images take, where the stored size allows it
        nih = preprocessing.pool_factors(1024, 1024, self._size, self.resize)
        if nih is not None:
            self._gray8_encoder(nih)(tf.io.encode_png(tf.zeros([*nih, 1], tf.uint8)))
        self._encode(tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))
        self._encode_gray(tf.cast(gray, tf.float32))
        if jpeg and self._jpeg != "fast":
            tiny = tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8))
            ratios = (1, *preprocessing.JPEG_RATIOS) if self._jpeg == "reduced" else (1,)
            for ratio in ratios:
                self._jpeg_encoder(ratio)(tiny)

    def __call__(self, data: bytes) -> tuple[bytes | np.ndarray, tuple[int, int], str]:
        """Encoded source bytes -> (stored payload, source (height, width), pixel mapping)."""
        import tensorflow as tf

        from cxr_tf.data import preprocessing
        from cxr_tf.sources import dicom

        shape = preprocessing.png_gray8_shape(data)
        if shape is not None:  # most radiographs: the general graph's branch for them alone
            if max(shape) > preprocessing.MAX_SIDE:
                raise tf.errors.InvalidArgumentError(None, None, preprocessing.SIDE_ERROR)
            factors = preprocessing.pool_factors(*shape, self._size, self.resize)
            payload = self._gray8_encoder(factors)(preprocessing.string_tensor(data))
            return payload.numpy(), shape, preprocessing.PNG_GRAY8
        shape = None if self._jpeg == "fast" else preprocessing.jpeg_gray_shape(data)
        if shape is not None:  # grayscale JPEGs: the same, for the scale the header allows
            ratio = 1
            if self._jpeg == "reduced":
                ratio = preprocessing.jpeg_ratio(*shape, self._size, self.resize)
            payload = self._jpeg_encoder(ratio)(preprocessing.string_tensor(data))
            return payload.numpy(), shape, preprocessing.jpeg_mapping(ratio)
        if dicom.is_dicom(data):
            pixels, mapping = dicom.decode_and_describe(data)
            payload, shape = self._encode_gray(np.asarray(pixels, np.float32)[..., None])
        else:
            payload, shape, name = self._encode(preprocessing.string_tensor(data))
            mapping = name.numpy().decode()
        value = payload.numpy()
        return value, (int(shape[0]), int(shape[1])), mapping


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


ERROR_CHARS = 300  # longest error message kept per image (bad_images.csv, the manifest)


def short_error(err: BaseException, limit: int = ERROR_CHARS) -> str:
    """The decoder's one-line reason (`preprocessing.error_reason`), at most `limit`
    characters: a longer one is cut at a word boundary and ends with "..."."""
    from cxr_tf.data.preprocessing import error_reason

    text = error_reason(err)
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    if space >= limit // 2:  # one very long word (a path, a UID) is cut inside instead
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "..."


class _InCallingThread(futures.Executor):
    """Runs each call at once, in the calling thread: one decoding thread without a second
    one to hand each image to and back (on one core that hand-off cost 1.0-1.5 ms per NIH
    PNG of 13 ms; with one process per core, as `--processes` runs, nothing overlaps it)."""

    _max_workers = 1

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # returned as a thread pool would return it
            future.set_exception(err)
        return future


def decoding_pool(threads: int) -> futures.Executor:
    """Where images are decoded: `threads` threads, or the calling thread alone for 1."""
    return _InCallingThread() if threads == 1 else futures.ThreadPoolExecutor(threads)


def _ordered_map(
    pool: futures.Executor, fn: Any, items: Iterator[tuple[str, Any]], window: int
) -> Iterator[tuple[str, Any]]:
    """Applies fn to each item's bytes in the pool, in order, at most `window` in flight.

    Errors (an unreadable file, undecodable bytes) come back as the exception instead of
    a result, so one bad image never stops the others.
    """

    def safe(data: Any) -> Any:
        if isinstance(data, Exception):
            return data
        try:
            return fn(data)
        except Exception as err:  # reported per image, never dropped
            return err

    pending: list[tuple[str, futures.Future]] = []
    for name, data in items:
        pending.append((name, pool.submit(safe, data)))
        if len(pending) >= window:
            head, future = pending.pop(0)
            yield head, future.result()
    for name, future in pending:
        yield name, future.result()


def _in_plan_order(
    results: Iterator[tuple[str, Any]], names: Sequence[str], progress: Any
) -> Iterator[tuple[str, Any]]:
    """(name, result) pairs in the order of `names`, whatever order `results` come in
    (folders give them in order; archives stream in their own, and those wait here)."""
    waiting: dict[str, Any] = {}
    order = iter(names)
    want = next(order, None)
    for name, result in results:
        progress.update(1)
        waiting[name] = result
        while want is not None and want in waiting:
            yield want, waiting.pop(want)
            want = next(order, None)
    while want is not None:  # never read: an error for each, not a silent gap
        yield want, waiting.pop(want, FileNotFoundError(f"{want}: not found in its source"))
        want = next(order, None)


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Metadata:
    """The label, box and demographic facts of the images being converted."""

    def __init__(self, df: pd.DataFrame, boxes: pd.DataFrame | None) -> None:
        columns = list(catalog.FRAME_COLUMNS)
        self.rows = {r["image_index"]: r for r in df[columns].to_dict("records")}
        self.labels = dict(zip(df["image_index"], catalog.state_matrix(df), strict=True))
        self.boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
        if boxes is not None:
            for r in boxes.itertuples(index=False):
                self.boxes.setdefault(r.image_index, []).append((r.finding, r.x, r.y, r.w, r.h))

    def subset(self, names: Sequence[str]) -> _Metadata:
        """The facts of `names` only (what a shard written elsewhere needs)."""
        part = object.__new__(_Metadata)
        part.rows = {n: self.rows[n] for n in names}
        part.labels = {n: self.labels[n] for n in names}
        part.boxes = {n: self.boxes[n] for n in names if n in self.boxes}
        return part

    def digest(self, name: str) -> str:
        """A short hash of everything a record holds about `name` besides its pixels."""
        return _digest([self.rows[name], self.labels[name].tolist(), self.boxes.get(name, [])])


def _inputs(shard: dict, meta: _Metadata, source: ImageSource) -> dict[str, str]:
    """image name -> "<metadata hash>:<file size and mtime>" for the images of a shard."""
    return {n: f"{meta.digest(n)}|{source.identity(n)}" for n in shard["images"]}


def _why_stale(part: dict, inputs: dict[str, str], skip_bad: bool) -> str:
    """Why a finished shard no longer matches its inputs ("" when it does)."""
    before = part.get("inputs", {})
    relabelled = [n for n in inputs if before.get(n, "|").split("|")[0] != inputs[n].split("|")[0]]
    refiled = [n for n in inputs if before.get(n, "|").split("|")[1] != inputs[n].split("|")[1]]
    reasons = []
    if relabelled:
        reasons.append(
            f"labels, boxes or demographics changed for {len(relabelled)} image(s) "
            f"({', '.join(relabelled[:3])})"
        )
    if refiled:
        reasons.append(f"{len(refiled)} image file(s) changed ({', '.join(refiled[:3])})")
    if part.get("skipped") and not skip_bad:
        reasons.append(f"retrying {len(part['skipped'])} image(s) skipped by --skip_bad")
    return "; ".join(reasons)


def _write_shard(
    dataset_dir: Path,
    shard: dict,
    source: ImageSource,
    meta: _Metadata,
    encoder: _Encoder,
    pool: futures.Executor,
    features: Any,
    skip_bad: bool,
    progress: Any,
    box_frame: tuple[int, int] | None,
) -> tuple[dict | None, list[dict]]:
    """Writes one shard to a temporary file and renames it when complete.

    Records are written in the plan's order, whatever order the images were read in
    (archives stream in their own order), so the same inputs give the same bytes.
    Returns (part record or None when the shard could not be completed, bad images).
    """
    import tensorflow as tf

    from cxr_tf.data import preprocessing

    began = time.time()  # wall clock: shards written in other processes are compared
    final = dataset_dir / shard["file"]
    tmp = final.with_name(final.name + ".tmp")
    serialize = schema.make_serializer(features)
    window = 4 * max(1, getattr(pool, "_max_workers", 2))
    encoded = _ordered_map(pool, encoder, source.read(shard["images"]), window)
    bad: list[dict] = []
    written: list[str] = []
    sizes: dict[str, int] = {}
    mappings: dict[str, int] = {}  # pixel mapping -> images
    low_range: list[str] = []  # 16-bit PNGs using under 1/8 of the range, without sBIT
    cropped_out = 0  # boxes wholly in the part a crop cut off
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            # records are written while later images decode, in the plan's order
            for name, result in _in_plan_order(encoded, shard["images"], progress):
                if isinstance(result, BaseException):
                    error = short_error(result)
                    bad.append({"image": name, "location": source.locate(name), "error": error})
                    continue
                if bad and not skip_bad:
                    continue  # the shard will not be kept: only the other bad images matter
                payload, (height, width), mapping = result
                key = f"{width}x{height}"
                sizes[key] = sizes.get(key, 0) + 1
                mappings[mapping] = mappings.get(mapping, 0) + 1
                if mapping == preprocessing.SIXTEEN_BIT_LOW:
                    low_range.append(name)
                # Boxes refer to the source's frame (NIH: 1024 px), else to the image itself.
                frame = box_frame or (width, height)
                boxes = [
                    (finding, schema.box_to_bbox(x, y, w, h, frame))
                    for finding, x, y, w, h in meta.boxes.get(name, [])
                ]
                if encoder.resize != "squash":  # boxes follow the crop or the padding
                    squared = [
                        (f, preprocessing.box_to_square(b, width, height, encoder.resize), b)
                        for f, b in boxes
                    ]
                    boxes = [(f, type(b)(*sq)) for f, sq, b in squared if sq is not None]
                    cropped_out += len(squared) - len(boxes)
                row = meta.rows[name]
                if not row["original_width"]:  # not in the metadata: the decoded size
                    row = {**row, "original_width": width, "original_height": height}
                example = schema.make_example(payload, row, meta.labels[name], boxes)
                writer.write(serialize(example))
                written.append(name)
        if bad and not skip_bad:
            tmp.unlink()
            return None, bad
        os.replace(tmp, final)
        part = {
            "file": shard["file"],
            "records": len(written),
            "bytes": final.stat().st_size,
            "sha256": sha256_file(final),
            "skipped": [b["image"] for b in bad],
            "source_sizes": dict(sorted(sizes.items())),
            "pixel_mappings": dict(sorted(mappings.items())),
            "low_range_images": low_range,
            "boxes_cropped_out": cropped_out,
            "inputs": _inputs(shard, meta, source),
            "written": [round(began, 3), round(time.time(), 3)],  # began, ended (epoch s)
        }
        _write_json(dataset_dir / PARTS / (shard["file"] + ".json"), part)
    except (OSError, tf.errors.OpError) as err:
        if tmp.is_file():
            tmp.unlink()
        if isinstance(err, OSError) and err.strerror:
            target, reason = getattr(err, "filename2", None) or err.filename or final, err.strerror
        else:
            target, reason = final, short_error(err)
        raise ConversionError(
            f"cannot write {target}: {reason}. Finished shards are kept; fix the "
            f"cause (disk space, permissions) and rerun the same command to resume."
        ) from err
    return part, bad


class _Silent:
    """The progress of a shard written in another process: shown when the shard is done."""

    def update(self, n: int = 1) -> None:
        """Nothing: the caller counts the shard's images when it comes back."""


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard of the plan and everything its writing needs, picklable: what a worker
    process or a Beam worker gets. `source` and `meta` hold the shard's images only."""

    dataset_dir: str
    shard: dict
    config: ConvertConfig
    source: ImageSource
    meta: _Metadata
    label_names: tuple[str, ...]
    box_frame: tuple[int, int] | None
    threads: int  # decoding threads in the process writing it; 0: its machine's cores


def shard_tasks(
    dataset_dir: Path,
    shards: Sequence[dict],
    config: ConvertConfig,
    source: ImageSource,
    meta: _Metadata,
    label_names: Sequence[str],
    box_frame: tuple[int, int] | None,
    threads: int,
) -> list[ShardTask]:
    """The shards to write as self-contained tasks, in plan order."""
    tasks = []
    for shard in shards:
        names = shard["images"]
        own = dataclasses.replace(
            source,
            files={n: source.files[n] for n in names if n in source.files},
            members={n: source.members[n] for n in names if n in source.members},
            stats={n: source.stats[n] for n in names if n in source.stats},
            rejected=[],
            rejected_names={},
        )
        task = ShardTask(str(dataset_dir), shard, config, own, meta.subset(names),
                         tuple(label_names), box_frame, threads)  # fmt: skip
        tasks.append(task)
    return tasks


_ENCODERS: dict[str, _Encoder] = {}  # one per conversion settings in each process
_FEATURES: dict[tuple, Any] = {}  # the record features, likewise


def write_task(task: ShardTask) -> tuple[dict | None, list[dict]]:
    """Writes one shard with `_write_shard`, as the local converter does, in whatever
    process runs it (the same inputs give the same bytes); returns (part record or None,
    bad images)."""
    config = task.config
    threads = task.threads or os.cpu_count() or 1
    with decoding_pool(threads) as pool:
        return _write_shard(
            Path(task.dataset_dir), task.shard, task.source, task.meta, _encoder_for(config),
            pool, _features_for(config, task.label_names), config.skip_bad, _Silent(),
            task.box_frame,
        )  # fmt: skip


def _features_for(config: ConvertConfig, label_names: tuple[str, ...]) -> Any:
    """This process's record features for `config` and `label_names`, built once."""
    key = (config.stored_size, config.encoding, label_names)
    if key not in _FEATURES:
        _FEATURES[key] = schema.build_features(*key)
    return _FEATURES[key]


def _encoder_for(config: ConvertConfig, jpeg: bool = False) -> _Encoder:
    """This process's encoder for `config`, built and warmed once (before any shard's clock,
    as the local converter does; `jpeg`: its JPEG graphs too)."""
    key = json.dumps(to_dict(config), sort_keys=True, default=str)
    if key not in _ENCODERS:
        _ENCODERS[key] = _Encoder(config)
        _ENCODERS[key].trace(jpeg)
    return _ENCODERS[key]


def _has_jpeg(source: ImageSource) -> bool:
    """Whether any of the source's files (or archive members) is named as a JPEG."""
    names = [*map(str, source.files.values()), *(m for _, m in source.members.values())]
    return any(n.lower().endswith((".jpg", ".jpeg")) for n in names)


START_WAIT_S = 120  # longest a started worker process waits for the others to start


def _start_worker(
    config: ConvertConfig, label_names: tuple[str, ...], jpeg: bool, started: Any
) -> None:
    """A worker process's start: TensorFlow imported and the encoder built and warmed, then
    the other workers awaited (`started`, a barrier), so that they take their first shards
    together rather than one writing alone while another still imports TensorFlow (its
    share of the shards would shrink, and `timing.shards_s` would count one process's
    rate). A worker that fails to start breaks the pool, which reports it; the others then
    stop waiting."""
    _encoder_for(config, jpeg)
    _features_for(config, label_names)
    with contextlib.suppress(threading.BrokenBarrierError):
        started.wait(timeout=START_WAIT_S)


def _write_in_processes(
    tasks: Sequence[ShardTask], processes: int, progress: Any
) -> list[tuple[dict | None, list[dict]]]:
    """`write_task` for each task in a pool of `processes` processes (each decodes with
    its own GIL and TensorFlow), results in the tasks' order."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    results: list[Any] = [None] * len(tasks)
    if not tasks:
        return results
    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive a fork
    count = min(processes, len(tasks))
    pool = futures.ProcessPoolExecutor(
        count, mp_context=context, initializer=_start_worker,
        initargs=(tasks[0].config, tasks[0].label_names, any(_has_jpeg(t.source) for t in tasks),
                  context.Barrier(count)),
    )  # fmt: skip
    try:
        running = {pool.submit(write_task, task): i for i, task in enumerate(tasks)}
        for future in futures.as_completed(running):
            i = running[future]
            results[i] = future.result()
            progress.update(len(tasks[i].shard["images"]))
    except BrokenProcessPool as err:
        done = sum(r is not None and r[0] is not None for r in results)
        raise ConversionError(
            f"a conversion worker process stopped before finishing its shard (killed, out of "
            f"memory, or it could not start: any error of its own is printed above); "
            f"{done} of {len(tasks)} shard(s) finished and are kept: rerun the same command "
            f"to resume (with fewer --processes if memory ran out)"
        ) from err
    finally:  # a failed shard stops the others that have not started
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _check_listed(listed: Sequence[str], known: set[str], list_path: Path | None) -> None:
    unknown = sorted(set(listed) - known)
    if unknown:
        raise ConversionError(
            f"{list_path}: {len(unknown)} listed image(s) are not in the label file, "
            f"first: {unknown[:10]}"
        )


def _check_official(cat: Catalog) -> None:
    """Every image an official list names must be in the dataset's label table."""
    if cat.official is None:
        return
    known = set(cat.frame["image_index"])
    for key, names in cat.official.items():
        path = cat.input_files.get(f"{key}_list")
        _check_listed(names, known, path or cat.root)


def _select_splits(
    config: ConvertConfig, cat: Catalog, present: set[str] | None
) -> tuple[dict[str, list[str]], str]:
    """Patient-disjoint image lists per split (checked before anything is written), and
    how they were made."""
    df = cat.frame
    known = set(df["image_index"])
    keep = (lambda names: [n for n in names if n in present]) if present is not None else list
    kwargs: dict[str, Any] = {}
    split_config = config.split
    strategy = split_config.strategy
    how = strategy
    if strategy == "official" and cat.official is None:
        split_config = dataclasses.replace(split_config, strategy="random")
        how = (
            f"random (the {cat.source} release has no official split): patients split "
            f"{'/'.join(str(f) for f in split_config.fractions)} with seed {split_config.seed}"
        )
        cat.notes.append(f"no official split in {cat.source}: {how}")
    elif strategy == "official" and "train_val" in cat.official:
        kwargs["train_val"] = keep(cat.official["train_val"])
        kwargs["test"] = keep(cat.official.get("test", []))
        how = "official (validation carved out of the official training patients)"
    elif strategy == "official":
        rows = [(n, split) for split, names in cat.official.items() for n in keep(names)]
        kwargs["assignments"] = pd.DataFrame(rows, columns=["Image Index", "split"])
        split_config = dataclasses.replace(split_config, strategy="file", split_file="official")
        how = "official"
    elif strategy == "file":
        path = Path(config.split.split_file)
        if not path.is_file():
            raise ConversionError(f"split.split_file: {path} is not a file")
        table = splits.read_split_file(path)
        _check_listed(table["Image Index"].tolist(), known, path)
        if present is not None:
            table = table[table["Image Index"].isin(present)]
        kwargs["assignments"] = table
    if present is not None:
        df = df[df["image_index"].isin(present)]
    try:
        made = splits.make_splits(df, split_config, **kwargs)
    except splits.PatientOverlapError as err:
        if not cat.patient_names:
            raise
        # The dataset's own patient IDs, not the numbers the records store.
        raise splits.PatientOverlapError(
            {cat.patient_names.get(p, str(p)): s for p, s in err.splits_by_patient.items()}
        ) from None
    except ValueError as err:
        lists = {
            "official": ", ".join(str(p) for k, p in cat.input_files.items() if "list" in k or
                                  "split" in k) or f"the official split of {cat.root}",
            "file": config.split.split_file,
        }.get(strategy, "the split")  # fmt: skip
        raise ConversionError(f"{lists}: {err}") from err
    _check_empty_splits(made, split_config, cat, df)
    return made, how


def _check_empty_splits(
    made: dict[str, list[str]], split_config: Any, cat: Catalog, df: pd.DataFrame
) -> None:
    """A random split that leaves train or validation empty although its fraction is above
    zero is refused; any other empty split becomes a note (printed, and in the manifest)."""
    empty = [split for split in SPLIT_NAMES if not made[split]]
    if not empty:
        return
    patients = int(df["patient_id"].nunique())
    counts = ", ".join(f"{split} {len(made[split])}" for split in SPLIT_NAMES)
    if split_config.strategy == "random":
        fractions = dict(zip(SPLIT_NAMES, split_config.fractions, strict=True))
        needed = [s for s in empty if s != "test" and fractions[s] > 0]
        if needed:
            raise ConversionError(
                f"the random split of {patients} patient(s) leaves {' and '.join(needed)} "
                f"empty (images: {counts}; split.fractions "
                f"{'/'.join(str(f) for f in split_config.fractions)}): each group of patients "
                f"sharing a rarest finding gives validation and test their share rounded up "
                f"first, so a group of one or two patients has none left for train. Convert "
                f"more images, or choose other --split.fractions"
            )
    cat.notes.append(
        f"empty split: {' and '.join(empty)} has no image ({patients} patient(s), images "
        f"per split: {counts})"
    )


def _input_files(config: ConvertConfig, cat: Catalog) -> dict[str, str]:
    """sha256 of every metadata file whose content ends up in a record or a split."""
    paths: dict[str, Path | None] = dict(cat.input_files)
    if config.split.strategy != "official":  # the official lists play no part
        paths = {k: p for k, p in paths.items() if not k.endswith("_list") and k != "split"}
    if config.split.strategy == "file":
        paths["split_file"] = Path(config.split.split_file)
    return {k: f"{p.name}:{sha256_file(p)}" for k, p in paths.items() if p is not None}


def _settings(config: ConvertConfig, source: str) -> dict:
    settings = {k: v for k, v in to_dict(config).items() if k not in _RESUME_FREE}
    settings["root"] = str(Path(config.root).resolve())
    settings["source"] = source
    return settings


def _identity(config: ConvertConfig, source: str, plan: dict, inputs: dict[str, str]) -> dict:
    """What a dataset folder was converted from: settings and image-to-shard plan (both
    must match to resume) and the metadata files' hashes (named when a plan differs)."""
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return {"settings": _settings(config, source), "plan_sha256": digest, "input_files": inputs}


def _flat_settings(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_earlier(dataset_dir: Path, identity: dict, plan: dict) -> bool:
    """True when `dataset_dir` holds this very conversion (resume it); raises when it holds
    another one, naming what differs; False for a new dataset folder."""
    path = dataset_dir / PLAN
    if not path.exists():
        return False
    try:
        earlier = json.loads(path.read_text())
        before = earlier["identity"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConversionError(
            f"{path} is unreadable ({err}); delete {dataset_dir} to convert anew"
        ) from err
    # settings written before a field was renamed, under today's names
    before = {**before, "settings": rename_old_keys(ConvertConfig, before.get("settings", {}))}
    before["settings"].setdefault("resize", "squash")  # before it was a choice
    before["settings"].setdefault("jpeg_decode", "fast")  # TF's default, before the choice
    if {k: before.get(k) for k in ("settings", "plan_sha256")} == {
        k: identity[k] for k in ("settings", "plan_sha256")
    }:
        return True  # changed labels, boxes or images only re-convert their shards
    old, new = _flat_settings(before.get("settings", {})), _flat_settings(identity["settings"])
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]  # fmt: skip
    if changed:
        what = "other settings: " + ", ".join(changed)
    else:
        files_before, files_now = before.get("input_files", {}), identity["input_files"]
        changed_files = [
            (files_now.get(k) or files_before.get(k, "")).split(":")[0] or k
            for k in sorted(set(files_before) | set(files_now))
            if files_before.get(k) != files_now.get(k)
        ]
        where_before = {
            n: (split, s["file"]) for split, shards in earlier.get("shards", {}).items()
            for s in shards for n in s["images"]
        }  # fmt: skip
        where_now = {
            n: (split, s["file"]) for split, shards in plan.items()
            for s in shards for n in s["images"]
        }  # fmt: skip
        moved = sorted(
            n for n in set(where_before) | set(where_now) if where_before.get(n) != where_now.get(n)
        )
        examples = ", ".join(
            f"{n}: {'/'.join(where_before.get(n, ('absent',)))} -> "
            f"{'/'.join(where_now.get(n, ('absent',)))}"
            for n in moved[:3]
        )
        what = (
            f"other inputs: {', '.join(changed_files) or 'the image list'} changed, which "
            f"moves {len(moved)} image(s) to another split or shard ({examples})"
        )
    raise ConversionError(
        f"{dataset_dir} holds a conversion with {what}. Choose another --name, or delete "
        f"the folder to convert anew."
    )


def _check_paths(config: ConvertConfig) -> tuple[Path, str]:
    """The dataset folder and its source (detected when `source` is auto)."""
    if not config.root:
        raise ConversionError("root: give the dataset folder (--root DIR)")
    root = Path(config.root)
    if not root.is_dir():
        raise ConversionError(f"root: {root} is not a folder")
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"out_dir: {out_dir} exists and is not a folder")
    try:
        source = registry.detect_source(root) if config.source == "auto" else config.source
    except catalog.CatalogError as err:
        raise ConversionError(str(err)) from err
    return root, source


def _absent_error(
    absent: list[str], listed: int, source: ImageSource, labels_file: object, report: Path
) -> ConversionError:
    unsafe = [source.rejected_names[n] for n in absent if n in source.rejected_names]
    text = (
        f"{len(absent)} of {listed} images listed in {labels_file} are not under "
        f"{source.root} (layout: {source.layout}); first: {absent[:5]}; full list: {report}."
    )
    if unsafe:
        text += f" {len(unsafe)} of them are archive members {'; '.join(unsafe[:3])}."
    return ConversionError(
        text + f" Pass --present_only to convert the {listed - len(absent)} present images."
    )


def convert(config: ConvertConfig, progress: bool = True) -> Manifest:
    """Converts `config.root` into `config.out_dir/<name>/`; returns the manifest.

    Everything is read and checked before the dataset folder is touched. A rerun of the
    same conversion resumes it: finished shards whose inputs (labels, boxes,
    demographics, image file size and time) are unchanged are kept, the others are
    converted again. A folder holding another conversion (other settings, or inputs that
    move images between splits or shards) is refused with the differences named.
    `progress` shows the progress bar; `note:` lines (the reader's notes, dropped views)
    go to stderr either way.

    Raises ConversionError (absent or bad images, mismatching earlier run, failed write)
    with the full list written to a report file, and `lock.FolderInUse` while another
    process converts into the same dataset folder (it is held from the plan on).
    """
    with contextlib.ExitStack() as held:
        return _convert(config, progress, held)


def _convert(config: ConvertConfig, progress: bool, held: contextlib.ExitStack) -> Manifest:
    """`convert`; the dataset folder is held (entered on `held`) before it is written."""
    from cxr_tf.progress import progress_bar as tqdm


    started = time.perf_counter()
    root, source_kind = _check_paths(config)
    # A release with an official split whose lists are not in the folder (NIH without
    # train_val_list.txt / test_list.txt) is refused, not split at random.
    if config.split.strategy == "official" and (
        missing := registry.missing_official_split(source_kind, root)
    ):
        raise ConversionError(missing)
    # Notes and warnings are printed whatever `progress` says: --quiet hides bars only.
    if config.source == "auto":
        print(f"source: {source_kind}, detected from the files in {root}", file=sys.stderr)
    name = config.dataset_name(source_kind)
    dataset_dir = Path(config.out_dir) / name
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise ConversionError(f"{dataset_dir} exists and is not a folder")
    try:
        cat = registry.read_catalog(source_kind, root, Path(config.out_dir) / ARCHIVE_INDEX)
        _check_official(cat)
        cat = catalog.filter_views(cat, config.views)
    except catalog.CatalogError as err:
        raise ConversionError(str(err)) from err
    for note in cat.notes:
        print(f"note: {note}", file=sys.stderr)
    if cat.views_dropped:
        dropped = ", ".join(f"{n} {view}" for view, n in cat.views_dropped.items())
        print(
            f"note: dropped {dropped} view(s) (--views keeps {' '.join(config.views)})",
            file=sys.stderr,
        )
    noted = len(cat.notes)
    df, boxes, source = cat.frame, cat.boxes, cat.images
    labels_file = next(iter(cat.input_files.values()), root)  # the first is the label file
    listed = df["image_index"].tolist()
    absent = sorted(set(listed) - source.names)
    new_folder = not (dataset_dir / PLAN).exists()
    present: set[str] | None = None
    if absent and not config.present_only:
        if new_folder:
            report = dataset_dir / ABSENT_REPORT
        else:  # never write into another conversion's folder
            report = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".txt")[1])
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("\n".join(absent) + "\n")
        raise _absent_error(absent, len(listed), source, labels_file, report)
    if absent:
        present = set(listed) & source.names
        if not present:
            raise ConversionError(f"no image of {labels_file} is under {root}")
    split_images, split_how = _select_splits(config, cat, present)
    for note in cat.notes[noted:]:  # notes about the split (no official one, an empty split)
        print(f"note: {note}", file=sys.stderr)
    plan = plan_shards(split_images, config)
    identity = _identity(config, source_kind, plan, _input_files(config, cat))
    held.enter_context(lock.hold(dataset_dir, "convert"))
    _check_earlier(dataset_dir, identity, plan)

    (dataset_dir / PARTS).mkdir(parents=True, exist_ok=True)
    _write_json(dataset_dir / PLAN, {"identity": identity, "shards": plan})
    for leftover in dataset_dir.glob("*.tmp"):
        leftover.unlink()
    if absent:
        (dataset_dir / ABSENT_REPORT).write_text("\n".join(absent) + "\n")
    else:
        (dataset_dir / ABSENT_REPORT).unlink(missing_ok=True)

    images = {n for names in split_images.values() for n in names}
    meta = _Metadata(
        df[df["image_index"].isin(images)],
        boxes[boxes["image_index"].isin(images)] if boxes is not None else None,
    )
    features = schema.build_features(config.stored_size, config.encoding, cat.label_names)
    processes = config.processes or os.cpu_count() or 1

    parts: dict[str, dict] = {}
    todo, stale = [], []
    for shards in plan.values():
        for shard in shards:
            part_path = dataset_dir / PARTS / (shard["file"] + ".json")
            shard_file = dataset_dir / shard["file"]
            part = None
            if part_path.exists() and shard_file.is_file():
                try:
                    part = json.loads(part_path.read_text())
                except ValueError:
                    part = None
            if part is not None and part.get("bytes") == shard_file.stat().st_size:
                why = _why_stale(part, _inputs(shard, meta, source), config.skip_bad)
                if not why:
                    parts[shard["file"]] = part
                    continue
                stale.append(f"{shard['file']}: {why}")
            todo.append(shard)
    # worker processes only when there are shards to share (each starts its own TensorFlow)
    local = config.runner == "local" and (processes == 1 or len(todo) <= 1)
    encoder = _Encoder(config) if local else None
    # threads per process: the cores shared out (a Beam worker counts its own: 0)
    workers = config.workers or max(1, (os.cpu_count() or 1) // (1 if local else processes))
    bad: list[dict] = []
    total = sum(len(s["images"]) for s in todo)
    if encoder is not None and todo:
        encoder.trace(_has_jpeg(source))
    writing = time.perf_counter()
    with (
        decoding_pool(workers) as pool,
        tqdm(
            total=total, unit="img", desc=f"convert {name}", disable=not progress
        ) as bar,
    ):
        if parts:
            bar.write(f"resuming {dataset_dir}: {len(parts)} finished shard(s) kept")
        for line in stale:
            bar.write(f"converting again {line}")
        if encoder is None:  # whole shards in worker processes, or on Beam
            threads = config.workers if config.runner == "beam" else workers
            tasks = shard_tasks(
                dataset_dir, todo, config, source, meta, cat.label_names, cat.box_frame, threads
            )
            if config.runner == "beam":
                from cxr_tf.data import beam

                try:
                    written = beam.write_shards(
                        tasks, write_task, dataset_dir / PARTS, config.beam_options, bar
                    )
                except beam.BeamError as err:
                    raise ConversionError(str(err)) from err
                done = zip(todo, written, strict=True)
            else:
                done = zip(todo, _write_in_processes(tasks, processes, bar), strict=True)
        else:
            done = (
                (shard, _write_shard(
                    dataset_dir, shard, source, meta, encoder, pool, features, config.skip_bad,
                    bar, cat.box_frame,
                ))
                for shard in todo
            )  # fmt: skip
        spans: list[list[float]] = []  # [began, ended] of each shard written in this run
        for shard, (part, shard_bad) in done:
            bad.extend(shard_bad)
            if part is not None:
                parts[shard["file"]] = part
                if "written" in part:  # a worker of an older cxr_tf records none
                    spans.append(part["written"])
    written_at = time.perf_counter()
    seen = {b["image"] for b in bad}
    for part in parts.values():
        for image in part.get("skipped", []):  # not `name`: that is the dataset's
            if image not in seen:
                bad.append({"image": image, "location": source.locate(image), "error": "skipped"})
    if bad:
        pd.DataFrame(bad).to_csv(dataset_dir / BAD_REPORT, index=False)
        if not config.skip_bad:
            listing = "; ".join(f"{b['image']}: {b['error']}" for b in bad[:5])
            raise ConversionError(
                f"{len(bad)} image(s) could not be read or decoded ({listing}); full list: "
                f"{dataset_dir / BAD_REPORT}. Finished shards are kept; fix the images and "
                f"rerun, or pass --skip_bad to leave them out (they are then listed in the "
                f"manifest)."
            )
    else:
        (dataset_dir / BAD_REPORT).unlink(missing_ok=True)
    manifest = _build_manifest(
        config, name, dataset_dir, cat, plan, parts, absent, bad, meta.boxes, split_how
    )
    write_tfds_metadata(dataset_dir, manifest)
    manifest = dataclasses.replace(
        manifest,
        timing=Timing(
            setup_s=round(writing - started, 3),
            write_s=round(written_at - writing, 3),
            shards_s=round(max(e for _, e in spans) - min(b for b, _ in spans), 3)
            if spans
            else 0.0,
            images_written_this_run=total,
            finish_s=round(time.perf_counter() - written_at, 3),
        ),
    )
    _write_json(dataset_dir / MANIFEST, manifest.to_dict())
    about = manifest.source
    if warning := low_range_warning(plan, parts):
        print(f"warning: {warning}", file=sys.stderr)
    if cat.box_frame == (1024, 1024) and about.boxes and about.not_1024_images:
        print(
            f"note: {about.not_1024_images} image(s) are not 1024x1024 "
            f"({', '.join(about.image_sizes)}); NIH boxes were scaled from their 1024-pixel "
            f"frame",
            file=sys.stderr,
        )
    if about.boxes_cropped_out:
        print(
            f"note: {about.boxes_cropped_out} box(es) lay wholly outside the centre square "
            f"--resize crop keeps and were left out (manifest: source.boxes_cropped_out)",
            file=sys.stderr,
        )
    return manifest


SHARD_KEYS = ("file", "records", "bytes", "sha256")  # what a part file gives the manifest
UNRECORDED = "not recorded (shard converted by an earlier cxr_tf)"


def low_range_warning(plan: dict, parts: dict[str, dict]) -> str:
    """The warning about 16-bit PNGs without sBIT that use under 1/8 of the 16-bit range
    ("" when there are none), naming the first few in the plan's order; the same for a
    resumed conversion, since the part files keep the names."""
    names = [
        n
        for shards in plan.values()
        for s in shards
        for n in parts.get(s["file"], {}).get("low_range_images", [])
    ]
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"{len(names)} 16-bit PNG(s) use under 1/8 of the 16-bit range and have no sBIT "
        f"chunk ({shown}): mapped over the full range, they are stored dark (at most 31 of "
        "255). If they hold 12-bit (or narrower) values as they are, as exports of 12-bit "
        "detectors often do, give each file an sBIT chunk with its bit count (PIL: "
        "save(..., pnginfo=info) with info.add(b'sBIT', bytes([12]))) and convert again; "
        "the manifest's source.pixel_mappings counts the mappings used"
    )


def _build_manifest(
    config: ConvertConfig,
    name: str,
    dataset_dir: Path,
    cat: Catalog,
    plan: dict,
    parts: dict[str, dict],
    absent: list[str],
    bad: list[dict],
    boxes: dict[str, list],
    split_how: str,
) -> Manifest:
    df, source = cat.frame, cat.images
    skipped = {b["image"] for b in bad}
    written = {
        split: [n for s in shards for n in s["images"] if n not in skipped]
        for split, shards in plan.items()
    }
    summary = splits.split_summary(written, df)
    split_entries = {}
    for split, shards in plan.items():
        entry = SplitInfo(
            **summary[split],
            shards=tuple(
                ShardInfo(**{k: parts[s["file"]][k] for k in SHARD_KEYS}) for s in shards
            ),
        )
        if entry.records != len(written[split]):
            raise ConversionError(f"{dataset_dir}: record count mismatch in split {split}")
        split_entries[split] = entry
    sizes: dict[str, int] = {}
    for part in parts.values():
        for key, count in part.get("source_sizes", {}).items():
            sizes[key] = sizes.get(key, 0) + count
    cropped_out = sum(int(part.get("boxes_cropped_out", 0)) for part in parts.values())
    mappings: dict[str, int] = {}
    for part in parts.values():
        # shards finished by a cxr_tf that did not record mappings
        recorded = part.get("pixel_mappings", {UNRECORDED: part["records"]})
        for key, count in recorded.items():
            mappings[key] = mappings.get(key, 0) + count
    low_range = low_range_warning(plan, parts)
    kept = df[df["image_index"].isin({n for names in written.values() for n in names})]
    views = kept["view_position"].value_counts().sort_index()
    labels_file = next(iter(cat.input_files.values()), None)
    return Manifest(
        schema_version=schema.SCHEMA_VERSION,
        cxr_tf_version=__version__,
        dataset=name,
        fingerprint=shard_fingerprint(split_entries),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        labels=cat.label_names,
        label_states={str(k): v for k, v in STATES.items()},
        labelled_findings=tuple(catalog.labelled_findings(kept)),
        image=ImageInfo(stored_size=config.stored_size, encoding=config.encoding),
        source=SourceInfo(
            kind=cat.source,
            root=str(Path(config.root).resolve()),
            layout=source.layout,
            labels_file=str(labels_file) if labels_file else "",
            described=cat.described,
            listed_images=int(len(df)),
            absent_images=len(absent),
            rejected_archive_members=source.rejected,
            image_sizes=dict(sorted(sizes.items())),
            not_1024_images=sum(n for k, n in sizes.items() if k != "1024x1024"),
            pixel_mappings=dict(sorted(mappings.items())),
            boxes=sum(len(boxes.get(n, [])) for names in written.values() for n in names)
            - cropped_out,
            boxes_cropped_out=cropped_out,
            box_frame=(
                f"{cat.box_frame[0]}x{cat.box_frame[1]} pixels, scaled to the stored size"
                if cat.box_frame
                else "the image's own pixels"
            ),
            views_kept={str(k): int(v) for k, v in views.items()},
            views_dropped=dict(cat.views_dropped),
            patient_ids=cat.patient_ids,
            splits=split_how,
            notes=[*cat.notes, *([low_range] if low_range else [])],
        ),
        shard_order={"seed": config.shard_seed, "within": "each split, seeded permutation"},
        skipped_images=bad,
        conversion=to_dict(config),
        splits=split_entries,
        folder=dataset_dir,
    )


def write_tfds_metadata(dataset_dir: Path, manifest: Manifest) -> None:
    """Writes dataset_info.json / features.json for `tfds.builder_from_directory`."""
    import tensorflow_datasets as tfds


    kind = manifest.source.kind
    about = registry.get(kind) if kind in registry.SOURCES else None
    template = tfds.core.ShardedFileTemplate(
        data_dir=dataset_dir,
        template=TFDS_TEMPLATE,
        dataset_name=manifest.dataset,
        filetype_suffix="tfrecord",
    )
    split_infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[s.records for s in entry.shards],
            num_bytes=entry.bytes,
            filename_template=template,
        )
        for split, entry in manifest.splits.items()
    ]
    facts = {
        "schema_version": manifest.schema_version,
        "fingerprint": manifest.fingerprint,
        "labels": list(manifest.labels),
        "label_states": dict(manifest.label_states),
        "labelled_findings": list(manifest.labelled_findings),
        "source": kind,
        "image": manifest.image.to_dict(),
        "splits": {
            k: {"images": v.images, "patients": v.patients} for k, v in manifest.splits.items()
        },
    }
    tfds.folder_dataset.write_metadata(
        data_dir=dataset_dir,
        features=manifest.features(),
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description=DESCRIPTION.format(source=about.title if about else kind),
        homepage=about.homepage if about else "",
        citation=about.citation if about else "",
        metadata=tfds.core.MetadataDict(facts),
    )


DESCRIPTION = """{source} converted by cxr_tf: chest radiographs, grayscale uint8 resized once,
one label state per finding of cxr_tf's vocabulary (see `labels` and `label_states` in the
metadata: negative, positive, uncertain or not labelled by this dataset), patient ID,
follow-up, age, sex, view position, original size, pixel spacing and expert boxes
(normalised) where the dataset has them. Splits are patient-disjoint. manifest.json beside
these files holds the shard checksums and the conversion arguments."""
