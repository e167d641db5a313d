"""Classifier networks: a grayscale input, an ImageNet (or tiny) backbone, a logits head.

Every model built here is one flat Keras functional graph

    image (S, S, 1), 0..255, float32 or uint8
    -> [augmentation, training only] -> [resize to input_size]     (input stage)
    -> backbone preprocessing -> backbone layers -> feature map     (backbone)
    -> pooling, dropout, dense -> logits                            (head)

The backbone is built with `input_tensor=`, so its layers are layers of the returned model
and Grad-CAM reaches the last convolutional feature map with
`model.get_layer(feature_layer_name(config))`. S is the image size stored in the dataset
(default `input_size`). Only Keras layers and `keras.ops` are used, so the same model runs
on the JAX backend too.

Input conventions (the backbone's own, applied inside the model):

- densenet121: gray -> RGB, torch style `(x / 255 - mean) / std` with the ImageNet mean/std
  (`keras.applications.densenet.preprocess_input`).
- resnet50: gray -> RGB -> BGR, caffe style `x - mean_bgr`
  (`keras.applications.resnet50.preprocess_input`).
- efficientnetv2b0, convnext_tiny: gray -> RGB; the network rescales 0..255 itself
  (`include_preprocessing=True`).
- tiny: gray stays one channel, `x / 255`.

`ModelConfig.weights`: "imagenet" (the keras.applications `*_notop` download), "" (random
init) or a local backbone weights file: one written by `save_backbone_weights`
(`.weights.h5`), or a keras.applications `*_notop.h5` copied in for offline machines.

Backbone "blocks" for `set_backbone_trainable(model, config, N)` are counted from the top.
Below the first block lies the stem (with the backbone's preprocessing layers), counted as
one more block, so N > K (the block count) or `"all"` unfreezes the whole backbone:

- densenet121: 4 dense blocks, each with the transition after it (`conv2_*`+`pool2_*`, ...,
  `conv5_*` + the final `bn`/`relu`); stem `conv1_*`/`pool1`.
- resnet50: 4 stages `conv2_*` ... `conv5_*`; stem `conv1_*`/`pool1_*`.
- efficientnetv2b0: 6 stages `block1*` ... `block6*` (`top_conv`/`top_bn` join block 6);
  stem `stem_*`.
- convnext_tiny: 4 stages, each with the downsampling layer before it (the final
  LayerNormalization and the feature layer join stage 3); stem `convnext_tiny_stem`.
- tiny: 3 blocks `tiny_block1_*` ... `tiny_block3_*` (`tiny_features` joins block 3).

Fine-tuning keeps BatchNormalization in inference mode: in Keras 3 a BN layer with
`trainable=False` uses its moving statistics even when called with `training=True`, so
`set_backbone_trainable` leaves every backbone BN layer non-trainable (and its moving mean
and variance untouched) whenever the backbone starts from trained weights. Recompile the
model after changing what is trainable.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

import keras
import numpy as np
from keras import layers, ops

from cxr_tf.config import AugmentConfig, ModelConfig
from cxr_tf.modeling.augment import augmentation_layers

INPUT_NAME = "image"
LOGITS_NAME = "logits"
RESIZE_NAME = "resize"

# The last convolutional feature map of each backbone (what Grad-CAM differentiates).
FEATURE_LAYERS: dict[str, str] = {
    "densenet121": "relu",
    "resnet50": "conv5_block3_out",
    "efficientnetv2b0": "top_activation",
    # Keras leaves ConvNeXt's final LayerNormalization unnamed (its name depends on how
    # many models were built before), so an Identity with a fixed name marks the output.
    "convnext_tiny": "convnext_tiny_features",
    "tiny": "tiny_features",
}

# The first backbone layer: everything before it is the input stage.
_FIRST_LAYERS: dict[str, str] = {
    "densenet121": "gray_to_rgb",
    "resnet50": "gray_to_rgb",
    "efficientnetv2b0": "gray_to_rgb",
    "convnext_tiny": "gray_to_rgb",
    "tiny": "tiny_rescale",
}

# A layer whose name matches the k-th pattern starts block k+1; earlier layers are the stem.
_BLOCK_STARTS: dict[str, tuple[str, ...]] = {
    "densenet121": (r"^conv2_", r"^conv3_", r"^conv4_", r"^conv5_"),
    "resnet50": (r"^conv2_", r"^conv3_", r"^conv4_", r"^conv5_"),
    "efficientnetv2b0": tuple(rf"^block{i}[a-z]_" for i in range(1, 7)),
    "convnext_tiny": (
        r"^convnext_tiny_stage_0_",
        r"^convnext_tiny_downsampling_block_0$",
        r"^convnext_tiny_downsampling_block_1$",
        r"^convnext_tiny_downsampling_block_2$",
    ),
    "tiny": (r"^tiny_block1_", r"^tiny_block2_", r"^tiny_block3_"),
}

# Caffe-style (ResNet50) channel means, in BGR order, and torch-style (DenseNet) RGB
# mean/std: the constants of keras/src/applications/imagenet_utils.py.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

# Tiny backbone: (filters, stride of the first conv) per block; total stride 8.
_TINY_BLOCKS = ((24, 2), (48, 2), (96, 2))

TrainableMode = Literal["frozen", "all"] | int


def feature_layer_name(model_or_config: keras.Model | ModelConfig) -> str:
    """The name of the last convolutional feature-map layer (the Grad-CAM target).

    Args:
        model_or_config: a model built by `build_model`, or its config.
    """
    if isinstance(model_or_config, ModelConfig):
        return FEATURE_LAYERS[model_or_config.backbone]
    names = {layer.name for layer in model_or_config.layers}
    found = [name for name in FEATURE_LAYERS.values() if name in names]
    if len(found) != 1:
        raise ValueError(
            f"model {model_or_config.name!r}: expected one known feature layer "
            f"({', '.join(FEATURE_LAYERS.values())}), found {found}"
        )
    return found[0]


def probabilities(logits, task: str):
    """Turns logits into probabilities: softmax for multiclass, else element-wise sigmoid."""
    logits = ops.convert_to_tensor(logits)
    if task == "multiclass":
        return ops.softmax(logits, axis=-1)
    return ops.sigmoid(logits)


# Keras 3 image preprocessing layers (Resizing, RandomFlip, ...) declare
# `call(..., training=True)`, and Layer.__call__ stores that default in the shared call
# context: in a plain `model(x)` (Grad-CAM, a serving function) every later layer, BN and
# Dropout included, would then run in training mode. The input stage therefore uses a
# resize layer without a `training` argument and wraps augmentation in `TrainingOnly`.


def custom_objects() -> dict[str, type]:
    """The project's registered Keras classes (layers here, losses in `cxr_tf.modeling.losses`), for
    `keras.models.load_model`; calling it also imports the modules that register them."""
    from cxr_tf.modeling import losses  # noqa: F401 - registers the losses

    registered = keras.saving.get_custom_objects()
    return {name: cls for name, cls in registered.items() if name.startswith("cxr_tf>")}


@keras.saving.register_keras_serializable(package="cxr_tf")
class TrainingOnly(layers.Wrapper):
    """Runs the wrapped layer only when called with `training=True`, else passes through."""

    def call(self, inputs, training=None):
        if training:
            return self.layer(inputs, training=True)
        return inputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of a bilinear, antialiased resize along one axis.

    The weights of TensorFlow's `ScaleAndTranslate` (`tf.image.resize(..., antialias=True)`,
    `jax.image.resize`) with the triangle kernel: output pixel i samples the input at
    `(i + 0.5) * size_in / size_out - 0.5`, the kernel widened by the scale factor when
    shrinking, weights renormalised at the borders.
    """
    inv_scale = size_in / size_out
    kernel_scale = max(inv_scale, 1.0)
    centres = (np.arange(size_out, dtype=np.float64) + 0.5) * inv_scale - 0.5
    distance = np.abs(centres[:, None] - np.arange(size_in, dtype=np.float64)[None, :])
    weights = np.maximum(0.0, 1.0 - distance / kernel_scale)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


