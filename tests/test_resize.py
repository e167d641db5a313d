"""`--resize squash|crop|pad`: how a non-square image becomes the stored square
(`cxr_tf.data.preprocessing.to_square`, `box_to_square`), pixels and boxes moving together,
the converter's records and manifest, the conversion identity, the export's choice of mode,
and every imitation's fingerprint unchanged where its images are square."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import convert_folder, make_synth, read_records
from PIL import Image

from cxr_tf import convert
from cxr_tf.config import ConfigError, ConvertConfig, SplitConfig, SynthConfig
from cxr_tf.config.data import RESIZES
from cxr_tf.data import conversion
from cxr_tf.data import preprocessing as pp
from cxr_tf.data.manifest import MANIFEST, Manifest
from cxr_tf.serving import exporter
from cxr_tf.synthetic.layouts import LAYOUTS, generate_layout

STORED = 64
# Boxes added to the landscape image (NIH's 1024-pixel frame, x y w h): one wholly in its
# left quarter (a crop keeps the centre half of the width: cut off), one across the crop's
# right edge (clipped), one inside.
ADDED_BOXES = ((0, 400, 200, 100), (700, 100, 200, 300), (400, 500, 100, 100))


def _boxes(record: dict) -> tuple[list[int], np.ndarray]:
    """A record's box findings and (N, 4) bboxes (ymin, xmin, ymax, xmax)."""
    boxes = record["boxes"]
    return list(np.asarray(boxes["finding"])), np.asarray(boxes["bbox"]).reshape(-1, 4)


def _square(image: np.ndarray, mode: str) -> np.ndarray:
    return pp.to_square(tf.constant(image, tf.float32), mode).numpy()


# --- the geometry --------------------------------------------------------------------------


def test_crop_and_pad_values_on_non_square_arrays():
    wide = np.arange(5 * 8, dtype=np.float32).reshape(5, 8, 1)  # H 5, W 8: 3 too wide
    np.testing.assert_array_equal(_square(wide, "crop"), wide[:, 1:6])  # left (8 - 5) // 2
    padded = np.zeros((8, 8, 1), np.float32)
    padded[1:6] = wide  # one black row above, two below: the odd one at the bottom
    np.testing.assert_array_equal(_square(wide, "pad"), padded)
    tall = wide.transpose(1, 0, 2)  # H 8, W 5
    np.testing.assert_array_equal(_square(tall, "crop"), tall[1:6])
    padded = np.zeros((8, 8, 1), np.float32)
    padded[:, 1:6] = tall
    np.testing.assert_array_equal(_square(tall, "pad"), padded)
    assert _square(wide, "squash") is not None and _square(wide, "squash").shape == (5, 8, 1)


def test_each_mode_stores_its_own_values():
    # 4 x 8: two columns of 200, four of 100, two of 0
    image = np.repeat([[200.0] * 2 + [100.0] * 4 + [0.0] * 2], 4, axis=0)[..., None]
    stored = {m: pp.resize_to_stored(tf.constant(image, tf.float32), 2, m).numpy()[..., 0]
              for m in RESIZES}  # fmt: skip
    # squash: each stored pixel averages a 2 x 4 block of the whole image
    np.testing.assert_array_equal(stored["squash"], [[150, 50], [150, 50]])
    # crop: only the middle four columns (all 100) are kept
    np.testing.assert_array_equal(stored["crop"], [[100, 100], [100, 100]])
    # pad: 8 x 8 with two black rows above and below; a 4 x 4 block holds 2 image rows
    np.testing.assert_array_equal(stored["pad"], [[75, 25], [75, 25]])
    assert all(s.dtype == np.uint8 for s in stored.values())


