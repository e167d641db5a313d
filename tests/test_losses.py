"""Losses: golden values on hand-computed 2x3 arrays, weights from counts, stability."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxr_tf.modeling import losses

LOGITS = np.array([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]], dtype=np.float32)
LABELS = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], dtype=np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _bce_elements(logits, labels):
    """-[y log p + (1 - y) log(1 - p)], written out."""
    p = _sigmoid(logits)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _value(loss, y_true, y_pred, **kwargs) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred, **kwargs)))


def test_bce_golden():
    # Element by element, log(1 + exp(-x)) for y=1 and log(1 + exp(x)) for y=0:
    # 0.693147 + 0.126928 + 0.313262 + 0.313262 + 0.048587 + 0.474077 = 1.969263 -> /6.
    expected = _bce_elements(LOGITS, LABELS).mean()
    assert expected == pytest.approx(1.969263 / 6, abs=1e-6)
    assert _value(losses.bce(), LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)
    assert _value(losses.bce(), LABELS, LOGITS) == pytest.approx(
        _value(keras_bce, LABELS, LOGITS), rel=1e-5
    )


def test_weighted_bce_weights_from_counts():
    w_pos, w_neg = losses.bce_weights([10, 50, 0], total=100)
    np.testing.assert_allclose(w_pos, [0.9, 0.5, 1.0])
    np.testing.assert_allclose(w_neg, [0.1, 0.5, 0.0])
    # Both label values contribute equally: N_pos * w_pos == N_neg * w_neg.
    pos = np.array([10, 50, 0])
    np.testing.assert_allclose(pos * w_pos, (100 - pos) * w_neg)
    with pytest.raises(ValueError):
        losses.bce_weights([10, 120], total=100)
    with pytest.raises(ValueError):
        losses.bce_weights([1], total=0)


def test_weighted_bce_golden():
    pos, total = np.array([10, 50, 20]), 100
    w_pos, w_neg = (total - pos) / total, pos / total
    p = _sigmoid(LOGITS)
    expected = -(w_pos * LABELS * np.log(p) + w_neg * (1 - LABELS) * np.log(1 - p)).mean()
    got = _value(losses.weighted_bce(pos, total), LABELS, LOGITS)
    assert got == pytest.approx(expected, rel=1e-5)


def test_focal_reduces_to_bce():
    bce = _value(losses.bce(), LABELS, LOGITS)
    assert _value(losses.focal(gamma=0.0, alpha=None), LABELS, LOGITS) == pytest.approx(bce)
    # alpha = 0.5 weighs both label values by one half.
    half = _value(losses.focal(gamma=0.0, alpha=0.5), LABELS, LOGITS)
    assert half == pytest.approx(0.5 * bce, rel=1e-6)


def test_focal_golden():
    gamma, alpha = 2.0, 0.25
    p = _sigmoid(LOGITS)
    p_t = np.where(LABELS == 1, p, 1 - p)
    alpha_t = np.where(LABELS == 1, alpha, 1 - alpha)
    expected = (-alpha_t * (1 - p_t) ** gamma * np.log(p_t)).mean()
    got = _value(losses.focal(gamma, alpha), LABELS, LOGITS)
    assert got == pytest.approx(expected, rel=1e-5)
    keras_focal = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=alpha, gamma=gamma, from_logits=True
    )
    assert got == pytest.approx(_value(keras_focal, LABELS, LOGITS), rel=1e-4)


def test_focal_down_weights_easy_examples():
    labels = np.array([[1.0, 1.0]], dtype=np.float32)
    logits = np.array([[4.0, -4.0]], dtype=np.float32)  # easy, hard
    per_element = losses.focal(gamma=2.0, alpha=None).call(labels, logits)
    ratio = keras.ops.convert_to_numpy(per_element) / _bce_elements(logits, labels)
    assert ratio[0, 0] < 1e-3  # (1 - p_t)^2 = sigmoid(-4)^2
    assert ratio[0, 1] > 0.9


def test_softmax_ce_golden_and_class_weights():
    classes = np.array([2, 0])
    shifted = LOGITS - LOGITS.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -log_softmax[np.arange(2), classes]
    one_hot = np.eye(3, dtype=np.float32)[classes]
    assert _value(losses.softmax_ce(), one_hot, LOGITS) == pytest.approx(ce.mean(), rel=1e-6)
    assert _value(losses.softmax_ce(), classes, LOGITS) == pytest.approx(ce.mean(), rel=1e-6)
    assert _value(losses.softmax_ce(), classes[:, None], LOGITS) == pytest.approx(
        ce.mean(), rel=1e-6
    )
    weights = np.array([1.0, 2.0, 0.5])
    expected = (weights[classes] * ce).mean()
    assert _value(losses.softmax_ce(weights), one_hot, LOGITS) == pytest.approx(expected, rel=1e-6)


def test_class_weights_from_counts():
    weights = losses.class_weights_from_counts([10, 30, 60])
    # Inverse frequencies 1/10, 1/30, 1/60 (mean 1/20), scaled to mean 1.
    np.testing.assert_allclose(weights, [2.0, 2.0 / 3.0, 1.0 / 3.0])
    assert weights.mean() == pytest.approx(1.0)
    assert np.all(np.isfinite(losses.class_weights_from_counts([0, 5])))


def _all_losses():
    return {
        "bce": losses.bce(),
        "weighted_bce": losses.weighted_bce([10, 50, 90], 100),
        "focal": losses.focal(),
        "focal_gamma0": losses.focal(gamma=0.0, alpha=None),
        "softmax_ce": losses.softmax_ce([1.0, 2.0, 0.5]),
    }


@pytest.mark.parametrize("name", list(_all_losses()))
def test_stable_and_finite_gradients_at_large_logits(name):
    loss = _all_losses()[name]
    logits = tf.Variable([[100.0, -100.0, 100.0], [-100.0, 100.0, 0.0]])
    labels = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    if name == "softmax_ce":
        labels = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    with tf.GradientTape() as tape:
        value = loss(labels, logits)
    grad = tape.gradient(value, logits)
    assert np.isfinite(value.numpy())
    assert np.all(np.isfinite(grad.numpy()))
    if name == "bce":
        # Confidently wrong at |x| = 100 costs 100: (100 + 0 + 0 + 100 + 0 + log 2) / 6.
        assert value.numpy() == pytest.approx((200 + np.log(2)) / 6, rel=1e-5)
        # d/dx mean BCE = (sigmoid(x) - y) / n.
        np.testing.assert_allclose(grad.numpy(), (_sigmoid(logits.numpy()) - labels) / 6, atol=1e-6)


def test_binary_labels_without_class_axis():
    logits = np.array([[2.0], [-1.0]], dtype=np.float32)
    labels = np.array([1.0, 0.0], dtype=np.float32)
    expected = _bce_elements(logits[:, 0], labels).mean()
    assert _value(losses.bce(), labels, logits) == pytest.approx(expected, rel=1e-6)


def test_label_mask_as_sample_weight():
    mask = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    expected = (_bce_elements(LOGITS, LABELS) * mask).sum() / LOGITS.size
    got = _value(losses.bce(), LABELS, LOGITS, sample_weight=mask)
    assert got == pytest.approx(expected, rel=1e-6)


def test_build_loss():
    assert isinstance(losses.build_loss("bce", "multilabel"), losses.BinaryCrossentropyLogits)
    weighted = losses.build_loss("weighted_bce", "binary", pos_counts=[30], total=100)
    assert weighted.pos_weights == pytest.approx([0.7])
    focal = losses.build_loss("focal", "multilabel", gamma=1.0, alpha=None)
    assert (focal.gamma, focal.alpha) == (1.0, None)
    multiclass = losses.build_loss("weighted_bce", "multiclass", pos_counts=[10, 30, 60])
    assert isinstance(multiclass, losses.SoftmaxCrossentropyLogits)
    assert multiclass.class_weights == pytest.approx([2.0, 2.0 / 3.0, 1.0 / 3.0])
    assert losses.build_loss("bce", "multiclass").class_weights is None
    for bad in (
        lambda: losses.build_loss("mse", "multilabel"),
        lambda: losses.build_loss("weighted_bce", "multilabel"),
        lambda: losses.build_loss("focal", "multiclass"),
        lambda: losses.build_loss("bce", "regression"),
        lambda: losses.focal(alpha=1.5),
    ):
        with pytest.raises(ValueError):
            bad()


def test_config_round_trip():
    for loss in _all_losses().values():
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss)
        assert _value(clone, LABELS, LOGITS) == pytest.approx(_value(loss, LABELS, LOGITS))
