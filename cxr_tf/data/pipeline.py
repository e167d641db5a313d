"""The tf.data input pipeline: converted shards -> batches of uint8 images and task labels.

Order (training, per epoch e, all seeded by (seed, e)): shard list -> shuffle files ->
parallel interleave -> [cache: the records in file order, kept in memory] -> shuffle
records -> parse + decode (the schema module's parser: per record in a parallel map for
PNG storage, per batch for raw storage) -> batch (drop_remainder) -> select the task's
labels; the epochs follow each other -> prefetch. Evaluation keeps file and record order
(deterministic) and keeps the last partial batch.

Images leave the pipeline as uint8 at the stored size: augmentation, resizing to the
model's input size and normalisation run inside the model (`cxr_tf.modeling.augment`,
`cxr_tf.modeling.models`), on the accelerator, and are the same graph in training, evaluation and
serving. Parsing batch-wise and shipping uint8 keeps the CPU side cheap (see
`python -m cxr_tf.bench pipeline`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.data import schema
from cxr_tf.labels import FINDINGS, NO_FINDING, finding_indices

MANIFEST = "manifest.json"  # a converted dataset's description, written last


class DatasetError(FileNotFoundError):
    """The converted dataset is missing, incomplete or does not fit the configuration."""


def load_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of a converted dataset; a clear error when the folder is not one."""
    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise DatasetError(
            f"{path} not found: {dataset_dir} is not a finished conversion "
            f"(run `python -m cxr_tf.convert` first)"
        )
    try:
        manifest = json.loads(path.read_text())
        for entry in manifest["splits"].values():
            for shard in entry["shards"]:
                shard["file"], shard["records"], shard["sha256"]  # shape check
        manifest["image"]["size"], manifest["image"]["encoding"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DatasetError(
            f"{path}: not a cxr_tf manifest ({type(err).__name__}: {err}); convert again"
        ) from err
    if manifest.get("labels") != list(FINDINGS):
        raise DatasetError(
            f"{path}: label order {manifest.get('labels')} differs from this version's "
            f"{list(FINDINGS)}"
        )
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema version {manifest.get('schema_version')}, this version reads "
            f"{schema.SCHEMA_VERSION}; convert again"
        )
    return manifest


