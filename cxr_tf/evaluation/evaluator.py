"""Evaluation of a trained run on one split (`python -m cxr_tf.evaluate`): predictions with
optional test-time augmentation, thresholds chosen on validation, per-output metrics with
patient-bootstrap intervals, and the report files the command describes."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.config import EvaluateConfig, RunConfig
from cxr_tf.data import pipeline
from cxr_tf.evaluation import metrics, report
from cxr_tf.evaluation.thresholds import save_thresholds
from cxr_tf.modeling import models
from cxr_tf.training import runs

EVAL_DIR = "eval"
PREDICTIONS_FILE = "predictions.csv"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ROC_PR_PNG = "roc_pr.png"
CALIBRATION_PNG = "calibration.png"
CALIBRATION_BINS = 10
# CheXNet reproductions resize to 256 px and take ten 224 px crops: crop side / image side.
TENCROP_FRACTION = 224 / 256


@dataclasses.dataclass
class Predictions:
    """Model outputs on every image of one split, in dataset order."""

    names: tuple[str, ...]
    images: list[str]
    patients: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, K) float64
    targets: np.ndarray  # (N, K) 0/1 (one-hot for multi-class)


def default_out(config: EvaluateConfig) -> Path:
    """`RUN/eval/<split>-<checkpoint>[-tta-<mode>][-<threshold method>]`.

    One folder per choice that changes the numbers, so an evaluation with other options
    never overwrites an earlier report; the Youden default adds no suffix.
    """
    name = f"{config.split}-{Path(runs.MODEL_FILES[config.model]).stem}"
    if config.tta != "none":
        name += f"-tta-{config.tta}"
    if config.threshold_method == "sensitivity":
        name += f"-sensitivity{config.target_sensitivity:g}"
    elif config.threshold_method != "youden":
        name += f"-{config.threshold_method}"
    return Path(config.run_dir) / EVAL_DIR / name


def tta_views(images: tf.Tensor, mode: str) -> list[tf.Tensor]:
    """The views averaged by test-time augmentation, each (B, S, S, C) like the input.

    none: the image; flip: the image and its horizontal mirror; tencrop: the four corner
    crops and the centre crop (side `TENCROP_FRACTION` x S, resized back to S so the model
    takes them) and their mirrors.
    """
    x = tf.cast(images, tf.float32)
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, tf.reverse(x, axis=[2])]
    if mode != "tencrop":
        raise ValueError(f"tta: expected none, flip or tencrop, not {mode!r}")
    size = int(x.shape[1])
    crop = int(round(size * TENCROP_FRACTION))
    far, mid = size - crop, (size - crop) // 2
    views = []
    for top, left in ((0, 0), (0, far), (far, 0), (far, far), (mid, mid)):
        patch = x[:, top : top + crop, left : left + crop, :]
        patch = tf.image.resize(patch, (size, size), method="bilinear")
        views += [patch, tf.reverse(patch, axis=[2])]
    return views


def predict_batch(model: keras.Model, images: Any, task: str, tta: str = "none") -> np.ndarray:
    """(B, K) probabilities of one batch, averaged over the test-time augmentation views."""
    views = tta_views(tf.convert_to_tensor(images), tta)
    logits = model.predict_on_batch(tf.concat(views, axis=0))
    probs = np.asarray(models.probabilities(np.asarray(logits, np.float32), task), np.float64)
    return probs.reshape(len(views), -1, probs.shape[-1]).mean(axis=0)


def predict_split(
    model: keras.Model,
    run: RunConfig,
    split: str,
    tta: str = "none",
    batch_size: int = 0,
    progress: bool = True,
) -> Predictions:
    """Probabilities, targets, image and patient ids of every image of a split."""
    from tqdm.auto import tqdm

    spec = pipeline.LabelSpec.from_config(run.model)
    data = dataclasses.replace(run.data, batch_size=batch_size or run.data.batch_size)
    manifest = pipeline.load_manifest(data.dataset)
    ds = pipeline.make_dataset(
        data, spec, split, training=False, extra_keys=("image_index", "patient_id"),
        manifest=manifest,
    )  # fmt: skip
    # Multi-class keeps only single-class images, so the count is an upper bound there.
    total = math.ceil(manifest["splits"][split]["images"] / data.batch_size)
    probs, targets, images, patients = [], [], [], []
    bar = tqdm(ds, total=total, unit="batch", desc=f"predict {split}", disable=not progress)
    for x, y, extra in bar:
        probs.append(predict_batch(model, x, spec.task, tta))
        targets.append(np.asarray(y))
        images += [s.decode() for s in extra["image_index"].numpy()]
        patients.append(extra["patient_id"].numpy().astype(np.int64))
    if not probs:
        raise pipeline.DatasetError(f"{data.dataset}: split {split!r} yields no images")
    return Predictions(
        names=spec.names,
        images=images,
        patients=np.concatenate(patients),
        probs=np.concatenate(probs),
        targets=np.concatenate(targets).round().astype(np.int64),
    )


# ---------------------------------------------------------------------------- thresholds


def choose_thresholds(
    validation: Predictions, method: str, target_sensitivity: float = 0.9
) -> dict[str, float | None]:
    """Operating threshold per output on the validation predictions; None when undefined."""
    chosen: dict[str, float | None] = {}
    for j, name in enumerate(validation.names):
        try:
            chosen[name] = metrics.choose_threshold(
                validation.targets[:, j], validation.probs[:, j], method, target_sensitivity
            )
        except ValueError:  # no positive (or, for Youden, no negative) validation case
            chosen[name] = None
    return chosen


# ------------------------------------------------------------------------------- metrics


def output_metrics(
    pred: Predictions,
    thresholds: dict[str, float | None] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Per-output prevalence, AUROC + patient bootstrap CI, AUPRC, operating point, calibration.

    Args:
        pred: predictions on the evaluated split.
        thresholds: per output (None: undefined); None altogether for multi-class.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
    """
    t, p = pred.targets, pred.probs
    intervals = metrics.patient_bootstrap_ci_multi(
        t, p, pred.patients, names=pred.names, n_boot=n_boot, seed=seed
    )
    out = {}
    for j, name in enumerate(pred.names):
        low, high, n_valid = intervals[name]
        entry = {
            "n": int(len(t)),
            "n_pos": int(t[:, j].sum()),
            "prevalence": float(t[:, j].mean()),
            "auroc": metrics.auroc(t[:, j], p[:, j]),
            "auroc_ci": [low, high],
            "auroc_ci_resamples": n_valid,
            "auprc": metrics.auprc(t[:, j], p[:, j]),
        }
        if thresholds is not None:
            threshold = thresholds.get(name)
            entry["operating_point"] = (
                None if threshold is None else metrics.confusion_at(t[:, j], p[:, j], threshold)
            )
        entry["calibration"] = {
            "ece": metrics.expected_calibration_error(t[:, j], p[:, j], CALIBRATION_BINS),
            "brier": metrics.brier_score(t[:, j], p[:, j]),
            "bins": metrics.reliability_bins(t[:, j], p[:, j], CALIBRATION_BINS),
        }
        out[name] = entry
    return out


