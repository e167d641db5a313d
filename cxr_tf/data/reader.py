"""The tf.data reader: converted shards -> batches of uint8 images and task targets.

`make_dataset(data, spec, split, options)` reads one split of the dataset(s) of
`data.dataset` (a `DataConfig`); `spec` (a `cxr_tf.data.targets.LabelSpec`) turns each
record's label states into targets; `ReadOptions` says how: training epochs or one
evaluation pass, the seed, the epoch to start at, this worker's part.

Order (training, per epoch e, all seeded by (seed, e)): each dataset's shard list ->
shuffle files -> parallel interleave -> [cache: the records in file order, kept in memory]
-> shuffle records -> [this worker's records] -> parse + decode (the schema module's
parser: per batch for raw storage, per record in a parallel map for PNG storage) -> batch
(drop_remainder) -> targets; the epochs follow each other -> prefetch. Several datasets
go through the same steps up to the records' shuffle, are parsed record by record and
mixed (each record from dataset i with probability `data.weights[i]`) before batching.
Evaluation keeps file and record order (deterministic), reads several datasets one after
the other and keeps the last partial batch.

Images leave the reader as uint8 at the stored size: augmentation, resizing to the
model's input size and normalisation run inside the model (`cxr_tf.modeling.augment`,
`cxr_tf.modeling.models`), on the accelerator, and are the same graph in training,
evaluation and serving. Parsing batch-wise and shipping uint8 keeps the CPU side cheap
(see `python -m cxr_tf.bench pipeline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.data import schema
from cxr_tf.data.manifest import Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.labels import FINDINGS, MASKED, NO_FINDING, close_names, resolve_name

PATIENT_OFFSET = 2**32  # added to dataset i's patient IDs (times i) when reading several


@dataclass(frozen=True)
class ReadOptions:
    """How `make_dataset` reads a split."""

    # training: epochs of shuffled full batches; otherwise one pass in file order
    training: bool = False
    repeat: bool = False  # the epochs (or the evaluation pass) follow each other
    seed: int | None = None  # training: epoch e's order comes from (seed, e) alone
    first_epoch: int = 0  # training: the first epoch's number (a resumed run's)
    # training: batches an epoch (also past one pass); default one pass over the split
    steps_per_epoch: int | None = None
    shard: tuple[int, int] | None = None  # (worker index, workers) of a multi-worker run
    # record fields passed along as a third element {key: tensor}, e.g. "patient_id"
    extra_keys: tuple[str, ...] = ()


def dataset_dirs(data: DataConfig) -> list[str]:
    """The converted dataset folders of `data.dataset`, checked against `data.weights`."""
    dirs = list(data.datasets)
    if not dirs:
        raise ConfigError("data.dataset: give a converted dataset folder")
    if data.weights and len(data.weights) != len(dirs):
        raise ConfigError(
            f"data.weights: {len(data.weights)} weight(s) for {len(dirs)} dataset(s)"
        )
    return dirs


def read_error_message(dataset_dir: str | Path, err: Exception) -> str:
    """A message for a record that could not be read while training or evaluating,
    naming the corrupt shard(s) of the dataset."""
    reason = " ".join(str(getattr(err, "message", err)).split("\n")[-1].split())
    bad = Manifest.load(dataset_dir).corrupt_shards()
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


def epoch_seed(seed: int | None, epoch: Any) -> Any:
    """The shuffle seed of one training epoch: a function of (seed, epoch) only."""
    return (seed or 0) * 1_000_003 + epoch


def interleaved_records(files: Sequence[str], order_seed: Any | None) -> tf.data.Dataset:
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


@dataclass(frozen=True)
class _Source:
    """One dataset of a read: this worker's files of the split and how to parse them."""

    index: int  # its place in `data.dataset`
    several: bool  # one of several datasets read together
    manifest: Manifest
    features: Any  # the tfds FeaturesDict its records were written with
    spec: LabelSpec  # the task's targets from this dataset's label vector
    files: list[str]
    split_records: bool  # too few files for the workers: every n-th record instead

    def records(self, order_seed: Any | None) -> tf.data.Dataset:
        """Serialized records (file order, or seeded); multi-class: single-label ones."""
        ds = interleaved_records(self.files, order_seed)
        if self.spec.task == "multiclass":
            ds = ds.filter(lambda s: self.spec.class_index(self.labels(s)[None])[0] >= 0)
        return ds

    def labels(self, serialized: tf.Tensor) -> tf.Tensor:
        return schema.parse_labels(serialized, len(self.manifest.labels))

    def worker_part(self, ds: tf.data.Dataset, shard: tuple[int, int] | None) -> tf.data.Dataset:
        return ds.shard(shard[1], shard[0]) if self.split_records else ds

    def finish(self, parsed: dict, extra_keys: Sequence[str], batched: bool) -> tuple:
        """(images, targets[, extras]) of parsed records, a batch or one record."""
        labels = parsed["labels"] if batched else parsed["labels"][None]
        targets = self.spec.select(labels)
        targets = targets if batched else targets[0]
        if not extra_keys:
            return parsed["image"], targets
        extra = {k: parsed[k] for k in extra_keys}
        if self.several and "patient_id" in extra:  # IDs of two datasets never collide
            offset = tf.constant(self.index * PATIENT_OFFSET, tf.int64)
            extra["patient_id"] = tf.cast(extra["patient_id"], tf.int64) + offset
        return parsed["image"], targets, extra

    def batches(
        self, ds: tf.data.Dataset, batch_size: int, drop_remainder: bool, extra_keys: Sequence[str]
    ) -> tf.data.Dataset:
        """Serialized records -> batches of (images, targets[, extras])."""
        keys = ("image", "labels", *extra_keys)
        if self.manifest.image.encoding == "raw":
            # Raw records: one vectorised parse + decode per batch is cheapest.
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
            return ds.map(
                lambda s: self.finish(schema.parse_batch(s, self.features, keys), extra_keys, True),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        # PNG records: decode each image in a parallel map, then batch.
        ds = ds.map(
            lambda s: schema.parse_record(s, self.features, keys),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.map(lambda parsed: self.finish(parsed, extra_keys, True))

    def examples(self, ds: tf.data.Dataset, extra_keys: Sequence[str]) -> tf.data.Dataset:
        """Serialized records -> single (image, target[, extras]) elements, for mixing."""
        keys = ("image", "labels", *extra_keys)
        return ds.map(
            lambda s: self.finish(schema.parse_record(s, self.features, keys), extra_keys, False),
            num_parallel_calls=tf.data.AUTOTUNE,
        )


def _sources(
    data: DataConfig, spec: LabelSpec, split: str, shard: tuple[int, int] | None
) -> list[_Source]:
    dirs = dataset_dirs(data)
    several = len(dirs) > 1
    if several and (data.cache or data.balanced):
        raise ConfigError("data.cache / data.balanced: not available with several datasets")
    manifests = [Manifest.load(d) for d in dirs]
    sizes = {m.stored_size for m in manifests}
    if len(sizes) > 1:
        raise ConfigError(
            f"data.dataset: the datasets are stored at different sizes {sorted(sizes)}; "
            f"convert them at one --stored_size"
        )
    sources = []
    for i, (folder, manifest) in enumerate(zip(dirs, manifests, strict=True)):
        files, split_records = _split_for_worker(manifest.split_files(split, folder), shard)
        sources.append(
            _Source(i, several, manifest, manifest.features(), spec.for_manifest(manifest),
                    files, split_records)
        )  # fmt: skip
    return sources


def make_dataset(
    data: DataConfig, spec: LabelSpec, split: str, options: ReadOptions = ReadOptions()
) -> tf.data.Dataset:
    """Batches of (uint8 images (B, S, S, 1), float32 targets (B, K)) from one split.

    Training (`options.training`): epoch `e` is one pass over the split (or exactly
    `steps_per_epoch` batches) in an order drawn from (`seed`, `e`) alone: files shuffled,
    interleaved, records shuffled in a `shuffle_buffer`, full batches only. With `repeat`
    the epochs `first_epoch`, `first_epoch + 1`, ... follow each other, so a run resumed at
    epoch k sees the same batches as an uninterrupted one. `data.deterministic` makes the
    order exactly reproducible (otherwise parallel reads may swap neighbours, for speed).
    `data.cache` keeps the split's serialized records in memory after the first pass and
    shuffles them anew every epoch. `data.balanced` (binary task) samples positives and
    negatives 50/50.

    Evaluation: file and record order, the last batch kept.

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
    sources = _sources(data, spec, split, options.shard)
    if options.training:
        ds = _epochs(data, split, sources, options)
    else:
        parts = [
            s.batches(
                s.worker_part(_in_file_order(s, data), options.shard),
                data.batch_size, False, options.extra_keys,
            )
            for s in sources
        ]  # fmt: skip
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        ds = ds.repeat() if options.repeat else ds
    # A worker of a multi-worker run reads in a fixed order when records are split between
    # workers, and always when it mixes several datasets (their draws must agree across
    # workers).
    several = len(sources) > 1
    deterministic = (
        data.deterministic
        or not options.training
        or any(s.split_records for s in sources)
        or (several and options.shard is not None)
    )
    tf_options = tf.data.Options()
    tf_options.deterministic = bool(deterministic)
    tf_options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if options.shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(tf_options).prefetch(tf.data.AUTOTUNE)


def _in_file_order(source: _Source, data: DataConfig) -> tf.data.Dataset:
    """Evaluation: the split's records in file order (kept in memory with `data.cache`)."""
    ds = source.records(None)
    return ds.cache() if data.cache else ds


def _epochs(
    data: DataConfig, split: str, sources: list[_Source], options: ReadOptions
) -> tf.data.Dataset:
    """The training epochs of `make_dataset`, one dataset or several."""
    several = len(sources) > 1
    steps = options.steps_per_epoch
    if several and not steps:
        raise ConfigError("several datasets: training needs steps_per_epoch")
    balanced = sources[0].spec.task == "binary" and data.balanced
    if data.cache and balanced:
        raise ConfigError("data.cache: cannot be combined with data.balanced (infinite stream)")
    cached = [s.records(None).cache() if data.cache else None for s in sources]
    weights = [float(w) for w in data.weights] or [
        float(s.manifest.split(split).images) for s in sources
    ]
    weights = [w / sum(weights) for w in weights]

    def shuffled(source: _Source, order: Any) -> tf.data.Dataset:
        """One dataset's records of an epoch, in its order, this worker's part."""
        ds = cached[source.index]
        ds = ds if ds is not None else source.records(order)
        if balanced:
            def target(s: tf.Tensor) -> tf.Tensor:
                return source.spec.select(source.labels(s)[None])[0, 0]

            positive = ds.filter(lambda s: target(s) > 0.5)
            negative = ds.filter(lambda s: (target(s) < 0.5) & (target(s) != MASKED))
            ds = tf.data.Dataset.sample_from_datasets(
                [positive.repeat(), negative.repeat()], weights=[0.5, 0.5], seed=order
            )
        ds = ds.shuffle(data.shuffle_buffer, seed=order)
        return source.worker_part(ds, options.shard)

    def one_epoch(epoch: Any) -> tf.data.Dataset:
        # Traced by flat_map, `epoch` is a tensor and so are the op seeds below. TF checks
        # a (graph seed, op seed) pair with `== (0, 0)`, which a tensor cannot answer when
        # the graph seed is 0 (e.g. after `keras.utils.set_random_seed(0)`). A fixed
        # non-zero seed for this function's own graph avoids that and makes the order
        # independent of the global seed; the op seeds carry (seed, epoch).
        tf.compat.v1.get_default_graph().seed = 1
        order = epoch_seed(options.seed, epoch)
        if not several:
            source = sources[0]
            ds = source.batches(
                shuffled(source, order), data.batch_size, True, options.extra_keys
            )
            return ds.repeat().take(steps) if steps else ds
        # Several: records are parsed before mixing (the datasets' features may differ).
        streams = [
            s.examples(shuffled(s, order).repeat(), options.extra_keys) for s in sources
        ]
        ds = tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=order)
        return ds.batch(data.batch_size, drop_remainder=True).take(steps)

    # Epochs are always built by one traced function, so one epoch alone (repeat=False)
    # has the order it has among others.
    last = 2**62 if options.repeat else options.first_epoch + 1
    return tf.data.Dataset.range(options.first_epoch, last).flat_map(one_epoch)


def class_counts(data: DataConfig, spec: LabelSpec, split: str = "train") -> np.ndarray:
    """Multi-class: images per class in a split (one pass over the labels only)."""
    counts = np.zeros(spec.size, np.int64)
    for folder in dataset_dirs(data):
        manifest = Manifest.load(folder)
        own, num_labels = spec.for_manifest(manifest), len(manifest.labels)
        ds = tf.data.TFRecordDataset(manifest.split_files(split)).map(
            lambda s, n=num_labels: schema.parse_labels(s, n),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        for labels in ds.batch(4096):
            index = own.class_index(labels).numpy()
            counts += np.bincount(index[index >= 0], minlength=spec.size)
    return counts


def merged_manifest(data: DataConfig) -> Manifest:
    """The manifest of `data.dataset`; for several datasets `Manifest.merged` (every
    split's counts summed over them: what training and the loss weights need)."""
    return Manifest.merged([Manifest.load(d) for d in dataset_dirs(data)])


def resolve_outputs(data: DataConfig, model: ModelConfig) -> ModelConfig:
    """`model` with its outputs made explicit and spelled as the dataset(s) spell them.

    Multi-label with no findings chosen: NIH's 14 when that is what the dataset(s) label
    (kept implicit), else the union of the findings they label (the vocabulary's, then
    their own). Multi-class with no classes chosen: the dataset's classes, as Keras takes
    class folders: `No Finding` when an image has no positive label, then every labelled
    finding. Chosen names match the dataset's own findings ignoring case, spaces and
    underscores (`--model.findings TB` on a folder `tb`); unknown ones are left for
    `check_compatible` to name."""
    manifest = merged_manifest(data)
    labelled = manifest.labelled_findings
    findings = tuple(
        resolve_name(n, manifest.labels) or n if n not in ("any", NO_FINDING) else n
        for n in model.findings
    )
    if not findings and model.task == "multilabel" and labelled != FINDINGS:
        findings = labelled
    if not findings and model.task == "multiclass":
        normal = any(entry.no_finding for entry in manifest.splits.values())
        findings = ((NO_FINDING,) if normal else ()) + labelled
    if findings == model.findings:
        return model
    return dataclasses.replace(model, findings=findings)


def check_compatible(data: DataConfig, model: ModelConfig) -> Manifest:
    """Validates a data + model config pair against the dataset(s); returns the manifest
    (`merged_manifest` for several)."""
    for folder in dataset_dirs(data):
        manifest = Manifest.load(folder)
        for split in ("train", "validation"):
            manifest.split_files(split)
    manifest = merged_manifest(data)
    labelled = set(manifest.labelled_findings)
    names = [n for n in model.output_names if n not in ("any", NO_FINDING)]
    unknown = [n for n in names if n not in manifest.labels]
    if unknown:
        raise ConfigError(
            f"model.findings: {data.dataset} has no finding {unknown}"
            f"{close_names(unknown, manifest.labels)}; its findings: "
            f"{', '.join(manifest.labelled_findings)}"
        )
    if model.task == "multiclass" and len(model.output_names) < 2:
        raise ConfigError(
            f"model.findings: multiclass needs >= 2 classes; {data.dataset} has "
            f"{list(model.output_names)}"
        )
    if model.task != "multiclass":
        unlabelled = [n for n in names if n not in labelled]
        if unlabelled:
            raise ConfigError(
                f"model.findings: {data.dataset} labels no image with {unlabelled}; it "
                f"labels {', '.join(manifest.labelled_findings)}"
            )
    stored = manifest.stored_size
    if model.input_size > stored:
        raise ConfigError(
            f"model.input_size: {model.input_size} exceeds the stored size {stored} of "
            f"{data.dataset}; convert at a larger --stored_size"
        )
    return manifest
