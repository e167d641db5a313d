"""The tf.data reader: batches, epoch order, caching, workers, damaged shards."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.data import reader
from cxr_tf.data.manifest import DatasetError, Manifest
from cxr_tf.data.reader import ReadOptions
from cxr_tf.data.targets import LabelSpec
from cxr_tf.labels import FINDINGS, UNLABELLED


def _spec(task="multilabel", findings=()):
    return LabelSpec.from_config(ModelConfig(backbone="tiny", task=task, findings=findings))


def _all_labels(dataset_dir, split):
    manifest = Manifest.load(dataset_dir)
    features = manifest.features()
    files = manifest.split_files(split)
    out = {}
    for raw in tf.data.TFRecordDataset(files):
        record = features.deserialize_example(raw)
        states = record["labels"].numpy()
        # NIH data: its 14 findings 0/1, the vocabulary's others not labelled
        assert (states[len(FINDINGS) :] == UNLABELLED).all()
        out[record["image_index"].numpy().decode()] = states[: len(FINDINGS)]
    return out


def test_training_batches_shapes_dtypes_ranges(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=8, shuffle_buffer=16)
    ds = reader.make_dataset(data, _spec(), "train", ReadOptions(training=True, seed=0))
    batches = list(ds)
    assert batches, "no training batch"
    for images, targets in batches:
        assert images.shape == (8, 64, 64, 1) and images.dtype == tf.uint8
        assert targets.shape == (8, 14) and targets.dtype == tf.float32
        assert set(np.unique(targets.numpy())) <= {0.0, 1.0}
    n_train = Manifest.load(small_dataset).splits["train"].images
    assert len(batches) == n_train // 8  # drop_remainder for training


def test_evaluation_order_is_deterministic_and_complete(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=5)
    spec = _spec()

    def names():
        ds = reader.make_dataset(
            data, spec, "train", ReadOptions(extra_keys=("image_index", "patient_id"))
        )
        return [n.decode() for _, _, extra in ds for n in extra["image_index"].numpy()]

    first, second = names(), names()
    assert first == second
    labels = _all_labels(small_dataset, "train")
    assert sorted(first) == sorted(labels) and len(first) == len(labels)
    # training order is shuffled (files and records)
    shuffled = reader.make_dataset(
        DataConfig(dataset=str(small_dataset), batch_size=5, shuffle_buffer=64),
        spec,
        "train",
        ReadOptions(training=True, seed=1, extra_keys=("image_index",)),
    )
    order = [n.decode() for _, _, extra in shuffled for n in extra["image_index"].numpy()]
    assert order != first[: len(order)] and set(order) <= set(first)


def test_balanced_sampling_for_binary(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=20, balanced=True)
    ds = reader.make_dataset(
        data, _spec("binary", ("Mass",)), "train", ReadOptions(training=True, seed=3)
    )
    targets = np.concatenate([t.numpy() for _, t in ds.take(15)])
    assert 0.4 < targets.mean() < 0.6  # Mass is ~10% of images without balancing


def _names(batches) -> list[str]:
    return [n.decode() for _, _, extra in batches for n in extra["image_index"].numpy()]


def _epochs(ds, steps: int, count: int) -> list[list[str]]:
    it = iter(ds)
    return [_names([next(it) for _ in range(steps)]) for _ in range(count)]


def test_cache_holds_the_records_and_reshuffles_every_epoch(small_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    data = DataConfig(dataset=str(copy), batch_size=1, shuffle_buffer=64, cache=True)
    n = len(_all_labels(copy, "train"))
    options = ReadOptions(training=True, repeat=True, seed=0, extra_keys=("image_index",))
    ds = reader.make_dataset(data, _spec(), "train", options)
    it = iter(ds)
    first = _names([next(it) for _ in range(n)])
    for shard in copy.glob("train-*.tfrecord"):  # epoch 2 must come from memory
        shard.rename(shard.with_suffix(".gone"))
    second = _names([next(it) for _ in range(n)])
    assert sorted(first) == sorted(second) == sorted(_all_labels(small_dataset, "train"))
    assert first != second


def test_cache_with_balanced_is_refused():
    with pytest.raises(ConfigError, match="data.cache"):
        DataConfig(cache=True, balanced=True)


@pytest.mark.parametrize("cache", [False, True])
def test_epoch_order_depends_on_seed_and_epoch_only(small_dataset, cache):
    data = DataConfig(
        dataset=str(small_dataset), batch_size=4, shuffle_buffer=8, deterministic=True, cache=cache
    )
    steps = len(_all_labels(small_dataset, "train")) // 4

    def run(seed, first_epoch, count):
        options = ReadOptions(training=True, repeat=True, seed=seed, first_epoch=first_epoch,
                              steps_per_epoch=steps, extra_keys=("image_index",))  # fmt: skip
        return _epochs(reader.make_dataset(data, _spec(), "train", options), steps, count)

    tf.random.set_seed(0)  # a global seed of 0 must work, and not change the order
    from_start = run(5, 0, 3)
    tf.random.set_seed(123)
    assert run(5, 0, 3) == from_start  # reproducible
    assert run(5, 2, 1)[0] == from_start[2]  # a run resumed at epoch 2 sees epoch 2's order
    options = ReadOptions(training=True, seed=5, first_epoch=2, steps_per_epoch=steps,
                          extra_keys=("image_index",))  # fmt: skip
    one = reader.make_dataset(data, _spec(), "train", options)
    assert _names(one) == from_start[2]  # one epoch alone: the same order
    assert from_start[0] != from_start[1] != from_start[2]  # reshuffled every epoch
    assert run(6, 0, 1)[0] != from_start[0]


def test_steps_per_epoch_is_exact_even_past_one_pass(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=4, deterministic=True)
    passes = len(_all_labels(small_dataset, "train")) // 4
    options = ReadOptions(training=True, repeat=False, seed=0, steps_per_epoch=passes + 3)
    ds = reader.make_dataset(data, _spec(), "train", options)
    assert len(list(ds)) == passes + 3


@pytest.fixture(scope="module")
def sharded_dataset(synth_small, tmp_path_factory):
    """`synth_small` at 64 px raw in shards of ~12 records."""
    from helpers import convert_folder

    out = tmp_path_factory.mktemp("sharded")
    return convert_folder(synth_small, out, stored_size=64, shard_mb=0.05, name="sharded")


@pytest.mark.parametrize("workers", [2, pytest.param(64, marks=pytest.mark.slow)])
def test_workers_read_disjoint_parts_that_cover_the_split(sharded_dataset, workers):
    small_dataset = sharded_dataset
    data = DataConfig(dataset=str(small_dataset), batch_size=1, shuffle_buffer=16)
    files = Manifest.load(small_dataset).split_files("train")
    assert (len(files) >= workers) == (workers == 2)  # by files, then by records
    parts = [
        _names(reader.make_dataset(data, _spec(), "train", ReadOptions(
            training=True, seed=0, shard=(index, workers), extra_keys=("image_index",))))
        for index in range(workers)
    ]  # fmt: skip
    everything = [n for part in parts for n in part]
    assert sorted(everything) == sorted(_all_labels(small_dataset, "train"))


def test_a_changed_or_corrupt_shard_is_named(small_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = sorted(copy.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(data[:-10]))  # truncated: caught before reading
    with pytest.raises(DatasetError, match=shard.name + r" \("):
        Manifest.load(copy).split_files("train")
    data[len(data) // 2] ^= 0xFF  # same size, flipped bits: caught while reading
    shard.write_bytes(bytes(data))
    ds = reader.make_dataset(DataConfig(dataset=str(copy)), _spec(), "train")
    with pytest.raises(tf.errors.DataLossError) as info:
        list(ds)
    message = reader.read_error_message(copy, info.value)
    assert shard.name in message and "sha256 differs" in message


def test_missing_dataset_and_shards_are_clear_errors(small_dataset, tmp_path):
    with pytest.raises(DatasetError, match="not a finished conversion"):
        Manifest.load(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = next(copy.glob("validation-*.tfrecord"))
    shard.unlink()
    with pytest.raises(DatasetError, match=shard.name):
        reader.check_compatible(DataConfig(dataset=str(copy)), ModelConfig(backbone="tiny"))
    with pytest.raises(ConfigError, match="input_size"):
        reader.check_compatible(
            DataConfig(dataset=str(small_dataset)), ModelConfig(backbone="tiny", input_size=128)
        )


@pytest.mark.slow
def test_fit_names_a_shard_damaged_after_conversion(small_dataset, tmp_path, capsys):
    import shutil

    from cxr_tf import fit

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = sorted(copy.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the record checksums can tell
    shard.write_bytes(bytes(data))
    code = fit.main([
        "--data.dataset", str(copy), "--model.backbone", "tiny", "--model.weights", "",
        "--model.input_size", "64", "--data.batch_size", "8", "--train.epochs", "1",
        "--train.run_dir", str(tmp_path / "run"), "--quiet",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4, err  # a damaged dataset: exit 4 (docs/commands.md, exit statuses)
    assert f"corrupt shard(s): {shard} (sha256 differs from the manifest)" in err
    assert "Traceback" not in err
