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

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.data import schema
from cxr_tf.labels import FINDINGS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN, VOCABULARY

# A target the loss and the metrics skip: the finding is not labelled by the image's
# dataset, or uncertain under `train.uncertain=ignore` (and always in evaluation).
MASKED = -1.0
UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
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
    version = manifest.get("schema_version")
    if version not in schema.READABLE_VERSIONS:
        raise DatasetError(
            f"{path}: schema version {version}, this version reads "
            f"{', '.join(map(str, schema.READABLE_VERSIONS))}; convert again"
        )
    labels = manifest.get("labels")
    # Schema 1 stored NIH's 14, schema 2 the whole vocabulary, each in its fixed order.
    expected = list(FINDINGS) if version == 1 else list(VOCABULARY)
    if labels != expected:
        raise DatasetError(
            f"{path}: label order {labels} differs from schema {version}'s {expected}; "
            f"convert again"
        )
    return manifest


def dataset_dirs(data: DataConfig) -> list[str]:
    """The converted dataset folders of `data.dataset` (one, or several separated by
    commas)."""
    dirs = [d.strip() for d in str(data.dataset).split(",") if d.strip()]
    if not dirs:
        raise ConfigError("data.dataset: give a converted dataset folder")
    if data.weights and len(data.weights) != len(dirs):
        raise ConfigError(
            f"data.weights: {len(data.weights)} weight(s) for {len(dirs)} dataset(s)"
        )
    return dirs