@keras.saving.register_keras_serializable(package="cxr_tf")
class ResizeImage(layers.Layer):
    """Bilinear, antialiased resize to `size` x `size` (no `training` argument, see above).

    Computed as two matrix products with `resize_matrix` weights (rows, then columns):
    the numbers of `keras.ops.image.resize(..., antialias=True)` to float rounding, but
    made of ops every compiler takes (TensorFlow's XLA has no kernel for the antialiased
    resize, `ScaleAndTranslate`, nor does `torch.compile`), so the train step compiles
    with the resize inside it.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, inputs):
        _, height, width, _ = inputs.shape
        rows = ops.convert_to_tensor(resize_matrix(height, self.size), dtype=inputs.dtype)
        cols = ops.convert_to_tensor(resize_matrix(width, self.size), dtype=inputs.dtype)
        x = ops.einsum("oh,bhwc->bowc", rows, inputs)
        return ops.einsum("pw,bowc->bopc", cols, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}


class WeightsUnavailable(FileNotFoundError):
    """The ImageNet weights are neither in Keras' cache nor downloadable."""


def _no_download_message(config: ModelConfig, err: Exception) -> str:
    text = str(err)
    url = text.split("URL fetch failure on ", 1)[-1].split(":", 2)
    url_text = ":".join(url[:2]) if len(url) > 1 else ""
    name = url_text.rsplit("/", 1)[-1] or "the *_notop.h5 file"
    reason = text.rsplit(" -- ", 1)[-1].strip()
    return (
        f"model.weights=imagenet: cannot download the {config.backbone} ImageNet weights "
        f"{name} ({reason}). Offline, copy that file from {url_text or 'keras.applications'} "
        f"into Keras' cache folder ~/.keras/models/, or pass --model.weights PATH to a local "
        f"copy (or --model.weights '' to start from random weights)"
    )


