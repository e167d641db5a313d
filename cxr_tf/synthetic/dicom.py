"""The DICOM imitation (`python -m cxr_tf.synth --layout dicom`), a user's own DICOM files
as the `folders` source reads them.

It writes flat class folders (`normal`, `Effusion`, `Cardiomegaly`, `Pneumothorax`) of
`.dcm` files with PatientID, PatientSex, PatientAge (`045Y`), ViewPosition, Modality and
ImagerPixelSpacing, written with pydicom in four pixel encodings (`KINDS`): 16-bit
MONOCHROME2 (12 bits stored), 16-bit MONOCHROME2 with RescaleSlope 0.5 and
RescaleIntercept -1024, 16-bit MONOCHROME1 (inverted pixels) and 8-bit MONOCHROME2. Each
has a WindowCenter/WindowWidth chosen so that `cxr_tf.sources.dicom.decode` gives back the
drawn 8-bit image exactly; about a quarter are RLE Lossless compressed (pydicom's own
encoder), the others uncompressed (Explicit VR Little Endian). Two quirks of real files
come in turn (`QUIRKS`, by the image's number, so they draw nothing from the random
stream): Presentation LUT Shape INVERSE (a MONOCHROME2 file then holds inverted pixels; a
MONOCHROME1 one, the pair the DX IOD prescribes, keeps its pixels) and no 128-byte
preamble nor 'DICM' marker (uncompressed files then also lose their file meta information
and are Implicit VR Little Endian, as ACR-NEMA style exports are). Neither changes the
decoded pixels. There is no split: every image is a training one. DICOM UIDs are derived
from the seed and the image's numbers, so the same config gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "dicom"
CODE = 3  # part of the plan's and each image's seed
STYLE = Style(gain=1.0, offset=0.0, gamma=1.25, noise=1.5)
# Class folder name -> vocabulary finding (None: No Finding).
CLASSES: dict[str, str | None] = {
    "normal": None,
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
}
# name -> (photometric, bits allocated, rescale slope, rescale intercept, stored per level)
KINDS: dict[str, tuple[str, int, float, float, int]] = {
    "mono2_16bit": ("MONOCHROME2", 16, 1.0, 0.0, 16),
    "mono2_16bit_rescaled": ("MONOCHROME2", 16, 0.5, -1024.0, 16),
    "mono1_16bit": ("MONOCHROME1", 16, 1.0, 0.0, 16),
    "mono2_8bit": ("MONOCHROME2", 8, 1.0, 0.0, 1),
}
RLE_FRACTION = 0.25
# quirk of image number i: QUIRKS[i % len(QUIRKS)] ("": none)
QUIRKS = ("", "", "inverse", "", "", "no_preamble")
_DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root (generate_uid's default)


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[common.Item]:
    patients = common.own_patients(rng, config.n)
    sexes = {p: str(rng.choice(["M", "F"])) for p in sorted(set(patients))}
    ages = {p: int(rng.integers(18, 90)) for p in sorted(set(patients))}
    kinds = list(KINDS)
    items, counts = [], dict.fromkeys(set(patients), 0)
    for index, ((folder, finding), patient) in enumerate(
        zip(common.class_plan(rng, config, CLASSES), patients, strict=True)
    ):
        counts[patient] += 1
        name = f"{folder}/DCM{patient:05d}_{counts[patient]:02d}.dcm"
        extra = {
            "kind": kinds[int(rng.integers(len(kinds)))],
            "rle": bool(rng.random() < RLE_FRACTION),
            "view": str(rng.choice(["PA", "PA", "AP", ""])),
            "sex": sexes[patient],
            "age": ages[patient],
            "modality": str(rng.choice(["DX", "CR"])),
            "quirk": QUIRKS[index % len(QUIRKS)],
        }
        findings = (finding,) if finding else ()
        items.append(common.Item(index, patient, name, findings, False, extra))
    return items


def _uid(config: SynthConfig, *parts: object) -> str:
    """A UID derived from the config and `parts` (the same numbers, the same UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(_UID_ROOT, entropy_srcs=[str(config.seed), *map(str, parts)]))


