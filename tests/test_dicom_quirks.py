"""DICOM files as they come (`cxr_tf.sources.dicom`): Presentation LUT Shape INVERSE, files
without the 128-byte preamble and 'DICM' marker, the quirks of the DICOM imitation
(`cxr_tf.synthetic.dicom`), and decoder errors shortened at a word boundary
(`cxr_tf.data.conversion.short_error`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import edit_dicom, read_records

from cxr_tf.config import ConvertConfig, SplitConfig, SynthConfig
from cxr_tf.data import conversion
from cxr_tf.sources import base, dicom, registry
from cxr_tf.synthetic import dicom as dicom_imitation
from cxr_tf.synthetic.drawing import draw
from cxr_tf.synthetic.layouts import generate_layout

UIDS = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2",
        "1.2.826.0.1.3680043.8.498.3"]  # fmt: skip
TAGS = {"PatientID": "P001", "PatientSex": "F", "PatientAge": "061Y", "ViewPosition": "PA"}


def _gray(seed: int = 4, size: int = 48) -> np.ndarray:
    pixels, _ = draw(["Effusion"], size, (seed, seed))
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _file(gray: np.ndarray, kind: str = "mono2_16bit", rle: bool = False, quirk: str = "") -> bytes:
    return dicom_imitation.dicom_bytes(gray, kind, rle, TAGS, UIDS, quirk)


# --- Presentation LUT Shape INVERSE ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mono2_16bit", "mono2_16bit_rescaled", "mono2_8bit"])
def test_inverse_monochrome2_comes_out_as_its_monochrome2_twin(kind):
    gray = _gray()
    twin = _file(gray, kind)
    inverse = _file(gray, kind, quirk="inverse")
    ds = pydicom.dcmread(io.BytesIO(inverse))
    assert ds.PresentationLUTShape == "INVERSE" and ds.PhotometricInterpretation == "MONOCHROME2"
    # the stored values really are the twin's, inverted
    assert not np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(twin)).pixel_array)
    pixels, mapping = dicom.decode_and_describe(inverse)
    np.testing.assert_array_equal(pixels, dicom.decode(twin))
    np.testing.assert_allclose(pixels, gray, atol=1e-6)
    assert mapping == "dicom MONOCHROME2, window, INVERSE"
    assert dicom.decode_and_describe(twin)[1] == "dicom MONOCHROME2, window"


def test_monochrome1_with_inverse_is_inverted_once():
    """MONOCHROME1 + INVERSE is the pair the DX IOD prescribes: both say low is bright."""
    gray = _gray(5)
    plain = dicom.decode(_file(gray, "mono1_16bit"))
    both = _file(gray, "mono1_16bit", quirk="inverse")
    assert pydicom.dcmread(io.BytesIO(both)).PresentationLUTShape == "INVERSE"
    np.testing.assert_array_equal(dicom.decode(both), plain)
    np.testing.assert_allclose(plain, gray, atol=1e-6)


def test_inverse_applies_without_a_window_too():
    gray = _gray(6)
    ds = pydicom.dcmread(io.BytesIO(_file(gray, quirk="inverse")))
    del ds.WindowCenter, ds.WindowWidth
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    pixels, mapping = dicom.decode_and_describe(buffer.getvalue())
    assert mapping == "dicom MONOCHROME2, min-max, INVERSE"
    stored = ds.pixel_array.astype(np.float64)
    want = 255 - (stored - stored.min()) * 255 / np.ptp(stored)
    np.testing.assert_allclose(pixels, want, atol=1e-3)
    assert pixels[gray == gray.max()].min() == pytest.approx(255.0)  # bright stays bright


# --- no preamble -------------------------------------------------------------------------------


@pytest.mark.parametrize("rle", [False, True])
def test_a_file_without_preamble_is_recognised_and_decoded(rle, tmp_path):
    gray = _gray(7)
    bare = _file(gray, "mono2_16bit_rescaled", rle, quirk="no_preamble")
    assert bare[128:132] != b"DICM" and b"DICM" not in bare[:200]
    if rle:  # file meta information (group 0002) first, explicit VR
        assert bare[:2] == b"\x02\x00"
    else:  # the data set itself, Implicit VR Little Endian, as ACR-NEMA style exports
        assert bare[:2] == b"\x08\x00"
    assert dicom.is_dicom(bare) and dicom.is_dicom(bare[: dicom.HEAD_BYTES])
    np.testing.assert_array_equal(dicom.decode(bare), dicom.decode(_file(gray, rle=rle)))
    np.testing.assert_allclose(dicom.decode(bare), gray, atol=1e-6)

    path = tmp_path / "IM0001"  # no extension: told by its bytes
    path.write_bytes(bare)
    assert base.starts_like_dicom(path) and base.is_image(path)
    info = dicom.header(path)
    assert (info["patient_id"], info["sex"], info["age"], info["view"]) == ("P001", "F", 61, "PA")
    assert (info["rows"], info["columns"]) == gray.shape
    want = "1.2.840.10008.1.2.5" if rle else "1.2.840.10008.1.2"  # RLE; Implicit VR LE
    assert info["transfer_syntax"] == want


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\0" * 200,  # other formats never start like a data set
        b"\xff\xd8\xff\xe0" + b"\0" * 200,
        b"\x08\x00\x05\x00" + b"\xff\xff\xff\xff" + b"\0" * 200,  # implicit length too big
        b"\x07\x00\x05\x00CS\x0a\x00" + b"\0" * 200,  # a group no data set starts with
    ],
)
def test_other_bytes_are_not_taken_for_a_file_without_preamble(data):
    assert not dicom.is_dicom(data)
    with pytest.raises(ValueError, match="not a DICOM file"):
        dicom.decode(data)


def test_a_preambleless_start_without_a_data_set_gives_a_clear_error():
    data = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"  # one element, then nothing
    assert dicom.is_dicom(data)
    with pytest.raises(ValueError, match="DICOM"):
        dicom.decode(data)
    with pytest.raises(ValueError, match="not a readable DICOM file"):
        dicom.decode(b"\x02\x00\x00\x00UL\x04\x00\x96\x00\x00\x00")  # file meta cut short


# --- the imitation and conversion --------------------------------------------------------------


def test_the_imitations_quirky_files_decode_to_the_drawn_pixels(tmp_path):
    config = SynthConfig(out=str(tmp_path / "dicom"), n=14, seed=3, image_size=64,
                         layout="dicom", workers=1)  # fmt: skip
    summary = generate_layout(config, progress=False)
    quirks = {name: about["quirk"] for name, about in summary["dicom"].items()}
    assert set(quirks.values()) == set(dicom_imitation.QUIRKS)
    items = dicom_imitation._plan(np.random.default_rng([config.seed, dicom_imitation.CODE]),
                                  config)  # fmt: skip
    for item in items:
        data = Path(summary["image_paths"][item.name]).read_bytes()
        header = pydicom.dcmread(io.BytesIO(data), force=True)
        inverse = header.get("PresentationLUTShape") == "INVERSE"
        assert inverse == (item.extra["quirk"] == "inverse")
        assert (data[128:132] == b"DICM") == (item.extra["quirk"] != "no_preamble")
        drawn = draw(list(item.findings), 64, (config.seed, dicom_imitation.CODE, item.index),
                     dicom_imitation.STYLE)[0]  # fmt: skip
        want = np.clip(np.rint(drawn), 0, 255)
        np.testing.assert_allclose(dicom.decode(data), want, atol=1e-6, err_msg=item.name)


def test_inverse_and_preambleless_files_convert_like_their_twins(tmp_path, capsys):
    root = tmp_path / "own"
    twins = {}
    for folder, seed in (("normal", 1), ("Effusion", 2)):
        gray = _gray(seed, 64)
        (root / folder).mkdir(parents=True)
        for quirk in ("", "inverse", "no_preamble"):
            name = f"{folder}/{quirk or 'plain'}.dcm"
            (root / name).write_bytes(_file(gray, quirk=quirk))
            twins[name] = f"{folder}/plain.dcm"
    config = ConvertConfig(root=str(root), source="folders", out_dir=str(tmp_path / "out"),
                           stored_size=64, encoding="png", workers=1, name="quirks",
                           split=SplitConfig(strategy="random", fractions=(1, 0, 0)))  # fmt: skip
    manifest = conversion.convert(config, progress=False)
    records = read_records(tmp_path / "out" / "quirks")
    assert set(records) == set(twins) and not manifest.skipped_images
    for name, twin in twins.items():
        np.testing.assert_array_equal(records[name]["image"], records[twin]["image"])
    assert {r["age"] for r in records.values()} == {61}  # headers read, preamble or not
    assert manifest.source.pixel_mappings == {
        "dicom MONOCHROME2, window": 4,
        "dicom MONOCHROME2, window, INVERSE": 2,
    }
    frame = registry.read_catalog("folders", root).frame
    assert frame["sex"].tolist() == ["F"] * 6 and frame["view_position"].tolist() == ["PA"] * 6


# --- decoder error messages --------------------------------------------------------------------


def test_a_long_decoder_error_is_cut_at_a_word_boundary():
    words = [f"word{i:03d}" for i in range(80)]
    message = "transfer syntax JPEG Extended: cannot decode the pixel data (" + " ".join(words)
    short = conversion.short_error(ValueError(message))
    assert len(short) <= conversion.ERROR_CHARS and short.endswith("...")
    kept = short.removesuffix("...")
    assert message.startswith(kept) and message[len(kept)] == " "  # a whole last word
    assert kept.startswith("transfer syntax JPEG Extended")  # the part naming the cause
    assert len(kept) > conversion.ERROR_CHARS - 20

    assert conversion.short_error(ValueError("Input is empty.")) == "Input is empty."
    # one word longer than the limit (a path, a UID) is cut inside, still marked
    token = conversion.short_error(ValueError("x" * 500), limit=40)
    assert token == "x" * 37 + "..."


def test_a_dicom_decoder_error_is_cut_cleanly():
    ds = pydicom.dcmread(io.BytesIO(_file(_gray())))
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data: pydicom says why at length
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ValueError) as caught:
        dicom.decode(buffer.getvalue())
    short = conversion.short_error(caught.value, limit=60)
    assert len(short) <= 60 and short.endswith("...") and not short[:-3].endswith(" ")
    assert str(caught.value).startswith(short[:-3]) and str(caught.value)[len(short) - 3] == " "


# --- the lookup table: the same pixels as the per-pixel transformations -----------------------


def _variants() -> dict[str, bytes]:
    """Integer DICOMs through every grayscale mapping: each kind of the imitation with its
    quirks and RLE, a VOI LUT, no window (min-max), SIGMOID and LINEAR_EXACT windows, a
    Modality LUT Sequence, signed pixels with negative values, a constant image."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    gray = np.random.default_rng(3).integers(0, 256, (40, 36)).astype(np.uint8)
    gray[0, :4] = (0, 255, 0, 255)
    out = {
        f"{kind}-{quirk}-{rle}": _file(gray, kind, rle, quirk)
        for kind in dicom_imitation.KINDS
        for quirk in ("", "inverse", "no_preamble")
        for rle in (False, True)
    }
    base = _file(gray, "mono2_16bit_rescaled")
    out["no window"] = edit_dicom(base, WindowCenter=None, WindowWidth=None)
    out["sparse values, no window"] = edit_dicom(
        _file((gray // 64) * 64, "mono1_16bit"), WindowCenter=None, WindowWidth=None
    )
    out["sigmoid"] = edit_dicom(base, VOILUTFunction="SIGMOID", WindowCenter="-600",
                                WindowWidth="400")  # fmt: skip
    out["linear exact"] = edit_dicom(base, VOILUTFunction="LINEAR_EXACT", WindowCenter="-500",
                               WindowWidth="300")  # fmt: skip
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.add_new("LUTData", "US", [1000 + round(255 * (i / 4095) ** 2) for i in range(4096)])
    out["voi lut"] = edit_dicom(_file(gray), VOILUTSequence=Sequence([item]))
    modality = Dataset()
    modality.add_new("LUTDescriptor", "US", [4096, 0, 16])
    modality.add_new("ModalityLUTType", "LO", "OD")
    modality.add_new("LUTData", "US", [(4095 - i) * 3 for i in range(4096)])
    out["modality lut"] = edit_dicom(_file(gray), ModalityLUTSequence=Sequence([modality]),
                               RescaleSlope=None, RescaleIntercept=None)  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(_file(gray)))
    signed = (ds.pixel_array.astype(np.int32) - 3000).astype(np.int16)
    ds.PixelRepresentation = 1
    ds.PixelData = signed.tobytes()
    ds.WindowCenter, ds.WindowWidth = "-1500", "2000"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    out["signed, negative"] = buffer.getvalue()
    out["signed, negative, no window"] = edit_dicom(buffer.getvalue(), WindowCenter=None,
                                              WindowWidth=None)  # fmt: skip
    out["constant"] = edit_dicom(_file(np.full((8, 8), 77, np.uint8)), WindowCenter=None,
                           WindowWidth=None)  # fmt: skip
    return out


def test_the_lookup_table_gives_the_per_pixel_transformations_pixels(monkeypatch):
    """Integer images are mapped once per stored value and looked up
    (`dicom.TABLE_LEVELS`); the result is bit for bit that of applying the LUTs to every
    pixel, whatever the mapping."""
    variants = _variants()
    by_table = {name: dicom.decode_and_describe(data) for name, data in variants.items()}
    monkeypatch.setattr(dicom, "TABLE_LEVELS", 0)  # every image over the limit: per pixel
    mappings = set()
    for name, data in variants.items():
        pixels, mapping = dicom.decode_and_describe(data)
        assert by_table[name][1] == mapping, name
        assert by_table[name][0].dtype == pixels.dtype == np.float32, name
        np.testing.assert_array_equal(by_table[name][0], pixels, err_msg=name)
        mappings.add(mapping.split(", ")[1])
    assert mappings == {"window", "min-max", "VOI LUT"}
