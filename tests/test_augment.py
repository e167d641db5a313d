"""The augmentation layers (`cxr_tf.modeling.augment`): each op eagerly and in tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.config import AugmentConfig
from cxr_tf.modeling import augment


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
