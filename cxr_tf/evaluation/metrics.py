"""Metrics on numbers: AUROC/AUPRC, patient-level bootstrap intervals, operating thresholds,
confusion counts, calibration and a multi-class report.

Inputs are arrays (0/1 labels, scores or probabilities), never models, so the per-epoch
training callback and the evaluation report share one definition of each metric. Every
function validates its inputs and raises ValueError naming the offending argument. A metric
that is undefined on the data (AUROC with one class present) returns None, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score

from cxr_tf.labels import FINDINGS, NUM_FINDINGS

Metric = Callable[[np.ndarray, np.ndarray], "float | None"]
Interval = tuple["float | None", "float | None", int]

# Resamples x images per bootstrap chunk: bounds the float64 weight matrix to ~32 MB.
_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------- validation


def _float_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
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


def _labels(x: ArrayLike, name: str = "y_true", ndim: int = 1) -> np.ndarray:
    arr = _float_array(x, name, ndim)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name}: labels must be 0 or 1")
    return arr.astype(bool)


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b}: shape {b.shape} does not match {name_a} shape {a.shape}")


def _binary(y_true: ArrayLike, y_score: ArrayLike, score_name: str = "y_score", ndim: int = 1):
    t = _labels(y_true, "y_true", ndim)
    s = _float_array(y_score, score_name, ndim)
    _same_shape(t, s, "y_true", score_name)
    return t, s


def _probabilities(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _binary(y_true, y_prob, "y_prob")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("y_prob: probabilities must lie in [0, 1]")
    return t, p


def _column_names(names: Sequence[str] | None, k: int, what: str = "names") -> tuple[str, ...]:
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


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending sort order and the start of each run of equal scores in that order."""
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts


