"""Evaluation command: report files, numbers recomputed with scikit-learn from the
predictions CSV, validation-chosen thresholds, test-time augmentation, binary and
multi-class report shapes, metrics over known labels only, and evaluation on another
(external) dataset with the internal-vs-external table."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import convert_folder, damaged_run, make_synth, tiny_run_config
from PIL import Image
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxr_tf import evaluate
from cxr_tf.config import EvaluateConfig, ModelConfig
from cxr_tf.data import reader
from cxr_tf.data.manifest import MANIFEST, ImageInfo, Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.evaluation import evaluator, metrics
from cxr_tf.evaluation.thresholds import load_thresholds, read_thresholds
from cxr_tf.labels import FINDING_INDEX, FINDINGS, MASKED, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.runs import folder as runs
from cxr_tf.sources.registry import labelled_by
from cxr_tf.training import trainer

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


@pytest.mark.slow
def test_writes_all_files_and_they_parse(evaluated):
    out = evaluated / "eval" / "test-best"
    report = json.loads((out / evaluator.REPORT_JSON).read_text())
    assert report["split"] == "test" and report["outputs"] == list(FINDINGS)
    assert report["bootstrap"] == {"n": N_BOOT, "unit": "patient", "alpha": 0.05, "seed": 0}
    run = runs.load_run_config(evaluated)
    manifest = Manifest.load(run.data.dataset)
    assert report["n_images"] == manifest.splits["test"].images
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_thresholds_are_chosen_on_validation(evaluated):
    stored = load_thresholds(evaluated)
    assert set(stored) == {"method", "split", "target_sensitivity", "checkpoint", "tta",
                           "thresholds"}  # fmt: skip
    assert stored["method"] == "youden" and stored["split"] == "validation"
    assert stored["tta"] == "none"
    assert stored["checkpoint"] == runs.file_identity(evaluated / runs.BEST_MODEL)
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


@pytest.mark.slow
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
    # TTA thresholds are kept apart: the run's thresholds.json, which export serves, stays
    # the one chosen without TTA
    flipped = load_thresholds(run_dir, "flip")
    assert flipped == load_thresholds(second, "flip") and flipped["tta"] == "flip"
    assert load_thresholds(run_dir) == load_thresholds(run_dir / "eval" / "test-best")
    values, source = read_thresholds(run_dir, list(FINDINGS))
    assert source["tta"] == "none" and "ignored" not in source
    assert values == [load_thresholds(run_dir)["thresholds"].get(f, 0.5) for f in FINDINGS]
    names = {
        ("test", "last", "none", "youden"): "test-last",
        ("test", "best", "tencrop", "sensitivity"): "test-best-tta-tencrop-sensitivity0.9",
    }
    for (split, model, tta, method), name in names.items():
        config = EvaluateConfig(run_dir="R", split=split, model=model, tta=tta,
                                threshold_method=method)  # fmt: skip
        assert evaluator.default_out(config) == Path("R") / "eval" / name


@pytest.mark.slow
def test_damaged_model_file_is_a_clear_error(trained_run, tmp_path, capsys):
    run_dir = damaged_run(trained_run, tmp_path / "run", "truncated")
    assert evaluate.main(["--run_dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"evaluate: error: cannot read {run_dir / runs.BEST_MODEL}: not a .keras" in err
    assert "Traceback" not in err and not (run_dir / "eval").exists()


@pytest.mark.slow
def test_flip_and_tencrop_tta(trained_run):
    run = runs.load_run_config(trained_run)
    spec = LabelSpec.from_config(run.model)
    images, _ = next(iter(reader.make_dataset(run.data, spec, "test")))
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "findings"),
    [("binary", ("Pneumothorax",)), ("multiclass", ("No Finding", "Cardiomegaly", "Effusion"))],
)
def test_binary_and_multiclass_reports(train_dataset, tmp_path, task, findings):
    run = tiny_run_config(train_dataset, tmp_path / "run", epochs=1, steps_per_epoch=6)
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, task=task,
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


# ------------------------------------------------------------------ known labels only


def _masked_predictions() -> evaluator.Predictions:
    rng = np.random.default_rng(0)
    n = 120
    names = ("Atelectasis", "Cardiomegaly", "Hernia", "Mass")
    targets = (rng.random((n, 4)) < 0.3).astype(np.int64)
    probs = np.clip(0.4 * targets + 0.6 * rng.random((n, 4)), 0, 1)
    targets[rng.random(n) < 0.5, 1] = -1  # Cardiomegaly: unknown for about half
    targets[:, 2] = -1  # Hernia: never known
    targets[:, 3] = np.where(rng.random(n) < 0.5, -1, 0)  # Mass: known ones all negative
    patients = rng.integers(0, 40, n)
    return evaluator.Predictions(names, [f"{i}.png" for i in range(n)], patients, probs, targets)


def test_metrics_use_known_labels_only_and_say_n(tmp_path):
    pred = _masked_predictions()
    thresholds = evaluator.choose_thresholds(pred, "youden")
    per = evaluator.output_metrics(pred, thresholds, n_boot=100, seed=1)
    t, p = pred.targets, pred.probs
    known = t[:, 1] >= 0
    tk, pk = t[known, 1], p[known, 1]
    assert thresholds["Cardiomegaly"] == metrics.choose_threshold(tk, pk, "youden")
    card = per["Cardiomegaly"]
    assert (card["n"], card["n_pos"], card["n_unknown"]) == (known.sum(), tk.sum(), (~known).sum())
    assert card["n"] + card["n_unknown"] == len(t) and card["undefined"] is None
    assert card["auroc"] == pytest.approx(roc_auc_score(tk, pk), abs=1e-12)
    assert card["auprc"] == pytest.approx(average_precision_score(tk, pk), abs=1e-12)
    assert card["prevalence"] == pytest.approx(tk.mean())
    op = card["operating_point"]
    tn, fp, fn, tp = confusion_matrix(tk, pk >= op["threshold"]).ravel()
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (tp, fp, tn, fn)
    assert card["calibration"]["brier"] == pytest.approx(np.mean((pk - tk) ** 2))
    assert sum(card["calibration"]["bins"]["counts"]) == known.sum()
    ci = metrics.patient_bootstrap_ci(t[:, 1], p[:, 1], pred.patients, n_boot=100, seed=1)
    assert tuple(card["auroc_ci"]) + (card["auroc_ci_resamples"],) == ci
    assert ci[0] <= card["auroc"] <= ci[1]
    # Never known: every number n/a, with the reason; no crash.
    hernia = per["Hernia"]
    assert (hernia["n"], hernia["n_pos"], hernia["auroc"], hernia["auprc"]) == (0, 0, None, None)
    assert hernia["undefined"].startswith("no known label") and hernia["calibration"] is None
    assert hernia["operating_point"] is None and thresholds["Hernia"] is None
    assert hernia["auroc_ci"] == [None, None] and hernia["prevalence"] is None
    # Known but one class only.
    mass = per["Mass"]
    assert mass["n"] > 0 and mass["n_pos"] == 0 and mass["auroc"] is None
    assert mass["undefined"] == "no positive case" and thresholds["Mass"] is None
    # A fully known column is what it always was.
    assert per["Atelectasis"]["n"] == len(t) and per["Atelectasis"]["auroc"] == pytest.approx(
        roc_auc_score(t[:, 0], p[:, 0])
    )
    run = tiny_run_config(tmp_path / "data", tmp_path / "run")
    bare = Manifest(2, "d", VOCABULARY, ImageInfo(64, "png"), splits={})  # no split strategy
    result = evaluator.build_report(
        EvaluateConfig(run_dir="R", bootstrap=100, seed=1), run, pred, thresholds, manifest=bare
    )
    assert result["mean_auroc"] == {"value": pytest.approx(np.mean(
        [per["Atelectasis"]["auroc"], card["auroc"]])), "n_outputs": 2}  # fmt: skip
    md = evaluator.report.markdown(result)
    assert f"| Cardiomegaly | {known.sum()} | {tk.sum()} |" in md
    assert "n/a (no known label" in md and "Mass: no positive case" in md
    evaluator.write_outputs(pred, result, tmp_path)  # figures with n/a panels: no crash
    _, _, labels, _ = _read_predictions(tmp_path / evaluator.PREDICTIONS_FILE)
    np.testing.assert_array_equal(labels, t)


# ------------------------------------------------------------------ external datasets


@pytest.fixture(scope="module")
def external_source(tmp_path_factory) -> Path:
    """Another synthetic NIH-like folder (other seed): the images of the external dataset."""
    return make_synth(tmp_path_factory.mktemp("synth_external"), n=160, seed=23, image_size=128)


@pytest.fixture(scope="module")
def external_dataset(external_source, tmp_path_factory) -> Path:
    """`external_source` converted at the stored size of the shared run's dataset (64)."""
    out = tmp_path_factory.mktemp("tfrecords_external")
    return convert_folder(external_source, out, stored_size=64, name="external64")


