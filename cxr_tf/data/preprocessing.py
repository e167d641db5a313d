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
  exactly. No per-image windowing: the same file always gives the same pixels.
- Resize: area averaging to a square `size x size` (NIH PNGs are already square): each
  stored pixel is the mean of the source pixels it covers (no aliasing when shrinking;
  nearest-neighbour when enlarging), rounded to uint8. Area averaging measured ~2x
  cheaper than antialiased bilinear on 1024 px inputs, which matters at conversion.
"""

from __future__ import annotations

import tensorflow as tf

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Largest side accepted before decoding; a 20000x20000 header would need 400 MB+ per image.
MAX_SIDE = 8192


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


def _to_gray(image: tf.Tensor) -> tf.Tensor:
    """Any of 1-4 channels (float, 0-255 scale) -> one channel."""
    channels = tf.shape(image)[-1]
    return tf.cond(
        channels >= 3,
        lambda: tf.image.rgb_to_grayscale(image[..., :3]),
        lambda: image[..., :1],
    )


def decode_to_gray(data: tf.Tensor) -> tf.Tensor:
    """Encoded PNG/JPEG/BMP/GIF bytes -> float32 grayscale (H, W, 1) in 0..255.

    Raises `tf.errors.InvalidArgumentError` for undecodable bytes or images with a side
    over `MAX_SIDE`.
    """
    data = tf.convert_to_tensor(data, tf.string)
    check = tf.debugging.assert_less_equal(
        _header_side(data),
        tf.constant(MAX_SIDE, tf.int64),
        message=f"image header announces a side over {MAX_SIDE} pixels",
    )
    # In a graph nothing orders a decode after an assert: make the size check come first.
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    depth = _png_bit_depth(data)

    def _sixteen() -> tf.Tensor:
        image = tf.io.decode_png(data, channels=0, dtype=tf.uint16)
        return tf.cast(image, tf.float32) * (255.0 / 65535.0)

    def _eight() -> tf.Tensor:
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        return tf.cast(image, tf.float32)

    image = tf.cond(tf.equal(depth, 16), _sixteen, _eight)
    image.set_shape([None, None, None])
    tf.debugging.assert_less_equal(
        tf.reduce_max(tf.shape(image)[:2]),
        MAX_SIDE,
        message=f"image side exceeds {MAX_SIDE} pixels",
    )
    return _to_gray(image)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds a 0..255 float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_to_stored(gray: tf.Tensor, size: int) -> tf.Tensor:
    """float32 (H, W, 1) -> uint8 (size, size, 1): the resize done once at conversion."""
    resized = tf.image.resize(gray, [size, size], method="area")
    return to_uint8(resized)


def bytes_to_stored(data: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded image bytes -> the uint8 (size, size, 1) image a converted record holds."""
    return resize_to_stored(decode_to_gray(data), size)


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