def build_report(
    config: EvaluateConfig,
    run: RunConfig,
    pred: Predictions,
    thresholds: dict[str, float | None] | None,
) -> dict:
    """The JSON-ready report of one evaluation."""
    per_output = output_metrics(pred, thresholds, config.bootstrap, config.seed)
    mean, count = metrics.mean_auroc({k: v["auroc"] for k, v in per_output.items()})
    manifest = pipeline.load_manifest(run.data.dataset)
    strategy = manifest.get("conversion", {}).get("split", {}).get("strategy", "?")
    result: dict[str, Any] = {
        "run_dir": str(config.run_dir),
        "split": config.split,
        "dataset": run.data.dataset,
        "split_strategy": strategy,
        "model_file": runs.MODEL_FILES[config.model],
        "task": run.model.task,
        "outputs": list(pred.names),
        "n_images": len(pred.images),
        "n_patients": int(len(np.unique(pred.patients))),
        "tta": config.tta,
        "bootstrap": {"n": config.bootstrap, "unit": "patient", "alpha": 0.05},
        "mean_auroc": {"value": mean, "n_outputs": count},
        "per_output": per_output,
    }
    if thresholds is None:
        result["multiclass"] = metrics.multiclass_report(
            pred.targets.argmax(axis=1), pred.probs, list(pred.names)
        )
    else:
        result["threshold"] = {
            "method": config.threshold_method,
            "split": "validation",
            "target_sensitivity": config.target_sensitivity,
            "tta": config.tta,
        }
    return report.json_safe(result)


def write_predictions(pred: Predictions, path: str | Path) -> Path:
    """predictions.csv: image, patient, prob_<output>..., label_<output>..."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["image", "patient", *(f"prob_{n}" for n in pred.names)]
            + [f"label_{n}" for n in pred.names]
        )
        for i, image in enumerate(pred.images):
            writer.writerow(
                [image, int(pred.patients[i])]
                + [repr(float(v)) for v in pred.probs[i]]
                + [int(v) for v in pred.targets[i]]
            )
    return path


def evaluate(config: EvaluateConfig, progress: bool = True) -> dict:
    """Predicts the split (and validation, for thresholds), writes every output; the report."""
    run_dir = Path(config.run_dir)
    run = runs.load_run_config(run_dir)
    out = Path(config.out) if config.out else default_out(config)
    model = runs.load_model(run_dir, config.model)
    checkpoint = runs.file_identity(runs.model_path(run_dir, config.model))
    out.mkdir(parents=True, exist_ok=True)
    pred = predict_split(model, run, config.split, config.tta, config.batch_size, progress)
    thresholds = None
    if run.model.task != "multiclass":
        validation = (
            pred
            if config.split == "validation"
            else predict_split(model, run, "validation", config.tta, config.batch_size, progress)
        )
        thresholds = choose_thresholds(
            validation, config.threshold_method, config.target_sensitivity
        )
        for folder in (out, run_dir):  # the report's own copy, and the one export reads
            save_thresholds(
                folder, thresholds, config.threshold_method, config.target_sensitivity,
                checkpoint, config.tta,
            )  # fmt: skip
    result = build_report(config, run, pred, thresholds)
    result["checkpoint"] = checkpoint
    write_predictions(pred, out / PREDICTIONS_FILE)
    (out / REPORT_JSON).write_text(json.dumps(result, indent=1) + "\n")
    (out / REPORT_MD).write_text(report.markdown(result))
    report.roc_pr_png(pred.targets, pred.probs, pred.names, out / ROC_PR_PNG)
    report.calibration_png(result, out / CALIBRATION_PNG)
    result["out"] = str(out)
    return result