def check_weights(config: ModelConfig) -> None:
    """Fetches ImageNet weights now (a small model is built), so a search fails up front.

    Raises:
        WeightsUnavailable: they are neither cached nor downloadable.
        FileNotFoundError: `config.weights` names a missing file.
    """
    _weights_argument(config)
    if config.weights == "imagenet" and config.backbone != "tiny":
        build_model(dataclasses.replace(config, input_size=64))


def _weights_argument(config: ModelConfig) -> str | None:
    """`weights=` for keras.applications, checking that a local file exists."""
    if config.weights == "imagenet":
        return "imagenet"
    if not config.weights:
        return None
    path = Path(config.weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: no weights file at {str(path)!r}")
    return str(path)


def _gray_to_rgb(x):
    return layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])


def _tiny_backbone(x):
    """A small conv-BN-ReLU network (~0.2M parameters, stride 8) for tests and demos.

    Three blocks, 24/48/96 filters: a 3x3 convolution, then a 2x2 stride-2 convolution that
    halves the resolution; 64 px in -> an 8x8x96 feature map named `tiny_features`.
    Ending each block with non-overlapping 2x2 downsampling keeps feature cell i centred
    on input pixel `8 i + 3.5`, exactly where bilinear upsampling puts it, and keeps the
    last map free of the neighbour mixing a final 3x3 convolution adds: Grad-CAM peaks land
    on the finding (pointing game 0.64 -> 0.86 on the synthetic test split, measured).
    """
    x = layers.Rescaling(1.0 / 255.0, name="tiny_rescale")(x)
    for index, (filters, stride) in enumerate(_TINY_BLOCKS, start=1):
        prefix = f"tiny_block{index}"
        for conv, kernel, conv_stride in (("a", 3, 1), ("b", stride, stride)):
            x = layers.Conv2D(
                filters,
                kernel,
                strides=conv_stride,
                padding="same",
                use_bias=False,
                name=f"{prefix}_conv_{conv}",
            )(x)
            # momentum 0.9: the moving statistics must settle within the few hundred steps
            # of a CPU demo, or validation (inference mode) lags behind training.
            x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn_{conv}")(x)
            last = index == len(_TINY_BLOCKS) and conv == "b"
            x = layers.ReLU(name="tiny_features" if last else f"{prefix}_relu_{conv}")(x)
    return x


