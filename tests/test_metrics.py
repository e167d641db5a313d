"""Tests for cxr_tf.modeling.metrics and cxr_tf.evaluation.metrics: against scikit-learn on
random data and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr_tf.evaluation.metrics import (
    auprc,
    brier_score,
    choose_threshold,
    confusion_at,
    expected_calibration_error,
    patient_bootstrap_ci,
    patient_bootstrap_ci_multi,
    reliability_bins,
)
from cxr_tf.labels import FINDINGS, NUM_FINDINGS
from cxr_tf.modeling.metrics import auroc, mean_auroc, multiclass_report, per_finding_auroc

FAST = settings(max_examples=40, deadline=None)


@st.composite
def binary_scores(draw, min_size=2, max_size=60):
    """Labels with both classes present and coarse scores (many ties)."""
    n = draw(st.integers(min_size, max_size))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    y[0], y[1] = 0, 1
    s = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    return np.array(y), np.array(s, dtype=float) / 6


def _ties_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    return y, np.round(rng.normal(size=n) + y, 1)


# ------------------------------------------------------------------------------- AUROC


@FAST
@given(binary_scores())
def test_auroc_matches_sklearn(data):
    y, s = data
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_hand_values():
    # Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4 = 0.75.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Pos 0.2 vs negs (0.2 tie, 0.1 win) = 1.5; pos 0.3 beats both = 2 -> 3.5 / 4 = 0.875.
    assert auroc([0, 1, 0, 1], [0.2, 0.2, 0.1, 0.3]) == pytest.approx(0.875)
    # All scores tied -> every pair counts 1/2.
    assert auroc([0, 1, 1], [0.5, 0.5, 0.5]) == pytest.approx(0.5)


def test_auroc_undefined_with_one_class():
    assert auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert auroc([1, 1], [0.1, 0.2]) is None
    # Zero weight on every negative leaves one class: undefined too.
    assert auroc([0, 1], [0.1, 0.2], sample_weight=[0, 3]) is None


def test_weighted_auroc_equals_expanded_sample():
    rng = np.random.default_rng(1)
    y, s = _ties_data(seed=1, n=80)
    w = rng.integers(0, 4, size=80)
    expanded = np.repeat(np.arange(80), w)
    assert auroc(y, s, sample_weight=w) == pytest.approx(auroc(y[expanded], s[expanded]))
    assert auroc(y, s, sample_weight=w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))


def test_auroc_validation_names_argument():
    with pytest.raises(ValueError, match="y_score"):
        auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="y_score"):
        auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="y_true"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="y_true"):
        auroc([0, np.nan], [0.1, 0.2])
    with pytest.raises(ValueError, match="sample_weight"):
        auroc([0, 1], [0.1, 0.2], sample_weight=[1, -1])


# ------------------------------------------------------------------------------- AUPRC


@FAST
@given(binary_scores())
def test_auprc_matches_sklearn(data):
    y, s = data
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_auprc_hand_value_and_undefined():
    # Descending: 0.8(+) R=.5 P=1; 0.4(-); 0.35(+) R=1 P=2/3 -> AP = .5*1 + .5*2/3 = 5/6.
    assert auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    assert auprc([0, 0], [0.1, 0.4]) is None


# ------------------------------------------------------------------- per-finding and mean


def test_per_finding_auroc_defaults_to_findings_and_mean_skips_undefined():
    rng = np.random.default_rng(2)
    y = (rng.random((200, NUM_FINDINGS)) < 0.2).astype(int)
    y[:, FINDINGS.index("Hernia")] = 0  # no positive: undefined
    p = rng.random((200, NUM_FINDINGS)) * 0.5 + 0.5 * y
    result = per_finding_auroc(y, p)
    assert tuple(result) == FINDINGS
    assert result["Hernia"] is None
    for k, name in enumerate(FINDINGS):
        if name != "Hernia":
            assert result[name] == pytest.approx(roc_auc_score(y[:, k], p[:, k]))
    mean, count = mean_auroc(result)
    assert count == NUM_FINDINGS - 1
    assert mean == pytest.approx(np.mean([v for v in result.values() if v is not None]))


def test_mean_auroc_hand_values():
    # (0.6 + 0.8) / 2 = 0.7 over 2 defined findings; None and NaN are skipped.
    assert mean_auroc({"a": 0.6, "b": None, "c": 0.8, "d": float("nan")}) == (
        pytest.approx(0.7),
        2,
    )
    assert mean_auroc({"a": None}) == (None, 0)


def test_per_finding_auroc_validation():
    y, p = np.zeros((4, 3)), np.zeros((4, 3))
    with pytest.raises(ValueError, match="names"):
        per_finding_auroc(y, p)  # 3 columns need explicit names
    with pytest.raises(ValueError, match="names"):
        per_finding_auroc(y, p, names=["a", "b"])
    with pytest.raises(ValueError, match="y_prob"):
        per_finding_auroc(y, np.zeros((4, 2)), names=["a", "b", "c"])
    assert per_finding_auroc(y, p, names=["a", "b", "c"]) == {"a": None, "b": None, "c": None}


# ------------------------------------------------------------------------------ bootstrap


def _binormal(rng, n_pos, n_neg, d):
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    return y, rng.normal(size=n_pos + n_neg) + d * y


def test_bootstrap_fast_auroc_path_equals_materialised_resamples():
    # The weighted path (metric is auroc) and the generic path (any other callable, which
    # builds each resample explicitly) draw the same patients, so the results must agree.
    rng = np.random.default_rng(3)
    y, s = _ties_data(seed=3, n=120)
    patients = rng.integers(0, 40, size=120)
    fast = patient_bootstrap_ci(y, s, patients, n_boot=60, seed=7)
    slow = patient_bootstrap_ci(y, s, patients, metric=lambda t, x: auroc(t, x), n_boot=60, seed=7)
    assert fast[2] == slow[2] == 60
    assert fast[0] == pytest.approx(slow[0]) and fast[1] == pytest.approx(slow[1])


def test_bootstrap_skips_undefined_resamples():
    # One positive patient among 5: a resample misses it with prob (4/5)^5 ~ 0.33.
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.linspace(0, 1, 10)[::-1]
    patients = np.repeat(np.arange(5), 2)
    low, high, n_valid = patient_bootstrap_ci(y, s, patients, n_boot=200)
    assert 100 < n_valid < 170
    assert low == high == 1.0
    assert patient_bootstrap_ci(np.zeros(4), s[:4], [0, 0, 1, 1], n_boot=10) == (None, None, 0)


def test_bootstrap_multi_reuses_resamples():
    rng = np.random.default_rng(4)
    y = rng.random((150, 3)) < 0.3
    p = rng.random((150, 3)) + y
    patients = rng.integers(0, 60, size=150)
    multi = patient_bootstrap_ci_multi(y, p, patients, names=["a", "b", "c"], n_boot=50, seed=2)
    for j, name in enumerate("abc"):
        assert multi[name] == patient_bootstrap_ci(y[:, j], p[:, j], patients, n_boot=50, seed=2)
    ap = patient_bootstrap_ci_multi(y, p, patients, ["a", "b", "c"], metric=auprc, n_boot=20)
    assert ap["b"] == patient_bootstrap_ci(y[:, 1], p[:, 1], patients, metric=auprc, n_boot=20)


def _hand_bootstrap(y, s, patients, known, n_boot, seed, alpha=0.05):
    """Patients drawn as the library draws them (one chunk), then the known rows of the
    drawn patients only; percentile interval over the defined resamples."""
    uniques, codes = np.unique(patients, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(uniques), size=(n_boot, len(uniques)))
    members = [np.flatnonzero(codes == c) for c in range(len(uniques))]
    values = []
    for draw in draws:
        idx = np.concatenate([members[c] for c in draw])
        rows = idx[known[idx]]
        value = auroc(y[rows], s[rows]) if rows.size else None
        if value is not None:
            values.append(value)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), len(values)


def test_bootstrap_multi_masks_unknown_targets_per_column():
    rng = np.random.default_rng(12)
    n = 160
    y = (rng.random((n, 3)) < 0.35).astype(float)
    p = rng.random((n, 3)) * 0.7 + 0.3 * y
    patients = rng.integers(0, 50, size=n)
    masked = y.copy()
    masked[rng.random(n) < 0.4, 1] = -1  # column b: unknown for ~40% of the images
    masked[:, 2] = -1  # column c: never known
    names = ["a", "b", "c"]
    result = patient_bootstrap_ci_multi(masked, p, patients, names, n_boot=80, seed=3)
    # The fully known column is what 0/1 input gives: masks elsewhere change nothing.
    plain = patient_bootstrap_ci_multi(y, p, patients, names, n_boot=80, seed=3)
    assert result["a"] == plain["a"]
    # The masked column: the same patients drawn, then only its known rows.
    known = masked[:, 1] >= 0
    low, high, n_valid = _hand_bootstrap(y[:, 1], p[:, 1], patients, known, 80, 3)
    assert result["b"][2] == n_valid == 80
    assert result["b"][0] == pytest.approx(low, abs=1e-12)
    assert result["b"][1] == pytest.approx(high, abs=1e-12)
    assert result["b"] != plain["b"]
    point = auroc(y[known, 1], p[known, 1])
    assert result["b"][0] <= point <= result["b"][1]
    assert result["c"] == (None, None, 0)
    # The generic path (any metric callable) masks the same way; the single-column call too.
    slow = patient_bootstrap_ci_multi(
        masked, p, patients, names, metric=lambda t, x: auroc(t, x), n_boot=80, seed=3
    )
    assert slow["b"][0] == pytest.approx(low) and slow["b"][1] == pytest.approx(high)
    assert slow["c"] == (None, None, 0)
    single = patient_bootstrap_ci(masked[:, 1], p[:, 1], patients, n_boot=80, seed=3)
    assert single == result["b"]
    with pytest.raises(ValueError, match="y_true"):
        patient_bootstrap_ci_multi(np.full((4, 1), 2.0), np.zeros((4, 1)), [0, 1, 2, 3], ["a"])


def test_per_finding_auroc_skips_unknown_targets():
    rng = np.random.default_rng(13)
    y = (rng.random((120, 2)) < 0.3).astype(float)
    p = rng.random((120, 2)) + y
    y[::3, 0] = -1
    result = per_finding_auroc(y, p, names=["a", "b"])
    known = y[:, 0] >= 0
    assert result["a"] == pytest.approx(roc_auc_score(y[known, 0], p[known, 0]))
    assert result["b"] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]))


def test_bootstrap_ci_coverage_on_binormal_model():
    # Binormal with unit variances and mean gap d: true AUROC = Phi(d / sqrt 2).
    d = 1.0
    true_auc = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))
    rng = np.random.default_rng(5)
    hits = 0
    for i in range(100):
        y, s = _binormal(rng, 60, 90, d)
        low, high, n_valid = patient_bootstrap_ci(y, s, np.arange(150), n_boot=200, seed=i)
        assert n_valid == 200
        hits += low <= true_auc <= high
    assert 0.85 <= hits / 100 <= 0.99


def test_patient_bootstrap_wider_than_image_bootstrap_for_correlated_images():
    # 4 images per patient share the label and a strong patient effect, so the effective
    # sample size is the number of patients; resampling images understates the spread.
    rng = np.random.default_rng(6)
    n_patients, per = 120, 4
    patient = np.repeat(np.arange(n_patients), per)
    label = np.repeat(rng.random(n_patients) < 0.4, per)
    s = 1.0 * label + np.repeat(rng.normal(size=n_patients), per) + 0.3 * rng.normal(size=480)
    lo_p, hi_p, _ = patient_bootstrap_ci(label, s, patient, n_boot=300)
    lo_i, hi_i, _ = patient_bootstrap_ci(label, s, np.arange(480), n_boot=300)
    assert hi_p - lo_p > 1.4 * (hi_i - lo_i)


def test_bootstrap_validation():
    with pytest.raises(ValueError, match="patient_ids"):
        patient_bootstrap_ci([0, 1], [0.1, 0.2], [1, 2, 3])
    with pytest.raises(ValueError, match="n_boot"):
        patient_bootstrap_ci([0, 1], [0.1, 0.2], [1, 2], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        patient_bootstrap_ci([0, 1], [0.1, 0.2], [1, 2], alpha=1.5)


def test_bootstrap_is_fast_on_nih_sized_test_split():
    # 25k images / ~12k patients, 100 resamples here (1000 take ~1.5 s on one core).
    rng = np.random.default_rng(7)
    n = 25_000
    y = rng.random(n) < 0.1
    s = rng.normal(size=n) + y
    low, high, n_valid = patient_bootstrap_ci(y, s, rng.integers(0, 12_000, n), n_boot=100)
    assert n_valid == 100 and low < auroc(y, s) < high


# ---------------------------------------------------------------------------- thresholds

# P = 4, N = 4. Descending thresholds with (tp, fp), predicting positive at score >= t:
#   0.8 (1,0) 0.7 (2,0) 0.6 (3,0) 0.5 (3,1) 0.4 (4,1) 0.3 (4,2) 0.2 (4,3) 0.1 (4,4)
# Youden J = tp/4 - fp/4: max 0.75 at both 0.6 and 0.4 -> tie goes to the higher, 0.6.
# F1 = 2tp / (tp + fp + 4): 0.6 -> 6/7 = .857, 0.4 -> 8/9 = .889, 0.3 -> 8/10 -> 0.4.
Y_HAND = [0, 0, 0, 1, 0, 1, 1, 1]
S_HAND = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def test_choose_threshold_hand_values():
    assert choose_threshold(Y_HAND, S_HAND, "youden") == 0.6
    assert choose_threshold(Y_HAND, S_HAND, "max_f1") == 0.4
    # Sensitivity 0.9 needs tp = 4 -> 0.4; 0.75 needs tp = 3 -> 0.6; 0.5 needs 2 -> 0.7.
    assert choose_threshold(Y_HAND, S_HAND, "sensitivity", 0.9) == 0.4
    assert choose_threshold(Y_HAND, S_HAND, "sensitivity", 0.75) == 0.6
    assert choose_threshold(Y_HAND, S_HAND, "sensitivity", 0.5) == 0.7


def test_choose_threshold_matches_sklearn_curves():
    y, s = _ties_data(seed=8)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    t = choose_threshold(y, s, "youden")
    c = confusion_at(y, s, t)
    assert c["sensitivity"] + c["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        best_f1 = np.nanmax(2 * precision * recall / (precision + recall))
    assert confusion_at(y, s, choose_threshold(y, s, "max_f1"))["f1"] == pytest.approx(best_f1)
    t = choose_threshold(y, s, "sensitivity", 0.8)
    assert t == thr[np.argmax(tpr >= 0.8)]


def test_choose_threshold_validation():
    with pytest.raises(ValueError, match="y_true"):
        choose_threshold([0, 0], [0.1, 0.2], "youden")
    with pytest.raises(ValueError, match="method"):
        choose_threshold(Y_HAND, S_HAND, "best")
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(Y_HAND, S_HAND, "sensitivity", 1.5)


# ------------------------------------------------------------------------------ confusion


def test_confusion_at_hand_values():
    # t = 0.5: predicted positive 0.5(-) 0.6 0.7 0.8(+) -> tp 3, fp 1, tn 3, fn 1.
    c = confusion_at(Y_HAND, S_HAND, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (3, 1, 3, 1)
    for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy"):
        assert c[key] == pytest.approx(0.75)
    # A score equal to the threshold is positive: t = 0.4 gives tp 4, fp 1.
    assert confusion_at(Y_HAND, S_HAND, 0.4)["tp"] == 4


def test_confusion_at_zero_denominators_are_none():
    c = confusion_at([0, 0], [0.1, 0.2], 0.9)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (0, 0, 2, 0)
    assert c["sensitivity"] is None and c["ppv"] is None and c["f1"] is None
    assert c["specificity"] == 1.0 and c["npv"] == 1.0 and c["accuracy"] == 1.0


def test_confusion_at_matches_sklearn():
    y, s = _ties_data(seed=9)
    c = confusion_at(y, s, 0.5)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.5).ravel()
    assert (c["tn"], c["fp"], c["fn"], c["tp"]) == (tn, fp, fn, tp)
    assert c["accuracy"] == pytest.approx(accuracy_score(y, s >= 0.5))


# ---------------------------------------------------------------------------- calibration


def test_ece_zero_when_each_bin_is_calibrated():
    # Bin of 0.25s with 1/4 positive and bin of 0.75s with 3/4 positive.
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_ece_hand_value():
    # 2 bins. [0, .5): p .2 .3, y 0 1 -> |0.5 - 0.25| = .25; [.5, 1]: p .8 .9, y 1 1 ->
    # |1 - .85| = .15. Each holds half the cases: ECE = .5 * .25 + .5 * .15 = 0.2.
    assert expected_calibration_error([0, 1, 1, 1], [0.2, 0.3, 0.8, 0.9], n_bins=2) == (
        pytest.approx(0.2)
    )


def test_reliability_bins_layout_and_sklearn():
    bins = reliability_bins([0, 1, 1], [0.0, 0.5, 1.0], n_bins=2)
    np.testing.assert_allclose(bins["edges"], [0, 0.5, 1])
    np.testing.assert_array_equal(bins["counts"], [1, 2])  # 0.5 and 1.0 in the upper bin
    rng = np.random.default_rng(10)
    p = rng.random(500)
    y = rng.random(500) < p
    bins = reliability_bins(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = bins["counts"] > 0
    np.testing.assert_allclose(bins["observed_frequency"][full], prob_true)
    np.testing.assert_allclose(bins["mean_predicted"][full], prob_pred)
    empty = reliability_bins([1], [0.05], n_bins=4)
    assert np.isnan(empty["mean_predicted"][1]) and empty["counts"][1] == 0


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=50),
)
def test_brier_matches_sklearn(pairs):
    y, p = np.array(pairs).T
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p, pos_label=1), abs=1e-12)


def test_brier_hand_value_and_validation():
    # ((0.1 - 0)^2 + (0.7 - 1)^2) / 2 = (0.01 + 0.09) / 2 = 0.05.
    assert brier_score([0, 1], [0.1, 0.7]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="y_prob"):
        brier_score([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0, 1], [0.1, 0.2], n_bins=0)


# ---------------------------------------------------------------------------- multi-class


def test_multiclass_report_hand_values():
    # argmax -> [0, 1, 2, 1]; truth [0, 1, 2, 2]: 3 of 4 right; the last 2 was called 1.
    p = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.5, 0.4]]
    report = multiclass_report([0, 1, 2, 2], p, ["a", "b", "c"])
    assert report["accuracy"] == 0.75
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # Class c: positives .7 .4, negatives .1 .1 -> all 4 pairs won -> 1.0.
    assert report["auroc"]["c"] == 1.0
    assert report["n_auroc"] == 3


def test_multiclass_report_matches_sklearn():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    report = multiclass_report(y, p, ["w", "x", "y", "z"])
    pred = p.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()
    ovr = roc_auc_score(y, p, multi_class="ovr", average=None)
    np.testing.assert_allclose(list(report["auroc"].values()), ovr)
    assert report["macro_auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))


def test_multiclass_report_absent_class_and_validation():
    report = multiclass_report([0, 1, 0], np.eye(3)[[0, 1, 1]], ["a", "b", "c"])
    assert report["auroc"]["c"] is None and report["n_auroc"] == 2
    with pytest.raises(ValueError, match="y_true"):
        multiclass_report([0, 3], np.eye(3)[[0, 1]], ["a", "b", "c"])
    with pytest.raises(ValueError, match="class_names"):
        multiclass_report([0, 1], np.eye(3)[[0, 1]], ["a", "b"])
    with pytest.raises(ValueError, match="y_prob"):
        multiclass_report([0, 1], [[0.5, np.nan, 0.5], [1, 0, 0]], ["a", "b", "c"])
