"""The record schema and the TFDS view of a converted folder."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import convert_folder

from cxr_tf.data import schema
from cxr_tf.data.manifest import Manifest
from cxr_tf.labels import FINDINGS, VOCABULARY


def _project_reader(dataset, split):
    manifest = Manifest.load(dataset)
    features = schema.build_features(manifest.stored_size, manifest.image.encoding)
    files = manifest.split_files(split)
    ds = tf.data.TFRecordDataset(files).batch(7)
    ds = ds.map(lambda s: schema.parse_batch(s, features, ("image", "labels", "image_index")))
    out = {}
    for batch in ds:
        for name, image, labels in zip(
            batch["image_index"].numpy(),
            batch["image"].numpy(),
            batch["labels"].numpy(),
            strict=True,
        ):
            out[name.decode()] = (image, labels)
    return out


@pytest.mark.parametrize("encoding", ["png", "raw"])
def test_tfds_and_project_reader_agree(synth_small, small_dataset, tmp_path, encoding):
    dataset = (
        small_dataset
        if encoding == "png"
        else convert_folder(synth_small, tmp_path, stored_size=64, encoding="raw", name="raw")
    )
    manifest = Manifest.load(dataset)
    builder = tfds.builder_from_directory(str(dataset))
    assert builder.info.name == dataset.name
    assert "Wang" in builder.info.citation and builder.info.homepage
    assert builder.info.metadata["labels"] == list(VOCABULARY)
    assert builder.info.metadata["labelled_findings"] == list(FINDINGS)
    for split, entry in manifest.splits.items():
        assert builder.info.splits[split].num_examples == entry.images
        ours = _project_reader(dataset, split)
        theirs = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(theirs) == len(ours) == entry.images
        for record in theirs:
            image, labels = ours[record["image_index"].decode()]
            assert record["image"].dtype == image.dtype == np.uint8
            np.testing.assert_array_equal(record["image"], image)
            np.testing.assert_array_equal(record["labels"], labels)


def test_sub_splits_dataframe_and_benchmark(small_dataset):
    builder = tfds.builder_from_directory(str(small_dataset))
    total = builder.info.splits["train"].num_examples
    first = len(list(builder.as_dataset(split="train[:50%]")))
    rest = len(list(builder.as_dataset(split="train[50%:]")))
    assert first + rest == total and first > 0 and rest > 0
    both = builder.as_dataset(split="train+validation")
    assert len(list(both)) == total + builder.info.splits["validation"].num_examples
    frame = tfds.as_dataframe(builder.as_dataset(split="test").take(4), builder.info)
    assert {"image", "labels", "patient_id", "boxes/bbox"} <= set(frame.columns)
    result = tfds.benchmark(builder.as_dataset(split="train").batch(8), batch_size=8)
    assert result.stats["num_examples"].iloc[-1] > 0


def test_show_examples_draws_records(small_dataset, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    builder = tfds.builder_from_directory(str(small_dataset))
    figure = tfds.show_examples(builder.as_dataset(split="test"), builder.info, rows=1, cols=3)
    path = tmp_path / "examples.png"
    figure.savefig(path)
    assert path.stat().st_size > 1000


def test_boxes_xywh_golden():
    bbox = np.array([[0.25, 0.5, 0.75, 1.0]])  # ymin, xmin, ymax, xmax
    np.testing.assert_allclose(schema.boxes_xywh(bbox, 64), [[32, 16, 32, 32]])
    converted = schema.box_to_bbox(256, 128, 512, 1024, (1024, 1024))
    assert (converted.ymin, converted.xmin, converted.ymax, converted.xmax) == (
        0.125, 0.25, 1.0, 0.75,
    )  # fmt: skip


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="encoding"):
        schema.build_features(64, "jpeg")
