"""Training-time augmentation as Keras 3 layers that XLA (TensorFlow) and jit (JAX) compile.

The layers sit at the front of the model (see `cxr_tf.modeling.models.build_model`), so they
run on the accelerator on uint8-fed batches, inside the compiled train step, and are
inactive at inference: the exported model carries them as no-ops and serving sees exactly
the evaluation graph. The same `build_augmentation` output also works inside a tf.data map
(call it with `training=True`, TensorFlow backend), which tests do to check each op both
ways.

Ops, each scaled by `AugmentConfig.strength`: random zoom-in (a random resized crop,
reflect-padded), small rotation, brightness and contrast on the 0-255 range; optional
horizontal flip (off by default, see `AugmentConfig`).

Flip, brightness and contrast are Keras' own layers, which compile. Keras' `RandomZoom` and
`RandomRotation` do not (they declare `supports_jit=False`, and TensorFlow's XLA has no
kernel for their `ImageProjectiveTransformV3`), and one such layer makes Keras run the
whole model uncompiled. `RandomZoomIn` and `RandomRotate` here draw the same distributions
(crop side a uniform fraction in [1 - zoom, 1] of the image, one for both axes; angle
uniform in +-rotation_deg; both about the image centre) and resample with
`affine_resample`: bilinear, reflect padding, written with `keras.ops` gathers only.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from cxr_tf.config import AugmentConfig


def affine_resample(images, matrices):
    """Bilinear resampling of `images` (B, H, W, C) at affine source coordinates.

    Row b of `matrices` (B, 6), `[a0, a1, a2, b0, b1, b2]`, maps output pixel (x, y) to
    the input point `(a0 x + a1 y + a2, b0 x + b1 y + b2)` (pixel centres at integers, as
    `keras.ops.image.affine_transform`). Points outside the image are reflected about its
    edge, `(d c b a | a b c d | d c b a)`. Only elementwise ops and gathers, so every
    backend's compiler takes it.
    """
    images = ops.convert_to_tensor(images)
    batch, height, width, channels = ops.shape(images)
    matrices = ops.cast(matrices, "float32")
    ys, xs = ops.meshgrid(
        ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij"
    )
    xs, ys = ops.reshape(xs, (1, -1)), ops.reshape(ys, (1, -1))
    m = [matrices[:, i : i + 1] for i in range(6)]
    src_x = _reflect(m[0] * xs + m[1] * ys + m[2], width)
    src_y = _reflect(m[3] * xs + m[4] * ys + m[5], height)
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    flat = ops.reshape(images, (batch, height * width, channels))

    def gather(x, y):
        x = ops.clip(ops.cast(x, "int32"), 0, width - 1)
        y = ops.clip(ops.cast(y, "int32"), 0, height - 1)
        index = ops.broadcast_to((y * width + x)[..., None], (batch, height * width, channels))
        return ops.cast(ops.take_along_axis(flat, index, axis=1), "float32")

    top = gather(x0, y0) * (1.0 - fx) + gather(x0 + 1, y0) * fx
    bottom = gather(x0, y0 + 1) * (1.0 - fx) + gather(x0 + 1, y0 + 1) * fx
    out = top * (1.0 - fy) + bottom * fy
    return ops.cast(ops.reshape(out, (batch, height, width, channels)), images.dtype)


def _reflect(coord, size: int):
    """Coordinates folded into [-0.5, size - 0.5] by reflection about the image edge."""
    period = 2.0 * size
    folded = ops.mod(coord + 0.5, period)
    return ops.where(folded >= size, period - folded, folded) - 0.5


class _RandomAffine(keras.layers.Layer):
    """A random affine map per image about its centre, resampled by `affine_resample`.

    Runs in float32 whatever the dtype policy (pixel coordinates in bfloat16 would be off
    by pixels) and has no `training` argument of its own: `build_model` wraps it in
    `TrainingOnly`, and `build_augmentation` applies it only when called with
    `training=True`.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _linear(self, batch):
        """The (B, 2, 2) linear part (output offset from the centre -> input offset)."""
        raise NotImplementedError

    def call(self, inputs, training=None):
        if not training:
            return inputs
        shape = ops.shape(inputs)
        linear = self._linear(shape[0])
        cx, cy = (shape[2] - 1) / 2.0, (shape[1] - 1) / 2.0
        a, b = linear[:, 0], linear[:, 1]
        matrices = ops.stack(
            [a[:, 0], a[:, 1], cx - a[:, 0] * cx - a[:, 1] * cy,
             b[:, 0], b[:, 1], cy - b[:, 0] * cx - b[:, 1] * cy],
            axis=1,
        )  # fmt: skip
        return affine_resample(inputs, matrices)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="cxr_tf")
