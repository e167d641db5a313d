"""The tf.data input pipeline: converted shards -> batches of uint8 images and task labels.

Order (training): shard list -> shuffle files -> parallel interleave -> shuffle records ->
[cache] -> [repeat] -> parse + decode (the schema module's parser: per record in a
parallel map for PNG storage, per batch for raw storage) -> batch (drop_remainder) ->
select the task's labels -> prefetch. Evaluation keeps file and record
order (deterministic) and keeps the last partial batch.

Images leave the pipeline as uint8 at the stored size: augmentation, resizing to the
model's input size and normalisation run inside the model (`cxr_tf.augment`,
`cxr_tf.models`), on the accelerator, and are the same graph in training, evaluation and
serving. Parsing batch-wise and shipping uint8 keeps the CPU side cheap (see
`python -m cxr_tf.bench pipeline`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from cxr_tf import schema
from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.labels import FINDINGS, NO_FINDING, finding_indices


class DatasetError(FileNotFoundError):
    """The converted dataset is missing, incomplete or does not fit the configuration."""


def load_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of a converted dataset; a clear error when the folder is not one."""
    path = Path(dataset_dir) / "manifest.json"
    if not path.exists():
        raise DatasetError(
            f"{path} not found: {dataset_dir} is not a finished conversion "
            f"(run `python -m cxr_tf.convert` first)"
        )
    manifest = json.loads(path.read_text())
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
    files = [Path(dataset_dir) / s["file"] for s in manifest["splits"][split]["shards"]]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise DatasetError(f"{dataset_dir}: missing shard(s) {missing}")
    return [str(f) for f in files]


@dataclass(frozen=True)
class LabelSpec:
    """Which outputs a task predicts and how they come from the 14-vector."""

    task: str
    names: tuple[str, ...]

    @classmethod
    def from_config(cls, model: ModelConfig) -> LabelSpec:
        if model.task == "multilabel":
            return cls("multilabel", tuple(model.findings) or FINDINGS)
        return cls(model.task, tuple(model.findings))

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


def _labels_only(serialized: tf.Tensor) -> tf.Tensor:
    spec = {"labels": tf.io.FixedLenFeature([len(FINDINGS)], tf.int64)}
    return tf.io.parse_single_example(serialized, spec)["labels"]


def _records(files: Sequence[str], shuffle: bool, seed: int | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )


def _task_filter(
    ds: tf.data.Dataset, spec: LabelSpec, data: DataConfig, training: bool, seed
) -> tf.data.Dataset:  # noqa: ANN001 - seed: int, None or (epoch-seeded) a choice dataset
    if spec.task == "multiclass":
        ds = ds.filter(lambda s: spec.class_index(_labels_only(s)[None])[0] >= 0)
    if training and spec.task == "binary" and data.balanced:
        positive = ds.filter(lambda s: spec.select(_labels_only(s)[None])[0, 0] > 0.5).repeat()
        negative = ds.filter(lambda s: spec.select(_labels_only(s)[None])[0, 0] < 0.5).repeat()
        if isinstance(seed, tf.data.Dataset):
            return tf.data.Dataset.choose_from_datasets([positive, negative], seed)
        ds = tf.data.Dataset.sample_from_datasets([positive, negative], [0.5, 0.5], seed=seed)
    return ds