def _backbone_features(image, config: ModelConfig, weights: str | None):
    """Builds the preprocessing and backbone layers on `image`.

    `weights` is "imagenet" or None here: a local file is loaded by the caller.

    Returns:
        The backbone's output and the named feature map (the same tensor except for
        ConvNeXt, whose output gets a naming Identity layer).
    """
    size = config.input_size
    shape = (size, size, 3)
    apps = keras.applications
    if config.backbone == "tiny":
        if weights == "imagenet":
            raise ValueError("model.weights: the tiny backbone has no ImageNet weights")
        features = _tiny_backbone(image)
        return features, features
    rgb = _gray_to_rgb(image)
    if config.backbone == "densenet121":
        scale = [1.0 / (255.0 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)]
        x = layers.Rescaling(scale, offset, name="densenet_preprocess")(rgb)
        backbone = apps.densenet.DenseNet121(
            include_top=False, weights=weights, input_tensor=x, input_shape=shape
        )
    elif config.backbone == "resnet50":
        # RGB -> BGR is a no-op for a gray image repeated three times, so only the
        # per-channel BGR means are subtracted.
        offset = [-m for m in _CAFFE_MEAN_BGR]
        x = layers.Rescaling(1.0, offset, name="resnet_preprocess")(rgb)
        backbone = apps.resnet50.ResNet50(
            include_top=False, weights=weights, input_tensor=x, input_shape=shape
        )
    elif config.backbone == "efficientnetv2b0":
        backbone = apps.efficientnet_v2.EfficientNetV2B0(
            include_top=False,
            weights=weights,
            input_tensor=rgb,
            input_shape=shape,
            include_preprocessing=True,
        )
    elif config.backbone == "convnext_tiny":
        backbone = apps.convnext.ConvNeXtTiny(
            include_top=False,
            weights=weights,
            input_tensor=rgb,
            input_shape=shape,
            include_preprocessing=True,
        )
        features = layers.Identity(name=FEATURE_LAYERS["convnext_tiny"])(backbone.output)
        return backbone.output, features
    else:  # ModelConfig validates the name; this guards new entries.
        raise ValueError(f"model.backbone: unknown backbone {config.backbone!r}")
    return backbone.output, backbone.output


