"""Localization command on the shared tiny model: files written, every boxed finding
scored, finite heatmaps and gradients, and the synthetic pointing-game check."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import damaged_run
from PIL import Image

from cxr_tf import localize
from cxr_tf.evaluation import localization, localizer
from cxr_tf.labels import FINDINGS
from cxr_tf.modeling import models
from cxr_tf.runs import folder as runs


@pytest.fixture(scope="module")
def localized(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("localize")
    argv = ["--run_dir", str(trained_run), "--out", str(out), "--overlays", "3", "--quiet"]
    assert localize.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def boxed(trained_run) -> list[localizer.BoxedImage]:
    run = runs.load_run_config(trained_run)
    return localizer.read_boxed_images(run.data.dataset, "test")


@pytest.mark.slow
def test_boxed_images_are_read_in_stored_pixels(boxed):
    assert boxed and all(item.boxes for item in boxed)
    for item in boxed:
        assert item.image.shape == (64, 64, 1) and item.image.dtype == np.uint8
        for finding, (x, y, w, h) in item.boxes:
            assert finding in FINDINGS
            # Synthetic patterns are 12-22% of the side: 7-15 px at 64 px, inside the image.
            assert 6 <= w <= 16 and 6 <= h <= 16, (finding, w, h)
            assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64


@pytest.mark.slow
def test_writes_files_and_scores_every_box(localized, boxed):
    result = json.loads((localized / localizer.LOCALIZATION_JSON).read_text())
    n_boxes = sum(len(item.boxes) for item in boxed)
    assert result["n_images"] == len(boxed) and result["n_cases"] == n_boxes
    assert len(result["cases"]) == n_boxes and result["skipped"] == {}
    table = result["table"]
    assert table["all"]["n"] == n_boxes
    assert list(table["all"]["accuracy"]) == ["0.1", "0.25", "0.5", "0.75", "0.9"]
    accuracy = list(table["all"]["accuracy"].values())
    assert accuracy == sorted(accuracy, reverse=True)  # a higher T is never easier
    hits = np.mean([case["pointing_hit"] for case in result["cases"]])
    assert table["all"]["pointing"] == pytest.approx(hits) == result["pointing_game"]
    for case in result["cases"]:
        assert 0 <= case["best_iou"] <= case["best_iobb"] <= 1
    md = (localized / localizer.LOCALIZATION_MD).read_text()
    assert "| T(IoBB) |" in md and "pointing game" in md and "Wang et al. 2017" in md
    overlays = sorted((localized / localizer.OVERLAY_DIR).glob("*.png"))
    assert overlays and len(overlays) == len(result["overlays"])
    assert {p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in overlays} == {
        Path(item.image_id).stem for item in boxed[:3]
    }
    with Image.open(overlays[0]) as image:
        assert image.format == "PNG"


# The requirement: Grad-CAM of the shared tiny model (conftest.trained_run) hits the
# synthetic findings' boxes. Measured 0.88 over the 365 test boxes (tolerance 0).
@pytest.mark.slow
def test_pointing_game_on_synthetic_test_split(localized):
    result = json.loads((localized / localizer.LOCALIZATION_JSON).read_text())
    assert result["n_cases"] >= 100
    assert result["pointing_game"] >= 0.8, result["table"]["all"]


@pytest.mark.slow
def test_pointing_game_beats_chance(localized, boxed):
    """A peak at a random pixel falls in a box with probability box area / image area."""
    chance = np.mean([w * h / 64**2 for item in boxed for _, (_, _, w, h) in item.boxes])
    result = json.loads((localized / localizer.LOCALIZATION_JSON).read_text())
    assert chance < 0.05 and result["pointing_game"] > 5 * chance


@pytest.mark.slow
def test_heatmaps_and_gradients_are_finite(trained_run, boxed):
    model = runs.load_model(trained_run)
    layer = models.feature_layer_name(model)
    real = np.stack([item.image for item in boxed[:8]]).astype(np.float32)
    # Blank and saturated images: flat feature maps, where a division by a zero maximum or
    # a zero gradient would show up as NaN.
    edge = np.stack([np.zeros((64, 64, 1)), np.full((64, 64, 1), 255.0)]).astype(np.float32)
    images = np.concatenate([real, edge])
    for method in (localization.gradcam, localization.cam):
        for k in (0, 7, 13):
            heat = method(model, images, k, layer)
            assert heat.shape == (10, 64, 64) and np.all(np.isfinite(heat))
            assert heat.min() >= 0 and heat.max() <= 1
    features = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])
    with tf.GradientTape() as tape:
        feature_map, logits = features(tf.constant(images), training=False)
        target = tf.reduce_sum(logits)
    grads = tape.gradient(target, feature_map)
    assert np.all(np.isfinite(grads.numpy())) and np.any(grads.numpy() != 0)


@pytest.mark.slow
def test_one_finding_with_cam_replaces_earlier_overlays(trained_run, tmp_path, capsys):
    # An earlier run's overlays (another finding) in the same folder.
    earlier = [tmp_path / localizer.OVERLAY_DIR / f"0000000{i}_000_Mass.png" for i in range(3)]
    for path in earlier:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\x89PNG earlier run")
    (tmp_path / localizer.OVERLAY_DIR / "notes.txt").write_text("kept: not an overlay")
    argv = ["--run_dir", str(trained_run), "--out", str(tmp_path), "--finding", "Cardiomegaly",
            "--method", "cam", "--overlays", "2"]  # fmt: skip
    assert localize.main(argv) == 0
    assert f"removed 3 overlay(s) of an earlier run from {tmp_path / 'overlays'}" in (
        capsys.readouterr().out
    )
    result = json.loads((tmp_path / localizer.LOCALIZATION_JSON).read_text())
    assert result["method"] == "cam" and set(result["table"]) == {"Cardiomegaly", "all"}
    assert {case["finding"] for case in result["cases"]} == {"Cardiomegaly"}
    assert result["overlays"] and all(p.endswith("_Cardiomegaly.png") for p in result["overlays"])
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("overlays/*.png"))
    assert written == sorted(result["overlays"])  # only this run's overlays
    assert (tmp_path / localizer.OVERLAY_DIR / "notes.txt").exists()


def test_output_for_maps_findings_to_outputs():
    assert localizer.output_for("Mass", FINDINGS) == FINDINGS.index("Mass")
    assert localizer.output_for("Mass", ("Pneumothorax",)) is None
    assert localizer.output_for("Mass", ("any",)) == 0


@pytest.mark.slow
def test_cli_help_and_errors(trained_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        localize.main(["--help"])
    assert exit_info.value.code == 0
    assert "--method" in capsys.readouterr().out
    # not an output of the run (any name may be a dataset's own finding: checked at the run)
    argv = ["--run_dir", str(trained_run), "--finding", "Pneumonitis", "--quiet"]
    assert localize.main(argv) == 2
    assert "'Pneumonitis' is not an output" in capsys.readouterr().err
    assert localize.main(["--run_dir", str(tmp_path), "--quiet"]) == 2
    run_dir = damaged_run(trained_run, tmp_path / "damaged", "garbage")
    capsys.readouterr()
    assert localize.main(["--run_dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"localize: error: cannot read {run_dir / runs.BEST_MODEL}: not a .keras" in err
    assert "Traceback" not in err
