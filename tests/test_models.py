"""Models: heads and shapes on the tiny backbone, the four ImageNet backbones (one step
each, random weights), local weights files, in-model preprocessing and fine-tuning modes."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from helpers import PROJECT
from keras.src.legacy.saving import legacy_h5_format

from cxr_tf.config import AugmentConfig, ModelConfig
from cxr_tf.labels import FINDINGS
from cxr_tf.modeling import losses
from cxr_tf.modeling import models as M

SIZE = 64


def _tiny(**overrides) -> ModelConfig:
    fields = {"backbone": "tiny", "weights": "", "input_size": SIZE, **overrides}
    return ModelConfig(**fields)


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 1)).astype("float32")


def _backbone_weights(model: keras.Model, config: ModelConfig) -> list[np.ndarray]:
    names = set(M.backbone_layer_names(model, config))
    return [
        keras.ops.convert_to_numpy(w)
        for layer in model.layers
        if layer.name in names
        for w in layer.weights
    ]


def _bn_stats(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(v)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def _assert_same(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_output_names():
    assert _tiny().output_names == FINDINGS
    assert _tiny(findings=("Mass", "Edema")).output_names == ("Mass", "Edema")
    assert _tiny(task="binary", findings=("any",)).output_names == ("any",)
    assert _tiny(task="binary", findings=("Hernia",)).output_names == ("Hernia",)
    classes = ("No Finding", "Mass", "Effusion")
    assert _tiny(task="multiclass", findings=classes).output_names == classes


@pytest.mark.parametrize(
    "task, findings, n_outputs",
    [
        ("multilabel", (), 14),
        ("multilabel", ("Mass", "Nodule", "Hernia"), 3),
        ("binary", ("any",), 1),
        ("multiclass", ("No Finding", "Mass", "Effusion"), 3),
    ],
)
def test_head_output_shapes(task, findings, n_outputs):
    config = _tiny(task=task, findings=findings, dropout=0.2, hidden_units=16)
    model = M.build_model(config)
    logits = model.predict(_images(2), verbose=0)
    assert logits.shape == (2, n_outputs)
    assert logits.dtype == np.float32
    probs = keras.ops.convert_to_numpy(M.probabilities(logits, task))
    assert np.all((probs >= 0) & (probs <= 1))
    if task == "multiclass":
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_uint8_input_is_cast_inside():
    model = M.build_model(_tiny())
    images = _images(2).round()
    np.testing.assert_allclose(
        model.predict(images.astype(np.uint8), verbose=0),
        model.predict(images, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_logits_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = M.build_model(_tiny())
        assert model.get_layer(M.feature_layer_name(model)).compute_dtype == "float16"
        assert model.predict(_images(2), verbose=0).dtype == np.float32
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_stored_size_and_augmentation_in_front(tmp_path):
    config = _tiny(findings=("Mass",))
    model = M.build_model(config, stored_size=96, augment=AugmentConfig(flip=True), seed=1)
    assert model.input.shape == (None, 96, 96, 1)
    assert model.get_layer(M.RESIZE_NAME).output.shape == (None, SIZE, SIZE, 1)
    assert model.get_layer(M.feature_layer_name(config)).output.shape[1:3] == (8, 8)
    images = _images(2, 96)
    # A bare model(x) is inference: no augmentation, BN on moving statistics (Keras 3
    # image preprocessing layers would switch every later layer to training mode).
    predicted = model.predict(images, verbose=0)
    for call in (model(images), model(images, training=False)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(call), predicted, atol=1e-5)
    np.testing.assert_array_equal(model.predict(images, verbose=0), predicted)
    training = keras.ops.convert_to_numpy(model(images, training=True))
    assert not np.allclose(training, predicted, atol=1e-3)
    # Backbone weights move between models with different input stages.
    path = M.save_backbone_weights(model, config, tmp_path / "aug.weights.h5")
    plain_config = _tiny(weights=str(path))
    plain = M.build_model(plain_config)
    _assert_same(_backbone_weights(model, config), _backbone_weights(plain, plain_config))


def test_feature_layer_is_a_spatial_map():
    config = _tiny()
    model = M.build_model(config)
    name = M.feature_layer_name(config)
    assert name == "tiny_features" == M.feature_layer_name(model)
    _, height, width, _ = model.get_layer(name).output.shape
    assert height >= 8 and width >= 8
    assert 50_000 <= model.count_params() <= 200_000


def test_probabilities():
    logits = np.array([[0.0, 2.0, -1.0]], dtype=np.float32)
    sig = keras.ops.convert_to_numpy(M.probabilities(logits, "multilabel"))
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    soft = keras.ops.convert_to_numpy(M.probabilities(logits, "multiclass"))
    np.testing.assert_allclose(soft, np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)


@pytest.mark.slow
def test_tiny_learns_quickly():
    """Two findings drawn as bright squares: a few CPU epochs separate them."""
    rng = np.random.default_rng(0)
    images = rng.normal(100, 20, (96, SIZE, SIZE, 1)).clip(0, 255).astype("float32")
    labels = (rng.random((96, 2)) < 0.5).astype("float32")
    images[labels[:, 0] == 1, 8:24, 8:24] += 80
    images[labels[:, 1] == 1, 40:56, 40:56] += 80
    keras.utils.set_random_seed(0)
    model = M.build_model(_tiny(findings=("Mass", "Nodule")))
    model.compile(keras.optimizers.Adam(3e-3), loss=losses.bce())
    history = model.fit(images, labels, batch_size=16, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


# Graph-mode tracing of one train step costs 25-60 s per ImageNet backbone on two CPU
# cores; an eager step checks the same layers, head and gradients in a few seconds.
@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone, n_blocks",
    [("densenet121", 4), ("resnet50", 4), ("efficientnetv2b0", 6), ("convnext_tiny", 4)],
)
def test_imagenet_backbone_one_training_step(backbone, n_blocks):
    config = ModelConfig(backbone=backbone, weights="", input_size=32, findings=("Mass",))
    model = M.build_model(config)
    assert model.get_layer(M.feature_layer_name(config)).output.shape[1:3] == (1, 1)
    assert M.feature_layer_name(model) == M.feature_layer_name(config)
    assert len(M.backbone_blocks(model, config)) == n_blocks + 1
    model.compile(keras.optimizers.SGD(1e-3), loss=losses.bce(), run_eagerly=True)
    labels = np.array([[1.0], [0.0]], dtype=np.float32)
    loss = model.train_on_batch(_images(2, 32), labels)
    assert np.isfinite(loss)


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_tiny_weights_from_local_file(tmp_path, suffix):
    source = _tiny()
    trained = M.build_model(source)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".weights.h5":
        M.save_backbone_weights(trained, source, path)
    else:  # the legacy layout of the downloadable keras.applications files
        feature = trained.get_layer(M.feature_layer_name(source)).output
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, keras.Model(trained.input, feature))
    config = _tiny(weights=str(path), findings=("Mass",))
    loaded = M.build_model(config)
    _assert_same(_backbone_weights(trained, source), _backbone_weights(loaded, config))


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny"])
def test_imagenet_backbone_weights_from_local_file(tmp_path, backbone):
    source = ModelConfig(backbone=backbone, weights="", input_size=32)
    trained = M.build_model(source)
    path = M.save_backbone_weights(trained, source, tmp_path / "backbone.weights.h5")
    config = ModelConfig(backbone=backbone, weights=str(path), input_size=32)
    loaded = M.build_model(config)
    before, after = _backbone_weights(trained, source), _backbone_weights(loaded, config)
    assert len(before) > 100
    _assert_same(before, after)


def test_keras_applications_h5_file(tmp_path):
    """A legacy `*_notop.h5` as keras.applications downloads it loads as `weights=path`."""
    app = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    config = ModelConfig(backbone="resnet50", weights=str(path), input_size=32)
    model = M.build_model(config)
    _assert_same(
        [keras.ops.convert_to_numpy(w) for w in app.weights], _backbone_weights(model, config)
    )


@pytest.mark.parametrize(
    "backbone, size", [("tiny", SIZE), pytest.param("densenet121", 32, marks=pytest.mark.slow)]
)
def test_keras_file_round_trip(tmp_path, backbone, size):
    config = ModelConfig(backbone=backbone, weights="", input_size=size, findings=("Mass",))
    model = M.build_model(config, stored_size=2 * size, augment=AugmentConfig())
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    images = _images(2, 2 * size)
    np.testing.assert_allclose(  # eager calls: graph tracing DenseNet twice costs ~10 s
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert M.feature_layer_name(loaded) == M.feature_layer_name(config)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        M.build_model(_tiny(weights=str(missing)))
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        M.build_model(ModelConfig(backbone="resnet50", weights=str(missing), input_size=32))
    with pytest.raises(ValueError, match="ImageNet"):
        M.build_model(_tiny(weights="imagenet"))


@pytest.mark.parametrize(
    "backbone, layer, reference",
    [
        ("densenet121", "densenet_preprocess", keras.applications.densenet.preprocess_input),
        ("resnet50", "resnet_preprocess", keras.applications.resnet50.preprocess_input),
    ],
)
def test_preprocessing_matches_keras_applications(backbone, layer, reference):
    config = ModelConfig(backbone=backbone, weights="", input_size=32)
    model = M.build_model(config)
    preprocess = keras.Model(model.input, model.get_layer(layer).output)
    images = _images(2, 32)
    expected = reference(np.repeat(images, 3, axis=-1))
    got = keras.ops.convert_to_numpy(preprocess(images))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _pretrained_tiny(tmp_path) -> tuple[keras.Model, ModelConfig]:
    """A tiny model whose backbone starts from a local weights file, as in fine-tuning."""
    source = _tiny()
    path = M.save_backbone_weights(M.build_model(source), source, tmp_path / "t.weights.h5")
    config = _tiny(weights=str(path), findings=("Mass", "Edema"))
    return M.build_model(config), config


def _train_step(model: keras.Model) -> None:
    model.compile(keras.optimizers.Adam(1e-2), loss=losses.bce())
    model.train_on_batch(_images(4), np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32))


def test_batchnorm_stays_in_inference_mode_when_unfrozen(tmp_path):
    model, config = _pretrained_tiny(tmp_path)
    M.set_backbone_trainable(model, config, "all")
    stats = _bn_stats(model)
    kernel = keras.ops.convert_to_numpy(model.get_layer("tiny_block1_conv_a").kernel)
    _train_step(model)
    _assert_same(stats, _bn_stats(model))
    # The backbone did train: its convolutions moved.
    assert not np.allclose(kernel, model.get_layer("tiny_block1_conv_a").kernel)


@pytest.mark.slow
def test_batchnorm_learns_when_training_from_scratch():
    config = _tiny(findings=("Mass", "Edema"))
    model = M.build_model(config)
    stats = _bn_stats(model)
    _train_step(model)
    assert not all(np.array_equal(a, b) for a, b in zip(stats, _bn_stats(model), strict=True))
    # The caller can still force inference-mode BN.
    M.set_backbone_trainable(model, config, "all", freeze_batchnorm=True)
    stats = _bn_stats(model)
    _train_step(model)
    _assert_same(stats, _bn_stats(model))


def test_set_backbone_trainable_modes(tmp_path):
    model, config = _pretrained_tiny(tmp_path)
    groups = M.backbone_blocks(model, config)
    assert [g[0] for g in groups[1:]] == [f"tiny_block{i}_conv_a" for i in (1, 2, 3)]
    assert groups[-1][-1] == "tiny_features"
    # Head: logits kernel + bias. Each tiny block: two conv kernels (BN stays frozen).
    expected = {"frozen": 2, "none": 2, 0: 2, 1: 4, "2": 6, 3: 8, 99: 8, "all": 8}
    for mode, n_trainable in expected.items():
        M.set_backbone_trainable(model, config, mode)
        assert len(model.trainable_weights) == n_trainable, mode
    # Random init: BN gamma and beta (2 per conv) train as well.
    scratch = M.build_model(_tiny())
    assert len(scratch.trainable_weights) == 2 + 6 + 12
    for bad in ("some", -1, 1.5, True):
        with pytest.raises(ValueError):
            M.set_backbone_trainable(model, config, bad)


def test_frozen_blocks_do_not_move(tmp_path):
    model, config = _pretrained_tiny(tmp_path)
    M.set_backbone_trainable(model, config, 1)
    bottom = keras.ops.convert_to_numpy(model.get_layer("tiny_block1_conv_a").kernel)
    top = keras.ops.convert_to_numpy(model.get_layer("tiny_block3_conv_b").kernel)
    _train_step(model)
    np.testing.assert_array_equal(bottom, model.get_layer("tiny_block1_conv_a").kernel)
    assert not np.allclose(top, model.get_layer("tiny_block3_conv_b").kernel)


def test_the_training_doc_states_the_tiny_models_size():
    import re

    doc = (PROJECT / "docs" / "training.md").read_text()
    stated = re.search(r"`tiny` \(a (\d+)k-parameter CNN with 14\s+outputs", doc)
    assert stated, "docs/training.md: the tiny backbone's parameter count"
    params = M.build_model(_tiny()).count_params()
    assert int(stated.group(1)) == round(params / 1000), params


# --- the compiled input stage: resize and jit checks ---------------------------------------


@pytest.mark.parametrize("size_in,size_out", [(256, 224), (96, 64), (64, 32), (32, 64)])
def test_resize_layer_matches_the_antialiased_resize_and_compiles(size_in, size_out):
    import tensorflow as tf

    images = _images(2, size_in, seed=size_in)
    layer = M.ResizeImage(size_out)
    reference = np.asarray(keras.ops.image.resize(images, (size_out, size_out), antialias=True))
    got = np.asarray(layer(images))
    # TensorFlow computes its weights in float32: up to ~0.005 grey levels apart
    np.testing.assert_allclose(got, reference, atol=0.01, rtol=0)
    np.testing.assert_allclose(M.resize_matrix(size_in, size_out).sum(axis=1), 1.0, atol=1e-6)
    compiled = tf.function(layer, jit_compile=True)
    np.testing.assert_allclose(np.asarray(compiled(images)), got, atol=1e-3, rtol=0)


def test_model_as_fit_builds_it_passes_the_jit_check():
    from cxr_tf.training import optimization

    model = M.build_model(_tiny(), stored_size=96, augment=AugmentConfig(flip=True), seed=0)
    assert optimization.jit_blockers(model) == []
    optimization.check_jit(model)  # raises ConfigError otherwise


def test_jit_check_names_the_layer_that_cannot_compile():
    from cxr_tf.config import ConfigError
    from cxr_tf.training import optimization

    image = keras.Input((48, 48, 1))
    zoomed = keras.layers.RandomZoom(0.2, name="old_zoom")(image)
    with pytest.raises(ConfigError, match=r"old_zoom \(RandomZoom\) declare supports_jit=False"):
        optimization.check_jit(keras.Model(image, zoomed))

    class AntialiasedResize(keras.layers.Layer):  # the resize of earlier versions
        def call(self, x):
            return keras.ops.image.resize(x, (32, 32), antialias=True)

    resized = AntialiasedResize(name="old_resize")(image)
    model = keras.Model(image, keras.layers.Conv2D(2, 3)(resized))
    with pytest.raises(ConfigError, match=r"ScaleAndTranslate in layer\(s\) old_resize"):
        optimization.check_jit(model)


def test_resize_on_real_nih_pngs_old_vs_new():
    """The compiled resize against the antialiased one it replaced, on real NIH PNGs stored
    at 256 px and resized to 224: grey levels and the outputs of a model on top."""
    from helpers import NIH_DIR, nih_path

    from cxr_tf.data import preprocessing

    nih_path()
    paths = sorted((NIH_DIR / "images").glob("*.png"))[:8]
    stored = np.stack([preprocessing.bytes_to_stored(p.read_bytes(), 256).numpy() for p in paths])
    stored = stored.astype("float32")
    old = np.asarray(keras.ops.image.resize(stored, (224, 224), antialias=True))
    model = M.build_model(_tiny(input_size=224), stored_size=256)
    new = np.asarray(model.get_layer(M.RESIZE_NAME)(stored))
    assert np.abs(new - old).max() < 0.01  # grey levels
    backbone = keras.Model(model.get_layer("tiny_rescale").input, model.output)
    outputs_old = np.asarray(M.probabilities(backbone(old), "multilabel"))
    outputs_new = np.asarray(M.probabilities(model(stored), "multilabel"))
    np.testing.assert_allclose(outputs_new, outputs_old, atol=1e-5, rtol=0)
