"""Losses on logits: (weighted) binary cross-entropy, focal loss, softmax cross-entropy.

All losses take the model's logits (never probabilities), use only `keras.ops`, and are
computed through `softplus`/`logsumexp`, so they stay finite for logits of any size.
The sigmoid losses return one value per (image, class); Keras then averages over batch and
classes (`"sum_over_batch_size"`), and a `sample_weight` of shape (batch,) or
(batch, classes) weights individual entries. A target `MASKED` (-1, `cxr_tf.labels`) is a
label the image's dataset does not have: it contributes 0 loss and 0 gradient. Class
weights come from counts (the dataset manifest), never from a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from cxr_tf.labels import MASKED

LOSS_NAMES = ("bce", "weighted_bce", "focal")

ArrayLike = Sequence[float] | np.ndarray


def _align(y_true, logits):
    """Gives labels the logits' rank: (batch,) labels against (batch, 1) logits."""
    if len(y_true.shape) == len(logits.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    return ops.cast(y_true, logits.dtype)


def _known(y_true):
    """(mask of targets that count, targets with the masked ones set to 0).

    A target `MASKED` (-1) is a label the image's dataset does not have (or an uncertain
    one that is ignored): its loss is 0, and so is the gradient it sends to its logit.
    """
    known = ops.not_equal(y_true, MASKED)
    return known, ops.where(known, y_true, ops.zeros_like(y_true))


def _sigmoid_ce(y_true, logits):
    """Element-wise `-[y log p + (1 - y) log(1 - p)]` with p = sigmoid(logits)."""
    # log p = -softplus(-x) and log(1 - p) = -softplus(x), both stable for any |x|.
    return y_true * ops.softplus(-logits) + (1.0 - y_true) * ops.softplus(logits)


@keras.saving.register_keras_serializable(package="cxr_tf")
class BinaryCrossentropyLogits(keras.losses.Loss):
    """Sigmoid cross-entropy on logits, optionally weighted per class and label value.

    `loss = -[w_pos * y * log p + w_neg * (1 - y) * log(1 - p)]`, p = sigmoid(logit).

    Args:
        pos_weights: per-class weight of positive labels (default 1).
        neg_weights: per-class weight of negative labels (default 1).
    """

    def __init__(
        self,
        pos_weights: ArrayLike | None = None,
        neg_weights: ArrayLike | None = None,
        name: str = "bce",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.pos_weights = None if pos_weights is None else [float(w) for w in pos_weights]
        self.neg_weights = None if neg_weights is None else [float(w) for w in neg_weights]

    def call(self, y_true, y_pred):
        known, y_true = _known(_align(y_true, y_pred))
        pos = y_true * ops.softplus(-y_pred)
        neg = (1.0 - y_true) * ops.softplus(y_pred)
        if self.pos_weights is not None:
            pos = pos * ops.convert_to_tensor(self.pos_weights, dtype=y_pred.dtype)
        if self.neg_weights is not None:
            neg = neg * ops.convert_to_tensor(self.neg_weights, dtype=y_pred.dtype)
        return ops.where(known, pos + neg, ops.zeros_like(pos))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pos_weights=self.pos_weights, neg_weights=self.neg_weights)
        return config


@keras.saving.register_keras_serializable(package="cxr_tf")
class BinaryFocalLogits(keras.losses.Loss):
    """Binary focal loss on logits (Lin et al. 2017), element-wise.

    `loss = alpha_t * (1 - p_t)^gamma * CE`, with p_t the probability of the true label,
    alpha_t = alpha for positives and 1 - alpha for negatives, CE the sigmoid
    cross-entropy. `alpha=None` drops the alpha_t factor, so gamma=0, alpha=None is exactly
    BCE, while gamma=0, alpha=0.5 is 0.5 * BCE. Labels are taken as hard 0/1 for the
    modulating factor, computed as `exp(gamma * log(1 - p_t))` so it is stable at any
    logit and its gradient is finite at gamma=0.

    Its values equal `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True,
    from_logits=True)` (tests/test_losses.py checks it). It is kept because that class
    averages over the classes inside the loss, so a per-(image, finding) `sample_weight`
    (a label mask) cannot reach single entries, and its `(1 - p_t) ** gamma` has NaN
    gradients at saturated logits when gamma is 0.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = 0.25, name: str = "focal", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal loss alpha must be in [0, 1] or None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def call(self, y_true, y_pred):
        known, y_true = _known(_align(y_true, y_pred))
        ce = _sigmoid_ce(y_true, y_pred)
        # log(1 - p_t): log(1 - p) = -softplus(x) for positives, log p = -softplus(-x)
        # for negatives.
        log_one_minus_pt = -(y_true * ops.softplus(y_pred) + (1.0 - y_true) * ops.softplus(-y_pred))
        loss = ops.exp(self.gamma * log_one_minus_pt) * ce
        if self.alpha is not None:
            loss = (y_true * self.alpha + (1.0 - y_true) * (1.0 - self.alpha)) * loss
        return ops.where(known, loss, ops.zeros_like(loss))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gamma=self.gamma, alpha=self.alpha)
        return config


@keras.saving.register_keras_serializable(package="cxr_tf")
class SoftmaxCrossentropyLogits(keras.losses.Loss):
    """Softmax cross-entropy on logits, one value per image, optional class weights.

    `loss_i = w[c_i] * (logsumexp(x_i) - x_i[c_i])`, averaged over the batch (a plain
    mean, as Keras's `class_weight`; with weights of mean 1 the scale matches the
    unweighted loss). Labels may be one-hot (batch, K) or integer classes (batch,) /
    (batch, 1).
    """

    def __init__(self, class_weights: ArrayLike | None = None, name: str = "softmax_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        n_classes = y_pred.shape[-1]
        if len(y_true.shape) == len(y_pred.shape) - 1 or (
            len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1 and n_classes > 1
        ):
            indices = ops.reshape(ops.cast(y_true, "int32"), (-1,))
            y_true = ops.one_hot(indices, n_classes, dtype=y_pred.dtype)
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = ops.logsumexp(y_pred, axis=-1) * ops.sum(y_true, axis=-1) - ops.sum(
            y_true * y_pred, axis=-1
        )
        if self.class_weights is not None:
            weights = ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype)
            ce = ce * ops.sum(y_true * weights, axis=-1)
        return ce

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(class_weights=self.class_weights)
        return config


def _counts(pos_counts: ArrayLike, total: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(pos_counts, dtype=np.float64).reshape(-1)
    totals = np.broadcast_to(np.asarray(total, dtype=np.float64), pos.shape).copy()
    if totals.size == 0 or np.any(totals <= 0):
        raise ValueError(f"total must be a positive number of images, got {total}")
    if pos.size == 0 or np.any(pos < 0) or np.any(pos > totals):
        raise ValueError(f"positive counts must lie in [0, total={total}], got {pos.tolist()}")
    return pos, totals


def bce_weights(pos_counts: ArrayLike, total: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (w_pos, w_neg) = (N_neg / N, N_pos / N) from label counts.

    With these weights the positives and the negatives of each class contribute equally:
    N_pos * w_pos = N_neg * w_neg. `total` is N, one number or one per class (the images
    whose label for that class is known).
    """
    pos, totals = _counts(pos_counts, total)
    return (totals - pos) / totals, pos / totals


def bce() -> keras.losses.Loss:
    """Plain sigmoid cross-entropy on logits."""
    return BinaryCrossentropyLogits(name="bce")


def weighted_bce(pos_counts: ArrayLike, total: ArrayLike) -> keras.losses.Loss:
    """Class-balanced sigmoid cross-entropy, weights from per-class positive counts.

    Args:
        pos_counts: number of positive images per output class.
        total: number of images N.
    """
    w_pos, w_neg = bce_weights(pos_counts, total)
    return BinaryCrossentropyLogits(w_pos, w_neg, name="weighted_bce")


def focal(gamma: float = 2.0, alpha: float | None = 0.25) -> keras.losses.Loss:
    """Binary focal loss on logits (see `BinaryFocalLogits`)."""
    return BinaryFocalLogits(gamma=gamma, alpha=alpha)


def softmax_ce(class_weights: ArrayLike | None = None) -> keras.losses.Loss:
    """Softmax cross-entropy on logits for the multiclass head."""
    return SoftmaxCrossentropyLogits(class_weights)


def class_weights_from_counts(counts: ArrayLike) -> np.ndarray:
    """Inverse-frequency class weights normalised to mean 1.

    A class with no examples is counted as one, so its weight stays finite.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    if counts.size == 0 or np.any(counts < 0):
        raise ValueError(f"class counts must be non-negative, got {counts.tolist()}")
    inverse = 1.0 / np.maximum(counts, 1.0)
    return inverse / inverse.mean()


def build_loss(
    name: str,
    task: str,
    pos_counts: ArrayLike | None = None,
    total: ArrayLike | int | None = None,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
) -> keras.losses.Loss:
    """The one loss factory the training code calls.

    Args:
        name: "bce", "weighted_bce" or "focal".
        task: "multilabel", "binary" or "multiclass". For multiclass, "bce" means softmax
            cross-entropy and "weighted_bce" softmax cross-entropy with
            `class_weights_from_counts(pos_counts)` (`pos_counts` = images per class).
        pos_counts: per-output positive counts (needed by "weighted_bce").
        total: number of training images (needed by "weighted_bce" for sigmoid heads).
        gamma: focal loss focusing parameter.
        alpha: focal loss positive-class weight, or None.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    if name == "weighted_bce" and pos_counts is None:
        raise ValueError("weighted_bce needs per-class counts (pos_counts)")
    if task == "multiclass":
        if name == "focal":
            raise ValueError("focal loss is for the sigmoid heads (multilabel, binary)")
        if name == "weighted_bce":
            return softmax_ce(class_weights_from_counts(pos_counts))
        return softmax_ce()
    if task not in ("multilabel", "binary"):
        raise ValueError(f"unknown task {task!r}")
    if name == "bce":
        return bce()
    if name == "weighted_bce":
        return weighted_bce(pos_counts, total)
    return focal(gamma=gamma, alpha=alpha)