def window_for(slope: float, intercept: float, per_level: int) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) under which stored value `level * per_level` decodes to
    `level` (0..255) with the LINEAR VOI function (DICOM PS3.3 C.11.2.1.2)."""
    width = 255.0 * per_level * slope + 1.0
    return intercept + 0.5 + (width - 1.0) / 2.0, width


def dicom_bytes(
    gray: np.ndarray,
    kind: str,
    rle: bool,
    tags: dict[str, Any],
    uids: Sequence[str],
    quirk: str = "",
) -> bytes:
    """A DICOM file holding 8-bit `gray` in encoding `kind` (see KINDS), RLE Lossless
    when `rle`, with `quirk` (see QUIRKS and the module doc); `tags` are header keywords ->
    values; `uids` the SOP instance, study and series UIDs. `cxr_tf.sources.dicom.decode`
    gives `gray` back."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    if quirk not in QUIRKS:
        raise ValueError(f"unknown DICOM quirk {quirk!r}; known: {sorted(set(QUIRKS))}")
    photometric, bits, slope, intercept, per_level = KINDS[kind]
    levels = gray.astype(np.int64)
    # MONOCHROME1 and an INVERSE Presentation LUT Shape each mean "low values are bright";
    # together they mean it once.
    if photometric == "MONOCHROME1" or quirk == "inverse":
        levels = 255 - levels
    stored = (levels * per_level).astype(np.uint16 if bits == 16 else np.uint8)
    center, width = window_for(slope, intercept, per_level)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uids[0]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = _DX_IMAGE_STORAGE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[:3]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.RescaleType = "US"
    ds.WindowCenter, ds.WindowWidth = f"{center:g}", f"{width:g}"
    if quirk == "inverse":
        ds.PresentationLUTShape = "INVERSE"
    ds.PixelData = stored.tobytes()
    if rle:
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    buffer = io.BytesIO()
    if quirk == "no_preamble":
        ds.preamble = None  # neither preamble nor 'DICM' is written
        if not rle:  # encapsulated pixel data needs the file meta's transfer syntax
            del ds.file_meta
        ds.save_as(buffer, implicit_vr=not rle, little_endian=True, enforce_file_format=False)
    else:
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write_dicom(path: Path, gray: np.ndarray, item: common.Item, config: SynthConfig) -> None:
    extra = item.extra
    tags = {
        "PatientID": f"DCM{item.patient:05d}",
        "PatientName": f"Synthetic^{item.patient:05d}",
        "PatientSex": extra["sex"],
        "PatientAge": f"{extra['age']:03d}Y",
        "Modality": extra["modality"],
        "ImagerPixelSpacing": ["0.139", "0.139"],
        "BodyPartExamined": "CHEST",
    }
    if extra["view"]:
        tags["ViewPosition"] = extra["view"]
    uids = [_uid(config, "image", item.index), _uid(config, "study", item.patient),
            _uid(config, "series", item.index)]  # fmt: skip
    path.write_bytes(dicom_bytes(gray, extra["kind"], extra["rle"], tags, uids, extra["quirk"]))


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the DICOM imitation into `config.out`.

    Returns:
        `common.own_summary`'s dict (n_test 0, no files), with `class_counts` (class
        folder -> images), `no_finding` and `dicom` (name -> encoding kind, whether RLE
        compressed, and its quirk).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    items = _plan(np.random.default_rng([config.seed, CODE]), config)

    def save(path: Path, item: common.Item) -> None:
        _write_dicom(path, common.own_pixels(item, config, CODE, STYLE), item, config)

    common.write_items(out, items, config, LAYOUT, save, progress)
    summary = common.own_summary(out, LAYOUT, items, {})
    dicom = {
        i.name: {"kind": i.extra["kind"], "rle": i.extra["rle"], "quirk": i.extra["quirk"]}
        for i in items
    }
    return {**summary, **common.class_counts(items), "dicom": dicom}


IMITATION = common.Imitation(
    LAYOUT,
    "class folders of DICOM files in four pixel encodings, some RLE compressed, some INVERSE "
    "or without preamble",
    generate,
)