def test_squash_is_the_resize_of_before_and_square_images_are_the_same_in_every_mode():
    rng = np.random.default_rng(0)
    oblong = tf.constant(rng.uniform(0, 255, (30, 50, 1)), tf.float32)
    before = pp.to_uint8(tf.image.resize(oblong, [16, 16], method="area")).numpy()
    np.testing.assert_array_equal(pp.resize_to_stored(oblong, 16).numpy(), before)
    np.testing.assert_array_equal(pp.resize_to_stored(oblong, 16, "squash").numpy(), before)
    for mode in ("crop", "pad"):
        assert not np.array_equal(pp.resize_to_stored(oblong, 16, mode).numpy(), before)
    square = tf.constant(rng.uniform(0, 255, (37, 37, 1)), tf.float32)
    same = pp.resize_to_stored(square, 16).numpy()
    for mode in RESIZES:
        np.testing.assert_array_equal(pp.resize_to_stored(square, 16, mode).numpy(), same)
        box = (0.1, 0.2, 0.5, 0.9)
        assert pp.box_to_square(box, 37, 37, mode) == box


@pytest.mark.parametrize("mode", RESIZES)
def test_modes_run_the_same_in_a_graph_and_in_tf_data(mode):
    data = tf.io.encode_png(np.random.default_rng(1).integers(0, 255, (40, 70, 1), np.uint8))
    eager = pp.bytes_to_stored(data, 16, mode).numpy()
    compiled = tf.function(
        lambda b: pp.bytes_to_stored(b, 16, mode), input_signature=[tf.TensorSpec([], tf.string)]
    )
    np.testing.assert_array_equal(compiled(data).numpy(), eager)
    mapped = tf.data.Dataset.from_tensors(data).map(lambda b: pp.bytes_to_stored(b, 16, mode))
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), eager)


def test_box_to_square_golden_values():
    # 200 x 100 (landscape): crop keeps x 50..150, pad adds 50 rows above and below
    box = (10 / 100, 60 / 200, 30 / 100, 80 / 200)  # (ymin, xmin, ymax, xmax)
    np.testing.assert_allclose(pp.box_to_square(box, 200, 100, "crop"), (0.1, 0.1, 0.3, 0.3))
    np.testing.assert_allclose(
        pp.box_to_square(box, 200, 100, "pad"), (60 / 200, 60 / 200, 80 / 200, 80 / 200)
    )
    straddling = (0.1, 30 / 200, 0.3, 70 / 200)  # x 30..70: clipped at the crop's left edge
    np.testing.assert_allclose(pp.box_to_square(straddling, 200, 100, "crop"), (0.1, 0, 0.3, 0.2))
    assert pp.box_to_square((0.1, 0.0, 0.3, 40 / 200), 200, 100, "crop") is None  # x 0..40
    assert pp.box_to_square((0.1, 160 / 200, 0.3, 0.95), 200, 100, "crop") is None
    assert pp.box_to_square((0.1, 0.0, 0.3, 0.2), 200, 100, "squash") == (0.1, 0.0, 0.3, 0.2)
    with pytest.raises(ValueError, match="squash, crop, pad"):
        pp.box_to_square(box, 200, 100, "stretch")


@pytest.mark.parametrize("height,width", [(50, 81), (81, 50), (64, 97)])
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_boxes_move_with_the_pixels(height, width, mode):
    """A bright rectangle and its box go through the same geometry: the box of the bright
    pixels in the square is the box `box_to_square` gives (clipped where a crop cuts it)."""
    short, long = min(height, width), max(height, width)
    cut = (long - short) // 2  # where a crop starts along the long side
    along = [(cut + 3, cut + 12), (cut - 6, cut + 5), (2, cut - 1)]  # inside, across, outside
    for lo, hi in along:
        image = np.zeros((height, width, 1), np.float32)
        r0, r1, c0, c1 = (lo, hi, 4, 20) if height > width else (4, 20, lo, hi)
        image[r0:r1, c0:c1] = 255
        box = (r0 / height, c0 / width, r1 / height, c1 / width)
        moved = pp.box_to_square(box, width, height, mode)
        square = _square(image, mode)[..., 0]
        side = square.shape[0]
        rows, cols = np.nonzero(square)
        if moved is None:
            assert mode == "crop" and rows.size == 0
            continue
        found = (rows.min() / side, cols.min() / side, (rows.max() + 1) / side,
                 (cols.max() + 1) / side)  # fmt: skip
        np.testing.assert_allclose(moved, found, atol=1e-12)


