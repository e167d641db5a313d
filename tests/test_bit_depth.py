"""Bit depth of 16-bit PNGs (`cxr_tf.data.preprocessing.decode_and_describe`): the sBIT
chunk, samples scaled to 16 bits, the full-range mapping and its low-range warning in
conversion, the mapping counts in the manifest (also after a resumed conversion), the same
pixels from a saved graph, and the PadChest imitation's 12-bit PNGs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import read_records
from PIL import Image, PngImagePlugin

from cxr_tf.config import ConvertConfig, SplitConfig
from cxr_tf.data import conversion, preprocessing
from cxr_tf.synthetic import padchest as padchest_imitation
from cxr_tf.synthetic.drawing import draw


def _twelve(seed: int = 0, size: int = 40) -> np.ndarray:
    """A drawn radiograph as 12-bit values 0..4095 (the full 12-bit range is used)."""
    pixels, _ = draw(["Cardiomegaly"], size, (seed, 1))
    values = np.rint(np.clip(pixels, 0, 255) * 4095 / 255).astype(np.int64)
    values[0, 0], values[-1, -1] = 0, 4095
    return values


def _png16(values: np.ndarray, sbit: int | None = None, text: bool = False) -> bytes:
    """A 16-bit grayscale PNG written by PIL, with an sBIT chunk when `sbit` is given (and a
    text chunk before it when `text`)."""
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Software", "a DICOM viewer's PNG export")
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _decode(data: bytes) -> tuple[np.ndarray, str]:
    gray, name = preprocessing.decode_and_describe(tf.constant(data))
    return gray.numpy()[..., 0], name.numpy().decode()


@pytest.mark.parametrize("text", [False, True])
def test_sbit_12_maps_the_12_bit_range_onto_0_255(text):
    values = _twelve()
    data = _png16(values, sbit=12, text=text)
    assert b"sBIT" in data[: data.index(b"IDAT")]
    gray, name = _decode(data)
    assert name == "png 16-bit, sBIT 12"
    np.testing.assert_allclose(gray, values * 255 / 4095, rtol=1e-6)
    assert gray.max() == 255 and gray.min() == 0
    # the compiled function and tf.data give the same pixels
    compiled = tf.function(preprocessing.decode_to_gray)(tf.constant(data)).numpy()[..., 0]
    np.testing.assert_array_equal(compiled, gray)
    mapped = tf.data.Dataset.from_tensors(data).map(preprocessing.decode_to_gray)
    np.testing.assert_array_equal(next(iter(mapped)).numpy()[..., 0], gray)


@pytest.mark.parametrize("bits", [10, 14])
def test_other_significant_bit_counts(bits):
    values = _twelve(2) * (2**bits - 1) // 4095
    gray, name = _decode(_png16(values, sbit=bits))
    assert name == f"png 16-bit, sBIT {bits}"
    np.testing.assert_allclose(gray, values * 255 / (2**bits - 1), rtol=1e-6)


def test_sbit_with_samples_scaled_to_16_bits_keeps_the_full_range_mapping():
    """The PNG specification (and pypng, libpng) scale samples to 16 bits and record the
    original bit count in sBIT: those must not be clipped."""
    values = _twelve(3)
    replicated = values << 4 | values >> 8
    gray, name = _decode(_png16(replicated, sbit=12))
    assert name == "png 16-bit, sBIT 12, scaled to 16 bits"
    np.testing.assert_allclose(gray, replicated * 255 / 65535, rtol=1e-6)
    assert np.abs(gray - values * 255 / 4095).max() < 0.1


def test_without_sbit_the_full_range_mapping_stays_and_a_low_range_is_named():
    values = _twelve(4)
    gray, name = _decode(_png16(values))  # 12-bit values as they are, no sBIT
    assert name == preprocessing.SIXTEEN_BIT_LOW
    np.testing.assert_allclose(gray, values * 255 / 65535, rtol=1e-6)
    assert gray.max() < 16  # dark: what the warning is about
    full = values * 16
    assert _decode(_png16(full))[1] == preprocessing.SIXTEEN_BIT
    assert _decode(_png16(full, sbit=16))[1] == preprocessing.SIXTEEN_BIT
    edge = np.full((8, 8), preprocessing.LOW_RANGE_PEAK, np.int64)
    assert _decode(_png16(edge))[1] == preprocessing.SIXTEEN_BIT
    assert _decode(_png16(edge - 1))[1] == preprocessing.SIXTEEN_BIT_LOW


def test_eight_bit_formats_are_named_and_unchanged():
    gray8 = (_twelve(5) // 16).astype(np.uint8)
    for fmt, name in (("PNG", "png 8-bit"), ("JPEG", "jpeg"), ("BMP", "bmp"), ("GIF", "gif")):
        buffer = io.BytesIO()
        Image.fromarray(gray8).save(buffer, format=fmt)
        gray, got = _decode(buffer.getvalue())
        assert got == name
        if fmt in ("PNG", "BMP"):
            np.testing.assert_array_equal(gray, gray8)
    buffer = io.BytesIO()
    Image.fromarray(gray8 > 100).save(buffer, format="PNG")  # a 1-bit PNG
    assert _decode(buffer.getvalue())[1] == "png 1-bit"


def test_a_truncated_16_bit_png_with_sbit_still_raises_invalid_argument():
    data = _png16(_twelve(), sbit=12)
    for cut in (data[:40], data[: len(data) // 2]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            preprocessing.decode_to_gray(tf.constant(cut))


def test_a_saved_graph_gives_the_same_pixels_as_conversion(tmp_path):
    """The exported model decodes with `bytes_to_stored` in its graph: sBIT is honoured
    there exactly as in conversion."""
    module = tf.Module()
    module.stored = tf.function(
        lambda data: preprocessing.bytes_to_stored(data, 64),
        input_signature=[tf.TensorSpec([], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    for data in (_png16(_twelve(6), sbit=12), _png16(_twelve(6))):
        want = preprocessing.bytes_to_stored(tf.constant(data), 64).numpy()
        np.testing.assert_array_equal(loaded.stored(tf.constant(data)).numpy(), want)
    assert loaded.stored(tf.constant(_png16(_twelve(6), sbit=12))).numpy().max() == 255


def _convert(root: Path, out: Path) -> conversion.Manifest:
    config = ConvertConfig(root=str(root), source="folders", out_dir=str(out), stored_size=64,
                           encoding="png", workers=1, name="bits",
                           split=SplitConfig(strategy="random", fractions=(1, 0, 0)))  # fmt: skip
    return conversion.convert(config, progress=False)


def test_conversion_uses_sbit_warns_about_low_range_and_records_the_mappings(tmp_path, capsys):
    root = tmp_path / "own"
    for folder in ("normal", "Effusion"):
        (root / folder).mkdir(parents=True)
    files = {}
    for i in range(3):
        files[f"normal/sbit{i}.png"] = _png16(_twelve(10 + i), sbit=12)
    for i in range(5):
        files[f"Effusion/plain{i}.png"] = _png16(_twelve(20 + i))  # 12-bit, no sBIT
    gray8 = (_twelve(30) // 16).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray8).save(buffer, format="PNG")
    files["normal/eight.png"] = buffer.getvalue()
    for name, data in files.items():
        (root / name).write_bytes(data)

    manifest = _convert(root, tmp_path / "out")
    err = capsys.readouterr().err
    records = read_records(tmp_path / "out" / "bits")
    for i in range(3):
        image = records[f"normal/sbit{i}.png"]["image"]
        assert image.max() == 255  # the full 0..255 range, not at most 16
        want = preprocessing.bytes_to_stored(files[f"normal/sbit{i}.png"], 64).numpy()
        np.testing.assert_array_equal(image, want)
    assert max(records[f"Effusion/plain{i}.png"]["image"].max() for i in range(5)) <= 16
    expected = {"png 16-bit, sBIT 12": 3, preprocessing.SIXTEEN_BIT_LOW: 5, "png 8-bit": 1}
    assert manifest.source.pixel_mappings == expected
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err  # once per conversion, with the count
    warning = warnings[0]
    assert "5 16-bit PNG(s) use under 1/8 of the 16-bit range" in warning
    assert warning.count("Effusion/plain") == 3 and ", ..." in warning  # the first few
    assert "sBIT" in warning and "convert again" in warning  # how to fix
    assert warning.removeprefix("warning: ") in manifest.source.notes
    saved = json.loads((tmp_path / "out" / "bits" / "manifest.json").read_text())
    assert saved["source"]["pixel_mappings"] == expected

    # a resumed conversion (every shard kept) reports the same from the part files
    again = _convert(root, tmp_path / "out")
    err = capsys.readouterr().err
    assert again.timing.images_written_this_run == 0
    assert again.source.pixel_mappings == expected
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [warning]


def test_padchest_imitation_writes_12_bit_values_with_sbit(tmp_path):
    pixels, _ = draw(["Effusion"], 48, (7, 7), padchest_imitation.STYLE)
    path = tmp_path / "image.png"
    padchest_imitation._save(path, pixels)
    data = path.read_bytes()
    assert data[24] == 16 and data[25] == 0  # 16-bit grayscale
    start = data.index(b"sBIT")
    assert start < data.index(b"IDAT") and data[start + 4] == padchest_imitation.SIGNIFICANT_BITS
    values = np.asarray(Image.open(path))
    assert values.dtype == np.uint16 and values.max() <= 4095 and values.max() > 3000
    gray, name = _decode(data)
    assert name == "png 16-bit, sBIT 12"
    # the drawn value within half a 12-bit step (1/32 of a gray level), not 1/16 of it
    assert np.abs(gray - np.clip(pixels, 0, 255)).max() <= 0.5 * 255 / 4095 + 1e-4
