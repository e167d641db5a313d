"""DICOM images: telling them apart, decoding their pixels to the project's 0-255 grayscale,
and reading the header fields a catalog keeps.

DICOM is an image format here, not a dataset: class folders, a labels CSV or any other
source may hold `.dcm` files, and conversion (`cxr_tf.data.conversion`) and prediction
(`cxr_tf.serving.predictor`) recognise them from their bytes (`is_dicom`), never from
their names: the 'DICM' marker after the 128-byte preamble (DICOM PS3.10), or, for files
written without preamble and marker (old ACR-NEMA style exports, some archive tools), a
first element of group 0002 or 0008; those are read with pydicom's `force=True`, and when
they carry no file meta information their transfer syntax is the encoding pydicom found.

`decode` turns a file's bytes into float32 (H, W) pixels on a 0..255 scale, in this order:

1. Pixel data of the first frame (a multi-frame file gives its first frame only), through
   pydicom's decoders: uncompressed and RLE Lossless natively, the JPEG family (baseline,
   extended, lossless, JPEG-LS, JPEG 2000) through GDCM (`python-gdcm`), JPEG 2000 also
   through Pillow (12-bit JPEG Extended, rare in radiography, has no decoder among them).
   A transfer syntax with no installed decoder is a ValueError naming it.
2. Grayscale (MONOCHROME1/2): the Modality LUT (`RescaleSlope`/`RescaleIntercept`, or a
   Modality LUT Sequence) through `pydicom.pixels.apply_modality_lut`, then the VOI
   transformation through `pydicom.pixels.apply_voi_lut` (a VOI LUT Sequence when there is
   one, else the first `WindowCenter`/`WindowWidth` with its `VOILUTFunction`).
3. Scaling to 0..255, linear, from the range the VOI transformation can produce:
   - a window: its bottom maps to 0 and its top to 255, i.e. for the default LINEAR
     function `255 * clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)` (DICOM PS3.3 C.11.2.1.2
     with an output range of 0..255); LINEAR_EXACT and SIGMOID likewise;
   - a VOI LUT: the smallest LUT entry maps to 0 and the largest to 255;
   - neither: the image's own smallest value maps to 0 and its largest to 255 (min-max of
     this image, as is usual for unwindowed radiographs); a constant image gives all 0.
4. MONOCHROME1 (bright = low values) is inverted, `255 - v`, so bright is bone as in
   MONOCHROME2 and in the PNG datasets. So is an image whose Presentation LUT Shape
   (2050,0020) is INVERSE; MONOCHROME1 with INVERSE (the pair the DX IOD prescribes, both
   saying "low values are bright") is inverted once.
5. Color (RGB, YBR converted to RGB by pydicom, PALETTE COLOR through its LUT): ITU-R 601
   luma (the weights of `tf.image.rgb_to_grayscale`, as PNG/JPEG inputs get), scaled from
   the samples' nominal range (`2**BitsStored - 1`) to 255; no LUT or window applies.

BitsStored plays no part in grayscale scaling (a window, a LUT or the image's own range
decide it; pydicom's decoders already ignore the bits above BitsStored); it gives the
nominal range of color samples. `decode_and_describe` also names the mapping an image got
(e.g. `dicom MONOCHROME2, window`), which conversion counts in the manifest.

The result is not rounded: conversion resizes it as floats like a decoded PNG. Prediction
sends it to the model as a 16-bit grayscale PNG (`to_png`: `round(v * 257)`, which the
model's in-graph decoder reads back as `v16 * 255 / 65535`, within 1/514 of a gray level),
so every prediction path (Keras, SavedModel, TF Serving) takes the same image bytes.

Images with a side over `MAX_SIDE` are refused from the header, before any pixel is decoded,
as PNG and JPEG inputs are (`cxr_tf.data.preprocessing.MAX_SIDE`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128  # the magic follows a 128-byte preamble (DICOM PS3.10 7.1)
# Same limit as cxr_tf.data.preprocessing.MAX_SIDE (that module imports TensorFlow; a test
# checks that the two agree).
MAX_SIDE = 8192
# ITU-R 601 luma, the weights tf.image.rgb_to_grayscale uses for RGB PNG/JPEG inputs.
LUMA = (0.2989, 0.5870, 0.1140)
# DICOM Age String: nnnD, nnnW, nnnM or nnnY.
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_DIVISOR = {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}
MAX_AGE = 130


# Two-letter value representations (DICOM PS3.5 6.2), to tell an explicit-VR element head.
_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    "UN UR US UT UV".split()
)
# Elements a preamble-less file may start with: its file meta information (group 0002) or,
# without one, the first of its Identifying group (0008).
_FIRST_GROUPS = (0x0002, 0x0008)
# How many bytes `is_dicom` needs to decide (the marker's end).
HEAD_BYTES = MAGIC_OFFSET + 4


def has_preamble(data: bytes) -> bool:
    """Whether `data` has the 'DICM' magic after the 128-byte preamble (DICOM PS3.10 7.1)."""
    return len(data) >= HEAD_BYTES and bytes(data[MAGIC_OFFSET:HEAD_BYTES]) == DICOM_MAGIC


def starts_without_preamble(data: bytes) -> bool:
    """Whether `data` looks like a DICOM data set written without preamble and marker: a
    first element of group 0002 or 0008 (little endian) with an explicit VR or a
    plausible implicit-VR length."""
    head = bytes(data[:8])
    if len(head) < 8 or int.from_bytes(head[:2], "little") not in _FIRST_GROUPS:
        return False
    if head[4:6].decode("latin-1") in _VRS:
        return True
    length = int.from_bytes(head[4:8], "little")
    return 0 < length <= 1024  # a UID, a code string or a group length, never more


def is_dicom(data: bytes) -> bool:
    """Whether `data` is a DICOM file: the 'DICM' magic after the 128-byte preamble, or a
    data set written without them (`starts_without_preamble`)."""
    return has_preamble(data) or starts_without_preamble(data)


def _read(source: bytes | str | Path, stop_before_pixels: bool) -> Any:
    """A pydicom Dataset; ValueError for anything pydicom cannot parse."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:HEAD_BYTES])
        if not is_dicom(head):
            raise ValueError(
                "not a DICOM file: no 'DICM' marker at byte 128 nor a data set at byte 0"
            )
        handle: Any = io.BytesIO(bytes(source))
    else:
        with open(source, "rb") as opened:
            head = opened.read(HEAD_BYTES)
        handle = str(source)
    bare = not has_preamble(head) and starts_without_preamble(head)
    try:
        ds = pydicom.dcmread(handle, stop_before_pixels=stop_before_pixels, force=bare)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"not a readable DICOM file ({reason})") from err
    if bare:
        _fill_transfer_syntax(ds)
    if _transfer_syntax(ds) is None:
        # pydicom reads almost any bytes after 'DICM'; real files state their encoding.
        raise ValueError(
            "not a readable DICOM file (no Transfer Syntax UID (0002,0010) in its file meta "
            "information)"
        )
    return ds


