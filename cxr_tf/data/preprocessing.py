"""Image preprocessing: the one definition shared by conversion, training, evaluation and serving.

`decode_to_gray` + `resize_to_stored` is what the converter runs on every NIH PNG and
what the exported model runs on incoming image bytes, so stored pixels and served pixels
come from the same TensorFlow ops. The evaluation geometry (stored size -> the network's
input size: a resize of the whole image, no crop) lives inside the model
(`cxr_tf.modeling.models`, layer `resize`), so evaluation and serving share it too.

Conventions, defined here once:
- Channels: 1 (L) and 2 (LA) take the first channel; 3 (RGB) and 4 (RGBA) take the RGB
  part through `tf.image.rgb_to_grayscale` (ITU-R 601 luma); alpha is ignored (the NIH
  RGBA images carry an opaque alpha).
- Bit depth: 16-bit PNGs map linearly onto 8 bits over the full 16-bit range,
  `round(v * 255 / 65535)`, so an 8-bit image stored as 16-bit (v * 257) comes back
  exactly. A PNG whose `sBIT` chunk says its gray (or RGB) samples have b < 16 significant
  bits, and whose samples all fit in b bits, holds them as they are (as DICOM exports of
  12-bit detectors often do): `v * 255 / (2**b - 1)`. Samples above `2**b - 1` mean the
  writer scaled them to 16 bits as the PNG specification asks (pypng, libpng): the
  full-range mapping then applies. Without sBIT nothing is guessed; the mapping each image
  got is named by `decode_and_describe` (conversion records the counts and warns about
  16-bit images that use under 1/8 of the range). No per-image windowing: the same file
  always gives the same pixels.
- JPEG decoding (`jpeg`, the conversion's `--jpeg_decode`, recorded in the manifest and
  repeated by serving): `full` decodes at full size with libjpeg's accurate integer IDCT;
  `reduced` lets libjpeg decode at 1/4 or 1/2 scale (its scaled IDCT, `ratio`) when the
  reduced image's shorter side still holds at least `REDUCED_MARGIN` times the stored side
  and its pixel grid lines up with the full-size one (the sides, and for crop and pad the
  centred square's offsets, divide by the scale: a grid half a reduced pixel off measured
  0.39-0.56 grey level); the largest such scale, never 1/8 (its DC-only blocks measured
  1.3-1.6 grey levels off); else at full size as `full` does. `fast` is TensorFlow's
  default fast IDCT at full size, what every conversion used before the choice. The same
  bytes, size, resize and mode give the same pixels wherever they are decoded. Against
  `full` the stored pixels of real-size radiographs differ by 0.05-0.26 grey level on
  average (`reduced`) and are 0.48 darker on average (`fast`: its IDCT rounds low);
  docs/datasets.md has the figures.
- Square: a non-square image becomes square by the conversion's `resize` mode
  (`to_square`): `squash` keeps the whole image (the resize below stretches it), `crop`
  keeps the centred square of the shorter side, `pad` adds black (0) bars out to the
  longer side. An odd difference leaves the extra row or column at the bottom or right.
  A square image is the same under the three modes. Boxes follow (`box_to_square`).
- Resize: area averaging to a square `size x size` (NIH PNGs are already square): each
  stored pixel is the mean of the source pixels it covers (no aliasing when shrinking;
  nearest-neighbour when enlarging), rounded to uint8. Area averaging measured ~2x
  cheaper than antialiased bilinear on 1024 px inputs, which matters at conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cxr_tf.config.data import DEFAULT_JPEG_DECODE, JPEG_DECODES, RESIZES

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Largest side accepted before decoding; a 20000x20000 header would need 400 MB+ per image.
MAX_SIDE = 8192
SIDE_ERROR = f"image header announces a side over {MAX_SIDE} pixels"
# A 16-bit PNG without sBIT whose brightest sample is under 1/8 of the range (8192) most
# likely holds 12-bit (or narrower) data as it is; conversion warns about such images.
LOW_RANGE_PEAK = 65536 // 8
# Pixel mappings `decode_and_describe` names (the sBIT ones add the bit count).
SIXTEEN_BIT = "png 16-bit, full range"
SIXTEEN_BIT_LOW = "png 16-bit, full range, under 1/8 used"
PNG_GRAY8 = "png 8-bit"  # what an 8-bit grayscale PNG gets (also `png 1-bit`, 2, 4)
# `reduced` JPEG decoding: the scales tried, largest first, and how many source pixels
# (at least) the reduced image keeps per stored pixel along its shorter side.
JPEG_RATIOS = (4, 2)
REDUCED_MARGIN = 2
_JPEG_SIGNATURE = b"\xff\xd8\xff"  # what tf.io.decode_image takes for a JPEG
# Chunks walked looking for sBIT before giving up (it must precede IDAT; text chunks may
# come first).
_MAX_CHUNKS = 256


def string_tensor(data: Any) -> tf.Tensor:
    """Encoded bytes (or a string tensor, returned as it is) as a scalar tf.string tensor.
    Plain `bytes` go through a 0-d object array: TensorFlow converts them directly ~40x
    slower (5-6 ms for a 2 MB JPEG, a fifth of its decoding time; 0.13 ms this way)."""
    if isinstance(data, bytes | bytearray | memoryview):
        return tf.constant(np.array(bytes(data), dtype=object))
    return tf.convert_to_tensor(data, tf.string)


def _header(data: tf.Tensor) -> tf.Tensor:
    """The first 32 bytes, zero-padded, so short or truncated inputs never index past the end."""
    return tf.strings.substr(tf.strings.substr(data, 0, 32) + b"\0" * 32, 0, 32)


def _is_png(data: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(_header(data), 0, 8), _PNG_SIGNATURE)


def _png_bit_depth(data: tf.Tensor) -> tf.Tensor:
    """Bit depth byte of a PNG's IHDR chunk (offset 24), 0 for other formats."""
    depth = tf.io.decode_raw(tf.strings.substr(_header(data), 24, 1), tf.uint8)[0]
    return tf.where(_is_png(data), tf.cast(depth, tf.int32), 0)


