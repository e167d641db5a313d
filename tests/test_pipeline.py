"""The tf.data input pipeline and the augmentation layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.config import AugmentConfig, ConfigError, DataConfig, ModelConfig
from cxr_tf.data import pipeline, schema
from cxr_tf.labels import FINDINGS
from cxr_tf.modeling import augment


def _spec(task="multilabel", findings=()):
    return pipeline.LabelSpec.from_config(
        ModelConfig(backbone="tiny", task=task, findings=findings)
    )


def _all_labels(dataset_dir, split):
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    features = schema.features_of(manifest)
    files = pipeline.split_files(dataset_dir, split)
    out = {}
    for raw in tf.data.TFRecordDataset(files):
        record = features.deserialize_example(raw)
        states = record["labels"].numpy()
        # NIH data: its 14 findings 0/1, the vocabulary's others not labelled (3)
        assert (states[len(FINDINGS) :] == 3).all()
        out[record["image_index"].numpy().decode()] = states[: len(FINDINGS)]
    return out


def test_training_batches_shapes_dtypes_ranges(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=8, shuffle_buffer=16)
    ds = pipeline.make_dataset(data, _spec(), "train", training=True, seed=0)
    batches = list(ds)
    assert batches, "no training batch"
    for images, targets in batches:
        assert images.shape == (8, 64, 64, 1) and images.dtype == tf.uint8
        assert targets.shape == (8, 14) and targets.dtype == tf.float32
        assert set(np.unique(targets.numpy())) <= {0.0, 1.0}
    n_train = json.loads((small_dataset / "manifest.json").read_text())["splits"]["train"]
    assert len(batches) == n_train["images"] // 8  # drop_remainder for training


def test_evaluation_order_is_deterministic_and_complete(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=5)
    spec = _spec()

    def names():
        ds = pipeline.make_dataset(
            data, spec, "train", training=False, extra_keys=("image_index", "patient_id")
        )
        return [n.decode() for _, _, extra in ds for n in extra["image_index"].numpy()]

    first, second = names(), names()
    assert first == second
    labels = _all_labels(small_dataset, "train")
    assert sorted(first) == sorted(labels) and len(first) == len(labels)
    # training order is shuffled (files and records)
    shuffled = pipeline.make_dataset(
        DataConfig(dataset=str(small_dataset), batch_size=5, shuffle_buffer=64),
        spec,
        "train",
        training=True,
        seed=1,
        extra_keys=("image_index",),
    )
    order = [n.decode() for _, _, extra in shuffled for n in extra["image_index"].numpy()]
    assert order != first[: len(order)] and set(order) <= set(first)


def test_task_label_selection_matches_records(small_dataset):
    labels = _all_labels(small_dataset, "validation")
    data = DataConfig(dataset=str(small_dataset), batch_size=4)

    def collect(spec):
        ds = pipeline.make_dataset(data, spec, "validation", False, extra_keys=("image_index",))
        return {
            n.decode(): t
            for _, targets, extra in ds
            for n, t in zip(extra["image_index"].numpy(), targets.numpy(), strict=True)
        }

    subset = collect(_spec("multilabel", ("Mass", "Edema")))
    for name, target in subset.items():
        np.testing.assert_array_equal(
            target, labels[name][[FINDINGS.index("Mass"), FINDINGS.index("Edema")]]
        )
    anything = collect(_spec("binary", ("any",)))
    for name, target in anything.items():
        assert target.tolist() == [float(labels[name].max())]
    classes = ("No Finding", "Mass", "Edema")
    multi = collect(_spec("multiclass", classes))
    expected = {
        n
        for n, v in labels.items()
        if v.sum() == 0 or (v.sum() == 1 and v[[FINDINGS.index(c) for c in classes[1:]]].sum())
    }
    assert set(multi) == expected
    for name, target in multi.items():
        v = labels[name]
        want = (
            0
            if v.sum() == 0
            else 1 + [FINDINGS.index(c) for c in classes[1:]].index(int(np.argmax(v)))
        )
        assert int(np.argmax(target)) == want and target.sum() == 1


def test_balanced_sampling_for_binary(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=20, balanced=True)
    ds = pipeline.make_dataset(data, _spec("binary", ("Mass",)), "train", True, seed=3)
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
    ds = pipeline.make_dataset(
        data, _spec(), "train", True, repeat=True, seed=0, extra_keys=("image_index",)
    )
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
        ds = pipeline.make_dataset(
            data, _spec(), "train", True, repeat=True, seed=seed, extra_keys=("image_index",),
            first_epoch=first_epoch, steps_per_epoch=steps,
        )  # fmt: skip
        return _epochs(ds, steps, count)

    tf.random.set_seed(0)  # a global seed of 0 must work, and not change the order
    from_start = run(5, 0, 3)
    tf.random.set_seed(123)
    assert run(5, 0, 3) == from_start  # reproducible
    assert run(5, 2, 1)[0] == from_start[2]  # a run resumed at epoch 2 sees epoch 2's order
    one = pipeline.make_dataset(
        data, _spec(), "train", True, seed=5, extra_keys=("image_index",), first_epoch=2,
        steps_per_epoch=steps,
    )  # fmt: skip
    assert _names(one) == from_start[2]  # one epoch alone: the same order
    assert from_start[0] != from_start[1] != from_start[2]  # reshuffled every epoch
    assert run(6, 0, 1)[0] != from_start[0]


def test_steps_per_epoch_is_exact_even_past_one_pass(small_dataset):
    data = DataConfig(dataset=str(small_dataset), batch_size=4, deterministic=True)
    passes = len(_all_labels(small_dataset, "train")) // 4
    ds = pipeline.make_dataset(
        data, _spec(), "train", True, repeat=False, seed=0, steps_per_epoch=passes + 3
    )
    assert len(list(ds)) == passes + 3


@pytest.fixture(scope="module")
def sharded_dataset(synth_small, tmp_path_factory):
    """`synth_small` at 64 px raw in shards of ~12 records."""
    from helpers import convert_folder

    out = tmp_path_factory.mktemp("sharded")
    return convert_folder(synth_small, out, image_size=64, shard_mb=0.05, name="sharded")


@pytest.mark.parametrize("workers", [2, 64])
def test_workers_read_disjoint_parts_that_cover_the_split(sharded_dataset, workers):
    small_dataset = sharded_dataset
    data = DataConfig(dataset=str(small_dataset), batch_size=1, shuffle_buffer=16)
    files = pipeline.split_files(small_dataset, "train")
    assert (len(files) >= workers) == (workers == 2)  # by files, then by records
    parts = [
        _names(
            pipeline.make_dataset(
                data, _spec(), "train", True, seed=0, extra_keys=("image_index",),
                shard=(index, workers),
            )
        )
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
    with pytest.raises(pipeline.DatasetError, match=shard.name + r" \("):
        pipeline.split_files(copy, "train")
    data[len(data) // 2] ^= 0xFF  # same size, flipped bits: caught while reading
    shard.write_bytes(bytes(data))
    ds = pipeline.make_dataset(DataConfig(dataset=str(copy)), _spec(), "train", False)
    with pytest.raises(tf.errors.DataLossError) as info:
        list(ds)
    message = pipeline.read_error_message(copy, info.value)
    assert shard.name in message and "sha256 differs" in message


def test_missing_dataset_and_shards_are_clear_errors(small_dataset, tmp_path):
    with pytest.raises(pipeline.DatasetError, match="not a finished conversion"):
        pipeline.load_manifest(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shard = next(copy.glob("validation-*.tfrecord"))
    shard.unlink()
    with pytest.raises(pipeline.DatasetError, match=shard.name):
        pipeline.check_compatible(DataConfig(dataset=str(copy)), ModelConfig(backbone="tiny"))
    with pytest.raises(ConfigError, match="image_size"):
        pipeline.check_compatible(
            DataConfig(dataset=str(small_dataset)), ModelConfig(backbone="tiny", image_size=128)
        )


def test_unknown_finding_and_bad_counts_in_config():
    with pytest.raises(ConfigError, match="Pneumonitis"):
        ModelConfig(task="binary", findings=("Pneumonitis",))
    with pytest.raises(ConfigError, match="exactly one"):
        ModelConfig(task="binary", findings=("Mass", "Edema"))
    with pytest.raises(ConfigError, match="multiclass needs"):
        ModelConfig(task="multiclass", findings=("Mass",))


@pytest.mark.parametrize("field", ["flip", "zoom", "rotation_deg", "brightness", "contrast"])
def test_each_augmentation_op_eagerly_and_in_tf_data(field):
    only = {"flip": False, "zoom": 0.0, "rotation_deg": 0.0, "brightness": 0.0, "contrast": 0.0}
    only[field] = True if field == "flip" else {"rotation_deg": 20.0}.get(field, 0.3)
    layer = augment.build_augmentation(AugmentConfig(**only), seed=0)
    assert len(layer.layers) == 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 1)).astype("float32")
    images[:, :, :16] = 20.0  # asymmetric so the flip is visible
    eager = np.asarray(layer(images, training=True))
    assert eager.shape == images.shape
    assert eager.min() >= 0.0 and eager.max() <= 255.0 and np.isfinite(eager).all()
    assert not np.allclose(eager, images), f"{field} changed nothing"
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    ds = tf.data.Dataset.from_tensor_slices(images).batch(8)
    ds = ds.map(lambda x: layer(x, training=True))
    out = np.concatenate([b.numpy() for b in ds])
    assert out.shape == images.shape and np.isfinite(out).all()
    assert not np.allclose(out, images)
    if field == "flip":
        flipped = images[:, :, ::-1]
        for got, src, flip in zip(out, images, flipped, strict=True):
            assert np.array_equal(got, src) or np.array_equal(got, flip)


def test_augmentation_strength_zero_is_identity():
    layer = augment.build_augmentation(AugmentConfig(strength=0.0))
    assert layer.layers == []


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
        "--model.image_size", "64", "--data.batch_size", "8", "--train.epochs", "1",
        "--train.run_dir", str(tmp_path / "run"), "--quiet",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"corrupt shard(s): {shard} (sha256 differs from the manifest)" in err
    assert "Traceback" not in err