class RandomZoomIn(_RandomAffine):
    """Random resized crop: a centred crop whose side is a uniform fraction in
    [1 - zoom, 1] of the image (both axes alike), scaled back to the full image."""

    def __init__(self, zoom: float, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= zoom < 1.0:
            raise ValueError(f"RandomZoomIn: zoom must be in [0, 1), not {zoom}")
        self.zoom = float(zoom)

    def _linear(self, batch):
        scale = keras.random.uniform(
            (batch,), 1.0 - self.zoom, 1.0, seed=self.seed_generator, dtype="float32"
        )
        zero = ops.zeros_like(scale)
        return ops.reshape(ops.stack([scale, zero, zero, scale], axis=1), (-1, 2, 2))

    def get_config(self) -> dict:
        return {**super().get_config(), "zoom": self.zoom}


@keras.saving.register_keras_serializable(package="cxr_tf")
class RandomRotate(_RandomAffine):
    """Rotation about the image centre by an angle uniform in +-`degrees`."""

    def __init__(self, degrees: float, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.degrees = float(degrees)

    def _linear(self, batch):
        limit = math.radians(self.degrees)
        angle = keras.random.uniform(
            (batch,), -limit, limit, seed=self.seed_generator, dtype="float32"
        )
        cos, sin = ops.cos(angle), ops.sin(angle)
        return ops.reshape(ops.stack([cos, -sin, sin, cos], axis=1), (-1, 2, 2))

    def get_config(self) -> dict:
        return {**super().get_config(), "degrees": self.degrees}


def _seed(seed: int | None, op: int) -> int | None:
    """A distinct seed per op: one shared seed would draw the same numbers in each layer
    (zoom and contrast would move together)."""
    return None if seed is None else seed * 100 + op


def augmentation_layers(config: AugmentConfig, seed: int | None = None) -> list[keras.Layer]:
    """The enabled augmentation layers, in application order (empty when all are off).

    Each layer gets its own seed derived from `seed`; every one compiles (XLA, jit).
    """
    s = config.strength
    layers: list[keras.Layer] = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=_seed(seed, 0), name="aug_flip"))
    if config.zoom * s > 0:
        layers.append(RandomZoomIn(min(config.zoom * s, 0.9), seed=_seed(seed, 1), name="aug_zoom"))
    if config.rotation_deg * s > 0:
        layers.append(
            RandomRotate(config.rotation_deg * s, seed=_seed(seed, 2), name="aug_rotation")
        )
    if config.brightness * s > 0:
        layers.append(
            keras.layers.RandomBrightness(
                min(config.brightness * s, 1.0),
                value_range=(0, 255),
                seed=_seed(seed, 3),
                name="aug_brightness",
            )
        )
    if config.contrast * s > 0:
        layers.append(
            keras.layers.RandomContrast(
                min(config.contrast * s, 1.0),
                value_range=(0, 255),
                seed=_seed(seed, 4),
                name="aug_contrast",
            )
        )
    return layers


def build_augmentation(config: AugmentConfig, seed: int | None = None) -> keras.Sequential:
    """The enabled layers as one Sequential (identity when none), for use in tf.data.

    Brightness and contrast clip to 0..255 themselves; zoom and rotation reflect-pad, so
    the output stays in range.
    """
    return keras.Sequential(augmentation_layers(config, seed), name="augment")