def _header_side(data: tf.Tensor) -> tf.Tensor:
    """Largest side announced by a PNG or JPEG header, read before any pixel is decoded."""

    def png_side() -> tf.Tensor:
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(_header(data), 16, 8), tf.uint8), tf.int64)
        width = raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]
        height = raw[4] * 2**24 + raw[5] * 2**16 + raw[6] * 2**8 + raw[7]
        return tf.maximum(width, height)

    def jpeg_side() -> tf.Tensor:
        return tf.cast(tf.reduce_max(tf.image.extract_jpeg_shape(data)[:2]), tf.int64)

    is_jpeg = tf.equal(tf.strings.substr(_header(data), 0, 2), b"\xff\xd8")
    return tf.case(
        [(_is_png(data), png_side), (is_jpeg, jpeg_side)],
        default=lambda: tf.constant(0, tf.int64),
    )


def _png_significant_bits(data: tf.Tensor) -> tf.Tensor:
    """Significant bits of a PNG's gray (or RGB: the largest) samples from its sBIT chunk,
    0 when it has none. Walks the chunks from IHDR up to the first IDAT, where sBIT must
    come (PNG 11.3.3.4), reading only each chunk's 8-byte head."""
    size = tf.cast(tf.strings.length(data), tf.int64)
    color_type = tf.io.decode_raw(tf.strings.substr(_header(data), 25, 1), tf.uint8)[0]
    # color types 2 (RGB) and 6 (RGBA) give three color bytes, gray (0, 4) one
    colors = tf.where((color_type == 2) | (color_type == 6), 3, 1)
    piece_len = tf.constant(11, tf.int64)

    def more(pos: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
        return (bits < 0) & (pos + 12 <= size)

    def step(pos: tf.Tensor, bits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        piece = tf.strings.substr(data, pos, piece_len) + b"\0" * 11  # never short
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(piece, 0, 11), tf.uint8), tf.int64)
        length = raw[0] * 2**24 + raw[1] * 2**16 + raw[2] * 2**8 + raw[3]
        kind = tf.strings.substr(piece, 4, 4)
        found = tf.reduce_max(raw[8 : 8 + colors])
        ended = tf.equal(kind, b"IDAT") | tf.equal(kind, b"IEND")
        unknown = tf.where(ended, tf.constant(0, tf.int64), tf.constant(-1, tf.int64))
        return pos + length + 12, tf.where(tf.equal(kind, b"sBIT"), found, unknown)

    start = (tf.constant(len(_PNG_SIGNATURE), tf.int64), tf.constant(-1, tf.int64))
    _, bits = tf.while_loop(more, step, start, maximum_iterations=_MAX_CHUNKS)
    return tf.cast(tf.maximum(bits, 0), tf.int32)


