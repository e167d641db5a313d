"""Training-time augmentation as Keras 3 preprocessing layers.

The layers sit at the front of the model (see `cxr_tf.modeling.models.build_model`), so they
run on the accelerator on uint8-fed batches and are inactive at inference: the exported
model carries them as no-ops and serving sees exactly the evaluation graph. The same
`build_augmentation` output also works inside a tf.data map (call it with
`training=True`), which tests do to check each op both ways.

Ops, each scaled by `AugmentConfig.strength`: random zoom-in (a random resized crop,
reflect-padded), small rotation, brightness and contrast on the 0-255 range; optional
horizontal flip (off by default, see `AugmentConfig`).
"""

from __future__ import annotations

import keras

from cxr_tf.config import AugmentConfig


def _seed(seed: int | None, op: int) -> int | None:
    """A distinct seed per op: one shared seed would draw the same numbers in each layer
    (zoom and contrast would move together)."""
    return None if seed is None else seed * 100 + op


def augmentation_layers(config: AugmentConfig, seed: int | None = None) -> list[keras.Layer]:
    """The enabled augmentation layers, in application order (empty when all are off).

    Each layer gets its own seed derived from `seed`.
    """
    s = config.strength
    layers: list[keras.Layer] = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=_seed(seed, 0), name="aug_flip"))
    if config.zoom * s > 0:
        factor = (-min(config.zoom * s, 0.9), 0.0)  # negative = zoom in, i.e. crop + resize
        layers.append(keras.layers.RandomZoom(factor, seed=_seed(seed, 1), name="aug_zoom"))
    if config.rotation_deg * s > 0:
        layers.append(
            keras.layers.RandomRotation(
                config.rotation_deg * s / 360.0, seed=_seed(seed, 2), name="aug_rotation"
            )
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
