"""JPEG decoding (`cxr_tf.data.preprocessing`, the conversion's `--jpeg_decode`): the
reduced-scale rule, each mode against an independent decoder (Pillow's libjpeg), the
grey-level cost of `reduced` on real-size radiographs, the manifest's record of the choice,
serving repeating it, and the effect on a trained model's outputs."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from helpers import convert_folder, make_synth, nih_path, read_records
from PIL import Image

from cxr_tf.benchmarks.data import radiograph_pixels
from cxr_tf.config import ConvertConfig, SplitConfig
from cxr_tf.config.data import JPEG_DECODES, RESIZES
from cxr_tf.data import conversion
from cxr_tf.data import preprocessing as pp
from cxr_tf.data.manifest import MANIFEST, Manifest

# The keep criterion: `reduced` stays where its stored pixels are within this of `full`'s.
MEAN_LIMIT = 0.5


def jpeg_bytes(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def radiograph_jpeg(width: int, height: int, seed: int, color: bool = False) -> bytes:
    """A real-size imitation: anatomy-like shading, falloff and detector noise, quality 95."""
    pixels = np.round(radiograph_pixels(np.random.default_rng(seed), width, height))
    return jpeg_bytes(np.stack([pixels] * 3, -1) if color else pixels)


def stored(data: bytes, size: int, jpeg: str, resize: str = "squash") -> np.ndarray:
    return pp.bytes_to_stored(data, size, resize, jpeg).numpy()[..., 0].astype(int)


@pytest.mark.parametrize(
    "height, width, size, resize, ratio",
    [
        (3056, 2544, 256, "squash", 4),  # a full-size release's JPEG stored at 256
        (3056, 2544, 256, "crop", 4),  # the square's offset, 256, divides by 4
        (3056, 2544, 512, "squash", 2),
        (3056, 2544, 1024, "squash", 1),
        (2048, 2048, 256, "squash", 4),  # exactly 2x the stored side left at 1/4
        (2040, 2040, 256, "squash", 2),
        (1024, 1024, 256, "squash", 2),  # an NIH-size JPEG
        (1022, 1022, 256, "squash", 1),
        (2045, 2045, 256, "squash", 1),  # odd sides: no reduced grid lines up
        (2828, 2320, 256, "squash", 4),
        (2828, 2320, 256, "crop", 2),  # offset 254 divides by 2, not by 4
        (2828, 2320, 256, "pad", 2),
        (700, 4000, 224, "squash", 1),  # the shorter side decides
        (600, 620, 64, "squash", 4),
    ],
)
def test_the_ratio_rule_and_the_decoded_shape(height, width, size, resize, ratio):
    assert pp.jpeg_ratio(height, width, size, resize) == ratio
    assert pp.jpeg_ratio(width, height, size, resize) == ratio
    data = jpeg_bytes(np.full((height, width), 128, np.uint8), quality=50)
    gray, name = pp.decode_and_describe(tf.constant(data), "reduced", size, resize)
    assert gray.shape == (height // ratio, width // ratio, 1)
    assert name.numpy().decode() == ("jpeg" if ratio == 1 else f"jpeg, decoded at 1/{ratio}")
    assert pp.decode_and_describe(tf.constant(data), "full", size)[1].numpy() == b"jpeg"


@pytest.mark.parametrize("color", [False, True], ids=["gray", "rgb"])
def test_each_mode_is_libjpegs_own_decode(color):
    """`full` is libjpeg's accurate decode and `reduced` its scaled one, as Pillow (its own
    libjpeg build) gives them; `fast` is what `tf.io.decode_image` gave every conversion
    before the choice, on average half a grey level darker than the accurate IDCT."""
    data = radiograph_jpeg(900, 1100, seed=1, color=color)
    as_tf = tf.constant(data)

    def pillow(ratio: int) -> np.ndarray:
        image = Image.open(io.BytesIO(data))
        if ratio > 1:
            image.draft(image.mode, (math.ceil(900 / ratio), math.ceil(1100 / ratio)))
        pixels = np.asarray(image, np.float32)
        if color:
            return tf.image.rgb_to_grayscale(pixels).numpy()[..., 0]
        return pixels

    full = pp.decode_to_gray(as_tf, "full").numpy()[..., 0]
    np.testing.assert_array_equal(full, pillow(1))
    for size, ratio in ((200, 2), (100, 4)):
        gray, name = pp.decode_and_describe(as_tf, "reduced", size)
        assert name.numpy().decode() == f"jpeg, decoded at 1/{ratio}"
        np.testing.assert_array_equal(gray.numpy()[..., 0], pillow(ratio))
    fast = pp.decode_to_gray(as_tf, "fast").numpy()
    before = tf.cast(tf.io.decode_image(data, channels=0), tf.float32)
    np.testing.assert_array_equal(fast, pp._to_gray(before).numpy())
    assert 0.3 < float(np.mean(full - fast[..., 0])) < 0.7
    with pytest.raises(ValueError, match="needs the stored size"):
        pp.decode_to_gray(as_tf, "reduced")
    with pytest.raises(ValueError, match="jpeg must be one of reduced, full, fast"):
        pp.decode_to_gray(as_tf, "quick")


def test_png_and_other_formats_are_the_same_in_every_mode(tmp_path):
    png = tf.io.encode_png(np.arange(64 * 80, dtype=np.uint8).reshape(64, 80, 1)).numpy()
    results = [stored(png, 16, mode) for mode in JPEG_DECODES]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def _differences(data: bytes, size: int, resize: str) -> tuple[float, int]:
    difference = np.abs(stored(data, size, "reduced", resize) - stored(data, size, "full", resize))
    return float(difference.mean()), int(difference.max())


@pytest.mark.parametrize("resize", RESIZES)
def test_reduced_stays_within_half_a_grey_level_on_real_size_radiographs(resize):
    """The keep criterion on real-size imitations (a full-size release's 2544 x 3056 and
    2320 x 2828, an RGB-encoded one): for every stored size where the rule reduces, the
    mean absolute difference to `full` is at most 0.5 grey level (measured: 0.05-0.23),
    the largest at most 3. Odd sides are decoded at full size: no difference at all."""
    files = [
        radiograph_jpeg(2544, 3056, seed=2),
        radiograph_jpeg(2320, 2828, seed=3),
        radiograph_jpeg(2500, 2048, seed=4, color=True),
    ]
    for data in files:
        for size in (224, 256, 320, 512):
            mean, worst = _differences(data, size, resize)
            assert mean <= MEAN_LIMIT, (size, resize, mean)
            assert worst <= 3, (size, resize, worst)
    assert _differences(radiograph_jpeg(2501, 3053, seed=5), 256, resize) == (0.0, 0)


def test_reduced_stays_within_half_a_grey_level_on_real_nih_images_enlarged():
    """Real NIH radiographs (their edges, text and markers) enlarged to a full-size
    release's 2544 x 3056 with detector noise, stored at 256 and 512 (1/4 and 1/2)."""
    folder = nih_path() / "images"
    rng = np.random.default_rng(0)
    means = []
    for path in sorted(folder.glob("*.png"))[:4]:
        image = Image.open(path).convert("L").resize((2544, 3056), Image.BICUBIC)
        pixels = np.asarray(image, np.float32) + rng.normal(0, 3.0, (3056, 2544))
        data = jpeg_bytes(np.clip(np.round(pixels), 0, 255))
        for size in (256, 512):
            mean, _ = _differences(data, size, "squash")
            means.append(mean)
    assert max(means) <= MEAN_LIMIT, means


