"""The augmentation layers (`cxr_tf.modeling.augment`): each op eagerly, in tf.data and under
XLA, and their distributions against the Keras layers they replace."""

from __future__ import annotations

import keras
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


def test_every_augmentation_layer_compiles_with_xla():
    layer = augment.build_augmentation(AugmentConfig(flip=True), seed=1)
    assert len(layer.layers) == 5 and all(sub.supports_jit for sub in layer.layers)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    compiled = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    first, second = np.asarray(compiled(images)), np.asarray(compiled(images))
    assert first.shape == images.shape and first.min() >= 0.0 and first.max() <= 255.0
    assert not np.allclose(first, second)  # the seed state advances inside the XLA step


def test_affine_resample_identity_shift_and_reflection():
    images = np.arange(2 * 4 * 5, dtype="float32").reshape(2, 4, 5, 1)
    identity = np.tile(np.array([[1, 0, 0, 0, 1, 0]], "float32"), (2, 1))
    np.testing.assert_array_equal(np.asarray(augment.affine_resample(images, identity)), images)
    shift = np.tile(np.array([[1, 0, 1.5, 0, 1, 0]], "float32"), (2, 1))  # x' = x + 1.5
    got = np.asarray(augment.affine_resample(images, shift))[0, 0, :, 0]
    # (a b c d e | e d ...): 4.5 lies between e and its mirror e, 5.5 between e and d
    row = images[0, 0, :, 0]
    np.testing.assert_allclose(got, [1.5, 2.5, 3.5, row[4], (row[4] + row[3]) / 2], atol=1e-5)


def _ramp_slopes(layer, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical slope at the centre of n ramps `128 + 2 (x - c)` after
    `layer`: the ramp's slope times the zoom scale, and its direction turned by the
    rotation angle."""
    side = 64
    c = (side - 1) / 2
    ramp = 128.0 + 2.0 * (np.arange(side, dtype="float32") - c)
    images = np.broadcast_to(ramp[None, None, :, None], (n, side, side, 1)).copy()
    out = np.asarray(layer(images, training=True))[..., 0]
    centre = out[:, 24:40, 24:40]
    return np.diff(centre, axis=2).mean(axis=(1, 2)), np.diff(centre, axis=1).mean(axis=(1, 2))


def test_zoom_and_rotation_draw_the_distributions_of_the_keras_layers():
    """The compiled layers against Keras' RandomZoom/RandomRotation on the same config: the
    zoom scale (slope of a ramp) and the angle (its direction) match in mean, spread and
    range; both uniform, scale in [0.7, 1], angle in +-10 degrees."""
    new_zoom = augment.RandomZoomIn(0.3, seed=5)
    old_zoom = keras.layers.RandomZoom((-0.3, 0.0), seed=5)
    scales = [_ramp_slopes(layer)[0] / 2.0 for layer in (new_zoom, old_zoom)]
    for scale in scales:
        assert 0.69 < scale.min() < 0.72 and 0.98 < scale.max() <= 1.001
        assert scale.mean() == pytest.approx(0.85, abs=0.02)
        assert scale.std() == pytest.approx(0.3 / np.sqrt(12), abs=0.01)
    new_rot = augment.RandomRotate(10.0, seed=5)
    old_rot = keras.layers.RandomRotation(10.0 / 360.0, seed=5)
    for layer in (new_rot, old_rot):
        gx, gy = _ramp_slopes(layer)
        angle = np.degrees(np.arctan2(gy, gx))
        assert np.abs(angle).max() <= 10.2 and np.abs(angle).max() > 9.0
        assert angle.mean() == pytest.approx(0.0, abs=1.0)
        assert angle.std() == pytest.approx(20.0 / np.sqrt(12), abs=0.6)
        np.testing.assert_allclose(np.hypot(gx, gy), 2.0, atol=0.02)  # no scaling


def test_augmented_grey_levels_match_the_keras_layers():
    """Whole-image statistics of the default pipeline, old layers vs new, on a textured
    image: same mean grey level and spread to within the sampling noise."""
    rng = np.random.default_rng(2)
    base = tf.image.resize(rng.uniform(30, 220, (1, 8, 8, 1)), (64, 64)).numpy()
    images = np.repeat(base.astype("float32"), 128, axis=0)
    config = AugmentConfig()
    new = augment.build_augmentation(config, seed=3)
    old = keras.Sequential(
        [
            keras.layers.RandomZoom((-config.zoom, 0.0), seed=301),
            keras.layers.RandomRotation(config.rotation_deg / 360.0, seed=302),
            *new.layers[2:],
        ]
    )
    got, ref = (np.asarray(layer(images, training=True)) for layer in (new, old))
    assert got.mean() == pytest.approx(ref.mean(), abs=3.0)
    assert got.std() == pytest.approx(ref.std(), rel=0.08)
    assert np.abs(got.mean(axis=0) - ref.mean(axis=0)).mean() < 4.0  # per-pixel means
