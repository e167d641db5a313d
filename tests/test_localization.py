"""Localization: box overlaps on hand-made boxes, boxes from known heatmaps, the pointing
game, the Wang et al.-style table, and Grad-CAM / CAM on tiny models (real `build_model`
and a hand-weighted model whose answer is known)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from cxr_tf.config import AugmentConfig, ModelConfig
from cxr_tf.evaluation import localization as L
from cxr_tf.modeling import models as M

SIZE = 64


def _tiny(**overrides) -> ModelConfig:
    return ModelConfig(backbone="tiny", weights="", input_size=SIZE, **overrides)


def _images(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype("float32")


@pytest.fixture(scope="module")
def plain() -> keras.Model:
    keras.utils.set_random_seed(0)
    return M.build_model(_tiny())


@pytest.fixture(scope="module")
def augmented() -> keras.Model:
    """Augmentation layers in front, a resize to 64 inside, dropout in the head."""
    keras.utils.set_random_seed(1)
    return M.build_model(_tiny(dropout=0.3), stored_size=80, augment=AugmentConfig(), seed=1)


# ------------------------------------------------------------------------ box overlaps


def test_iou_and_iobb_on_hand_made_boxes():
    box = (0, 0, 10, 10)
    # identical: IoU 1, IoBB 1
    assert L.iou(box, box) == 1.0 and L.iobb(box, box) == 1.0
    # disjoint, and touching along an edge: 0
    assert L.iou(box, (20, 20, 5, 5)) == 0.0 and L.iobb((20, 20, 5, 5), box) == 0.0
    assert L.iou(box, (10, 0, 10, 10)) == 0.0 and L.iobb((10, 0, 10, 10), box) == 0.0
    # predicted (2,2,4,4) inside the truth: IoBB = 16/16 = 1, IoU = 16/100 = area ratio
    inner = (2, 2, 4, 4)
    assert L.iobb(inner, box) == 1.0
    assert L.iou(inner, box) == pytest.approx(0.16)
    # the other way round, the big box predicted: IoBB = 16/100
    assert L.iobb(box, inner) == pytest.approx(0.16)
    # half overlap: intersection 5x10 = 50, union 150 -> IoU 1/3, IoBB 50/100
    shifted = (5, 0, 10, 10)
    assert L.iou(box, shifted) == pytest.approx(1 / 3)
    assert L.iobb(shifted, box) == pytest.approx(0.5)
    # symmetric IoU, scored boxes (5th element) accepted
    assert L.iou(shifted, box) == L.iou(box, (*shifted, 0.9))
    # zero-area boxes: 0, never a division error
    assert L.iou((0, 0, 0, 10), box) == 0.0 and L.iobb((0, 0, 0, 10), box) == 0.0
    assert L.iou((3, 3, 0, 0), (3, 3, 0, 0)) == 0.0 and L.iobb((3, 3, 0, 0), (3, 3, 0, 0)) == 0.0


# --------------------------------------------------------------------------------- boxes


def _two_blobs() -> np.ndarray:
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    heat[10:20, 5:15] = 0.6  # box (5, 10, 10, 10), area 100
    heat[40:48, 30:50] = 1.0  # box (30, 40, 20, 8), area 160
    heat[60, 60] = 0.9  # one pixel: below the default minimum area 0.001 * 4096
    return heat


def test_boxes_from_heatmap_blobs_in_score_order():
    heat = _two_blobs()
    boxes = L.boxes_from_heatmap(heat)
    assert boxes == [(30.0, 40.0, 20.0, 8.0, 1.0), (5.0, 10.0, 10.0, 10.0, pytest.approx(0.6))]
    assert L.boxes_from_heatmap(heat, max_boxes=1) == [boxes[0]]
    # 120 px minimum area drops the 100 px blob
    assert L.boxes_from_heatmap(heat, min_area_fraction=120 / SIZE**2) == [boxes[0]]
    # without a minimum area the single pixel comes second (peak 0.9)
    assert L.boxes_from_heatmap(heat, min_area_fraction=0)[1][:4] == (60.0, 60.0, 1.0, 1.0)
    # threshold 0.7 of the max keeps only the hot blob and the pixel (dropped by area)
    assert L.boxes_from_heatmap(heat, threshold=0.7) == [boxes[0]]


def test_boxes_from_flat_or_bad_heatmaps():
    assert L.boxes_from_heatmap(np.zeros((32, 32))) == []
    assert L.boxes_from_heatmap(np.full((32, 32), -1.0)) == []
    heat = np.full((32, 32), np.nan)
    heat[4:8, 4:8] = 1.0
    assert L.boxes_from_heatmap(heat) == [(4.0, 4.0, 4.0, 4.0, 1.0)]
    with pytest.raises(ValueError, match="heatmap"):
        L.boxes_from_heatmap(np.zeros((2, 32, 32)))


def test_pointing_hit():
    heat = np.zeros((SIZE, SIZE))
    heat[12, 7] = 1.0  # peak at row 12, col 7 (centre 7.5, 12.5)
    assert L.pointing_hit(heat, (5, 10, 10, 10))
    assert not L.pointing_hit(heat, (30, 40, 20, 8))
    assert not L.pointing_hit(heat, (9, 10, 5, 5))  # 7.5 < 9
    assert L.pointing_hit(heat, (9, 10, 5, 5), tolerance=2)  # 7 <= 7.5
    # ties: the first peak in row-major order, (row 0, col 5), wins over (row 3, col 3)
    tied = np.zeros((8, 8))
    tied[0, 5] = tied[3, 3] = 1.0
    assert L.pointing_hit(tied, (5, 0, 1, 1))
    assert not L.pointing_hit(tied, (3, 3, 1, 1))


# ---------------------------------------------------------------------------- the table


def _records() -> list:
    return [
        # no predicted box: wrong at every T, best IoU 0
        {"finding": "Nodule", "gt_box": (0, 0, 10, 10), "pred_boxes": [], "pointing_hit": False},
        # predicted box inside the truth: IoBB 1 (right at every T), IoU 0.16
        L.LocalizationCase("Mass", (0, 0, 10, 10), ((2, 2, 4, 4),), True, "a.png"),
        # best IoBB 0.5 (right at 0.1 and 0.25; 0.5 is not > 0.5), best IoU 1/3
        {
            "finding": "Mass",
            "gt_box": (0, 0, 10, 10),
            "pred_boxes": [(50, 50, 5, 5, 0.9), (5, 0, 10, 10, 0.8)],
            "pointing_hit": False,
        },
    ]


def test_localization_table_known_accuracies():
    table = L.localization_table(_records())
    assert list(table) == ["Mass", "Nodule", "all"]  # ChestX-ray14 order, then "all"
    mass, nodule, pooled = table["Mass"], table["Nodule"], table["all"]
    assert mass["n"] == 2 and nodule["n"] == 1 and pooled["n"] == 3
    assert list(mass["accuracy"].values()) == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert list(nodule["accuracy"].values()) == [0.0] * 5
    np.testing.assert_allclose(list(pooled["accuracy"].values()), [2 / 3, 2 / 3] + [1 / 3] * 3)
    assert mass["mean_best_iou"] == pytest.approx((0.16 + 1 / 3) / 2)
    assert pooled["mean_best_iou"] == pytest.approx((0.16 + 1 / 3) / 3)
    assert (mass["pointing"], nodule["pointing"], pooled["pointing"]) == (0.5, 0.0, 1 / 3)
    assert list(L.localization_table(_records(), thresholds=(0.2,))["all"]["accuracy"]) == [0.2]
    with pytest.raises(ValueError, match="no localization cases"):
        L.localization_table([])


def test_localization_markdown_layout_and_reference():
    text = L.localization_markdown(L.localization_table(_records()))
    lines = text.splitlines()
    assert lines[0] == "| T(IoBB) | Mass | Nodule | all |"
    assert "| 0.5 | 0.5000 | 0.0000 | 0.3333 |" in lines
    assert "| pointing game | 0.5000 | 0.0000 | 0.3333 |" in lines
    assert "| n | 2 | 1 | 3 |" in lines
    # Wang et al. Table 19: Mass 0.5882, Nodule 0.1519 at T=0.1; nothing published for "all"
    assert "| 0.1 (Wang et al. 2017) | 0.5882 | 0.1519 | - |" in lines
    assert "Wang" not in L.localization_markdown(L.localization_table(_records()), False)


def test_localization_cases_one_per_gt_box():
    heat = _two_blobs()
    cases = L.localization_cases("Effusion", heat, [(30, 40, 20, 8), (0, 0, 4, 4)], "x.png")
    assert len(cases) == 2
    assert cases[0].pred_boxes == ((30.0, 40.0, 20.0, 8.0), (5.0, 10.0, 10.0, 10.0))
    assert cases[0].pointing_hit and not cases[1].pointing_hit
    table = L.localization_table(cases)
    assert table["Effusion"]["accuracy"][0.9] == 0.5


# ------------------------------------------------------------------------------ heatmaps


def test_gradcam_shape_range_and_extreme_inputs(plain):
    layer = M.feature_layer_name(plain)
    images = np.concatenate(
        [_images(2), np.zeros((1, SIZE, SIZE, 1)), np.full((1, SIZE, SIZE, 1), 255.0)]
    )
    for batch in (images, images.astype(np.uint8)):
        maps = L.gradcam(plain, batch, 0, layer)
        assert maps.shape == (4, SIZE, SIZE) and maps.dtype == np.float32
        assert np.all(np.isfinite(maps))
        assert maps.min() >= 0.0 and maps.max() <= 1.0
    for k in range(14):
        maps = L.gradcam(plain, images[2:], k, layer)
        assert np.all(np.isfinite(maps))
        assert np.all((maps.max(axis=(1, 2)) == 1.0) | (maps.max(axis=(1, 2)) == 0.0))


def test_gradcam_per_image_class_indices(plain):
    layer = M.feature_layer_name(plain)
    images = _images(3, seed=1)
    together = L.gradcam(plain, images, [0, 3, 7], layer, batch_size=2)
    for i, k in enumerate([0, 3, 7]):
        np.testing.assert_allclose(
            together[i], L.gradcam(plain, images[i : i + 1], k, layer)[0], atol=1e-5
        )
    with pytest.raises(ValueError, match="class_index"):
        L.gradcam(plain, images, [0, 1], layer)
    with pytest.raises(ValueError, match="class_index"):
        L.gradcam(plain, images, 14, layer)


def test_gradcam_ignores_augmentation(augmented):
    layer = M.feature_layer_name(augmented)
    images = _images(2, size=80, seed=2)
    first = L.gradcam(augmented, images, 1, layer)
    assert first.shape == (2, 80, 80)  # the input's size, not the backbone's 64
    np.testing.assert_array_equal(first, L.gradcam(augmented, images, 1, layer))


def _bright_detector() -> keras.Model:
    """Logit 0 = GAP of ReLU(mean of each 8x8 cell / 255 - 0.5): large where pixels are
    bright; logit 1 is its negative (no location raises it)."""
    image = keras.Input((SIZE, SIZE, 1))
    conv = keras.layers.Conv2D(1, 8, strides=8, activation="relu", name="features")
    pooled = keras.layers.GlobalAveragePooling2D()(conv(image))
    dense = keras.layers.Dense(2, name="logits")
    model = keras.Model(image, dense(pooled))
    conv.set_weights(
        [np.full((8, 8, 1, 1), 1 / (64 * 255), "float32"), np.array([-0.5], "float32")]
    )
    dense.set_weights([np.array([[1.0, -1.0]], "float32"), np.zeros(2, "float32")])
    return model


def test_gradcam_points_at_a_bright_square():
    model = _bright_detector()
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 60, (1, SIZE, SIZE, 1)).astype("float32")
    square = (37, 13, 14, 14)  # x, y, w, h: not aligned with the 8 px cells
    image[0, 13:27, 37:51] = 255.0
    heat = L.gradcam(model, image, 0, "features")[0]
    assert heat.max() == 1.0
    assert L.pointing_hit(heat, square)
    boxes = L.boxes_from_heatmap(heat)
    assert boxes and L.iobb(boxes[0], square) > 0.5
    # logit 1 falls wherever the image is bright: an all-zero map, not NaN
    np.testing.assert_array_equal(L.gradcam(model, image, 1, "features"), 0.0)
    np.testing.assert_array_equal(L.cam(model, image, 1, "features"), 0.0)


def test_cam_equals_gradcam_for_gap_linear_head(plain, augmented):
    for model, size in ((plain, SIZE), (augmented, 80)):
        layer = M.feature_layer_name(model)
        images = _images(3, size=size, seed=4)
        for k in (0, 5):
            np.testing.assert_allclose(
                L.cam(model, images, k, layer), L.gradcam(model, images, k, layer), atol=1e-5
            )
    images = _images(2, seed=5)
    layer = M.feature_layer_name(plain)
    np.testing.assert_allclose(
        L.cam(plain, images, [2, 9], layer), L.gradcam(plain, images, [2, 9], layer), atol=1e-5
    )


@pytest.mark.parametrize("hidden", [8, 96])  # 96 = the feature channels: caught by the graph
def test_cam_raises_on_hidden_head(hidden):
    model = M.build_model(_tiny(hidden_units=hidden))
    with pytest.raises(ValueError, match="CAM"):
        L.cam(model, _images(1), 0, M.feature_layer_name(model))
    assert L.gradcam(model, _images(1), 0, M.feature_layer_name(model)).shape == (1, SIZE, SIZE)


# ------------------------------------------------------------------------------- figures


def test_overlay_png(tmp_path):
    image = _images(1)[0, ..., 0].astype(np.uint8)
    path = L.overlay_png(
        image,
        _two_blobs(),
        tmp_path / "sub" / "overlay.png",
        gt_boxes=[(30, 40, 20, 8)],
        pred_boxes=[(30.0, 40.0, 20.0, 8.0, 1.0), (5, 10, 10, 10)],
        title="Mass",
    )
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
        assert width > 100 and height > 100
        png.load()


def test_wang_reference_matches_shared_notes():
    """The typed-in constant agrees with the project's reference notes (where present)."""
    from pathlib import Path

    notes = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_results.md"
    if not notes.exists():
        pytest.skip(f"no reference notes at {notes}")
    text = notes.read_text().split("\n| T(IoBB) |", 1)[1].split("\n\n", 1)[0]  # this table
    header, *rows = [line for line in ("|" + text).splitlines() if line.startswith("|")]
    findings = [c.strip() for c in header.strip("|").split("|")]
    parsed = {}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        parsed[float(cells[0])] = dict(zip(findings, map(float, cells[1:]), strict=True))
    assert parsed == L.WANG2017_IOBB_ACCURACY
