"""The record schema: one `tfds.features.FeaturesDict` (`build_features(size, encoding)`) that
the converter serializes with and every reader parses with.

The readers share it:
- TFDS (`tfds.builder_from_directory(...)`) decodes records through those features itself;
- the project's input pipeline (`parse_batch`, `parse_record`) parses serialized records
  with `tf.io.parse_example` on the feature spec TFDS derives from the same features, and
  decodes images to uint8 — faster, same values (a test checks both agree);
- exploration (`parse_metadata`) reads every field but the pixels.

Boxes are stored as TFDS `BBoxFeature`s (normalised `ymin, xmin, ymax, xmax`); in pixels of
the stored image they are `x = xmin * size`, `y = ymin * size`, `w = (xmax - xmin) * size`,
`h = (ymax - ymin) * size` (`boxes_xywh`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from cxr_tf.config import ENCODINGS
from cxr_tf.labels import VOCABULARY

# 2: `labels` holds one label state per vocabulary finding, then per finding of the
# dataset's own (negative 0, positive 1, uncertain 2, not labelled 3; the manifest's
# `labels` names them) and views include LATERAL and OTHER. 1: 14 NIH findings, 0/1. Both
# are read.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
SEXES = ("M", "F", "?")
VIEWS = ("PA", "AP", "?", "LATERAL", "OTHER")


def build_features(
    stored_size: int, encoding: str, labels: Sequence[str] = VOCABULARY
) -> tfds.features.FeaturesDict:
    """The FeaturesDict of a dataset stored at `stored_size` with `encoding` (png or raw) and
    one label state per name of `labels` (the manifest's: the vocabulary then the dataset's
    own findings; NIH's 14 in schema version 1). A box's finding is an index into `labels`
    (the vocabulary starts with NIH's 14, so older datasets' box indices read the same)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
    shape = (stored_size, stored_size, 1)
    if encoding == "png":
        image = tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png")
    else:
        image = tfds.features.Tensor(
            shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
        )
    return tfds.features.FeaturesDict(
        {
            "image": image,
            "labels": tfds.features.Tensor(shape=(len(labels),), dtype=np.uint8),
            "image_index": tfds.features.Text(),
            "patient_id": tfds.features.Scalar(dtype=np.int32),
            "follow_up": tfds.features.Scalar(dtype=np.int32),
            "age": tfds.features.Scalar(dtype=np.int32),
            "sex": tfds.features.ClassLabel(names=SEXES),
            "view_position": tfds.features.ClassLabel(names=VIEWS),
            "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "pixel_spacing": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "boxes": tfds.features.Sequence(
                {
                    "finding": tfds.features.ClassLabel(names=list(labels)),
                    "bbox": tfds.features.BBoxFeature(),
                }
            ),
        }
    )


def box_to_bbox(x: float, y: float, w: float, h: float, frame: Sequence[int]) -> Any:
    """A box (x, y, w, h) in pixels of `frame` (width, height) -> a normalised, clipped BBox.

    NIH boxes refer to the 1024 x 1024 released images (`cxr_tf.labels.BOX_FRAME`), whatever the
    pixel size of the files being converted.
    """
    width, height = float(frame[0]), float(frame[1])
    xmin = min(max(x / width, 0.0), 1.0)
    ymin = min(max(y / height, 0.0), 1.0)
    xmax = min(max((x + w) / width, xmin), 1.0)
    ymax = min(max((y + h) / height, ymin), 1.0)
    return tfds.features.BBox(ymin=ymin, xmin=xmin, ymax=ymax, xmax=xmax)