def _rewrite_dataset(src: Path, dest: Path, relabel=None, **manifest_fields) -> Path:
    """A copy of a converted dataset whose records' label states pass through
    `relabel(states, record_number)` and whose manifest gets `manifest_fields`."""
    import tensorflow as tf

    manifest = json.loads((src / MANIFEST).read_text())
    number = 0
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            path = dest / shard["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if relabel is None:
                shutil.copy(src / shard["file"], path)
                continue
            with tf.io.TFRecordWriter(str(path)) as writer:
                for record in tf.data.TFRecordDataset(str(src / shard["file"])):
                    example = tf.train.Example.FromString(record.numpy())
                    relabel(example.features.feature["labels"].int64_list.value, number)
                    number += 1
                    writer.write(example.SerializeToString(deterministic=True))
            data = path.read_bytes()
            shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest.update(dataset=dest.name, **manifest_fields)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def _mask_some(states, number: int) -> None:
    """Fibrosis and Hernia never labelled; Cardiomegaly labelled on every other image;
    Effusion uncertain on every third."""
    for name in ("Fibrosis", "Hernia"):
        states[FINDING_INDEX[name]] = UNLABELLED
    if number % 2 == 0:
        states[FINDING_INDEX["Cardiomegaly"]] = UNLABELLED
    if number % 3 == 0:
        states[FINDING_INDEX["Effusion"]] = UNCERTAIN


def _evaluate_printing(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = evaluate.main(argv)
    return status, stdout.getvalue()


@pytest.fixture(scope="module")
def external_evaluated(trained_run, external_dataset, tmp_path_factory) -> tuple[Path, str]:
    """A fresh copy of the shared run evaluated on the external dataset only: the internal
    evaluation it needs is computed on the way."""
    run_dir = _copy_run(trained_run, tmp_path_factory.mktemp("external") / "run")
    argv = ["--run_dir", str(run_dir), "--dataset", str(external_dataset),
            "--bootstrap", str(N_BOOT), "--quiet"]  # fmt: skip
    status, stdout = _evaluate_printing(argv)
    assert status == 0
    return run_dir, stdout


def _report(folder: Path) -> dict:
    return json.loads((folder / evaluator.REPORT_JSON).read_text())


@pytest.mark.slow
def test_external_evaluation_report_and_internal_vs_external_table(
    external_evaluated, evaluated, external_dataset
):
    run_dir, stdout = external_evaluated
    out = run_dir / "eval" / "external-external64-test-best"
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == [out.name, "test-best"]
    for name in ("predictions.csv", "report.json", "report.md", "roc_pr.png", "calibration.png",
                 "thresholds.json", evaluator.COMPARISON_JSON, evaluator.COMPARISON_MD,
                 evaluator.COMPARISON_PNG):  # fmt: skip
        assert (out / name).is_file(), name
    with Image.open(out / evaluator.COMPARISON_PNG) as image:
        assert image.format == "PNG" and min(image.size) > 200
    report = _report(out)
    assert report["external"] is True and report["dataset"] == str(external_dataset)
    assert report["outputs"] == list(FINDINGS) and report["not_labelled"] == []
    run = runs.load_run_config(run_dir)
    assert report["run_dataset"] == run.data.dataset
    manifest = Manifest.load(external_dataset)
    assert report["n_images"] == manifest.splits["test"].images
    rows, probs, labels, names = _read_predictions(out / evaluator.PREDICTIONS_FILE)
    assert names == list(FINDINGS) and len(rows) == report["n_images"]
    for j, name in enumerate(names):
        entry = report["per_output"][name]
        assert entry["n"] == len(rows) and entry["n_pos"] == labels[:, j].sum()
        if 0 < labels[:, j].sum() < len(rows):
            assert entry["auroc"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]))
        else:
            assert entry["auroc"] is None and entry["undefined"]
    # Thresholds: the run's own, chosen on its validation split by the internal evaluation.
    own = run_dir / "eval" / "test-best"
    stored = load_thresholds(own)
    assert load_thresholds(run_dir) == stored and stored["split"] == "validation"
    assert load_thresholds(out)["thresholds"] == stored["thresholds"]
    for name, value in stored["thresholds"].items():
        assert report["per_output"][name]["operating_point"]["threshold"] == value
    # The internal evaluation computed on the way is the one `evaluate` alone writes.
    internal = _report(own)
    alone = _report(evaluated / "eval" / "test-best")
    for name in FINDINGS:
        for key in ("auroc", "auroc_ci", "n", "n_pos"):
            assert internal["per_output"][name][key] == alone["per_output"][name][key]
    table = json.loads((out / evaluator.COMPARISON_JSON).read_text())
    assert table == report["internal_vs_external"]
    assert table["internal_report"]["reused"] is False
    assert [r["output"] for r in table["rows"]] == list(FINDINGS)
    for row in table["rows"]:
        name = row["output"]
        for side, source in (("internal", internal), ("external", report)):
            entry = source["per_output"][name]
            assert row[side]["auroc"] == entry["auroc"] and row[side]["n"] == entry["n"]
            assert row[side]["auroc_ci"] == entry["auroc_ci"]
        if row["internal"]["auroc"] is not None and row["external"]["auroc"] is not None:
            assert row["difference"] == pytest.approx(
                row["external"]["auroc"] - row["internal"]["auroc"]
            )
    md = (out / evaluator.COMPARISON_MD).read_text()
    assert "| output | internal AUROC [95% CI] (n) | external AUROC [95% CI] (n) |" in md
    assert md.split("\n", 2)[2] in stdout and "## Internal vs external" in (
        out / evaluator.REPORT_MD
    ).read_text()


