"""The metrics a model is trained and selected by: AUROC over the known labels.

Plain NumPy on arrays (0/1 targets, scores or probabilities), below training and
evaluation: training's validation callback monitors `per_finding_auroc` / `mean_auroc`
(or `multiclass_report`) every epoch, and `cxr_tf.evaluation.metrics` builds its intervals,
thresholds and calibration on these same definitions and input checks. They sit beside the
losses because both define the learning problem the same way: a negative target is
unknown for that image (not labelled by its dataset, or uncertain) and counts nowhere.

Every function validates its inputs and raises ValueError naming the offending argument.
A metric that is undefined on the data (AUROC with one class present) returns None, not NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cxr_tf.labels import FINDINGS, MASKED, NUM_FINDINGS

# --------------------------------------------------------------------------- validation


def float_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """`x` as a finite, non-empty float64 array of `ndim` dimensions."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: not a numeric array ({err})") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def binary_labels(x: ArrayLike, name: str = "y_true", ndim: int = 1) -> np.ndarray:
    """0/1 labels as a bool array."""
    arr = float_array(x, name, ndim)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name}: labels must be 0 or 1")
    return arr.astype(bool)


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raises ValueError naming `name_b` unless `b` has the shape of `a`."""
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {b.shape} does not match {name_a} shape {a.shape}")


def binary_inputs(
    y_true: ArrayLike, y_score: ArrayLike, score_name: str = "y_score", ndim: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(bool labels, float scores) of the same shape."""
    t = binary_labels(y_true, "y_true", ndim)
    s = float_array(y_score, score_name, ndim)
    same_shape(t, s, "y_true", score_name)
    return t, s


def column_names(names: Sequence[str] | None, k: int, what: str = "names") -> tuple[str, ...]:
    """`names` of K columns, checked (count, no repeats); FINDINGS when None and K is 14."""
    if names is None:
        if k != NUM_FINDINGS:
            raise ValueError(f"{what}: required when there are {k} columns, not {NUM_FINDINGS}")
        return FINDINGS
    names = tuple(names)
    if len(names) != k:
        raise ValueError(f"{what}: {len(names)} names for {k} columns")
    if len(set(names)) != k:
        raise ValueError(f"{what}: repeated name in {list(names)}")
    return names


# ------------------------------------------------------------------------ ranking metrics


def tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending sort order and the start of each run of equal scores in that order."""
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def grouped_auc(pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC from class weights per tie group (ascending score).

    A positive scores 1 against each lower negative and 1/2 against a tied one, which is
    exactly the trapezoidal ROC area sklearn computes. NaN where a class has no weight.
    """
    neg_below = np.cumsum(neg_w, axis=-1) - neg_w
    num = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=-1)
    den = pos_w.sum(axis=-1) * neg_w.sum(axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auroc(
    y_true: ArrayLike, y_score: ArrayLike, sample_weight: ArrayLike | None = None
) -> float | None:
    """Area under the ROC curve (ties count 1/2, as in sklearn); None if one class only.

    With integer `sample_weight` the result equals the AUROC of the sample in which each
    item is repeated that many times, which is what the patient bootstrap relies on.
    """
    t, s = binary_inputs(y_true, y_score)
    if sample_weight is None:
        w = np.ones_like(s)
    else:
        w = float_array(sample_weight, "sample_weight", 1)
        same_shape(t, w, "y_true", "sample_weight")
        if np.any(w < 0):
            raise ValueError("sample_weight: must be non-negative")
    order, starts = tie_groups(s)
    wt, tt = w[order], t[order]
    value = grouped_auc(np.add.reduceat(wt * tt, starts), np.add.reduceat(wt * ~tt, starts))
    return None if np.isnan(value) else float(value)


def known_labels(y_true: ArrayLike, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(bool targets, bool mask of known ones) of targets that are 0, 1 or `MASKED` (-1:
    not labelled by the image's dataset, or uncertain)."""
    arr = float_array(y_true, "y_true", ndim)
    known = arr != MASKED
    if not np.all((arr[known] == 0) | (arr[known] == 1)):
        raise ValueError(f"y_true: labels must be 0 or 1 (or {MASKED:g} for unknown)")
    return arr == 1, known


def per_finding_auroc(
    y_true: ArrayLike, y_prob: ArrayLike, names: Sequence[str] | None = None
) -> dict[str, float | None]:
    """AUROC of each column of (N, K) arrays over the images whose label is known there
    (negative targets are skipped); `names` defaults to FINDINGS when K is 14."""
    t, known = known_labels(y_true)
    p = float_array(y_prob, "y_prob", 2)
    same_shape(t, p, "y_true", "y_prob")
    names = column_names(names, t.shape[1])
    return {
        name: auroc(t[known[:, k], k], p[known[:, k], k]) if known[:, k].any() else None
        for k, name in enumerate(names)
    }


def known_counts(y_true: ArrayLike, names: Sequence[str]) -> dict[str, int]:
    """Per column: how many images have a known (0 or 1) target."""
    _, known = known_labels(y_true)
    return {name: int(known[:, k].sum()) for k, name in enumerate(names)}


def mean_auroc(per_finding: Mapping[str, float | None]) -> tuple[float | None, int]:
    """Mean over the defined (non-None, non-NaN) values and how many were averaged."""
    values = [float(v) for v in per_finding.values() if v is not None and np.isfinite(v)]
    if not values:
        return None, 0
    return float(np.mean(values)), len(values)


# ---------------------------------------------------------------------------- multi-class


def multiclass_report(y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str]) -> dict:
    """Accuracy, confusion matrix (rows true, columns predicted) and one-vs-rest AUROCs.

    The prediction is the argmax of each row of `y_prob` (probabilities or logits; ties go
    to the lower class index). Classes absent from `y_true` get AUROC None and are left out
    of `macro_auroc`, whose count is `n_auroc`.
    """
    p = float_array(y_prob, "y_prob", 2)
    n, c = p.shape
    if c < 2:
        raise ValueError(f"y_prob: needs at least 2 class columns, got {c}")
    names = column_names(class_names, c, "class_names")
    y = float_array(y_true, "y_true", 1)
    if y.shape[0] != n:
        raise ValueError(f"y_true: {y.shape[0]} labels but y_prob has {n} rows")
    if np.any((y != np.round(y)) | (y < 0) | (y >= c)):
        raise ValueError(f"y_true: labels must be integers in [0, {c})")
    y = y.astype(np.int64)
    pred = np.argmax(p, axis=1)
    confusion = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    per_class = {name: auroc(y == k, p[:, k]) for k, name in enumerate(names)}
    macro, n_defined = mean_auroc(per_class)
    return {
        "n": int(n),
        "class_names": list(names),
        "accuracy": float(np.mean(pred == y)),
        "confusion_matrix": confusion.tolist(),
        "auroc": per_class,
        "macro_auroc": macro,
        "n_auroc": n_defined,
    }