def test_an_unknown_mode_is_a_config_error_and_the_flag_says_its_choices(capsys):
    with pytest.raises(ConfigError, match=r"resize: must be one of squash, crop, pad"):
        ConvertConfig(root="x", resize="stretch")
    with pytest.raises(SystemExit):
        convert.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resize {squash,crop,pad}" in text and "torchxrayvision" in text


# --- the converter ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oblong_source(tmp_path_factory) -> tuple[Path, str, str]:
    """(folder, landscape image, portrait image): the NIH imitation with its image of the
    most boxes made 96 x 48 and given `ADDED_BOXES`, and another image made 40 x 80."""
    root = make_synth(tmp_path_factory.mktemp("oblong"), n=16, seed=2, image_size=64)
    listed = (root / "BBox_List_2017.csv").read_text().splitlines()[1:]
    names = [line.split(",")[0] for line in listed]
    wide = max(sorted(set(names)), key=names.count)
    tall = next(p.name for p in sorted((root / "images").glob("*.png")) if p.name != wide)
    for name, size in ((wide, (96, 48)), (tall, (40, 80))):
        path = root / "images" / name
        Image.open(path).convert("L").resize(size, Image.BILINEAR).save(path)
    with open(root / "BBox_List_2017.csv", "a") as handle:
        handle.writelines(f"{wide},Mass,{x},{y},{w},{h}\n" for x, y, w, h in ADDED_BOXES)
    return root, wide, tall


