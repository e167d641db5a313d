"""Evaluation of a trained run on one split (`python -m cxr_tf.evaluate`): predictions with
optional test-time augmentation, thresholds chosen on validation, per-output metrics with
patient-bootstrap intervals over the images whose label is known, and the report files the
command describes; with `--dataset`, on another converted dataset, compared with the run's
own (internal) evaluation."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.config import ConfigError, DataConfig, EvaluateConfig, RunConfig
from cxr_tf.config.data import split_datasets
from cxr_tf.data import reader
from cxr_tf.data.manifest import DatasetError, Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.evaluation import gallery, html, metrics, report
from cxr_tf.evaluation.thresholds import load_thresholds, save_thresholds, thresholds_file
from cxr_tf.labels import MASKED, NO_FINDING, name_key
from cxr_tf.modeling import models
from cxr_tf.modeling.metrics import auroc, mean_auroc, multiclass_report
from cxr_tf.runs import folder as runs

EVAL_DIR = "eval"
PREDICTIONS_FILE = "predictions.csv"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ROC_PR_PNG = "roc_pr.png"
CALIBRATION_PNG = "calibration.png"
COMPARISON_JSON = "internal_vs_external.json"
COMPARISON_MD = "internal_vs_external.md"
COMPARISON_PNG = "internal_vs_external.png"
CALIBRATION_BINS = 10
# The run's own split an external evaluation is compared with (its held-out estimate).
INTERNAL_SPLIT = "test"
# 2: per-output numbers over the images whose label is known, with their count `n`.
REPORT_FORMAT = 2
# CheXNet reproductions resize to 256 px and take ten 224 px crops: crop side / image side.
TENCROP_FRACTION = 224 / 256


@dataclasses.dataclass
class Predictions:
    """Model outputs on every image of one split, in dataset order."""

    names: tuple[str, ...]
    images: list[str]
    patients: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, K) float64
    # (N, K) 0/1 (one-hot for multi-class); -1 where the label is unknown (not labelled by
    # the image's dataset, or uncertain)
    targets: np.ndarray

    def subset(self, names: Sequence[str]) -> Predictions:
        """The same images with only the outputs `names`, in that order."""
        columns = [self.names.index(n) for n in names]
        return dataclasses.replace(
            self, names=tuple(names), probs=self.probs[:, columns],
            targets=self.targets[:, columns],
        )  # fmt: skip


def is_external(config: EvaluateConfig, run: RunConfig) -> bool:
    """Whether `config.dataset` names datasets other than the run's own."""
    if not config.dataset:
        return False
    ours = [Path(d).resolve() for d in split_datasets(run.data.dataset)]
    return [Path(d).resolve() for d in split_datasets(config.dataset)] != ours


def dataset_slug(dataset: str) -> str:
    """A folder-name-safe name of a `--dataset` value: its folders' names joined by '+'."""
    names = [Path(d).name for d in split_datasets(dataset)]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(names)) or "dataset"


def default_out(config: EvaluateConfig) -> Path:
    """`RUN/eval/[external-<dataset>-]<split>-<checkpoint>[-tta-<mode>][-<threshold method>]`.

    One folder per choice that changes the numbers, so an evaluation with other options
    never overwrites an earlier report; the Youden default adds no suffix. `--dataset`
    (another dataset than the run's) adds `external-<its folder name(s)>-` in front.
    """
    name = f"{config.split}-{Path(runs.MODEL_FILES[config.model]).stem}"
    if config.tta != "none":
        name += f"-tta-{config.tta}"
    if config.threshold_method == "sensitivity":
        name += f"-sensitivity{config.target_sensitivity:g}"
    elif config.threshold_method != "youden":
        name += f"-{config.threshold_method}"
    if config.dataset:
        name = f"external-{dataset_slug(config.dataset)}-{name}"
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