def _fill_transfer_syntax(ds: Any) -> None:
    """Gives a data set read without file meta information the transfer syntax pydicom
    found it in (its decoders need one); ValueError when nothing was read."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not any(tag.group != 0x0002 for tag in ds.keys()):
        raise ValueError("not a readable DICOM file (no data elements after its start)")
    if _transfer_syntax(ds) is not None:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _first_frame(ds: Any) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    syntax = _transfer_syntax(ds)
    what = f"transfer syntax {syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise ValueError(f"{what}: pydicom has no decoder for it") from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise ValueError(f"{what}: no decoder installed ({missing})")
    try:
        return np.asarray(pixel_array(ds, index=0))
    except Exception as err:  # plugins raise RuntimeError, ValueError, NotImplementedError...
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{what}: cannot decode the pixel data ({reason})") from err


def _voi_range(arr: np.ndarray, ds: Any) -> tuple[float, float, np.ndarray, str]:
    """The VOI transformation of `arr`, the (low, high) range it can produce and its name
    (`VOI LUT`, `window`, `min-max`)."""
    from pydicom.pixels import apply_voi_lut

    sequence = ds.get("VOILUTSequence")
    has_lut = bool(sequence) and all(
        sequence[0].get(k) is not None for k in ("LUTDescriptor", "LUTData")
    )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        # LUT inputs are integers; a rescale may have made them floats.
        arr = np.round(arr).astype(np.int64) if arr.dtype.kind == "f" else arr
        descriptor = sequence[0].LUTDescriptor
        entries = int(descriptor[0]) or 2**16
        probe = int(descriptor[1]) + np.arange(entries, dtype=np.int64)
        table = np.asarray(apply_voi_lut(probe, ds, index=0), np.float64)
        out = np.asarray(apply_voi_lut(arr, ds, index=0), np.float64)
        return float(table.min()), float(table.max()), out, "VOI LUT"
    if has_window:
        with np.errstate(over="ignore"):
            # The window's output range: what the far ends of any input map to.
            ends = np.asarray(apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0), np.float64)
        out = np.asarray(apply_voi_lut(arr, ds, index=0), np.float64)
        return float(ends.min()), float(ends.max()), out, "window"
    out = np.asarray(arr, np.float64)
    return float(out.min()), float(out.max()), out, "min-max"


def _inverse_shape(ds: Any) -> bool:
    """Whether the Presentation LUT Shape (2050,0020) is INVERSE."""
    return str(ds.get("PresentationLUTShape") or "").strip().upper() == "INVERSE"


def decode(data: bytes) -> np.ndarray:
    """DICOM file bytes -> float32 (H, W) grayscale on a 0..255 scale (see the module doc:
    first frame, Modality LUT, VOI LUT or window, MONOCHROME1 or an INVERSE Presentation
    LUT Shape inverted, color as luma).

    Raises:
        ValueError: as `decode_and_describe`.
    """
    return decode_and_describe(data)[0]


def decode_and_describe(data: bytes) -> tuple[np.ndarray, str]:
    """DICOM file bytes -> (the pixels of `decode`, the name of the mapping they got), e.g.
    `dicom MONOCHROME2, window`, `dicom MONOCHROME1, min-max`, `dicom MONOCHROME2, VOI
    LUT, INVERSE`, `dicom RGB, BitsStored 8`, `dicom PALETTE COLOR`.

    Raises:
        ValueError: not DICOM, no pixel data, a side over MAX_SIDE, a transfer syntax
            without an installed decoder, or pixel data that does not decode; the message
            says which.
    """
    from pydicom.pixels import apply_color_lut

    ds = _read(data, stop_before_pixels=False)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError("DICOM file without pixel data (no Pixel Data element (7FE0,0010))")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or columns < 1:
        raise ValueError(f"DICOM header gives no image size (Rows {rows}, Columns {columns})")
    if max(rows, columns) > MAX_SIDE:
        raise ValueError(f"DICOM image {columns}x{rows} has a side over {MAX_SIDE} pixels")
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            frame = _first_frame(ds)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            if photometric == "PALETTE COLOR":
                rgb = np.asarray(apply_color_lut(frame, ds))
                gray = _luma(rgb) * (255.0 / np.iinfo(rgb.dtype).max)
                mapping = "dicom PALETTE COLOR"
            elif frame.ndim == 3:  # RGB (YBR converted by pydicom)
                bits = int(ds.get("BitsStored") or 8)
                gray = _luma(frame) * (255.0 / (2**bits - 1))
                mapping = f"dicom {photometric}, BitsStored {bits}"
            elif frame.ndim == 2 and frame.dtype.kind in "iu" and frame.size:
                return _monochrome_by_table(frame, ds, photometric)
            else:
                gray, mapping = _monochrome(frame, ds, photometric)
    except ValueError:
        raise
    except Exception as err:  # a LUT or header value pydicom cannot apply
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"cannot apply the DICOM pixel transformations ({reason})") from err
    if gray.ndim != 2:
        raise ValueError(f"DICOM pixel data of shape {gray.shape} is not one 2-D image")
    return _finish(gray), mapping


def _finish(gray: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(gray, nan=0.0), 0.0, 255.0).astype(np.float32)


def _monochrome(
    values: np.ndarray, ds: Any, photometric: str, seen: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Grayscale steps 2-4 of the module doc on `values`: an image's pixels, or every
    stored value of its range, and then `seen`, the values the image holds, sets the
    min-max range."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(values, ds))
    low, high, windowed, how = _voi_range(values, ds)
    if how == "min-max" and seen is not None:
        shown = np.asarray(apply_modality_lut(seen, ds), np.float64)
        low, high = float(shown.min()), float(shown.max())
    if high > low:
        gray = (windowed - low) * (255.0 / (high - low))
    else:
        gray = np.zeros(windowed.shape, np.float64)
    mapping = f"dicom {photometric or 'MONOCHROME2'}, {how}"
    # MONOCHROME1 and INVERSE say the same ("low values are bright"): one inversion
    if photometric == "MONOCHROME1" or _inverse_shape(ds):
        gray = 255.0 - gray
    if _inverse_shape(ds):
        mapping += ", INVERSE"
    return gray, mapping


# Integer images whose values span at most this many levels are mapped through a table.
TABLE_LEVELS = 1 << 20


def _monochrome_by_table(
    frame: np.ndarray, ds: Any, photometric: str
) -> tuple[np.ndarray, str]:
    """`_monochrome` for an integer image, computed once per stored value and looked up:
    every step is a function of the pixel's own value (the min-max range aside, taken over
    the values present), so the result is the same array, in one pass over the image
    instead of several in float64 (a 2,500 x 3,000 CR image: about half the time)."""
    first, last = int(frame.min()), int(frame.max())
    if last - first >= TABLE_LEVELS:
        gray, mapping = _monochrome(frame, ds, photometric)
        return _finish(gray), mapping
    levels = np.arange(first, last + 1, dtype=np.int64).astype(frame.dtype)
    offsets = frame.astype(np.int64) - first if first < 0 else frame - frame.dtype.type(first)
    if ds.get("ModalityLUTSequence"):  # a LUT need not be monotonic: the values present
        seen = levels[np.bincount(offsets.ravel(), minlength=len(levels)) > 0]
    else:  # a rescale is linear: its extremes are those of the first and last value
        seen = levels[[0, -1]]
    table, mapping = _monochrome(levels, ds, photometric, seen)
    return np.take(_finish(table), offsets), mapping


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb[..., 0] * LUMA[0] + rgb[..., 1] * LUMA[1] + rgb[..., 2] * LUMA[2]


def to_png(pixels: np.ndarray) -> bytes:
    """float (H, W) 0..255 pixels -> a 16-bit grayscale PNG holding `round(v * 257)`.

    `cxr_tf.data.preprocessing.decode_to_gray` reads a 16-bit PNG as `v16 * 255 / 65535`,
    which gives `v` back within 1/514 of a gray level (exactly for whole numbers).
    """
    from PIL import Image

    values = np.clip(np.round(np.asarray(pixels, np.float64) * 257.0), 0, 65535)
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def as_png(data: bytes) -> bytes:
    """DICOM file bytes -> the 16-bit PNG of `decode(data)` (see `to_png`).

    Raises:
        ValueError: as `decode`.
    """
    return to_png(decode(data))


def parse_age(value: object) -> int:
    """An age in whole years from a DICOM Age String (`045Y`, `018M`, `003W`, `010D`) or a
    plain number of years; -1 when blank, unreadable or over MAX_AGE."""
    match = _AGE_RE.match(str(value if value is not None else ""))
    if not match:
        return -1
    years = int(match.group(1)) // _AGE_DIVISOR[match.group(2).upper()]
    return years if years <= MAX_AGE else -1


def _spacing(ds: Any) -> tuple[float, float]:
    """(x, y) pixel spacing in mm: PixelSpacing, else ImagerPixelSpacing (both are written
    row spacing first, i.e. y then x); 0.0 when absent or unreadable."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        try:
            y, x = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if x > 0 and y > 0:
            return x, y
    return 0.0, 0.0