def build_model(
    config: ModelConfig,
    stored_size: int | None = None,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Builds the flat classifier `image (S, S, 1), 0..255 -> logits (n_outputs,)`.

    The logits layer runs in float32 even under a mixed-precision policy. The backbone is
    left fully trainable, with BatchNormalization frozen when it starts from trained
    weights (see `set_backbone_trainable`).

    Args:
        config: the network.
        stored_size: side S of the images fed in (the dataset's stored size); they are
            resized to `config.input_size` inside the model. Default: `input_size`.
        augment: training-time augmentation layers (`cxr_tf.modeling.augment`) placed in front,
            each wrapped in `TrainingOnly`: active only when the model is called with
            `training=True` (fit), never in `model(x)`, predict or serving.
        seed: seed of the augmentation layers.

    Raises:
        FileNotFoundError: `config.weights` names a file that does not exist.
    """
    weights = _weights_argument(config)
    size = stored_size or config.input_size
    image = keras.Input(shape=(size, size, 1), name=INPUT_NAME, dtype="float32")
    x = image
    for layer in augmentation_layers(augment, seed) if augment is not None else []:
        x = TrainingOnly(layer, name=f"{layer.name}_train_only")(x)
    if size != config.input_size:
        x = ResizeImage(config.input_size, name=RESIZE_NAME)(x)
    try:
        output, features = _backbone_features(x, config, weights if weights == "imagenet" else None)
    except Exception as err:  # keras.utils.get_file raises a bare Exception
        if weights == "imagenet" and "URL fetch failure" in str(err):
            raise WeightsUnavailable(_no_download_message(config, err)) from None
        raise
    if weights not in (None, "imagenet"):
        # Loaded here rather than by keras.applications, whose backbone model would start
        # at the image input and so include the augmentation layers.
        keras.Model(x, output, name=f"{config.backbone}_backbone").load_weights(weights)
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    if config.hidden_units > 0:
        x = layers.Dense(config.hidden_units, activation="relu", name="head_hidden")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name="head_hidden_dropout")(x)
    logits = layers.Dense(len(config.output_names), name=LOGITS_NAME, dtype="float32")(x)
    model = keras.Model(image, logits, name=f"cxr_{config.backbone}")
    set_backbone_trainable(model, config, "all")
    return model


def backbone_layer_names(model: keras.Model, config: ModelConfig) -> list[str]:
    """Names of the backbone's layers (its preprocessing included), bottom to top."""
    names = [layer.name for layer in model.layers]
    first = names.index(_FIRST_LAYERS[config.backbone])
    return names[first : names.index(feature_layer_name(config)) + 1]


def backbone_blocks(model: keras.Model, config: ModelConfig) -> list[list[str]]:
    """The backbone's layer names grouped as `[stem, block 1, ..., block K]`, bottom to top.

    Functional models list layers by decreasing depth, and every backbone stage is joined
    to the next by a single tensor, so each block is a contiguous run of layers.
    """
    starts = _BLOCK_STARTS[config.backbone]
    groups: list[list[str]] = [[]]
    for name in backbone_layer_names(model, config):
        if len(groups) <= len(starts) and re.search(starts[len(groups) - 1], name):
            groups.append([])
        groups[-1].append(name)
    if len(groups) != len(starts) + 1:
        raise ValueError(
            f"model {model.name!r}: found {len(groups) - 1} of the {len(starts)} "
            f"{config.backbone} blocks; was it built by build_model with this config?"
        )
    return groups


def set_backbone_trainable(
    model: keras.Model,
    config: ModelConfig,
    mode: TrainableMode | str,
    freeze_batchnorm: bool | None = None,
) -> int:
    """Freezes the backbone, unfreezes it all, or unfreezes only its top N blocks.

    The head always stays trainable. Recompile the model afterwards: Keras reads
    `trainable` when it builds the train step.

    Args:
        model: a model from `build_model(config)`.
        config: its config.
        mode: `"frozen"` (or `"none"`), `"all"`, or N >= 0, the number of top blocks to
            unfreeze, as an int or a digit string (see the module docstring).
        freeze_batchnorm: keep backbone BatchNormalization non-trainable, i.e. in inference
            mode with fixed moving statistics. Default: True unless the backbone starts
            from random weights (`config.weights == ""`), where BN must learn its
            statistics.

    Returns:
        The number of backbone blocks (stem included) left trainable.
    """
    groups = backbone_blocks(model, config)
    if isinstance(mode, str) and mode.isdigit():
        mode = int(mode)
    if mode in ("frozen", "none"):
        n_open = 0
    elif mode == "all":
        n_open = len(groups)
    elif isinstance(mode, int) and not isinstance(mode, bool) and mode >= 0:
        n_open = min(mode, len(groups))
    else:
        raise ValueError(f"backbone trainable mode must be 'frozen', 'all' or N >= 0, not {mode!r}")
    if freeze_batchnorm is None:
        freeze_batchnorm = bool(config.weights)
    open_names = {name for group in groups[len(groups) - n_open :] for name in group}
    names = [layer.name for layer in model.layers]
    feature_index = names.index(feature_layer_name(config))
    for layer in model.layers[feature_index + 1 :]:  # the head
        layer.trainable = True
    for group in groups:
        for name in group:
            layer = model.get_layer(name)
            layer.trainable = name in open_names
            for sub in _self_and_sublayers(layer):
                if isinstance(sub, layers.BatchNormalization):
                    sub.trainable = layer.trainable and not freeze_batchnorm
    return n_open


def _self_and_sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Nested models (ConvNeXt's stem and downsampling Sequentials) carry their own layers.
    return [layer, *getattr(layer, "layers", [])]


def save_backbone_weights(model: keras.Model, config: ModelConfig, path: str | Path) -> Path:
    """Writes the backbone's weights to `path` (`*.weights.h5`) for `ModelConfig.weights`.

    A model later built with `weights=path` starts from these backbone weights with a new
    head, e.g. to fine-tune a ChestX-ray14 backbone on another task.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"backbone weights file must end in .weights.h5: {path}")
    # The backbone alone, from its input tensor to its output, sharing the model's layers:
    # the same layers whatever input stage (augmentation, resizing) sits in front.
    inputs = model.get_layer(_FIRST_LAYERS[config.backbone]).input
    inputs = inputs[0] if isinstance(inputs, list | tuple) else inputs
    feature = model.get_layer(feature_layer_name(config))
    # ConvNeXt's keras.applications backbone ends before the naming Identity layer.
    output = feature.input if config.backbone == "convnext_tiny" else feature.output
    keras.Model(inputs, output, name=f"{config.backbone}_backbone").save_weights(path)
    return path