def _other_format(data: tf.Tensor, depth: tf.Tensor) -> tf.Tensor:
    """The mapping name of an image decoded at 8 bits: `png 8-bit` (or 1/2/4), `jpeg`,
    `bmp`, `gif`, `other`."""
    head = tf.strings.substr(_header(data), 0, 4)
    return tf.case(
        [
            (depth > 0, lambda: tf.strings.format("png {}-bit", depth)),
            (tf.equal(tf.strings.substr(head, 0, 2), b"\xff\xd8"), lambda: tf.constant("jpeg")),
            (tf.equal(tf.strings.substr(head, 0, 2), b"BM"), lambda: tf.constant("bmp")),
            (tf.equal(head, b"GIF8"), lambda: tf.constant("gif")),
        ],
        default=lambda: tf.constant("other"),  # whatever else tf.io.decode_image reads
    )


def _reducible(height: Any, width: Any, size: int, resize: str, ratio: int) -> Any:
    """Whether `reduced` decoding may use `ratio` (ints or int scalar tensors alike): the
    reduced shorter side keeps `REDUCED_MARGIN` times the stored side, and the reduced
    pixel grid lines up with the full-size one (both sides divide by the ratio and, for
    crop and pad, so do the centred square's offsets: |height - width| by 2 x ratio)."""
    shorter = (height + width - abs(height - width)) // 2
    fits = shorter // ratio >= REDUCED_MARGIN * size
    aligned = (height % ratio == 0) & (width % ratio == 0)
    if resize != "squash":
        aligned = aligned & (abs(height - width) % (2 * ratio) == 0)
    return fits & aligned


def jpeg_ratio(height: int, width: int, size: int, resize: str = "squash") -> int:
    """The scale denominator `reduced` decoding uses for a `height` x `width` JPEG stored at
    `size` with `resize`: the largest of `JPEG_RATIOS` that `_reducible` allows, else 1."""
    return next((r for r in JPEG_RATIOS if _reducible(height, width, size, resize, r)), 1)