def labelled_findings(manifest: dict) -> tuple[str, ...]:
    """The vocabulary findings a converted dataset labels (schema 1: NIH's 14)."""
    return tuple(manifest.get("labelled_findings") or manifest["labels"])


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
    """Which outputs a task predicts and how their targets come from a record's label states.

    `stored` names the label vector of the dataset being read (its manifest's `labels`);
    outputs it does not name are not labelled there. Targets are float32 0/1, or `MASKED`
    (-1) where the label is unknown: not labelled by the dataset, or uncertain under the
    `uncertain` policy `ignore` (`ones` counts uncertain as positive, `zeros` as negative).
    The losses (`cxr_tf.modeling.losses`) and the metrics skip masked targets.
    """

    task: str
    names: tuple[str, ...]
    stored: tuple[str, ...] = VOCABULARY
    uncertain: str = "ignore"

    @classmethod
    def from_config(
        cls, model: ModelConfig, manifest: dict | None = None, uncertain: str = "ignore"
    ) -> LabelSpec:
        stored = tuple(manifest["labels"]) if manifest is not None else VOCABULARY
        if uncertain not in UNCERTAIN_POLICIES:
            raise ConfigError(f"train.uncertain: {uncertain!r} not in {UNCERTAIN_POLICIES}")
        return cls(model.task, model.output_names, stored, uncertain)

    def for_manifest(self, manifest: dict) -> LabelSpec:
        """The same outputs, read from another dataset's label vector."""
        return LabelSpec(self.task, self.names, tuple(manifest["labels"]), self.uncertain)

    @property
    def size(self) -> int:
        return len(self.names)

    def _columns(self, states: tf.Tensor, names: tuple[str, ...]) -> tf.Tensor:
        """int32 (B, K) states of `names`; names the dataset does not store: not labelled."""
        states = tf.cast(states, tf.int32)
        unlabelled = tf.fill(tf.shape(states[..., :1]), 3)
        columns = [
            states[..., self.stored.index(n) : self.stored.index(n) + 1]
            if n in self.stored
            else unlabelled
            for n in names
        ]
        return tf.concat(columns, axis=-1)

    def _targets(self, states: tf.Tensor) -> tf.Tensor:
        """int32 states -> float32 0/1/MASKED under the uncertainty policy."""
        uncertain = {"ignore": MASKED, "ones": 1.0, "zeros": 0.0}[self.uncertain]
        out = tf.fill(tf.shape(states), MASKED)
        out = tf.where(states == POSITIVE, 1.0, out)
        out = tf.where(states == NEGATIVE, 0.0, out)
        return tf.where(states == UNCERTAIN, uncertain, out)

    def select(self, labels: tf.Tensor) -> tf.Tensor:
        """uint8 (B, L) label states -> float32 (B, K) targets of this task (MASKED: skip)."""
        if self.task == "multilabel" or (self.task == "binary" and self.names[0] != "any"):
            return self._targets(self._columns(labels, self.names))
        if self.task == "binary":
            # Any finding of this dataset: positive when one is (uncertain ones count under
            # `ones`), negative when every labelled one is negative, else unknown.
            targets = self._targets(tf.cast(labels, tf.int32))
            positive = tf.reduce_any(targets == 1.0, axis=-1, keepdims=True)
            unsure = tf.reduce_any(
                tf.cast(labels, tf.int32) == UNCERTAIN, axis=-1, keepdims=True
            ) & tf.constant(self.uncertain == "ignore")
            return tf.where(positive, 1.0, tf.where(unsure, MASKED, 0.0))
        return tf.one_hot(self.class_index(labels), self.size)

    def class_index(self, labels: tf.Tensor) -> tf.Tensor:
        """Multi-class: index of the single class of each image, -1 when not single-label
        (images with an uncertain label count as not single-label)."""
        states = tf.cast(labels, tf.int32)
        positives = tf.cast(states == POSITIVE, tf.float32)
        count = tf.reduce_sum(positives, -1)
        findings = tuple(n for n in self.names if n != NO_FINDING)
        chosen_states = self._columns(labels, findings)
        known = tf.reduce_all(
            (chosen_states == POSITIVE) | (chosen_states == NEGATIVE), axis=-1
        ) & ~tf.reduce_any(states == UNCERTAIN, axis=-1)
        columns = [
            tf.cast(tf.equal(count, 0), tf.float32)
            if name == NO_FINDING
            else tf.cast(self._columns(labels, (name,))[..., 0] == POSITIVE, tf.float32)
            for name in self.names
        ]
        chosen = tf.stack(columns, axis=-1)
        single = tf.equal(count, 1) | tf.equal(count, 0)
        valid = single & known & tf.equal(tf.reduce_sum(chosen, -1), 1)
        return tf.where(valid, tf.argmax(chosen, -1, output_type=tf.int32), -1)

    def counts(self, manifest: dict, split: str = "train") -> tuple[np.ndarray, np.ndarray, int]:
        """Per-output positives and images with a known target (under the uncertainty
        policy) in a split, and the split's image count, from the manifest."""
        entry = manifest["splits"][split]
        total = int(entry["images"])
        if self.task == "binary" and self.names[0] == "any":
            return (
                np.array([total - int(entry["no_finding"])], np.float64),
                np.array([total], np.float64),
                total,
            )
        if self.task == "multiclass":
            raise ValueError("multi-class counts need a pass over the labels: class_counts()")
        positives = entry["positives"]
        labelled = entry.get("labelled", {})
        uncertain = entry.get("uncertain", {})
        pos, known = [], []
        for name in self.names:
            p = positives.get(name, 0) if name in self.stored else 0
            k = labelled.get(name, total if "labelled" not in entry else 0)
            u = uncertain.get(name, 0)
            if name not in self.stored:
                p, k, u = 0, 0, 0
            if self.uncertain == "ones":
                p, k = p + u, k + u
            elif self.uncertain == "zeros":
                k = k + u
            pos.append(p)
            known.append(k)
        return np.array(pos, np.float64), np.array(known, np.float64), total


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

    Several datasets (`data.dataset` "a,b"): training draws each record from dataset i
    with probability `data.weights[i]` (default: proportional to their training splits),
    every dataset's records reshuffled and repeated, `steps_per_epoch` batches an epoch;
    evaluation reads the datasets one after the other (patient IDs of dataset i > 0 are
    offset by i * 2**32 so that they never collide). Each dataset's targets come from its
    own label vector, masked where it does not label a finding.
    """
    dirs = dataset_dirs(data)
    if len(dirs) > 1:
        return _make_mixed(
            data, dirs, spec, split, training, repeat, seed, extra_keys, first_epoch,
            steps_per_epoch, shard,
        )  # fmt: skip
    manifest = manifest or load_manifest(dirs[0])
    spec = spec.for_manifest(manifest)
    data = dataclasses.replace(data, dataset=dirs[0])
    files, split_records = _split_for_worker(split_files(data.dataset, split, manifest), shard)
    features = schema.features_of(manifest)
    num_labels = len(manifest["labels"])
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
            ds = ds.filter(
                lambda s: spec.class_index(schema.parse_labels(s, num_labels)[None])[0] >= 0
            )
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
            def target(s: tf.Tensor) -> tf.Tensor:
                return spec.select(schema.parse_labels(s, num_labels)[None])[0, 0]

            positive = ds.filter(lambda s: target(s) > 0.5)
            negative = ds.filter(lambda s: (target(s) < 0.5) & (target(s) >= 0.0))
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


def _make_mixed(
    data: DataConfig,
    dirs: list[str],
    spec: LabelSpec,
    split: str,
    training: bool,
    repeat: bool,
    seed: int | None,
    extra_keys: Sequence[str],
    first_epoch: int,
    steps_per_epoch: int | None,
    shard: tuple[int, int] | None,
) -> tf.data.Dataset:
    """`make_dataset` over several converted datasets (see there)."""
    if data.cache or data.balanced:
        raise ConfigError("data.cache / data.balanced: not available with several datasets")
    manifests = [load_manifest(d) for d in dirs]
    sizes = {m["image"]["size"] for m in manifests}
    if len(sizes) > 1:
        raise ConfigError(
            f"data.dataset: the datasets are stored at different sizes {sorted(sizes)}; "
            f"convert them at one --image_size"
        )
    if not training:
        parts = []
        for i, (folder, manifest) in enumerate(zip(dirs, manifests, strict=True)):
            one = dataclasses.replace(data, dataset=folder, weights=())
            ds = make_dataset(
                one, spec, split, False, extra_keys=extra_keys, manifest=manifest, shard=shard
            )
            if "patient_id" in extra_keys:
                offset = tf.constant(i * 2**32, tf.int64)

                def shift(x, y, extra, offset=offset):
                    extra = dict(extra)
                    extra["patient_id"] = tf.cast(extra["patient_id"], tf.int64) + offset
                    return x, y, extra

                ds = ds.map(shift)
            parts.append(ds)
        mixed = parts[0]
        for ds in parts[1:]:
            mixed = mixed.concatenate(ds)
        return mixed.repeat() if repeat else mixed
    if not steps_per_epoch:
        raise ConfigError("several datasets: training needs steps_per_epoch")
    if data.weights:
        weights = [float(w) for w in data.weights]
    else:
        weights = [float(m["splits"][split]["images"]) for m in manifests]
    weights = [w / sum(weights) for w in weights]
    streams = []
    for folder, manifest in zip(dirs, manifests, strict=True):
        files, split_records = _split_for_worker(split_files(folder, split, manifest), shard)
        streams.append((files, split_records, schema.features_of(manifest),
                        spec.for_manifest(manifest)))  # fmt: skip

    def one_epoch(epoch: Any) -> tf.data.Dataset:
        tf.compat.v1.get_default_graph().seed = 1  # see make_dataset's one_epoch
        order = epoch_seed(seed, epoch)
        elements = []
        for files, split_records, features, own in streams:
            ds = _records(files, order).shuffle(data.shuffle_buffer, seed=order)
            if split_records:
                ds = ds.shard(shard[1], shard[0])

            def parse(s, features=features, own=own):
                parsed = schema.parse_record(s, features, ("image", "labels"))
                return parsed["image"], own.select(parsed["labels"][None])[0]

            elements.append(ds.repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE))
        ds = tf.data.Dataset.sample_from_datasets(elements, weights=weights, seed=order)
        return ds.batch(data.batch_size, drop_remainder=True).take(steps_per_epoch)

    last = 2**62 if repeat else first_epoch + 1
    ds = tf.data.Dataset.range(first_epoch, last).flat_map(one_epoch)
    options = tf.data.Options()
    options.deterministic = bool(data.deterministic or (shard is not None))
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def class_counts(data: DataConfig, spec: LabelSpec, split: str = "train") -> np.ndarray:
    """Multi-class: images per class in a split (one pass over the labels only)."""
    counts = np.zeros(spec.size, np.int64)
    for folder in dataset_dirs(data):
        manifest = load_manifest(folder)
        own, num_labels = spec.for_manifest(manifest), len(manifest["labels"])
        ds = tf.data.TFRecordDataset(split_files(folder, split, manifest)).map(
            lambda s, n=num_labels: schema.parse_labels(s, n),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        for labels in ds.batch(4096):
            index = own.class_index(labels).numpy()
            counts += np.bincount(index[index >= 0], minlength=spec.size)
    return counts


def merged_manifest(data: DataConfig) -> dict:
    """The manifest of `data.dataset`; for several datasets, the first one's with every
    split's counts summed over them (what training and the loss weights need)."""
    dirs = dataset_dirs(data)
    manifests = [load_manifest(d) for d in dirs]
    if len(manifests) == 1:
        return manifests[0]
    merged = json.loads(json.dumps(manifests[0]))
    merged["dataset"] = "+".join(m["dataset"] for m in manifests)
    merged["labels"] = list(VOCABULARY)
    merged["labelled_findings"] = [
        n for n in VOCABULARY if any(n in labelled_findings(m) for m in manifests)
    ]
    for split, entry in merged["splits"].items():
        entry["shards"] = []
        for key in ("images", "patients", "no_finding"):
            entry[key] = sum(int(m["splits"].get(split, {}).get(key, 0)) for m in manifests)
        for key in ("positives", "labelled", "uncertain"):
            entry[key] = {
                n: sum(_count(m, split, key, n) for m in manifests) for n in VOCABULARY
            }
    return merged