def eval_data(run: RunConfig, dataset: str = "", batch_size: int = 0) -> DataConfig:
    """The run's data settings for one evaluation pass over `dataset` (default the run's)."""
    return dataclasses.replace(
        run.data,
        dataset=dataset or run.data.dataset,
        weights=() if dataset else run.data.weights,
        batch_size=batch_size or run.data.batch_size,
        cache=False,
        balanced=False,
    )


def predict_split(
    model: keras.Model,
    run: RunConfig,
    split: str,
    tta: str = "none",
    batch_size: int = 0,
    progress: bool = True,
    dataset: str = "",
) -> Predictions:
    """Probabilities, targets, image and patient ids of every image of a split.

    Args:
        dataset: converted dataset folder(s) to read instead of the run's own (each
            labelled through its own manifest; outputs it does not label get target -1).
    """
    from cxr_tf.progress import progress_bar as tqdm

    data = eval_data(run, dataset, batch_size)
    manifests = [Manifest.load(d) for d in reader.dataset_dirs(data)]
    # Uncertain labels are always unknown (masked) in evaluation.
    spec = LabelSpec.from_config(run.model, manifests[0])
    ds = reader.make_dataset(
        data, spec, split, reader.ReadOptions(extra_keys=("image_index", "patient_id"))
    )
    # Multi-class keeps only single-class images, so the count is an upper bound there.
    images_total = sum(m.images_in(split) for m in manifests)
    total = math.ceil(images_total / data.batch_size)
    probs, targets, images, patients = [], [], [], []
    bar = tqdm(ds, total=total, unit="batch", desc=f"predict {split}", disable=not progress)
    for x, y, extra in bar:
        probs.append(predict_batch(model, x, spec.task, tta))
        targets.append(np.asarray(y))
        images += [s.decode() for s in extra["image_index"].numpy()]
        patients.append(extra["patient_id"].numpy().astype(np.int64))
    if not probs:
        raise DatasetError(f"{data.dataset}: split {split!r} yields no images")
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
    """Operating threshold per output on the validation images whose label is known there;
    None when undefined."""
    chosen: dict[str, float | None] = {}
    for j, name in enumerate(validation.names):
        known = validation.targets[:, j] != MASKED
        try:
            chosen[name] = metrics.choose_threshold(
                validation.targets[known, j], validation.probs[known, j], method,
                target_sensitivity,
            )  # fmt: skip
        except ValueError:  # no known label, no positive (or, for Youden, no negative) case
            chosen[name] = None
    return chosen


# ------------------------------------------------------------------------------- metrics


def undefined_reason(n: int, n_pos: int) -> str | None:
    """Why an output's AUROC is undefined on `n` known labels with `n_pos` positives."""
    if n == 0:
        return "no known label (not labelled by the dataset, or uncertain)"
    if n_pos == 0:
        return "no positive case"
    if n_pos == n:
        return "no negative case"
    return None


