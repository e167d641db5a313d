"""The converter's own paths for the usual radiograph files, chosen from the file's header:
8-bit grayscale PNGs (`preprocessing.gray8_to_stored`) and grayscale JPEGs
(`gray_jpeg_to_stored`). The same stored bytes, size, mapping and errors as the general
path (`bytes_to_stored`, what the exported model runs), on the real NIH PNGs and on
oblong, tiny, enlarged and reducible images in every resize and JPEG decoding mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from helpers import nih_path
from PIL import Image

from cxr_tf.config import ConvertConfig
from cxr_tf.config.data import JPEG_DECODES, RESIZES
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
    if resize != "squash":  # square files: crop and pad change nothing, a third suffices
        paths = paths[:32]
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


def test_pool_factors_are_powers_of_two_of_the_squares_side():
    assert pp.pool_factors(1024, 1024, 256, "squash") == (4, 4)
    assert pp.pool_factors(1024, 1024, 64, "crop") == (16, 16)
    assert pp.pool_factors(256, 128, 64, "squash") == (4, 2)
    assert pp.pool_factors(256, 300, 64, "crop") == (4, 4)  # the 256 px square
    assert pp.pool_factors(128, 96, 64, "pad") == (2, 2)  # padded out to 128
    assert pp.pool_factors(64, 64, 64, "squash") == (1, 1)
    for height, width, size, mode in [(1024, 1024, 224, "squash"), (192, 192, 64, "squash"),
                                      (256, 300, 64, "pad"), (100, 64, 64, "squash"),
                                      (32, 32, 64, "squash")]:  # fmt: skip
        assert pp.pool_factors(height, width, size, mode) is None, (height, width, size, mode)


@pytest.mark.parametrize("resize", RESIZES)
@pytest.mark.parametrize(("height", "width"), [(256, 128), (256, 300), (128, 96), (192, 192)])
def test_pooled_images_match_the_area_resize_in_every_mode(height, width, resize):
    encoder = conversion._Encoder(ConvertConfig(stored_size=64, resize=resize))
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
        if seed == 1:  # flat and saturated parts, where sums land on halves most often
            pixels[: height // 2] = pixels[: height // 2] // 64 * 85
        data = png_bytes(pixels)
        payload, shape, mapping = encoder(data)
        want, want_shape, want_mapping = general(data, 64, resize)
        np.testing.assert_array_equal(payload, want)
        assert shape == want_shape and mapping == want_mapping
    assert pp.pool_factors(height, width, 64, resize) in encoder._encode_gray8  # the one used


def test_real_nih_pngs_pooled_at_256_store_the_area_resizes_bytes():
    paths = sorted((nih_path() / "images").glob("*.png"))
    encoder = conversion._Encoder(ConvertConfig(stored_size=256))
    for path in paths:
        data = path.read_bytes()
        np.testing.assert_array_equal(encoder(data)[0], general(data, 256, "squash")[0])
    assert (4, 4) in encoder._encode_gray8


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


def jpeg_bytes(pixels: np.ndarray, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shading plus noise: decodes differently at each scale, unlike a flat image."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(30, 200, height), np.linspace(0, 40, width))
    return np.clip(ramp + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)


def test_jpeg_headers_are_read_as_libjpeg_reads_them():
    gray = textured(48, 80)
    exif = {"exif": b"Exif\0\0" + bytes(40)}
    for options in ({}, {"progressive": True}, {"optimize": True}, exif):
        data = jpeg_bytes(gray, **options)
        assert pp.jpeg_gray_shape(data) == (48, 80), options
        shape = tf.image.extract_jpeg_shape(data).numpy()
        assert tuple(shape[:2]) == (48, 80) and shape[2] == 1
    color = jpeg_bytes(np.stack([gray] * 3, -1), "RGB")
    assert pp.jpeg_gray_shape(color) is None
    for other in (jpeg_bytes(gray)[:20], png_bytes(gray), b"\xff\xd8\xff", b""):
        assert pp.jpeg_gray_shape(other) is None


# (height, width): reducible at 1/4 and 1/2 at 64 px, too small, odd sides, oblong
JPEG_SHAPES = [(600, 520), (300, 260), (200, 200), (257, 301), (520, 648), (648, 520)]


@pytest.mark.parametrize("jpeg", [j for j in JPEG_DECODES if j != "fast"])
@pytest.mark.parametrize("resize", RESIZES)
def test_grayscale_jpegs_store_the_same_bytes_as_the_general_path(jpeg, resize):
    encoder = conversion._Encoder(ConvertConfig(stored_size=64, resize=resize, jpeg_decode=jpeg))
    mappings = set()
    for i, (height, width) in enumerate(JPEG_SHAPES):
        data = jpeg_bytes(textured(height, width, i), progressive=i % 2 == 1)
        assert pp.jpeg_gray_shape(data) == (height, width)
        payload, shape, mapping = encoder(data)
        want, want_shape, want_mapping = encoder._encode(pp.string_tensor(data))
        np.testing.assert_array_equal(payload, want.numpy(), err_msg=f"{height}x{width}")
        assert shape == (height, width) == tuple(want_shape.numpy())
        assert mapping == want_mapping.numpy().decode()
        mappings.add(mapping)
    if jpeg == "reduced" and resize == "squash":
        assert mappings == {"jpeg", "jpeg, decoded at 1/2", "jpeg, decoded at 1/4"}
    if jpeg == "full":
        assert mappings == {"jpeg"}


def test_colour_jpegs_and_fast_decoding_keep_the_general_path():
    color = jpeg_bytes(np.stack([textured(64, 64)] * 3, -1), "RGB")
    gray = jpeg_bytes(textured(64, 64))
    for jpeg, data in (("reduced", color), ("fast", gray)):
        encoder = conversion._Encoder(ConvertConfig(stored_size=64, jpeg_decode=jpeg))
        payload, _, mapping = encoder(data)
        assert encoder._encode_jpeg == {}, jpeg  # the header path was not taken
        want = pp.bytes_to_stored(data, 64, "squash", jpeg).numpy()
        np.testing.assert_array_equal(payload, want)
        assert mapping == "jpeg"


def test_bad_jpegs_fail_with_the_general_paths_reasons():
    encoder = conversion._Encoder(ConvertConfig(stored_size=64))
    data = jpeg_bytes(textured(300, 260))
    sof = data.index(b"\xff\xc0")
    huge = data[: sof + 5] + (9000).to_bytes(2, "big") + data[sof + 7 :]
    assert pp.jpeg_gray_shape(huge) == (9000, 260)
    general_path = encoder._encode
    assert _reason(encoder, huge) == pp.SIDE_ERROR
    assert _reason(encoder, huge) == _reason(lambda d: general_path(pp.string_tensor(d)), huge)
    sos = data.index(b"\xff\xda")
    frame_end = sof + 2 + int.from_bytes(data[sof + 2 : sof + 4], "big")
    tall = data[: sof + 5] + (65535).to_bytes(2, "big") + data[sof + 7 :]  # past libjpeg's limit
    bad = {
        "cut in the image data": data[: len(data) // 3],
        "cut after the frame header": data[:frame_end],
        "cut before the scan": data[:sos],
        "lossless (SOF3)": data[:sof] + b"\xff\xc3" + data[sof + 2 :],
        "two frame headers": data[:frame_end] + data[sof:frame_end] + data[frame_end:],
        "65,535 rows": tall,
    }
    for name, damaged in bad.items():
        want = _reason(lambda d: general_path(pp.string_tensor(d)), damaged)
        assert _reason(encoder, damaged) == want, name
    assert pp.jpeg_gray_shape(bad["lossless (SOF3)"]) is None  # left to the general graph
    assert pp.jpeg_gray_shape(bad["cut after the frame header"]) == (300, 260)


def test_trace_builds_the_jpeg_graphs_a_source_with_jpegs_will_use():
    reduced = conversion._Encoder(ConvertConfig(stored_size=64))
    reduced.trace()
    assert reduced._encode_jpeg == {}  # a source without JPEG files builds none
    reduced.trace(jpeg=True)
    assert sorted(reduced._encode_jpeg) == [1, *sorted(pp.JPEG_RATIOS)]
    full = conversion._Encoder(ConvertConfig(stored_size=64, jpeg_decode="full"))
    full.trace(jpeg=True)
    assert sorted(full._encode_jpeg) == [1]
