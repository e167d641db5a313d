"""The one preprocessing definition: decode, grayscale, bit depth, resize, evaluation view."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import nih_path
from PIL import Image

from cxr_tf.data import preprocessing as pp


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(h: int = 40, w: int = 30) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)


def test_gray_png_decodes_exactly():
    gray = _gradient()
    out = pp.decode_to_gray(_png(gray)).numpy()
    assert out.shape == (40, 30, 1)
    np.testing.assert_array_equal(out[..., 0], gray)


def test_sixteen_bit_maps_linearly_and_round_trips_eight_bit():
    gray = _gradient()
    sixteen = gray.astype(np.uint16) * 257
    data = _png(sixteen)  # PIL writes uint16 arrays as 16-bit grayscale PNG
    assert data[24] == 16
    np.testing.assert_array_equal(pp.decode_to_gray(data).numpy()[..., 0], gray)
    # full-range scaling: 65535 -> 255, 32768 -> 127.5 (float before rounding)
    mid = np.full((4, 4), 32768, np.uint16)
    assert pp.decode_to_gray(_png(mid)).numpy()[0, 0, 0] == pytest.approx(127.5019, abs=1e-3)


def test_rgb_rgba_la_become_luma_and_alpha_is_ignored():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    luma = rgb.astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
    got = pp.decode_to_gray(_png(rgb)).numpy()[..., 0]
    np.testing.assert_allclose(got, luma, atol=0.02)
    opaque = np.dstack([rgb, np.full((20, 20), 255, np.uint8)])
    clear = np.dstack([rgb, np.zeros((20, 20), np.uint8)])
    np.testing.assert_array_equal(
        pp.decode_to_gray(_png(opaque)).numpy(), pp.decode_to_gray(_png(clear)).numpy()
    )
    gray = _gradient(20, 20)
    la = np.dstack([gray, np.full((20, 20), 9, np.uint8)])
    np.testing.assert_array_equal(pp.decode_to_gray(_png(la, "LA")).numpy()[..., 0], gray)
    replicated = np.dstack([gray] * 3)
    stored = pp.to_uint8(pp.decode_to_gray(_png(replicated))).numpy()[..., 0]
    np.testing.assert_array_equal(stored, gray)


def test_jpeg_decodes():
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24), 128, np.uint8)).save(buffer, format="JPEG", quality=95)
    out = pp.decode_to_gray(buffer.getvalue()).numpy()
    assert out.shape == (16, 24, 1)
    assert abs(float(out.mean()) - 128) < 2


def test_resize_is_deterministic_and_identical_eager_and_compiled():
    data = _png(_gradient(200, 200))
    eager = pp.bytes_to_stored(data, 64).numpy()
    compiled = tf.function(lambda b: pp.bytes_to_stored(b, 64))(tf.constant(data)).numpy()
    assert eager.dtype == np.uint8 and eager.shape == (64, 64, 1)
    np.testing.assert_array_equal(eager, compiled)
    # inside tf.data as well
    ds = tf.data.Dataset.from_tensors(data).map(lambda b: pp.bytes_to_stored(b, 64))
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager)
    # constant images stay constant through the antialiased resize
    flat = pp.bytes_to_stored(_png(np.full((100, 80), 77, np.uint8)), 32).numpy()
    assert (flat == 77).all()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not an image at all", "Unknown image file format"),
        (b"", None),
        (_png_header(20000, 20000), "over 8192"),
    ],
    ids=["garbage", "empty", "huge-header"],
)
def test_bad_bytes_raise_invalid_argument(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        pp.decode_to_gray(data)
    compiled = tf.function(pp.decode_to_gray, input_signature=[tf.TensorSpec([], tf.string)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        compiled(tf.constant(data))


def test_truncated_png_raises():
    data = _png(_gradient(100, 100))
    with pytest.raises(tf.errors.InvalidArgumentError):
        pp.decode_to_gray(data[: len(data) // 2])


def test_real_rgba_samples_match_their_gray_rendering():
    root = nih_path()
    rgba = []
    for path in sorted((root / "images").glob("*.png")):
        with Image.open(path) as image:
            if image.mode == "RGBA":
                rgba.append((path, np.asarray(image)))
    assert len(rgba) == 3, "the NIH sample folder has three RGBA images"
    for path, array in rgba:
        got = pp.decode_to_gray(path.read_bytes()).numpy()[..., 0]
        luma = array[..., :3].astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
        np.testing.assert_allclose(got, luma, atol=0.02, err_msg=str(path))
        stored = pp.bytes_to_stored(path.read_bytes(), 256).numpy()
        assert stored.shape == (256, 256, 1) and stored.dtype == np.uint8