def output_metrics(
    pred: Predictions,
    thresholds: dict[str, float | None] | None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Per-output counts, prevalence, AUROC + patient bootstrap CI, AUPRC, operating point
    and calibration, each over the images whose label for that output is known.

    `n` is the number of those images (`n_pos` positives, `n_unknown` left out); a number
    that is undefined there is None, and `undefined` says why the AUROC is.

    Args:
        pred: predictions on the evaluated split (targets -1 where unknown).
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
        known = t[:, j] != MASKED
        tj, pj = t[known, j], p[known, j]
        n, n_pos = int(known.sum()), int(tj.sum())
        low, high, n_valid = intervals[name]
        entry: dict[str, Any] = {
            "n": n,
            "n_pos": n_pos,
            "n_neg": n - n_pos,
            "n_unknown": int(len(t) - n),
            "prevalence": float(tj.mean()) if n else None,
            "auroc": auroc(tj, pj) if n else None,
            "auroc_ci": [low, high],
            "auroc_ci_resamples": n_valid,
            "auprc": metrics.auprc(tj, pj) if n else None,
            "undefined": undefined_reason(n, n_pos),
        }
        if thresholds is not None:
            threshold = thresholds.get(name)
            entry["operating_point"] = (
                None if threshold is None or not n else metrics.confusion_at(tj, pj, threshold)
            )
            if threshold is None:
                entry["operating_point_undefined"] = "no threshold chosen on validation"
            elif not n:
                entry["operating_point_undefined"] = "no known label"
        entry["calibration"] = (
            {
                "ece": metrics.expected_calibration_error(tj, pj, CALIBRATION_BINS),
                "brier": metrics.brier_score(tj, pj),
                "bins": metrics.reliability_bins(tj, pj, CALIBRATION_BINS),
            }
            if n
            else None
        )
        out[name] = entry
    return out


def build_report(
    config: EvaluateConfig,
    run: RunConfig,
    pred: Predictions,
    thresholds: dict[str, float | None] | None,
    manifest: Manifest | None = None,
) -> dict:
    """The JSON-ready report of one evaluation.

    Args:
        manifest: the evaluated dataset's manifest (`reader.merged_manifest`); default
            the run's dataset's.
    """
    per_output = output_metrics(pred, thresholds, config.bootstrap, config.seed)
    mean, count = mean_auroc({k: v["auroc"] for k, v in per_output.items()})
    if manifest is None:
        manifest = reader.merged_manifest(eval_data(run))
    strategy = manifest.split_strategy
    result: dict[str, Any] = {
        "report_format": REPORT_FORMAT,
        "run_dir": str(config.run_dir),
        "split": config.split,
        "dataset": config.dataset or run.data.dataset,
        "run_dataset": run.data.dataset,
        "external": False,
        "split_strategy": strategy,
        "model_file": runs.MODEL_FILES[config.model],
        "task": run.model.task,
        "outputs": list(pred.names),
        "n_images": len(pred.images),
        "n_patients": int(len(np.unique(pred.patients))),
        "tta": config.tta,
        "bootstrap": {
            "n": config.bootstrap,
            "unit": "patient",
            "alpha": 0.05,
            "seed": config.seed,
        },
        "mean_auroc": {"value": mean, "n_outputs": count},
        "per_output": per_output,
    }
    if thresholds is None:
        result["multiclass"] = multiclass_report(
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
    """predictions.csv: image, patient, prob_<output>..., label_<output>... (-1: unknown)"""
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


def write_outputs(
    pred: Predictions, result: dict, out: Path, cases: list[gallery.Case] | None = None
) -> None:
    """predictions.csv, report.json, report.md, the figures and report.html (with the
    gallery `cases`, also listed in report.json; None: no gallery) of one evaluation."""
    if cases is not None:
        result["gallery"] = [case.to_json() for case in cases]
    write_predictions(pred, out / PREDICTIONS_FILE)
    (out / REPORT_JSON).write_text(json.dumps(result, indent=1) + "\n")
    (out / REPORT_MD).write_text(report.markdown(result))
    report.roc_pr_png(pred.targets, pred.probs, pred.names, out / ROC_PR_PNG)
    report.calibration_png(result, out / CALIBRATION_PNG)
    html.write_evaluation_html(out, result, pred.targets, pred.probs, cases)


def report_gallery(
    config: EvaluateConfig,
    run: RunConfig,
    model: keras.Model,
    pred: Predictions,
    thresholds: dict[str, float | None] | None,
) -> list[gallery.Case] | None:
    """The report.html gallery: `config.gallery` cases per kind and output with their
    Grad-CAM overlays (None with `--gallery 0`, or where Grad-CAM finds no feature layer)."""
    if not config.gallery:
        return None
    data = eval_data(run, config.dataset if is_external(config, run) else "", config.batch_size)
    try:
        layer = models.feature_layer_name(run.model)
    except ValueError as err:
        print(f"evaluate: no gallery in report.html: {err}", file=sys.stderr)
        return None
    return gallery.build_gallery(
        model, layer, LabelSpec.from_config(run.model).names, pred, thresholds,
        reader.dataset_dirs(data), config.split, config.gallery, data.batch_size,
    )  # fmt: skip


# ----------------------------------------------------------------------------- checks


def model_stored_size(model: keras.Model) -> int:
    """Side of the stored images the model takes (it resizes them to its input size)."""
    return int(model.inputs[0].shape[1])


def check_stored_size(model: keras.Model, run: RunConfig, dataset: str) -> None:
    """Refuses datasets stored at another size than the one the model was built for.

    Raises:
        ConfigError: naming the dataset, both sizes and the conversion to run.
    """
    stored = model_stored_size(model)
    for folder in split_datasets(dataset):
        size = Manifest.load(folder).stored_size
        if size != stored:
            raise ConfigError(
                f"dataset: {folder} is stored at {size} px, but the model takes {stored} px "
                f"images (the stored size of the dataset it was trained on; it resizes them to "
                f"{run.model.input_size} px itself). Convert that dataset again with "
                f"`python -m cxr_tf.convert ... --stored_size {stored}`"
            )


def shared_outputs(run: RunConfig, manifest: Manifest, dataset: str) -> tuple[list, list]:
    """(outputs `dataset` labels, outputs it never labels), in model order.

    Raises:
        ConfigError: it labels none of the outputs, or a multi-class run's class is missing.
    """
    labelled = {name_key(n) for n in manifest.labelled_findings}  # TB and tb are one name
    names = list(run.model.output_names)
    if run.model.task == "multiclass":
        missing = [n for n in names if n != NO_FINDING and name_key(n) not in labelled]
        if missing:
            raise ConfigError(
                f"dataset: {dataset} does not label the class(es) {missing} of this multi-class "
                f"run; a multi-class evaluation needs every class labelled"
            )
        return names, []
    if run.model.task == "binary" and names == ["any"]:
        shared = names if labelled else []
    else:
        shared = [n for n in names if name_key(n) in labelled]
    if not shared:
        raise ConfigError(
            f"dataset: {dataset} labels none of the model's outputs ({', '.join(names)}); it "
            f"labels {', '.join(manifest.labelled_findings) or 'nothing'}"
        )
    return shared, [n for n in names if n not in shared]


# ------------------------------------------------------------------------- evaluations


def _evaluate_own(
    config: EvaluateConfig,
    run: RunConfig,
    model: keras.Model,
    checkpoint: dict,
    out: Path,
    progress: bool,
) -> dict:
    """The run's own dataset: predictions, validation thresholds (also saved into RUN,
    where export reads them), report files."""
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
        for folder in (out, Path(config.run_dir)):  # the report's copy, and the one export reads
            save_thresholds(
                folder, thresholds, config.threshold_method, config.target_sensitivity,
                checkpoint, config.tta,
            )  # fmt: skip
    result = build_report(config, run, pred, thresholds)
    result["checkpoint"] = checkpoint
    write_outputs(pred, result, out, report_gallery(config, run, model, pred, thresholds))
    result["out"] = str(out)
    return result


def _reusable(old: dict, config: EvaluateConfig, run: RunConfig, checkpoint: dict) -> bool:
    """Whether an internal report on disk was made with these very settings."""
    boot = old.get("bootstrap") or {}
    same = (
        old.get("report_format") == REPORT_FORMAT
        and (old.get("checkpoint") or {}).get("sha256") == checkpoint["sha256"]
        and old.get("split") == config.split
        and old.get("tta") == config.tta
        and old.get("dataset") == run.data.dataset
        and boot.get("n") == config.bootstrap
        and boot.get("seed") == config.seed
    )
    if not same or run.model.task == "multiclass":
        return same
    stored = load_thresholds(default_out(config))
    return bool(
        stored
        and stored.get("method") == config.threshold_method
        and (config.threshold_method != "sensitivity"
             or stored.get("target_sensitivity") == config.target_sensitivity)
        and (stored.get("checkpoint") or {}).get("sha256") == checkpoint["sha256"]
        and stored.get("tta") == config.tta
    )  # fmt: skip


def internal_report(
    config: EvaluateConfig,
    run: RunConfig,
    model: keras.Model,
    checkpoint: dict,
    progress: bool = True,
) -> tuple[dict, bool]:
    """The run's own evaluation on its test split with `config`'s other settings: its
    report in the default folder when one made with the same checkpoint, TTA, bootstrap and
    threshold method is there, else computed now (and written there, thresholds included).

    Returns:
        (the report, with "out"; whether it was reused from disk).
    """
    own = dataclasses.replace(config, dataset="", out="", split=INTERNAL_SPLIT)
    out = default_out(own)
    path = out / REPORT_JSON
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict) and _reusable(old, own, run, checkpoint):
            return {**old, "out": str(out)}, True
    return _evaluate_own(own, run, model, checkpoint, out, progress), False


def _evaluate_external(
    config: EvaluateConfig,
    run: RunConfig,
    model: keras.Model,
    checkpoint: dict,
    progress: bool,
) -> dict:
    """Another dataset: the run's model on its split over the outputs it labels, with the
    thresholds of the run's own validation split, and the internal-vs-external table."""
    data = eval_data(run, config.dataset)
    manifest = reader.merged_manifest(data)
    shared, unlabelled = shared_outputs(run, manifest, config.dataset)
    check_stored_size(model, run, config.dataset)
    for folder in reader.dataset_dirs(data):
        Manifest.load(folder).split_files(config.split)
    internal, reused = internal_report(config, run, model, checkpoint, progress)
    thresholds = None
    if run.model.task != "multiclass":
        stored = load_thresholds(internal["out"]) or {"thresholds": {}}
        thresholds = {n: stored["thresholds"].get(n) for n in shared}
    out = Path(config.out) if config.out else default_out(config)
    out.mkdir(parents=True, exist_ok=True)
    pred = predict_split(
        model, run, config.split, config.tta, config.batch_size, progress, config.dataset
    ).subset(shared)
    result = build_report(config, run, pred, thresholds, manifest)
    result["external"] = True
    result["not_labelled"] = unlabelled
    result["checkpoint"] = checkpoint
    if thresholds is not None:
        result["threshold"].update(
            dataset=run.data.dataset, file=str(Path(internal["out"]) / thresholds_file(config.tta))
        )
        save_thresholds(
            out, thresholds, config.threshold_method, config.target_sensitivity, checkpoint,
            config.tta,
        )  # fmt: skip
    table = report.internal_vs_external(internal, result)
    table["internal_report"] = {
        "file": str(Path(internal["out"]) / REPORT_JSON), "reused": reused,
    }  # fmt: skip
    table["files"] = [COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG]
    result["internal_vs_external"] = table = report.json_safe(table)
    write_outputs(pred, result, out, report_gallery(config, run, model, pred, thresholds))
    (out / COMPARISON_JSON).write_text(json.dumps(table, indent=1) + "\n")
    (out / COMPARISON_MD).write_text(report.comparison_markdown(table))
    report.comparison_png(table, out / COMPARISON_PNG)
    result["out"] = str(out)
    return result


def evaluate(config: EvaluateConfig, progress: bool = True) -> dict:
    """Evaluates a run on its own dataset, or with `config.dataset` on another one; writes
    every output and returns the report (with "out"; external: also "comparison", the
    internal-vs-external table)."""
    run_dir = Path(config.run_dir)
    run = runs.load_run_config(run_dir)
    model = runs.load_model(run_dir, config.model)
    checkpoint = runs.file_identity(runs.model_path(run_dir, config.model))
    if is_external(config, run):
        return _evaluate_external(config, run, model, checkpoint, progress)
    check_stored_size(model, run, run.data.dataset)
    out = Path(config.out) if config.out else default_out(dataclasses.replace(config, dataset=""))
    return _evaluate_own(config, run, model, checkpoint, out, progress)
