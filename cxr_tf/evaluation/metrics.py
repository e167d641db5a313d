"""Metrics on numbers for the evaluation report: AUPRC, patient-level bootstrap intervals,
operating thresholds, confusion counts and calibration.

Inputs are arrays (0/1 labels, scores or probabilities), never models. The AUROC over known
labels, the per-output counts and the multi-class report are `cxr_tf.modeling.metrics`,
which training's validation uses too, so both share one definition of each metric and
one set of input checks. Every function validates its inputs and raises ValueError naming
the offending argument. A metric that is undefined on the data returns None, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score

from cxr_tf.modeling.metrics import (
    auroc,
    binary_inputs,
    column_names,
    float_array,
    grouped_auc,
    known_labels,
    same_shape,
    tie_groups,
)

Metric = Callable[[np.ndarray, np.ndarray], "float | None"]
Interval = tuple["float | None", "float | None", int]

# Resamples x images per bootstrap chunk: bounds the float64 weight matrix to ~32 MB.
_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------- validation


def _probabilities(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = binary_inputs(y_true, y_prob, "y_prob")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("y_prob: probabilities must lie in [0, 1]")
    return t, p


# ------------------------------------------------------------------------ ranking metrics


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float | None:
    """Average precision (sklearn's step-wise definition); None when there is no positive."""
    t, s = binary_inputs(y_true, y_score)
    if not t.any():
        return None
    return float(average_precision_score(t, s))


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
    known: np.ndarray | None = None,
) -> np.ndarray:
    """(K, n_boot) metric values, NaN where undefined; all K columns share the resamples.

    `known` (N, K) bool: column j uses only the images whose target is known there (the
    patients are drawn among all of them, then each column keeps its known rows).
    """
    n, k = t.shape
    values = np.full((k, n_boot), np.nan)
    chunk = max(1, _CHUNK_CELLS // max(n, n_patients))
    if metric is auroc:
        # Weighted Mann-Whitney: image weight = multiplicity of its patient in the resample
        # (times 0 where the target is unknown: such images count in no pair).
        prepared = []
        for j in range(k):
            order, starts = tie_groups(s[:, j])
            mask = None if known is None or known[:, j].all() else known[order, j]
            prepared.append((codes[order], t[order, j], starts, mask))
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
            for j, (image_codes, labels, starts, mask) in enumerate(prepared):
                w = counts[:, image_codes]
                if mask is not None:
                    w = w * mask
                pos = np.add.reduceat(w * labels, starts, axis=1)
                neg = np.add.reduceat(w * ~labels, starts, axis=1)
                values[j, done : done + b] = grouped_auc(pos, neg)
        else:
            for r, row in enumerate(draws):
                lengths = sizes[row]
                offsets = np.cumsum(lengths) - lengths
                local = np.repeat(first[row] - offsets, lengths) + np.arange(lengths.sum())
                idx = by_patient[local]
                for j in range(k):
                    rows = idx if known is None else idx[known[idx, j]]
                    if rows.size == 0:
                        continue
                    v = metric(t[rows, j], s[rows, j])
                    values[j, done + r] = np.nan if v is None else v
        done += b
    return values


def _interval(values: np.ndarray, alpha: float) -> Interval:
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        return None, None, 0
    low, high = np.quantile(valid, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), int(valid.size)


def _masked_binary(
    y_true: ArrayLike, y_score: ArrayLike, score_name: str, ndim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Bool targets, scores and the known-target mask (None when every target is known)."""
    t, known = known_labels(y_true, ndim)
    s = float_array(y_score, score_name, ndim)
    same_shape(t, s, "y_true", score_name)
    return t, s, None if known.all() else known


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
    Images whose target is `MASKED` (-1: unknown) are left out of every
    resample's metric. Resamples where the metric is undefined (None/NaN) are skipped.

    Returns:
        (low, high, n_valid): the interval (None, None if no resample was valid) and the
        number of valid resamples it was computed from.
    """
    t, s, known = _masked_binary(y_true, y_score, "y_score", ndim=1)
    codes, n_patients = _patient_codes(patient_ids, t.shape[0])
    _check_bootstrap_args(n_boot, alpha)
    values = _bootstrap_values(
        t[:, None], s[:, None], codes, n_patients, metric, n_boot, seed,
        None if known is None else known[:, None],
    )  # fmt: skip
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

    Targets may be negative (unknown: not labelled by the image's dataset, or uncertain):
    each resample draws patients among all images, then column j uses the known rows of
    the drawn patients only. With the same seed, column j gets exactly the interval the
    single-finding call gives; without unknown targets the result is that of 0/1 input.
    """
    t, p, known = _masked_binary(y_true, y_prob, "y_prob", ndim=2)
    names = column_names(names, t.shape[1])
    codes, n_patients = _patient_codes(patient_ids, t.shape[0])
    _check_bootstrap_args(n_boot, alpha)
    values = _bootstrap_values(t, p, codes, n_patients, metric, n_boot, seed, known)
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
    t, s = binary_inputs(y_true, y_score)
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
    t, s = binary_inputs(y_true, y_score)
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