def make_example(
    image: bytes | np.ndarray,
    row: Mapping[str, Any],
    labels: np.ndarray,
    boxes: Sequence[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """The dict `features.serialize_example` takes, from encoded PNG bytes or a raw array.

    `row` holds the normalised Data_Entry columns (see `cxr_tf.sources.nih.read_data_entry`);
    `boxes` are (finding, tfds BBox) pairs.
    """
    sex = str(row["sex"]).upper()
    view = str(row["view_position"]).upper()
    return {
        "image": image,
        "labels": np.asarray(labels, dtype=np.uint8),
        "image_index": str(row["image_index"]),
        "patient_id": int(row["patient_id"]),
        "follow_up": int(row["follow_up"]),
        "age": int(row["age"]),
        "sex": sex if sex in SEXES else "?",
        "view_position": view if view in VIEWS else "?",
        "original_size": np.array([row["original_width"], row["original_height"]], dtype=np.int32),
        "pixel_spacing": np.array(
            [row["pixel_spacing_x"], row["pixel_spacing_y"]], dtype=np.float32
        ),
        "boxes": {
            "finding": [finding for finding, _ in boxes],
            "bbox": [bbox for _, bbox in boxes],
        },
    }


def make_serializer(features: tfds.features.FeaturesDict) -> Callable[[Mapping[str, Any]], bytes]:
    """A function: example dict -> `tf.train.Example` bytes, the same bytes in every process.

    Protobuf writes the `feature` map in hash order unless asked for deterministic output,
    so TFDS' own `serialize_example` can give other bytes for the same record in another
    process; the shard checksums and the dataset fingerprint rely on stable bytes.
    """
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())

    def serialize(example: Mapping[str, Any]) -> bytes:
        proto = serializer.get_tf_example(features.encode_example(example))
        return proto.SerializeToString(deterministic=True)

    return serialize


def feature_spec(features: tfds.features.FeaturesDict) -> dict[str, Any]:
    """The flat `tf.io.parse_example` spec TFDS derives from `features`."""
    return features.tf_example_spec


def _parse(
    serialized: tf.Tensor,
    features: tfds.features.FeaturesDict,
    keys: Sequence[str],
    batched: bool,
) -> dict[str, tf.Tensor]:
    spec = feature_spec(features)
    wanted = {k: spec[k] for k in keys}
    parse = tf.io.parse_example if batched else tf.io.parse_single_example
    parsed = parse(serialized, wanted)
    image_feature = features["image"]
    shape = image_feature.shape
    out: dict[str, tf.Tensor] = {}
    for key, value in parsed.items():
        if key == "image":
            if isinstance(image_feature, tfds.features.Image):
                if batched:
                    images = tf.map_fn(
                        lambda b: tf.io.decode_png(b, channels=1),
                        value,
                        fn_output_signature=tf.TensorSpec(shape, tf.uint8),
                    )
                else:
                    images = tf.io.decode_png(value, channels=1)
            else:
                images = tf.io.decode_raw(value, tf.uint8)
            out[key] = tf.ensure_shape(
                tf.reshape(images, (-1, *shape) if batched else shape),
                (None, *shape) if batched else shape,
            )
        elif key == "labels":
            out[key] = tf.cast(value, tf.uint8)
        else:
            out[key] = value
    return out


def parse_batch(
    serialized: tf.Tensor,
    features: tfds.features.FeaturesDict,
    keys: Sequence[str] = ("image", "labels"),
) -> dict[str, tf.Tensor]:
    """Parses a batch of serialized records: image -> uint8 (B, S, S, 1), labels -> uint8 (B, L)
    label states (L: the manifest's `labels`).

    Other scalar keys come back as parsed (`image_index` as bytes). Boxes are left to TFDS
    decoding (`features.decode_example`), used by localization. Fastest for raw storage;
    PNG records decode one by one inside the batch (use `parse_record` in a parallel map).
    """
    return _parse(serialized, features, keys, batched=True)


def parse_record(
    serialized: tf.Tensor,
    features: tfds.features.FeaturesDict,
    keys: Sequence[str] = ("image", "labels"),
) -> dict[str, tf.Tensor]:
    """`parse_batch` for one record: image -> uint8 (S, S, 1), labels -> uint8 (L,)."""
    return _parse(serialized, features, keys, batched=False)


def parse_metadata(
    serialized: tf.Tensor, features: tfds.features.FeaturesDict
) -> dict[str, tf.Tensor]:
    """Parses a batch of records without their pixels: every other field as stored, labels
    int64 (B, L), and the boxes flat (`boxes/finding` (N,), `boxes/bbox` (N, 4)) with
    `boxes/count` (B,) per record, so that "no box" stays apart from a padded box."""
    spec = {}
    for key, feature in feature_spec(features).items():
        if key in ("image", "original_size", "pixel_spacing"):
            continue
        if isinstance(feature, tf.io.FixedLenSequenceFeature):
            feature = tf.io.RaggedFeature(feature.dtype)
        spec[key] = feature
    parsed = tf.io.parse_example(serialized, spec)
    parsed["boxes/count"] = parsed["boxes/finding"].row_lengths()
    for key in ("boxes/finding", "boxes/bbox"):
        parsed[key] = parsed[key].flat_values
    return parsed


def parse_labels(serialized: tf.Tensor, num_labels: int) -> tf.Tensor:
    """The label states of one serialized record, int64 (L,), without touching its image."""
    spec = {"labels": tf.io.FixedLenFeature([num_labels], tf.int64)}
    return tf.io.parse_single_example(serialized, spec)["labels"]


def decode_record(serialized: tf.Tensor, features: tfds.features.FeaturesDict) -> dict:
    """Decodes one serialized record the TFDS way (all fields, boxes included)."""
    return features.deserialize_example(serialized)


def boxes_xywh(bbox: np.ndarray, size: int) -> np.ndarray:
    """Normalised (ymin, xmin, ymax, xmax) rows -> (x, y, w, h) in stored-image pixels."""
    bbox = np.asarray(bbox, dtype=np.float32).reshape(-1, 4)
    ymin, xmin, ymax, xmax = bbox.T
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1) * size