# --- conversion and serving ------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Twelve JPEG radiographs of several sizes in two class folders (the folders source)."""
    root = tmp_path_factory.mktemp("jpeg_source")
    sizes = [(600, 700), (400, 380), (200, 240), (1100, 900)]
    for i in range(12):
        folder = root / ("normal" if i % 2 else "effusion")
        folder.mkdir(exist_ok=True)
        width, height = sizes[i % len(sizes)]
        (folder / f"img{i:02d}.jpg").write_bytes(radiograph_jpeg(width, height, seed=10 + i))
    return root


@pytest.fixture(scope="module")
def jpeg_datasets(jpeg_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg_out")
    split = SplitConfig(strategy="random", fractions=(0.5, 0.25, 0.25))
    return {
        mode: convert_folder(
            jpeg_folder, out, stored_size=64, jpeg_decode=mode, name=f"d_{mode}", split=split
        )
        for mode in JPEG_DECODES
    }


def test_records_hold_each_modes_pixels_and_the_manifest_says_which(jpeg_folder, jpeg_datasets):
    sources = {p.name: p.read_bytes() for p in jpeg_folder.rglob("*.jpg")}
    for mode, dataset in jpeg_datasets.items():
        records = read_records(dataset)
        assert len(records) == 12
        for name, record in records.items():
            data = sources[name.split("/")[-1]]
            np.testing.assert_array_equal(
                record["image"][..., 0], stored(data, 64, mode), err_msg=f"{mode} {name}"
            )
            # the file's own size, whatever scale it was decoded at
            width, height = Image.open(io.BytesIO(data)).size
            assert record["original_size"].tolist() == [width, height], (mode, name)
        manifest = Manifest.load(dataset)
        assert manifest.source.image_sizes == {
            "600x700": 3, "400x380": 3, "200x240": 3, "1100x900": 3
        }
        assert manifest.jpeg_decode == mode and manifest.has_jpeg
        written = json.loads((dataset / MANIFEST).read_text())
        assert written["conversion"]["jpeg_decode"] == mode
        mappings = manifest.source.pixel_mappings
        if mode == "reduced":  # shorter side 600 and 900 px: 1/4; 380 px: 1/2; 200 px: full
            assert mappings == {"jpeg": 3, "jpeg, decoded at 1/2": 3, "jpeg, decoded at 1/4": 6}
        else:
            assert mappings == {"jpeg": 12}
    fingerprints = {Manifest.load(d).fingerprint for d in jpeg_datasets.values()}
    assert len(fingerprints) == 3
    # a manifest written before the choice decoded with TensorFlow's fast IDCT
    old = json.loads((jpeg_datasets["fast"] / MANIFEST).read_text())
    del old["conversion"]["jpeg_decode"]
    (jpeg_datasets["fast"] / MANIFEST).write_text(json.dumps(old))
    assert Manifest.load(jpeg_datasets["fast"]).jpeg_decode == "fast"


def test_converting_again_with_another_mode_is_refused_by_name(jpeg_folder, jpeg_datasets):
    dataset = jpeg_datasets["full"]
    split = SplitConfig(strategy="random", fractions=(0.5, 0.25, 0.25))
    config = ConvertConfig(
        root=str(jpeg_folder), out_dir=str(dataset.parent), name=dataset.name, stored_size=64,
        jpeg_decode="reduced", split=split,
    )  # fmt: skip
    with pytest.raises(conversion.ConversionError, match="jpeg_decode 'full' -> 'reduced'"):
        conversion.convert(config, progress=False)


def test_export_repeats_the_datasets_jpeg_decoding(jpeg_datasets, small_dataset, tmp_path):
    from cxr_tf.serving import exporter

    decide = exporter.dataset_jpeg_decode
    for mode, dataset in jpeg_datasets.items():
        found = decide(tmp_path, (str(small_dataset), str(dataset)))
        assert found == {"jpeg_decode": mode, "jpeg_decode_source": f"{dataset}/{MANIFEST}"}
    alone = decide(tmp_path, (str(small_dataset),))  # PNGs only: does not decide
    assert alone["jpeg_decode"] == "reduced"
    assert alone["jpeg_decode_source"].startswith("default: no JPEG counted")
    assert not exporter.jpeg_decode_warning({"preprocessing": alone})
    gone = decide(tmp_path, (str(tmp_path / "deleted"),))  # nothing to read: said
    assert gone["jpeg_decode_source"].startswith("default: no manifest.json found")
    meta = {"preprocessing": {**gone, "resize": "squash", "resize_source": "x/manifest.json"}}
    assert exporter.preprocessing_warnings(meta) == [
        "incoming JPEGs are decoded by --jpeg_decode reduced (default: no manifest.json found "
        f"for {tmp_path / 'deleted'}); if the dataset was converted with another mode, served "
        "pixels differ slightly from evaluation's"
    ]
    with pytest.raises(exporter.ExportError, match="--jpeg_decode full.*--jpeg_decode reduced"):
        decide(tmp_path, (str(jpeg_datasets["full"]), str(jpeg_datasets["reduced"])))
    assert exporter.serving_jpeg_decode({"preprocessing": {"resize": "squash"}}) == "fast"
    # manifests from before pixel mappings were recorded: JPEGs possible, except NIH's
    import shutil

    from cxr_tf.data.conversion import UNRECORDED

    old = tmp_path / "old"
    shutil.copytree(jpeg_datasets["fast"], old)
    written = json.loads((old / MANIFEST).read_text())
    written["source"]["pixel_mappings"] = {UNRECORDED: 12}
    written["conversion"].pop("jpeg_decode", None)
    (old / MANIFEST).write_text(json.dumps(written))
    assert decide(tmp_path, (str(old),))["jpeg_decode"] == "fast"
    with pytest.raises(exporter.ExportError, match="different ways"):
        decide(tmp_path, (str(old), str(jpeg_datasets["reduced"])))
    written["source"]["kind"] = "nih"
    (old / MANIFEST).write_text(json.dumps(written))
    both = decide(tmp_path, (str(old), str(jpeg_datasets["reduced"])))
    assert both["jpeg_decode"] == "reduced"


@pytest.mark.slow
def test_served_bytes_are_decoded_as_the_dataset_was(jpeg_datasets, tmp_path):
    """A run on the `reduced` dataset, exported: the SavedModel's serving_default on JPEG
    bytes equals the model on `bytes_to_stored(..., "reduced")` of the same bytes."""
    import keras
    from test_export import TOLERANCE, _head_run, reference_probabilities

    from cxr_tf.config import ExportConfig
    from cxr_tf.serving import exporter, predictor

    dataset = jpeg_datasets["reduced"]
    keras.utils.set_random_seed(0)
    run_dir = _head_run(tmp_path, dataset, "binary", ("Effusion",))
    folder = exporter.export(ExportConfig(run_dir=str(run_dir), out=str(tmp_path / "out")), False)
    meta = json.loads((folder / "assets.extra" / exporter.METADATA_FILE).read_text())
    assert meta["preprocessing"]["jpeg_decode"] == "reduced"
    images = [radiograph_jpeg(600, 700, seed=30), radiograph_jpeg(1100, 900, seed=31)]
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    served = serve(image_bytes=tf.constant(images))["probabilities"].numpy()
    expected = reference_probabilities(run_dir, images, 64, "squash", "binary", "reduced")
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=0)
    local = predictor.load_predictor(run_dir)
    assert exporter.serving_jpeg_decode(local.meta) == "reduced"
    answers = local.predict_bytes(images)
    probabilities = [[f["probability"] for f in a["findings"]] for a in answers]
    np.testing.assert_allclose(probabilities, served, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_a_trained_models_outputs_move_little(trained_run, tmp_path):
    """The shared tiny model (stored 64) on 40 synthetic radiographs drawn at 640 px and
    saved as quality-95 JPEGs, `reduced` (1/4 scale here) against `full`: stored pixels
    0.3 grey level apart on average, probabilities 0.002 on average and 0.035 at most
    (measured; `fast` against `full`: 0.49 grey level, 0.0008 and 0.011; the synthetic
    drawings' sharp edges are where the scaled IDCT and averaging part)."""
    import keras

    from cxr_tf.modeling import models
    from cxr_tf.runs import folder as runs

    root = make_synth(tmp_path / "synth", n=40, seed=11, image_size=640)
    model = keras.models.load_model(trained_run / runs.BEST_MODEL, compile=False)
    batches: dict[str, list] = {"full": [], "reduced": []}
    for path in sorted((root / "images").glob("*.png")):
        jpeg = jpeg_bytes(np.asarray(Image.open(path).convert("L")))
        for mode, images in batches.items():
            images.append(stored(jpeg, 64, mode))
    grey = np.abs(np.stack(batches["reduced"]) - np.stack(batches["full"])).mean()
    assert 0.05 < grey <= MEAN_LIMIT, grey  # 1/4 scale was used, within the criterion
    probs = {}
    for mode, images in batches.items():
        logits = model(np.stack(images)[..., None].astype(np.float32), training=False)
        probs[mode] = np.asarray(models.probabilities(logits, "multilabel"))
    moved = np.abs(probs["reduced"] - probs["full"])
    assert moved.mean() < 0.006 and moved.max() < 0.06, (moved.mean(), moved.max())