def header(source: bytes | str | Path) -> dict[str, Any]:
    """The header fields a catalog keeps, read without decoding (or reading) pixel data.

    Returns:
        {"patient_id": str ("" when absent), "view": PA/AP/LATERAL/? from ViewPosition,
        "sex": M/F/?, "age": years or -1, "pixel_spacing_x", "pixel_spacing_y": mm or 0.0,
        "rows", "columns": pixels or 0, "frames", "photometric", "transfer_syntax",
        "modality"}.

    Raises:
        ValueError: not a readable DICOM file. FileNotFoundError: no such file.
    """
    from cxr_tf.sources.catalog import normalize_sex, normalize_view

    ds = _read(source, stop_before_pixels=True)
    spacing_x, spacing_y = _spacing(ds)

    def text(key: str) -> str:
        value = ds.get(key)
        return str(value).strip() if value is not None else ""

    def number(key: str) -> int:
        try:
            return int(ds.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    syntax = _transfer_syntax(ds)
    return {
        "patient_id": text("PatientID"),
        "view": normalize_view(text("ViewPosition")),
        "sex": normalize_sex(text("PatientSex")),
        "age": parse_age(text("PatientAge")),
        "pixel_spacing_x": spacing_x,
        "pixel_spacing_y": spacing_y,
        "rows": number("Rows"),
        "columns": number("Columns"),
        "frames": number("NumberOfFrames") or 1,
        "photometric": text("PhotometricInterpretation"),
        "transfer_syntax": str(syntax) if syntax is not None else "",
        "modality": text("Modality"),
    }
