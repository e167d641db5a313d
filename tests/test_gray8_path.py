"""The converter's own path for 8-bit grayscale PNGs (`preprocessing.gray8_to_stored`, chosen
from the file's header): the same stored bytes, size, mapping and errors as the general path
(`bytes_to_stored`, what the exported model runs), on the real NIH PNGs and on oblong,
tiny and enlarged images in every resize mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from helpers import nih_path
from PIL import Image

from cxr_tf.config import ConvertConfig
from cxr_tf.config.data import RESIZES
from cxr_tf.data import conversion
from cxr_tf.data import preprocessing as pp


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def general(data: bytes, size: int, resize: str) -> tuple[np.ndarray, tuple[int, int], str]:
    """What the general graph gives: stored pixels, decoded (height, width), mapping."""
    gray, mapping = pp.decode_and_describe(pp.string_tensor(data), "full", size, resize)
    stored = pp.resize_to_stored(gray, size, resize).numpy()
    assert np.array_equal(stored, pp.bytes_to_stored(data, size, resize).numpy())
    return stored, tuple(int(v) for v in gray.shape[:2]), mapping.numpy().decode()


@pytest.mark.parametrize("resize", RESIZES)
def test_real_nih_pngs_store_the_same_bytes_as_the_exported_models_path(resize):
    paths = sorted((nih_path() / "images").glob("*.png"))
    encoder = conversion._Encoder(ConvertConfig(stored_size=224, resize=resize))
    gray8 = 0
    for path in paths:
        data = path.read_bytes()
        shape = pp.png_gray8_shape(data)
        gray8 += shape is not None
        payload, size, mapping = encoder(data)
        want, want_size, want_mapping = general(data, 224, resize)
        assert np.array_equal(payload, want), path.name
        assert (size, mapping) == (want_size, want_mapping), path.name
        if shape is not None:
            assert shape == want_size == (1024, 1024) and mapping == pp.PNG_GRAY8
    assert gray8 == len(paths) - 3  # the sample's three RGBA files take the general path


SHAPES = [(37, 53), (53, 37), (1, 1), (3, 300), (64, 64), (200, 150)]


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("size", [64, 96])
def test_oblong_tiny_and_enlarged_images_match_in_every_mode(height, width, size, resize):
    rng = np.random.default_rng(height * 1000 + width)
    data = png_bytes(rng.integers(0, 256, (height, width), dtype=np.uint8))
    assert pp.png_gray8_shape(data) == (height, width)
    encoder = conversion._Encoder(ConvertConfig(stored_size=size, resize=resize))
    payload, shape, mapping = encoder(data)
    want, want_shape, want_mapping = general(data, size, resize)
    np.testing.assert_array_equal(payload, want)
    assert (shape, mapping) == (want_shape, want_mapping) == ((height, width), "png 8-bit")


def test_png_storage_holds_the_same_pixels():
    data = png_bytes(np.random.default_rng(3).integers(0, 256, (90, 70), dtype=np.uint8))
    payload, _, _ = conversion._Encoder(ConvertConfig(stored_size=64, encoding="png"))(data)
    want = pp.bytes_to_stored(data, 64).numpy()
    np.testing.assert_array_equal(tf.io.decode_png(payload).numpy(), want)


def test_other_files_take_the_general_path():
    gray = np.zeros((8, 8), np.uint8)
    others = {
        "16-bit": png_bytes(np.zeros((8, 8), np.uint16), "I;16"),
        "RGB": png_bytes(np.zeros((8, 8, 3), np.uint8), "RGB"),
        "gray + alpha": png_bytes(np.zeros((8, 8, 2), np.uint8), "LA"),
        "1-bit": png_bytes(gray.astype(bool), "1"),
        "cut header": png_bytes(gray)[:30],
        "JPEG": b"\xff\xd8\xff" + b"\0" * 40,
        "empty": b"",
    }
    for name, data in others.items():
        assert pp.png_gray8_shape(data) is None, name
    assert pp.png_gray8_shape(png_bytes(gray)) == (8, 8)


def _with_side(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR announces another size (its CRC left stale, as in a damaged file)."""
    return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]


def _reason(fn, data: bytes) -> str:
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        fn(data)
    return conversion.short_error(err.value)


def test_bad_files_fail_with_the_general_paths_reasons():
    encoder = conversion._Encoder(ConvertConfig(stored_size=64))

    def compiled_general(data: bytes) -> object:  # the converter's graph for other files
        return encoder._encode(pp.string_tensor(data))

    data = png_bytes(np.full((40, 40), 7, np.uint8))
    huge = _with_side(data, 9000, 40)
    assert pp.png_gray8_shape(huge) == (40, 9000)
    assert _reason(encoder, huge) == _reason(compiled_general, huge) == pp.SIDE_ERROR
    for bad in (data[: len(data) // 2], data[:40], _with_side(data, 41, 40)):
        assert pp.png_gray8_shape(bad) is not None
        assert _reason(encoder, bad) == _reason(compiled_general, bad)