def _decode_jpeg(
    data: tf.Tensor, jpeg: str, size: int, resize: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """JPEG bytes -> (float32 (H, W, C), mapping name) by `full` or `reduced` decoding."""

    def at(ratio: int) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_jpeg(data, channels=0, ratio=ratio, dct_method="INTEGER_ACCURATE")
        return tf.cast(image, tf.float32), tf.constant(jpeg_mapping(ratio))

    if jpeg == "full":
        return at(1)
    shape = tf.image.extract_jpeg_shape(data)
    return tf.case(
        [(_reducible(shape[0], shape[1], size, resize, r), lambda r=r: at(r)) for r in JPEG_RATIOS],
        default=lambda: at(1),
    )


def _to_gray(image: tf.Tensor) -> tf.Tensor:
    """Any of 1-4 channels (float, 0-255 scale) -> one channel."""
    channels = tf.shape(image)[-1]
    return tf.cond(
        channels >= 3,
        lambda: tf.image.rgb_to_grayscale(image[..., :3]),
        lambda: image[..., :1],
    )


def decode_and_describe(
    data: tf.Tensor, jpeg: str = "full", size: int = 0, resize: str = "squash"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded PNG/JPEG/BMP/GIF bytes -> (float32 grayscale (H, W, 1) in 0..255, the name
    of the pixel mapping it got).

    `jpeg`: how JPEG files are decoded (`JPEG_DECODES`, see the module doc); `reduced`
    needs `size` and `resize`, the stored side and square the image is going to.

    Mapping names: `png 8-bit` (also 1, 2, 4), `jpeg` (also `jpeg, decoded at 1/2` and
    `1/4`), `bmp`, `gif`, and for 16-bit PNGs
    `png 16-bit, sBIT <b>` (samples held as they are, `v * 255 / (2**b - 1)`),
    `png 16-bit, sBIT <b>, scaled to 16 bits`, `SIXTEEN_BIT` and `SIXTEEN_BIT_LOW` (no
    sBIT, the brightest sample under `LOW_RANGE_PEAK`); see the module doc.

    Raises `tf.errors.InvalidArgumentError` for undecodable bytes or images with a side
    over `MAX_SIDE`; `ValueError` for an unknown `jpeg` mode or `reduced` without a size.
    """
    if jpeg not in JPEG_DECODES:
        raise ValueError(f"jpeg must be one of {', '.join(JPEG_DECODES)}, not {jpeg!r}")
    if jpeg == "reduced" and size < 1:
        raise ValueError("reduced JPEG decoding needs the stored size")
    data = string_tensor(data)
    check = tf.debugging.assert_less_equal(
        _header_side(data),
        tf.constant(MAX_SIDE, tf.int64),
        message=SIDE_ERROR,
    )
    # In a graph nothing orders a decode after an assert: make the size check come first.
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    depth = _png_bit_depth(data)

    def _sixteen() -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32)
        colors = tf.where(tf.shape(image)[-1] >= 3, 3, 1)  # alpha is not a sample's level
        peak = tf.reduce_max(image[..., :colors])
        bits = _png_significant_bits(data)
        narrow = (bits >= 1) & (bits <= 15)
        top = tf.cast(tf.bitwise.left_shift(1, tf.clip_by_value(bits, 1, 16)) - 1, tf.float32)
        as_is = narrow & (peak <= top)
        scale = tf.where(as_is, 255.0 / top, 255.0 / 65535.0)
        sbit = tf.strings.format("png 16-bit, sBIT {}", bits)
        name = tf.where(
            as_is,
            sbit,
            tf.where(
                narrow,
                sbit + ", scaled to 16 bits",
                tf.where(peak < LOW_RANGE_PEAK, SIXTEEN_BIT_LOW, SIXTEEN_BIT),
            ),
        )
        return image * scale, name

    def _eight() -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        return tf.cast(image, tf.float32), _other_format(data, depth)

    def _jpeg_or_eight() -> tuple[tf.Tensor, tf.Tensor]:
        is_jpeg = tf.equal(tf.strings.substr(_header(data), 0, 3), _JPEG_SIGNATURE)
        return tf.cond(is_jpeg, lambda: _decode_jpeg(data, jpeg, size, resize), _eight)

    # tf.io.decode_image decodes JPEGs with the fast IDCT: `fast` is decode_image alone
    image, name = tf.cond(
        tf.equal(depth, 16), _sixteen, _eight if jpeg == "fast" else _jpeg_or_eight
    )
    image.set_shape([None, None, None])
    tf.debugging.assert_less_equal(
        tf.reduce_max(tf.shape(image)[:2]),
        MAX_SIDE,
        message=f"image side exceeds {MAX_SIDE} pixels",
    )
    return _to_gray(image), name


def source_shape(data: tf.Tensor, image: tf.Tensor, mapping: tf.Tensor) -> tf.Tensor:
    """(height, width) of the file `decode_and_describe` made `image` and `mapping` of: the
    image's own, or for a JPEG decoded at reduced scale the file's (its header)."""
    reduced = tf.strings.regex_full_match(mapping, "jpeg, decoded at 1/[0-9]+")
    return tf.cond(
        reduced,
        lambda: tf.image.extract_jpeg_shape(data)[:2],
        lambda: tf.shape(image)[:2],
    )


def decode_to_gray(
    data: tf.Tensor, jpeg: str = "full", size: int = 0, resize: str = "squash"
) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 grayscale (H, W, 1) in 0..255 (the image
    of `decode_and_describe`, with its `jpeg`, `size` and `resize`).

    Raises `tf.errors.InvalidArgumentError` for undecodable bytes or images with a side
    over `MAX_SIDE`.
    """
    return decode_and_describe(data, jpeg, size, resize)[0]


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds a 0..255 float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _square_offsets(height: Any, width: Any, resize: str) -> tuple[Any, Any, Any]:
    """(side, top, left) of the square for an image of `height` x `width`: for crop the
    window's corner inside the image, for pad the image's corner inside the square (ints or
    scalar tensors alike)."""
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, not {resize!r}")
    if resize == "crop":
        side = min(height, width) if isinstance(height, int) else tf.minimum(height, width)
        return side, (height - side) // 2, (width - side) // 2
    side = max(height, width) if isinstance(height, int) else tf.maximum(height, width)
    return side, (side - height) // 2, (side - width) // 2


def to_square(gray: tf.Tensor, resize: str) -> tf.Tensor:
    """(H, W, C) -> the square image `resize` makes of it (see the module doc); `squash`
    returns `gray` itself, the resize to the stored size then stretches it."""
    if resize == "squash":
        return gray
    height, width = tf.shape(gray)[0], tf.shape(gray)[1]
    side, top, left = _square_offsets(height, width, resize)
    if resize == "crop":
        return gray[top : top + side, left : left + side]
    paddings = [[top, side - height - top], [left, side - width - left], [0, 0]]
    return tf.pad(gray, paddings, constant_values=0)


def box_to_square(
    box: Sequence[float], width: int, height: int, resize: str
) -> tuple[float, float, float, float] | None:
    """A box normalised to a `width` x `height` image, `(ymin, xmin, ymax, xmax)` (tfds's
    BBox order), normalised to the square `to_square` makes; clipped to it; None when a crop
    leaves none of it (the box lies wholly in the part cut off). `squash` returns it as is.
    """
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    if resize == "squash" or width == height:
        _square_offsets(height, width, resize)  # a bad mode is an error here too
        return ymin, xmin, ymax, xmax
    side, top, left = _square_offsets(height, width, resize)
    # the image's pixel offset inside the square (negative: cropped away), in square units
    sign = -1 if resize == "crop" else 1
    y0, x0 = sign * top / side, sign * left / side
    ky, kx = height / side, width / side
    ymin, ymax = y0 + ymin * ky, y0 + ymax * ky
    xmin, xmax = x0 + xmin * kx, x0 + xmax * kx
    if ymax <= 0.0 or xmax <= 0.0 or ymin >= 1.0 or xmin >= 1.0:
        return None

    def clip(v: float) -> float:
        return min(max(v, 0.0), 1.0)

    return clip(ymin), clip(xmin), clip(ymax), clip(xmax)


def resize_to_stored(gray: tf.Tensor, size: int, resize: str = "squash") -> tf.Tensor:
    """float32 (or uint8) (H, W, 1) -> uint8 (size, size, 1): squared by `resize`
    (`to_square`), then the area resize; done once at conversion and again on every served
    image. The area resize reads uint8 pixels as the float values they are, so both give
    the same image."""
    resized = tf.image.resize(to_square(gray, resize), [size, size], method="area")
    return to_uint8(tf.cast(resized, tf.float32))


def png_gray8_shape(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the header of an 8-bit grayscale PNG (colour type 0), the usual
    radiograph file; None for any other bytes."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] != 0:
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


# Frame markers of the JPEGs this path takes (baseline, extended and progressive Huffman:
# what radiograph JPEGs use); the segments that may come before the frame header: APPn,
# DQT, DHT, DRI, COM, DAC. Any other marker sends the file to the general graph.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2})
_BEFORE_FRAME = frozenset({*range(0xE0, 0xF0), 0xDB, 0xC4, 0xDD, 0xFE, 0xCC})


def jpeg_gray_shape(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the frame header of an 8-bit single-component (grayscale)
    baseline, extended or progressive JPEG, the usual radiograph JPEG; None for any other
    bytes (colour, 12-bit, lossless or arithmetic-coded, no frame header before the first
    scan, a height left to a DNL marker, a marker out of place). The graph that decodes
    it checks the header again with libjpeg (`gray_jpeg_to_stored`)."""
    if len(data) < 4 or data[:3] != _JPEG_SIGNATURE:
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            frame = data[pos + 4 : pos + 10]
            if len(frame) < 6 or frame[0] != 8 or frame[5] != 1:
                return None
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return (height, width) if height and width else None
        if marker not in _BEFORE_FRAME:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def jpeg_mapping(ratio: int) -> str:
    """The pixel mapping name of a JPEG decoded at 1/`ratio` scale."""
    return "jpeg" if ratio == 1 else f"jpeg, decoded at 1/{ratio}"


def gray_jpeg_to_stored(
    data: tf.Tensor, ratio: int, size: int, resize: str = "squash"
) -> tf.Tensor:
    """`bytes_to_stored` of a grayscale JPEG (`jpeg_gray_shape` not None) in `full` or
    `reduced` decoding, with the scale the caller chose from the header (`jpeg_ratio`, or 1
    for `full`): the general path's branch for it, built alone, its resize reading the
    decoded uint8 pixels without a float copy. The same pixels (tested byte for byte).
    libjpeg reads the header first and the side is checked against `MAX_SIDE`, as in the
    general path, so a bad file fails with the same reason there and here."""
    side = tf.cast(tf.reduce_max(tf.image.extract_jpeg_shape(data)[:2]), tf.int64)
    check = tf.debugging.assert_less_equal(side, tf.constant(MAX_SIDE, tf.int64), SIDE_ERROR)
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    image = tf.io.decode_jpeg(data, channels=1, ratio=ratio, dct_method="INTEGER_ACCURATE")
    return resize_to_stored(image, size, resize)


def pool_factors(height: int, width: int, size: int, resize: str) -> tuple[int, int] | None:
    """(rows, columns) of source pixels per stored pixel when the square `to_square` makes
    of a `height` x `width` image is a power-of-two multiple of `size` both ways (a 1,024
    px NIH image stored at 512, 256, 128 or 64); None otherwise. The area resize is then
    the mean of whole blocks, which average pooling computes to the same float (block sums
    of at most 2**16 8-bit values and a power-of-two divisor are exact), in about 60% of
    the time."""
    if resize == "squash":
        rows, columns = height, width
    else:
        rows = columns = _square_offsets(height, width, resize)[0]
    if rows % size or columns % size:
        return None
    down, across = rows // size, columns // size
    if down & (down - 1) or across & (across - 1) or down * across > 2**16:
        return None
    return down, across


def gray8_to_stored(
    data: tf.Tensor, size: int, resize: str = "squash", factors: tuple[int, int] | None = None
) -> tf.Tensor:
    """`bytes_to_stored` of an 8-bit grayscale PNG (`png_gray8_shape` not None): the
    general path's branch for it, built alone. The caller has read the header (its side
    checked against `MAX_SIDE`, its mapping `PNG_GRAY8`, and `factors`: `pool_factors` of
    its size), so the format branches and header ops are skipped, and the resize reads the
    decoded uint8 pixels without a float copy, or with `factors` is an average pooling.
    The same pixels (tested byte for byte against `bytes_to_stored`); 1,024 px NIH PNG
    stored at 256, decoding ~10 ms: resize and rounding 2.0 ms in the general graph, 1.2 ms
    pooled."""
    image = tf.io.decode_png(data, channels=1)
    if factors is None:
        return resize_to_stored(image, size, resize)
    square = tf.cast(to_square(image, resize), tf.float32)[None]
    return to_uint8(tf.nn.avg_pool2d(square, factors, factors, "VALID")[0])


def bytes_to_stored(
    data: tf.Tensor, size: int, resize: str = "squash", jpeg: str = DEFAULT_JPEG_DECODE
) -> tf.Tensor:
    """Encoded image bytes -> the uint8 (size, size, 1) image a converted record holds
    (`resize`: the conversion's mode, `squash` / `crop` / `pad`; `jpeg`: its JPEG decoding,
    `reduced` / `full` / `fast`)."""
    return resize_to_stored(decode_to_gray(data, jpeg, size, resize), size, resize)


def encode_png(image: tf.Tensor) -> tf.Tensor:
    """uint8 (H, W, 1) -> PNG bytes (lossless).

    zlib level 1: ~2x faster than level 3 for ~2% larger files (measured at 256 px).
    """
    return tf.io.encode_png(image, compression=1)


def error_reason(err: BaseException) -> str:
    """TensorFlow's own reason for a failed decode, without the Python traceback TF adds.

    e.g. "Invalid PNG data, size 5000", "Input is empty.", "image header announces a side
    over 8192 pixels"; other errors come back as their one-line message.
    """
    text = str(getattr(err, "message", None) or err or type(err).__name__)
    text = text.split("\n\t [[")[0]  # the node listing TF appends
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    reason = paragraphs[-1] if paragraphs else text
    if reason.startswith("assertion failed: ["):
        reason = reason[len("assertion failed: [") :].split("]")[0]
    return " ".join(reason.split())