def _count(manifest: dict, split: str, key: str, name: str) -> int:
    entry = manifest["splits"].get(split, {})
    if name not in manifest["labels"]:
        return 0
    if key == "labelled" and "labelled" not in entry:  # schema 1: all labelled
        return int(entry.get("images", 0))
    return int(entry.get(key, {}).get(name, 0))


def check_compatible(data: DataConfig, model: ModelConfig) -> dict:
    """Validates a data + model config pair against the dataset(s); returns the manifest
    (`merged_manifest` for several)."""
    for folder in dataset_dirs(data):
        manifest = load_manifest(folder)
        for split in ("train", "validation"):
            split_files(folder, split, manifest)
    manifest = merged_manifest(data)
    labelled = set(labelled_findings(manifest))
    if model.task != "multiclass":
        unlabelled = [n for n in model.output_names if n != "any" and n not in labelled]
        if unlabelled:
            raise ConfigError(
                f"model.findings: {data.dataset} labels no image with {unlabelled}; it "
                f"labels {', '.join(labelled_findings(manifest))}"
            )
    stored = manifest["image"]["size"]
    if model.image_size > stored:
        raise ConfigError(
            f"model.image_size: {model.image_size} exceeds the stored size {stored} of "
            f"{data.dataset}; convert at a larger --image_size"
        )
    return manifest