@pytest.fixture(scope="module")
def converted(oblong_source, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("oblong_out")
    return {
        mode: convert_folder(
            oblong_source[0], out, stored_size=STORED, resize=mode, name=f"d_{mode}", workers=1
        )
        for mode in RESIZES
    }


def test_records_hold_each_modes_pixels_and_boxes(oblong_source, converted):
    root, wide, tall = oblong_source
    records = {mode: read_records(folder) for mode, folder in converted.items()}
    squashed = records["squash"]
    boxes = len(_boxes(squashed[wide])[1])
    assert boxes >= len(ADDED_BOXES) + 1  # drawn ones and the added ones
    for mode, stored in records.items():
        for name, record in stored.items():
            data = (root / "images" / name).read_bytes()
            expected = pp.bytes_to_stored(data, STORED, mode).numpy()
            np.testing.assert_array_equal(record["image"], expected, err_msg=f"{mode} {name}")
            if name not in (wide, tall):  # square: the same in every mode
                np.testing.assert_array_equal(record["image"], squashed[name]["image"])
            width, height = Image.open(root / "images" / name).size
            kept = [
                (finding, moved)
                for finding, bbox in zip(*_boxes(squashed[name]), strict=True)
                if (moved := pp.box_to_square(bbox, width, height, mode)) is not None
            ]
            findings, bboxes = _boxes(record)
            assert findings == [f for f, _ in kept], (mode, name)
            np.testing.assert_allclose(
                bboxes, np.array([b for _, b in kept]).reshape(-1, 4), atol=1e-6
            )
    assert len(_boxes(records["crop"][wide])[1]) <= boxes - 1  # the one cut off
    assert len(_boxes(records["pad"][wide])[1]) == boxes
    # the added box across the crop's right edge ends there; inside, it keeps its width
    across, inside = _boxes(records["crop"][wide])[1][-2:]
    assert across[3] == pytest.approx(1.0) and across[1] == pytest.approx((700 / 1024 - 0.25) * 2)
    assert inside[3] - inside[1] == pytest.approx(2 * 100 / 1024)


def test_the_manifest_records_the_mode_and_the_boxes_cropped_out(converted):
    manifests = {mode: Manifest.load(folder) for mode, folder in converted.items()}
    for mode, manifest in manifests.items():
        assert manifest.resize == mode
        written = json.loads((converted[mode] / MANIFEST).read_text())
        assert written["conversion"]["resize"] == mode
    assert manifests["crop"].source.boxes_cropped_out >= 1
    assert manifests["squash"].source.boxes_cropped_out == 0
    assert manifests["pad"].source.boxes_cropped_out == 0
    cut = manifests["crop"].source.boxes_cropped_out
    assert manifests["squash"].source.boxes == manifests["crop"].source.boxes + cut
    assert manifests["squash"].source.boxes == manifests["pad"].source.boxes
    assert len({m.fingerprint for m in manifests.values()}) == 3  # non-square images differ
    # a manifest written before the choice was a squash conversion
    old = json.loads((converted["squash"] / MANIFEST).read_text())
    del old["conversion"]["resize"]
    assert Manifest.from_dict(old).resize == "squash"
    assert Manifest.from_dict(old).to_dict()["conversion"]["resize"] == "squash"


def test_another_mode_is_another_conversion_and_old_plans_resume(oblong_source, tmp_path):
    out, root = tmp_path / "out", oblong_source[0]
    first = convert_folder(root, out, stored_size=STORED, name="same", workers=1)
    fingerprint = Manifest.load(first).fingerprint
    with pytest.raises(conversion.ConversionError, match="resize 'squash' -> 'crop'"):
        convert_folder(root, out, stored_size=STORED, name="same", resize="crop")
    # a plan written before `resize` existed is a squash conversion: it resumes
    plan_file = first / conversion.PLAN
    plan = json.loads(plan_file.read_text())
    del plan["identity"]["settings"]["resize"]
    plan_file.write_text(json.dumps(plan))
    again = convert_folder(root, out, stored_size=STORED, name="same", workers=1)
    assert Manifest.load(again).fingerprint == fingerprint


def test_export_takes_the_mode_of_the_datasets_that_decide(converted, tmp_path):
    squash, crop, pad = (str(converted[m]) for m in RESIZES)
    assert exporter.dataset_resize(tmp_path, (crop,)) == {
        "resize": "crop", "resize_source": f"{crop}/{MANIFEST}"
    }  # fmt: skip
    with pytest.raises(exporter.ExportError, match=r"--resize crop.*--resize pad"):
        exporter.dataset_resize(tmp_path, (crop, pad))
    # a dataset of square images only does not decide
    square = tmp_path / "square"
    shutil.copytree(converted["squash"], square)
    written = json.loads((square / MANIFEST).read_text())
    written["source"]["image_sizes"] = {"64x64": 16}
    (square / MANIFEST).write_text(json.dumps(written))
    assert exporter.dataset_resize(tmp_path, (str(square), pad))["resize"] == "pad"
    with pytest.raises(exporter.ExportError, match="different ways"):
        exporter.dataset_resize(tmp_path, (squash, pad))
    gone = exporter.dataset_resize(tmp_path, (str(tmp_path / "gone"),))
    assert gone["resize"] == "squash" and gone["resize_source"].startswith("default")
    assert "--resize crop or pad" in exporter.resize_warning({"preprocessing": gone})
    assert exporter.resize_warning({"preprocessing": {"resize": "crop"}}) == ""


# --- every imitation ---------------------------------------------------------------------------


@pytest.mark.slow
def test_every_imitations_fingerprint_is_the_same_in_every_mode_where_images_are_square(
    tmp_path,
):
    split = SplitConfig(strategy="random", fractions=(0.6, 0.2, 0.2), seed=0)
    for layout in LAYOUTS:
        folder = tmp_path / layout
        generate_layout(SynthConfig(out=str(folder), n=40, seed=3, image_size=64, layout=layout,
                                    prevalence="0.2", workers=1), progress=False)  # fmt: skip
        manifests = {}
        for mode in RESIZES:
            config = ConvertConfig(
                root=str(folder), out_dir=str(tmp_path / "out"), name=f"{layout}_{mode}",
                stored_size=64, resize=mode, workers=1,
                split=split if layout == "padchest" else SplitConfig(),
            )  # fmt: skip
            manifests[mode] = conversion.convert(config, progress=False)
        sizes = manifests["squash"].source.image_sizes
        prints = {mode: m.fingerprint for mode, m in manifests.items()}
        if all(a == b for a, b in (key.split("x") for key in sizes)):
            assert len(set(prints.values())) == 1, (layout, prints)
        else:  # images of their own sizes (VinDr's): each mode stores its own pixels
            assert len(set(prints.values())) == 3, (layout, prints)