def _grouped_auc(pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
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
    t, s = _binary(y_true, y_score)
    if sample_weight is None:
        w = np.ones_like(s)
    else:
        w = _float_array(sample_weight, "sample_weight", 1)
        _same_shape(t, w, "y_true", "sample_weight")
        if np.any(w < 0):
            raise ValueError("sample_weight: must be non-negative")
    order, starts = _tie_groups(s)
    wt, tt = w[order], t[order]
    value = _grouped_auc(np.add.reduceat(wt * tt, starts), np.add.reduceat(wt * ~tt, starts))
    return None if np.isnan(value) else float(value)


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float | None:
    """Average precision (sklearn's step-wise definition); None when there is no positive."""
    t, s = _binary(y_true, y_score)
    if not t.any():
        return None
    return float(average_precision_score(t, s))


def known_labels(y_true: ArrayLike, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(bool targets, bool mask of known ones) of targets that are 0, 1 or negative
    (`pipeline.MASKED`: not labelled by the image's dataset, or uncertain)."""
    arr = _float_array(y_true, "y_true", ndim)
    known = arr >= 0
    if not np.all((arr[known] == 0) | (arr[known] == 1)):
        raise ValueError("y_true: labels must be 0 or 1 (or negative for unknown)")
    return arr == 1, known


def per_finding_auroc(
    y_true: ArrayLike, y_prob: ArrayLike, names: Sequence[str] | None = None
) -> dict[str, float | None]:
    """AUROC of each column of (N, K) arrays over the images whose label is known there
    (negative targets are skipped); `names` defaults to FINDINGS when K is 14."""
    t, known = known_labels(y_true)
    p = _float_array(y_prob, "y_prob", 2)
    _same_shape(t, p, "y_true", "y_prob")
    names = _column_names(names, t.shape[1])
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


# ------------------------------------------------------------------------------ bootstrap


def _patient_codes(patient_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"patient_ids: expected shape ({n},), got {ids.shape}")
    if ids.dtype.kind == "f" and np.any(np.isnan(ids)):
        raise ValueError("patient_ids: contains NaN")
    uniques, codes = np.unique(ids, return_inverse=True)
    return codes.reshape(-1), len(uniques)


def _draws(n_patients: int, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Patient indices drawn with replacement, (chunk, n_patients) at a time."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.integers(0, n_patients, size=(b, n_patients))
        done += b


def _bootstrap_values(
    t: np.ndarray,
    s: np.ndarray,
    codes: np.ndarray,
    n_patients: int,
    metric: Metric,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """(K, n_boot) metric values, NaN where undefined; all K columns share the resamples."""
    n, k = t.shape
    values = np.full((k, n_boot), np.nan)
    chunk = max(1, _CHUNK_CELLS // max(n, n_patients))
    if metric is auroc:
        # Weighted Mann-Whitney: image weight = multiplicity of its patient in the resample.
        prepared = []
        for j in range(k):
            order, starts = _tie_groups(s[:, j])
            prepared.append((codes[order], t[order, j], starts))
    else:
        by_patient = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes, minlength=n_patients)
        first = np.cumsum(sizes) - sizes
    done = 0
    for draws in _draws(n_patients, n_boot, seed, chunk):
        b = draws.shape[0]
        if metric is auroc:
            flat = (draws + n_patients * np.arange(b)[:, None]).ravel()
            counts = np.bincount(flat, minlength=b * n_patients).reshape(b, n_patients)
            counts = counts.astype(np.float64)
            for j, (image_codes, labels, starts) in enumerate(prepared):
                w = counts[:, image_codes]
                pos = np.add.reduceat(w * labels, starts, axis=1)
                neg = np.add.reduceat(w * ~labels, starts, axis=1)
                values[j, done : done + b] = _grouped_auc(pos, neg)
        else:
            for r, row in enumerate(draws):
                lengths = sizes[row]
                offsets = np.cumsum(lengths) - lengths
                local = np.repeat(first[row] - offsets, lengths) + np.arange(lengths.sum())
                idx = by_patient[local]
                for j in range(k):
                    v = metric(t[idx, j], s[idx, j])
                    values[j, done + r] = np.nan if v is None else v
        done += b
    return values


def _interval(values: np.ndarray, alpha: float) -> Interval:
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return None, None, 0
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), int(valid.size)


def _check_bootstrap_args(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: must be a positive integer, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")


def patient_bootstrap_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    patient_ids: ArrayLike,
    metric: Metric = auroc,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Percentile (1 - alpha) interval of `metric` over patient-level bootstrap resamples.

    Patients are drawn with replacement and bring all their images, with multiplicity.
    Resamples where the metric is undefined (None/NaN) are skipped.

    Returns:
        (low, high, n_valid): the interval (None, None if no resample was valid) and the
        number of valid resamples it was computed from.
    """
    t, s = _binary(y_true, y_score)
    codes, n_patients = _patient_codes(patient_ids, t.shape[0])
    _check_bootstrap_args(n_boot, alpha)
    values = _bootstrap_values(t[:, None], s[:, None], codes, n_patients, metric, n_boot, seed)
    return _interval(values[0], alpha)


def patient_bootstrap_ci_multi(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    patient_ids: ArrayLike,
    names: Sequence[str] | None = None,
    metric: Metric = auroc,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Interval]:
    """`patient_bootstrap_ci` for each column of (N, K) arrays, all using the same resamples.

    With the same seed, column j gets exactly the interval the single-finding call gives.
    """
    t, p = _binary(y_true, y_prob, "y_prob", ndim=2)
    names = _column_names(names, t.shape[1])
    codes, n_patients = _patient_codes(patient_ids, t.shape[0])
    _check_bootstrap_args(n_boot, alpha)
    values = _bootstrap_values(t, p, codes, n_patients, metric, n_boot, seed)
    return {name: _interval(values[j], alpha) for j, name in enumerate(names)}


# ----------------------------------------------------------------- operating thresholds


def _operating_points(t: np.ndarray, s: np.ndarray):
    """Distinct scores, highest first, with tp and fp when predicting positive at score >= it."""
    order = np.argsort(-s, kind="stable")
    ordered, labels = s[order], t[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]
    return ordered[last], np.cumsum(labels)[last], np.cumsum(~labels)[last]


def choose_threshold(
    y_true: ArrayLike,
    y_score: ArrayLike,
    method: Literal["youden", "max_f1", "sensitivity"] = "youden",
    target_sensitivity: float = 0.9,
) -> float:
    """An operating threshold; a case is called positive when its score >= the threshold.

    Candidates are the distinct observed scores. `youden` maximises sensitivity +
    specificity - 1, `max_f1` maximises F1, and `sensitivity` takes the highest threshold
    whose sensitivity reaches `target_sensitivity`. Ties in the criterion go to the highest
    threshold (fewest positive calls).
    """
    t, s = _binary(y_true, y_score)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0:
        raise ValueError("y_true: no positive case, threshold undefined")
    thresholds, tp, fp = _operating_points(t, s)
    if method == "youden":
        if n_neg == 0:
            raise ValueError("y_true: no negative case, Youden threshold undefined")
        # J * n_pos * n_neg in integers so mathematically equal J values tie exactly.
        best = int(np.argmax(tp * n_neg - fp * n_pos))
    elif method == "max_f1":
        best = int(np.argmax(2 * tp / (tp + fp + n_pos)))
    elif method == "sensitivity":
        if not 0 < target_sensitivity <= 1:
            raise ValueError(f"target_sensitivity: must be in (0, 1], got {target_sensitivity}")
        best = int(np.argmax(tp / n_pos >= target_sensitivity))
    else:
        raise ValueError(f"method: expected youden, max_f1 or sensitivity, not {method!r}")
    return float(thresholds[best])


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def confusion_at(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict:
    """Counts and rates when predicting positive at score >= threshold (None: 0 denominator)."""
    t, s = _binary(y_true, y_score)
    if np.isnan(threshold):
        raise ValueError("threshold: is NaN")
    pred = s >= threshold
    tp, fp = int(np.sum(pred & t)), int(np.sum(pred & ~t))
    fn, tn = int(np.sum(~pred & t)), int(np.sum(~pred & ~t))
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


# ---------------------------------------------------------------------------- calibration


def reliability_bins(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> dict:
    """Equal-width bins on [0, 1]: bin k holds edges[k] <= p < edges[k+1] (the last holds 1).

    Returns:
        Arrays `edges` (n_bins + 1), `mean_predicted`, `observed_frequency` (NaN for empty
        bins) and `counts` (n_bins each).
    """
    t, p = _probabilities(y_true, y_prob)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins: must be a positive integer, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    safe = np.where(counts > 0, counts, 1)
    empty = counts == 0
    mean_pred = np.where(empty, np.nan, np.bincount(index, weights=p, minlength=n_bins) / safe)
    observed = np.where(empty, np.nan, np.bincount(index, weights=t, minlength=n_bins) / safe)
    return {
        "edges": edges,
        "mean_predicted": mean_pred,
        "observed_frequency": observed,
        "counts": counts,
    }


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> float:
    """Sum over equal-width bins of (bin share of cases) * |observed - mean predicted|."""
    bins = reliability_bins(y_true, y_prob, n_bins)
    counts = bins["counts"]
    full = counts > 0
    gap = np.abs(bins["observed_frequency"][full] - bins["mean_predicted"][full])
    return float(np.sum(counts[full] * gap) / counts.sum())


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared difference between probability and 0/1 outcome."""
    t, p = _probabilities(y_true, y_prob)
    return float(np.mean((p - t) ** 2))


# ---------------------------------------------------------------------------- multi-class


def multiclass_report(y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str]) -> dict:
    """Accuracy, confusion matrix (rows true, columns predicted) and one-vs-rest AUROCs.

    The prediction is the argmax of each row of `y_prob` (probabilities or logits; ties go
    to the lower class index). Classes absent from `y_true` get AUROC None and are left out
    of `macro_auroc`, whose count is `n_auroc`.
    """
    p = _float_array(y_prob, "y_prob", 2)
    n, c = p.shape
    if c < 2:
        raise ValueError(f"y_prob: needs at least 2 class columns, got {c}")
    names = _column_names(class_names, c, "class_names")
    y = _float_array(y_true, "y_true", 1)
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