@pytest.mark.slow
def test_external_evaluation_reuses_the_internal_report(external_evaluated, external_dataset,
                                                        tmp_path):  # fmt: skip
    run_dir, _ = external_evaluated
    before = (run_dir / "eval" / "test-best" / evaluator.REPORT_JSON).read_text()
    argv = ["--run_dir", str(run_dir), "--dataset", str(external_dataset),
            "--bootstrap", str(N_BOOT), "--quiet", "--out", str(tmp_path / "again")]  # fmt: skip
    assert evaluate.main(argv) == 0
    table = json.loads((tmp_path / "again" / evaluator.COMPARISON_JSON).read_text())
    first = json.loads(
        (run_dir / "eval" / "external-external64-test-best" / evaluator.COMPARISON_JSON).read_text()
    )
    assert table["internal_report"]["reused"] is True and table["rows"] == first["rows"]
    assert (run_dir / "eval" / "test-best" / evaluator.REPORT_JSON).read_text() == before


@pytest.mark.slow
def test_external_dataset_with_unknown_labels(
    external_evaluated, external_dataset, evaluated, tmp_path
):
    masked = _rewrite_dataset(
        external_dataset, tmp_path / "masked64", _mask_some,
        labelled_findings=[n for n in FINDINGS if n not in ("Fibrosis", "Hernia")],
    )  # fmt: skip
    run_dir = _copy_run(evaluated, tmp_path / "run")
    argv = ["--run_dir", str(run_dir), "--dataset", str(masked), "--bootstrap", str(N_BOOT)]
    status, stdout = _evaluate_printing([*argv, "--quiet"])
    assert status == 0
    assert "not labelled by" in stdout and "Fibrosis, Hernia" in stdout
    out = run_dir / "eval" / "external-masked64-test-best"
    report = _report(out)
    shared = [n for n in FINDINGS if n not in ("Fibrosis", "Hernia")]
    assert report["outputs"] == shared and report["not_labelled"] == ["Fibrosis", "Hernia"]
    assert report["internal_vs_external"]["internal_report"]["reused"] is True
    assert "Fibrosis, Hernia" in (out / evaluator.REPORT_MD).read_text()
    rows, _, labels, names = _read_predictions(out / evaluator.PREDICTIONS_FILE)
    assert names == shared
    # The same images, unmasked, from the plain external evaluation.
    plain_dir = external_evaluated[0] / "eval" / "external-external64-test-best"
    plain_rows, plain_probs, plain_labels, plain_names = _read_predictions(
        plain_dir / evaluator.PREDICTIONS_FILE
    )
    assert [r["image"] for r in rows] == [r["image"] for r in plain_rows]
    for name in ("Cardiomegaly", "Effusion"):
        j, k = names.index(name), plain_names.index(name)
        known = labels[:, j] >= 0
        assert 0 < known.sum() < len(rows)
        np.testing.assert_array_equal(labels[known, j], plain_labels[known, k])
        entry = report["per_output"][name]
        assert (entry["n"], entry["n_unknown"]) == (known.sum(), (~known).sum())
        assert entry["n_pos"] == plain_labels[known, k].sum()
        y, s = plain_labels[known, k], plain_probs[known, k]
        if 0 < y.sum() < len(y):
            assert entry["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            low, high = entry["auroc_ci"]
            assert entry["auroc_ci_resamples"] > 0 and low <= entry["auroc"] <= high
        else:
            assert entry["auroc"] is None and entry["undefined"]
    # A finding known on every image keeps the unmasked numbers.
    mass = report["per_output"]["Mass"]
    assert mass["auroc"] == _report(plain_dir)["per_output"]["Mass"]["auroc"]
    # Both datasets at once: Hernia is known on the plain one's images only.
    both = f"{external_dataset},{masked}"
    argv = ["--run_dir", str(run_dir), "--dataset", both, "--bootstrap", str(N_BOOT), "--quiet"]
    assert evaluate.main(argv) == 0
    report = _report(run_dir / "eval" / "external-external64+masked64-test-best")
    assert report["outputs"] == list(FINDINGS) and report["n_images"] == 2 * len(rows)
    hernia = report["per_output"]["Hernia"]
    assert (hernia["n"], hernia["n_unknown"]) == (len(rows), len(rows))
    j = plain_names.index("Hernia")
    assert hernia["auroc"] == pytest.approx(roc_auc_score(plain_labels[:, j], plain_probs[:, j]))


@pytest.mark.slow
def test_external_chexpert_imitation(evaluated, tmp_path):
    """A CheXpert-like dataset: 7 of the 14 outputs labelled, uncertain labels masked (its
    training split has them; compared with the run's own test split)."""
    from cxr_tf.config import ConvertConfig, SynthConfig
    from cxr_tf.data import conversion
    from cxr_tf.synthetic import layouts as synthetic_layouts

    summary = synthetic_layouts.generate_layout(
        SynthConfig(out=str(tmp_path / "chexpert"), n=160, seed=3, image_size=64,
                    layout="chexpert", prevalence="0.1"),
        progress=False,
    )  # fmt: skip
    config = ConvertConfig(root=summary["out"], out_dir=str(tmp_path / "data"), stored_size=64)
    dataset = tmp_path / "data" / conversion.convert(config, progress=False).dataset
    run_dir = _copy_run(evaluated, tmp_path / "run")
    argv = ["--run_dir", str(run_dir), "--dataset", str(dataset), "--bootstrap", str(N_BOOT),
            "--split", "train"]  # fmt: skip
    assert evaluate.main([*argv, "--quiet", "--out", str(tmp_path / "out")]) == 0
    report = _report(tmp_path / "out")
    labelled = set(labelled_by("chexpert"))
    assert report["outputs"] == [n for n in FINDINGS if n in labelled]
    assert report["not_labelled"] == [n for n in FINDINGS if n not in labelled]
    assert len(report["outputs"]) == 7
    rows, probs, labels, names = _read_predictions(tmp_path / "out" / evaluator.PREDICTIONS_FILE)
    assert (labels == -1).any()  # uncertain (or blank) labels are unknown here
    for j, name in enumerate(names):
        entry = report["per_output"][name]
        known = labels[:, j] >= 0
        assert entry["n"] == known.sum() and entry["n_unknown"] == len(rows) - known.sum()
        y, s = labels[known, j], probs[known, j]
        if 0 < y.sum() < len(y):
            assert entry["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        else:
            assert entry["auroc"] is None and entry["undefined"]
    table = report["internal_vs_external"]
    assert [r["output"] for r in table["rows"]] == report["outputs"]
    assert (table["internal_split"], table["external_split"]) == ("test", "train")
    assert table["internal_report"]["reused"] is True


@pytest.mark.slow
def test_external_dataset_refusals(evaluated, external_source, external_dataset, tmp_path,
                                   capsys):  # fmt: skip
    run_dir = _copy_run(evaluated, tmp_path / "run")
    before = sorted(p.name for p in (run_dir / "eval").iterdir())
    bigger = convert_folder(external_source, tmp_path / "data", stored_size=128, name="ext128")
    assert evaluate.main(["--run_dir", str(run_dir), "--dataset", str(bigger), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"evaluate: error: dataset: {bigger} is stored at 128 px" in err
    assert "takes 64 px" in err and "--stored_size 64" in err and "Traceback" not in err
    other = _rewrite_dataset(
        external_dataset, tmp_path / "fractures", labelled_findings=["Fracture"]
    )
    assert evaluate.main(["--run_dir", str(run_dir), "--dataset", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "labels none of the model's outputs" in err and "it labels Fracture" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == before


@pytest.mark.slow
def test_external_out_folder_names(trained_run):
    config = EvaluateConfig(run_dir="R", dataset="/data/a_64, /data/b_64", tta="flip")
    assert evaluator.default_out(config) == Path("R/eval/external-a_64+b_64-test-best-tta-flip")
    run = runs.load_run_config(trained_run)
    assert not evaluator.is_external(EvaluateConfig(run_dir="R", dataset=run.data.dataset), run)
    assert evaluator.is_external(config, run)


def test_validation_auroc_callback_skips_unknown_targets_and_logs_n():
    import tensorflow as tf

    from cxr_tf.training import callbacks

    rng = np.random.default_rng(4)
    spec = LabelSpec("multilabel", ("Atelectasis", "Cardiomegaly"))
    y = (rng.random((60, 2)) < 0.4).astype(np.float32)
    logits = rng.normal(size=(60, 2)) + 2 * y
    y[::3, 1] = MASKED
    result = callbacks.auroc_of(logits, y, spec)
    known = y[:, 1] >= 0
    assert result["per_output"]["Cardiomegaly"] == pytest.approx(
        roc_auc_score(y[known, 1], logits[known, 1])
    )
    assert result["n_per_output"] == {"Atelectasis": 60, "Cardiomegaly": int(known.sum())}
    assert "known labels per output 40-60" in callbacks.format_auroc(result)
    images = tf.data.Dataset.from_tensor_slices((np.zeros((60, 4, 4, 1)), y)).batch(16)
    callback = callbacks.AurocCallback(images, spec)
    callback._logits = lambda: (logits, y)
    logs: dict = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_n/Cardiomegaly"] == known.sum() and logs["val_n/Atelectasis"] == 60
    assert logs["val_auroc/Cardiomegaly"] == pytest.approx(result["per_output"]["Cardiomegaly"])
