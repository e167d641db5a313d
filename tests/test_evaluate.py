"""Evaluation command: report files, numbers recomputed with scikit-learn from the
predictions CSV, validation-chosen thresholds, test-time augmentation, binary and
multi-class report shapes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import damaged_run, tiny_run_config
from PIL import Image
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxr_tf import evaluate
from cxr_tf.config import EvaluateConfig, ModelConfig
from cxr_tf.data import pipeline
from cxr_tf.evaluation import evaluator, metrics
from cxr_tf.evaluation.thresholds import load_thresholds, read_thresholds
from cxr_tf.labels import FINDINGS
from cxr_tf.training import checkpoint, runs, trainer

N_BOOT = 200


def _copy_run(run_dir: Path, dest: Path) -> Path:
    """A writable copy of a run (evaluate writes thresholds.json into the run directory)."""
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("logs", "backup")))


def _read_predictions(path: Path) -> tuple[list[dict], np.ndarray, np.ndarray, list[str]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    names = [k[len("prob_") :] for k in rows[0] if k.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    labels = np.array([[int(r[f"label_{n}"]) for n in names] for r in rows])
    return rows, probs, labels, names


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory) -> Path:
    run_dir = _copy_run(trained_run, tmp_path_factory.mktemp("eval") / "run")
    assert evaluate.main(["--run_dir", str(run_dir), "--bootstrap", str(N_BOOT), "--quiet"]) == 0
    return run_dir


def test_writes_all_files_and_they_parse(evaluated):
    out = evaluated / "eval" / "test-best"
    report = json.loads((out / evaluator.REPORT_JSON).read_text())
    assert report["split"] == "test" and report["outputs"] == list(FINDINGS)
    assert report["bootstrap"] == {"n": N_BOOT, "unit": "patient", "alpha": 0.05}
    run = runs.load_run_config(evaluated)
    manifest = pipeline.load_manifest(run.data.dataset)
    assert report["n_images"] == manifest["splits"]["test"]["images"]
    rows, _, _, names = _read_predictions(out / evaluator.PREDICTIONS_FILE)
    assert len(rows) == report["n_images"] and names == list(FINDINGS)
    assert len({r["image"] for r in rows}) == len(rows)
    md = (out / evaluator.REPORT_MD).read_text()
    for text in ("Mean AUROC", "over 14 of 14 outputs", "CheXNet (own random split)",
                 "Wang et al. (official split)", "validation", "ECE"):  # fmt: skip
        assert text in md, text
    for png in (evaluator.ROC_PR_PNG, evaluator.CALIBRATION_PNG):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 200
    entry = report["per_output"]["Cardiomegaly"]
    keys = "threshold sensitivity specificity ppv npv f1 accuracy tp fp tn fn".split()
    assert set(entry["operating_point"]) >= set(keys)
    assert 0 <= entry["calibration"]["ece"] <= 1 and 0 <= entry["calibration"]["brier"] <= 1
    assert len(entry["calibration"]["bins"]["counts"]) == 10


def test_report_equals_sklearn_on_the_predictions_csv(evaluated):
    out = evaluated / "eval" / "test-best"
    report = json.loads((out / evaluator.REPORT_JSON).read_text())
    rows, probs, labels, names = _read_predictions(out / evaluator.PREDICTIONS_FILE)
    per = report["per_output"]
    aurocs = []
    for j, name in enumerate(names):
        expected = roc_auc_score(labels[:, j], probs[:, j])
        aurocs.append(expected)
        assert per[name]["auroc"] == pytest.approx(expected, abs=1e-9), name
        assert per[name]["auprc"] == pytest.approx(
            average_precision_score(labels[:, j], probs[:, j]), abs=1e-9
        )
        assert per[name]["n_pos"] == labels[:, j].sum()
        assert per[name]["prevalence"] == pytest.approx(labels[:, j].mean())
        op = per[name]["operating_point"]
        tn, fp, fn, tp = confusion_matrix(labels[:, j], probs[:, j] >= op["threshold"]).ravel()
        assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (tp, fp, tn, fn), name
        assert op["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert op["specificity"] == pytest.approx(tn / (tn + fp))
        low, high = per[name]["auroc_ci"]
        assert low <= per[name]["auroc"] <= high, name
    assert report["mean_auroc"]["value"] == pytest.approx(np.mean(aurocs), abs=1e-9)
    assert report["mean_auroc"]["n_outputs"] == 14


def test_thresholds_are_chosen_on_validation(evaluated):
    stored = load_thresholds(evaluated)
    assert set(stored) == {"method", "split", "target_sensitivity", "checkpoint", "tta",
                           "thresholds"}  # fmt: skip
    assert stored["method"] == "youden" and stored["split"] == "validation"
    assert stored["tta"] == "none"
    assert stored["checkpoint"] == runs.file_identity(evaluated / checkpoint.BEST_MODEL)
    assert load_thresholds(evaluated / "eval" / "test-best") == stored
    run = runs.load_run_config(evaluated)
    model = runs.load_model(evaluated)
    validation = evaluator.predict_split(model, run, "validation", progress=False)
    for j, name in enumerate(validation.names):
        expected = metrics.choose_threshold(validation.targets[:, j], validation.probs[:, j])
        assert stored["thresholds"][name] == pytest.approx(expected, rel=1e-12), name
    report = json.loads((evaluated / "eval" / "test-best" / evaluator.REPORT_JSON).read_text())
    for name, value in stored["thresholds"].items():
        assert report["per_output"][name]["operating_point"]["threshold"] == value
    assert load_thresholds(evaluated / "nowhere") is None


def test_other_options_get_their_own_report_folder(evaluated, tmp_path):
    run_dir = _copy_run(evaluated, tmp_path / "run")
    first = run_dir / "eval" / "test-best" / evaluator.REPORT_JSON
    before = first.read_text()
    argv = ["--run_dir", str(run_dir), "--split", "validation", "--tta", "flip",
            "--threshold_method", "max_f1", "--bootstrap", "20", "--quiet"]  # fmt: skip
    assert evaluate.main(argv) == 0
    second = run_dir / "eval" / "validation-best-tta-flip-max_f1"
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == [
        "test-best", "validation-best-tta-flip-max_f1",
    ]  # fmt: skip
    assert first.read_text() == before  # the earlier report is kept as it was
    report = json.loads((second / evaluator.REPORT_JSON).read_text())
    assert (report["split"], report["tta"]) == ("validation", "flip")
    assert report["checkpoint"]["sha256"] == runs.file_identity(run_dir / "best.keras")["sha256"]
    assert "test-time augmented (flip)" in (second / evaluator.REPORT_MD).read_text()
    # The run's thresholds.json now records TTA: export will not serve them.
    stored = load_thresholds(run_dir)
    assert stored == load_thresholds(second) and stored["tta"] == "flip"
    values, source = read_thresholds(run_dir, list(FINDINGS))
    assert values == [0.5] * 14 and "'flip'" in source["ignored"]["reason"]
    names = {
        ("test", "last", "none", "youden"): "test-last",
        ("test", "best", "tencrop", "sensitivity"): "test-best-tta-tencrop-sensitivity0.9",
    }
    for (split, model, tta, method), name in names.items():
        config = EvaluateConfig(run_dir="R", split=split, model=model, tta=tta,
                                threshold_method=method)  # fmt: skip
        assert evaluator.default_out(config) == Path("R") / "eval" / name


def test_damaged_model_file_is_a_clear_error(trained_run, tmp_path, capsys):
    run_dir = damaged_run(trained_run, tmp_path / "run", "truncated")
    assert evaluate.main(["--run_dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"evaluate: error: cannot read {run_dir / checkpoint.BEST_MODEL}: not a .keras" in err
    assert "Traceback" not in err and not (run_dir / "eval").exists()


def test_flip_and_tencrop_tta(trained_run):
    run = runs.load_run_config(trained_run)
    spec = pipeline.LabelSpec.from_config(run.model)
    images, _ = next(iter(pipeline.make_dataset(run.data, spec, "test", training=False)))
    x = np.asarray(images[:6], np.float32)
    model = runs.load_model(trained_run)
    plain = evaluator.predict_batch(model, x, spec.task, "none")
    flip = evaluator.predict_batch(model, x, spec.task, "flip")
    mirrored = 1 / (1 + np.exp(-np.asarray(model(x[:, :, ::-1], training=False), np.float64)))
    np.testing.assert_allclose(flip, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(flip - plain).max() > 1e-4
    views = evaluator.tta_views(x, "tencrop")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    # The centre crop (side 56 of 64, from row/column 4) resized back to 64 px.
    centre = keras.ops.image.resize(x[:, 4:60, 4:60], (64, 64), interpolation="bilinear")
    np.testing.assert_allclose(views[8], centre, atol=1e-3)
    np.testing.assert_allclose(views[9], np.asarray(views[8])[:, :, ::-1])
    tencrop = evaluator.predict_batch(model, x, spec.task, "tencrop")
    assert tencrop.shape == plain.shape and np.all((tencrop > 0) & (tencrop < 1))


@pytest.mark.parametrize(
    ("task", "findings"),
    [("binary", ("Pneumothorax",)), ("multiclass", ("No Finding", "Cardiomegaly", "Effusion"))],
)
def test_binary_and_multiclass_reports(train_dataset, tmp_path, task, findings):
    run = tiny_run_config(train_dataset, tmp_path / "run", epochs=1, steps_per_epoch=6)
    run.model = ModelConfig(backbone="tiny", weights="", image_size=64, task=task,
                            findings=findings)  # fmt: skip
    trainer.fit(run, verbose=0)
    argv = ["--run_dir", str(tmp_path / "run"), "--bootstrap", "50", "--out", str(tmp_path / "o")]
    assert evaluate.main([*argv, "--quiet", "--threshold_method", "max_f1"]) == 0
    report = json.loads((tmp_path / "o" / evaluator.REPORT_JSON).read_text())
    assert report["task"] == task and report["outputs"] == list(findings)
    assert list(report["per_output"]) == list(findings)
    md = (tmp_path / "o" / evaluator.REPORT_MD).read_text()
    if task == "binary":
        assert report["mean_auroc"]["n_outputs"] == 1
        stored = load_thresholds(tmp_path / "run")
        assert stored["method"] == "max_f1" and list(stored["thresholds"]) == ["Pneumothorax"]
        assert "| Pneumothorax |" in md and "0.8887" in md  # CheXNet reference
    else:
        mc = report["multiclass"]
        assert np.array(mc["confusion_matrix"]).shape == (3, 3)
        assert np.sum(mc["confusion_matrix"]) == report["n_images"] == mc["n"]
        assert 0 <= mc["accuracy"] <= 1 and set(mc["auroc"]) == set(findings)
        _, probs, labels, _ = _read_predictions(tmp_path / "o" / evaluator.PREDICTIONS_FILE)
        assert np.all(labels.sum(axis=1) == 1)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert mc["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels.argmax(1)))
        assert load_thresholds(tmp_path / "run") is None
        assert "Confusion matrix" in md


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    assert "--threshold_method" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate.main(["--run_dir", str(tmp_path), "--tta", "sideways"])
    assert evaluate.main(["--run_dir", str(tmp_path), "--quiet"]) == 2
    assert "evaluate: error" in capsys.readouterr().err