def _epochs(
    files: Sequence[str],
    data: DataConfig,
    spec: LabelSpec,
    split: str,
    manifest: dict,
    training: bool,
    seed: int | None,
    first_epoch: int,
    steps: int,
    shard: tuple[int, int] | None,
) -> tf.data.Dataset:
    """Records for epochs first_epoch, first_epoch + 1, ...: `steps` batches' worth each.

    Epoch e is shuffled with stateless ops seeded by (seed, e) (file order, then blocks of
    `shuffle_buffer` records), or, in file order, starts where e uninterrupted epochs
    would have left off: either way a function of (seed, e) only.
    """
    shuffle = not data.deterministic
    seed = int(np.random.randint(2**31)) if seed is None else int(seed)
    per_epoch = steps * data.batch_size
    images = max(int(manifest["splits"][split]["images"]), 1)
    names = tf.constant(list(files))

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(names, seed=key) if shuffle else names
        ds = tf.data.Dataset.from_tensor_slices(order).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shard is not None:
            ds = ds.shard(shard[1], shard[0])
        choices = tf.data.Dataset.range(2**62).map(
            lambda i: tf.cast(
                tf.random.stateless_uniform([], seed=key + tf.stack([0, i + 1])) < 0.5,
                tf.int64,
            )
        )
        ds = _task_filter(ds, spec, data, training, choices).repeat()
        if shuffle:
            ds = (
                ds.batch(data.shuffle_buffer)
                .enumerate()
                .flat_map(
                    lambda i, block: tf.data.Dataset.from_tensor_slices(
                        tf.random.experimental.stateless_shuffle(block, seed=key + tf.stack([i, 0]))
                    )
                )
            )
        else:
            ds = ds.skip((epoch * per_epoch) % images)
        return ds.take(per_epoch)

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)


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

    With `extra_keys` (e.g. "image_index", "patient_id") the elements are
    (images, targets, {key: tensor}) instead, for evaluation.

    With `training`, `repeat` and `steps_per_epoch` S it yields exactly S batches for
    epoch `first_epoch`, then S for the next epoch, and so on, each epoch's order a
    function of (seed, epoch) only, so a resumed run sees the batches an uninterrupted
    one would. `shard=(index, count)` gives this worker its own part of the records.
    """
    manifest = manifest or load_manifest(data.dataset)
    files = split_files(data.dataset, split, manifest)
    features = schema.build_features(manifest["image"]["size"], manifest["image"]["encoding"])
    shuffle = training and not data.deterministic
    by_epoch = bool(training and repeat and steps_per_epoch)

    def records(seed_) -> tf.data.Dataset:  # noqa: ANN001 - int or None
        ds = _records(files, shuffle, seed_)
        if shard is not None:
            ds = ds.shard(shard[1], shard[0])
        ds = _task_filter(ds, spec, data, training, seed_)
        if shuffle:
            ds = ds.shuffle(data.shuffle_buffer, seed=seed_, reshuffle_each_iteration=True)
        return ds

    if by_epoch:
        ds = _epochs(files, data, spec, split, manifest, training, seed, first_epoch,
                     int(steps_per_epoch), shard)  # fmt: skip
    else:
        ds = records(seed)
        if data.cache:
            ds = ds.cache()
        if repeat:
            ds = ds.repeat()
    keys = ("image", "labels", *extra_keys)

    def finish(parsed: dict):  # noqa: ANN202 - tf.data map function
        targets = spec.select(parsed["labels"])
        if extra_keys:
            return parsed["image"], targets, {k: parsed[k] for k in extra_keys}
        return parsed["image"], targets

    if manifest["image"]["encoding"] == "raw":
        # Raw records: one vectorised parse + decode per batch is cheapest.
        ds = ds.batch(data.batch_size, drop_remainder=training)
        ds = ds.map(
            lambda s: finish(schema.parse_batch(s, features, keys)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=by_epoch or not shuffle,
        )
    else:
        # PNG records: decode each image in a parallel map, then batch.
        ds = ds.map(
            lambda s: schema.parse_record(s, features, keys),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=by_epoch or not shuffle,
        )
        ds = ds.batch(data.batch_size, drop_remainder=training).map(finish)
    options = tf.data.Options()
    options.deterministic = by_epoch or not shuffle
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def class_counts(data: DataConfig, spec: LabelSpec, split: str = "train") -> np.ndarray:
    """Multi-class: images per class in a split (one pass over the labels only)."""
    files = split_files(data.dataset, split)
    ds = tf.data.TFRecordDataset(files).map(_labels_only, num_parallel_calls=tf.data.AUTOTUNE)
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