def split_files(dataset_dir: str | Path, split: str, manifest: dict | None = None) -> list[str]:
    """The shard files of one split, checked to exist."""
    manifest = manifest or load_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DatasetError(f"{dataset_dir}: no split {split!r} (has {sorted(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    files = [Path(dataset_dir) / s["file"] for s in shards]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DatasetError(f"{dataset_dir}: missing shard(s) {missing}")
    resized = [
        f"{f} ({f.stat().st_size} bytes, the manifest says {s['bytes']})"
        for f, s in zip(files, shards, strict=True)
        if "bytes" in s and f.stat().st_size != s["bytes"]
    ]
    if resized:
        raise DatasetError(
            f"{dataset_dir}: shard(s) changed since conversion: {'; '.join(resized)}; "
            f"convert again or restore them (`python -m cxr_tf.convert --verify` checks all)"
        )
    return [str(f) for f in files]


def corrupt_shards(dataset_dir: str | Path, manifest: dict | None = None) -> list[str]:
    """Shards of a dataset whose sha256 differs from the manifest (reads every shard)."""
    import hashlib

    manifest = manifest or load_manifest(dataset_dir)
    bad = []
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            path = Path(dataset_dir) / shard["file"]
            try:
                with open(path, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as err:
                bad.append(f"{path} ({err.strerror})")
                continue
            if digest != shard["sha256"]:
                bad.append(f"{path} (sha256 differs from the manifest)")
    return bad


def read_error_message(dataset_dir: str | Path, err: Exception) -> str:
    """A message for a record that could not be read while training or evaluating,
    naming the corrupt shard(s) of the dataset."""
    reason = " ".join(str(getattr(err, "message", err)).split("\n")[-1].split())
    bad = corrupt_shards(dataset_dir)
    where = (
        f"corrupt shard(s): {'; '.join(bad)}"
        if bad
        else "every shard matches its manifest checksum"
    )
    return (
        f"cannot read a record of {dataset_dir} ({reason[:200]}); {where}. Convert the "
        f"dataset again (the same convert command re-creates missing shards after you "
        f"delete the corrupt ones)."
    )


@dataclass(frozen=True)
class LabelSpec:
    """Which outputs a task predicts and how they come from the 14-vector."""

    task: str
    names: tuple[str, ...]

    @classmethod
    def from_config(cls, model: ModelConfig) -> LabelSpec:
        return cls(model.task, model.output_names)

    @property
    def size(self) -> int:
        return len(self.names)

    def select(self, labels: tf.Tensor) -> tf.Tensor:
        """uint8 (B, 14) -> float32 (B, K) targets of this task."""
        labels = tf.cast(labels, tf.float32)
        if self.task == "multilabel":
            return tf.gather(labels, finding_indices(self.names), axis=-1)
        if self.task == "binary":
            if self.names[0] == "any":
                return tf.reduce_max(labels, axis=-1, keepdims=True)
            return tf.gather(labels, finding_indices(self.names), axis=-1)
        return tf.one_hot(self.class_index(labels), self.size)

    def class_index(self, labels: tf.Tensor) -> tf.Tensor:
        """Multi-class: index of the single class of each image, -1 when not single-label."""
        labels = tf.cast(labels, tf.float32)
        columns = [
            tf.cast(tf.equal(tf.reduce_sum(labels, -1), 0), tf.float32)
            if name == NO_FINDING
            else labels[..., finding_indices([name])[0]]
            for name in self.names
        ]
        chosen = tf.stack(columns, axis=-1)
        single = tf.equal(tf.reduce_sum(labels, -1), 1) | tf.equal(tf.reduce_sum(labels, -1), 0)
        valid = single & tf.equal(tf.reduce_sum(chosen, -1), 1)
        return tf.where(valid, tf.argmax(chosen, -1, output_type=tf.int32), -1)

    def counts(self, manifest: dict, split: str = "train") -> tuple[np.ndarray, int]:
        """Per-output positive counts and image count of a split, from the manifest."""
        entry = manifest["splits"][split]
        total = int(entry["images"])
        if self.task == "binary" and self.names[0] == "any":
            return np.array([total - int(entry["no_finding"])], np.float64), total
        if self.task == "multiclass":
            raise ValueError("multi-class counts need a pass over the labels: class_counts()")
        return np.array([entry["positives"][n] for n in self.names], np.float64), total


def epoch_seed(seed: int | None, epoch: Any) -> Any:
    """The shuffle seed of one training epoch: a function of (seed, epoch) only."""
    return (seed or 0) * 1_000_003 + epoch


def _records(files: Sequence[str], order_seed: Any | None) -> tf.data.Dataset:
    """Serialized records of `files`; with `order_seed`, files in a seeded order."""
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if order_seed is not None:
        ds = ds.shuffle(len(files), seed=order_seed)
    return ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _split_for_worker(files: list[str], shard: tuple[int, int] | None) -> tuple[list, bool]:
    """This worker's files, and whether records must be split instead (too few files)."""
    if shard is None or shard[1] <= 1:
        return files, False
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard: worker index {index} outside 0..{count - 1}")
    if len(files) >= count:
        return files[index::count], False
    return files, True


def make_dataset(
    data: DataConfig,
    spec: LabelSpec,
    split: str,
    training: bool,
    repeat: bool = False,
    seed: int | None = None,
    extra_keys: Sequence[str] = (),
    manifest: dict | None = None,
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images (B, S, S, 1), float32 targets (B, K)) from one split.

    Training (`training=True`): epoch `e` is one pass over the split (or exactly
    `steps_per_epoch` batches) in an order drawn from (`seed`, `e`) alone: files shuffled,
    interleaved, records shuffled in a `shuffle_buffer`, full batches only. With `repeat`
    the epochs `first_epoch`, `first_epoch + 1`, ... follow each other, so a run resumed at
    epoch k sees the same batches as an uninterrupted one. `data.deterministic` makes the
    order exactly reproducible (otherwise parallel reads may swap neighbours, for speed).
    `data.cache` keeps the split's serialized records in memory after the first pass and
    shuffles them anew every epoch.

    Evaluation (`training=False`): file and record order, the last batch kept.

    `shard=(worker_index, num_workers)` gives a worker of a multi-worker run its part:
    whole files when there are at least as many shard files as workers, otherwise every
    `num_workers`-th record of the (then deterministic) order. Auto-sharding by
    tf.distribute is then off.

    With `extra_keys` (e.g. "image_index", "patient_id") the elements are
    (images, targets, {key: tensor}) instead, for evaluation.
    """
    manifest = manifest or load_manifest(data.dataset)
    files, split_records = _split_for_worker(split_files(data.dataset, split, manifest), shard)
    features = schema.build_features(manifest["image"]["size"], manifest["image"]["encoding"])
    balanced = training and spec.task == "binary" and data.balanced
    if data.cache and balanced:
        raise ConfigError("data.cache: cannot be combined with data.balanced (infinite stream)")
    deterministic = data.deterministic or not training or split_records
    keys = ("image", "labels", *extra_keys)

    def finish(parsed: dict):  # tf.data map function
        targets = spec.select(parsed["labels"])
        if extra_keys:
            return parsed["image"], targets, {k: parsed[k] for k in extra_keys}
        return parsed["image"], targets

    def to_batches(ds: tf.data.Dataset) -> tf.data.Dataset:
        if manifest["image"]["encoding"] == "raw":
            # Raw records: one vectorised parse + decode per batch is cheapest.
            ds = ds.batch(data.batch_size, drop_remainder=training)
            return ds.map(
                lambda s: finish(schema.parse_batch(s, features, keys)),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        # PNG records: decode each image in a parallel map, then batch.
        ds = ds.map(
            lambda s: schema.parse_record(s, features, keys), num_parallel_calls=tf.data.AUTOTUNE
        )
        return ds.batch(data.batch_size, drop_remainder=training).map(finish)

    def select(ds: tf.data.Dataset) -> tf.data.Dataset:
        if spec.task == "multiclass":
            ds = ds.filter(lambda s: spec.class_index(schema.parse_labels(s)[None])[0] >= 0)
        return ds

    cached = select(_records(files, None)).cache() if data.cache else None

    def one_epoch(epoch: Any) -> tf.data.Dataset:
        # Traced by flat_map, `epoch` is a tensor and so are the op seeds below. TF checks
        # a (graph seed, op seed) pair with `== (0, 0)`, which a tensor cannot answer when
        # the graph seed is 0 (e.g. after `keras.utils.set_random_seed(0)`). A fixed
        # non-zero seed for this function's own graph avoids that and makes the order
        # independent of the global seed; the op seeds carry (seed, epoch).
        tf.compat.v1.get_default_graph().seed = 1
        order = epoch_seed(seed, epoch)
        ds = cached if cached is not None else select(_records(files, order))
        if balanced:
            positive = ds.filter(lambda s: spec.select(schema.parse_labels(s)[None])[0, 0] > 0.5)
            negative = ds.filter(lambda s: spec.select(schema.parse_labels(s)[None])[0, 0] < 0.5)
            ds = tf.data.Dataset.sample_from_datasets(
                [positive.repeat(), negative.repeat()], weights=[0.5, 0.5], seed=order
            )
        ds = ds.shuffle(data.shuffle_buffer, seed=order)
        if split_records:
            ds = ds.shard(shard[1], shard[0])
        ds = to_batches(ds)
        if steps_per_epoch:
            ds = ds.repeat().take(steps_per_epoch)
        return ds

    if training:
        # Epochs are always built by one traced function, so one epoch alone (repeat=False)
        # has the order it has among others.
        last = 2**62 if repeat else first_epoch + 1
        ds = tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)
    else:
        ds = cached if cached is not None else select(_records(files, None))
        if split_records:
            ds = ds.shard(shard[1], shard[0])
        ds = to_batches(ds)
        if repeat:
            ds = ds.repeat()
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def class_counts(data: DataConfig, spec: LabelSpec, split: str = "train") -> np.ndarray:
    """Multi-class: images per class in a split (one pass over the labels only)."""
    files = split_files(data.dataset, split)
    ds = tf.data.TFRecordDataset(files).map(
        schema.parse_labels, num_parallel_calls=tf.data.AUTOTUNE
    )
    counts = np.zeros(spec.size, np.int64)
    for labels in ds.batch(4096):
        index = spec.class_index(labels).numpy()
        counts += np.bincount(index[index >= 0], minlength=spec.size)
    return counts


def check_compatible(data: DataConfig, model: ModelConfig) -> dict:
    """Validates a data + model config pair against the dataset; returns the manifest."""
    manifest = load_manifest(data.dataset)
    for split in ("train", "validation"):
        split_files(data.dataset, split, manifest)
    if model.task == "binary" and model.findings and model.findings[0] != "any":
        finding_indices(model.findings)
    stored = manifest["image"]["size"]
    if model.image_size > stored:
        raise ConfigError(
            f"model.image_size: {model.image_size} exceeds the stored size {stored} of "
            f"{data.dataset}; convert at a larger --image_size"
        )
    return manifest
