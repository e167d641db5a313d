"""The RSNA Pneumonia Detection Challenge imitation (`python -m cxr_tf.synth --layout rsna`):
the challenge's stage-2 files, columns and quirks.

It writes `stage_2_train_labels.csv` (one row per box of a `Lung Opacity` image, Target 1;
one row with blank box cells, Target 0, for the others), `stage_2_detailed_class_info.csv`
(one row per row of the labels file, repeats included, as the release has),
`stage_2_train_images/<patientId>.dcm` and a few unlabelled `stage_2_test_images/*.dcm`.

- patientIds are UUIDs, and each DICOM's PatientID is the same UUID (one image per ID);
- classes in the release's shares: `Normal` 0.33, `No Lung Opacity / Not Normal` 0.44,
  `Lung Opacity` 0.23 (raised to the prevalence floor); a `Lung Opacity` image has 1-4
  opacities (mostly 2), each drawn as the Lung_Opacity pattern with its box; a `Not
  Normal` image shows one pattern of another finding (cardiomegaly, effusion or a
  device), unboxed as in the release;
- DICOMs as the release's: `image_size` square (1024 in the release), 8-bit MONOCHROME2,
  JPEG Baseline compressed (Pillow's encoder, quality 95, encapsulated by pydicom; decoded
  by python-gdcm or Pillow), Modality CR, ViewPosition PA or AP, PatientAge as a plain
  number (`51`), no window (decoded by min-max).

Boxes in the CSV are in the DICOM's own pixels, written like the release's (`264.0`). The
same config gives the same bytes.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style, draw

LAYOUT = "rsna"
CODE = 6
STYLE = Style(gain=1.05, offset=-4.0, gamma=1.1, noise=2.0)
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
OPACITY = "Lung Opacity"
SHARES = {NORMAL: 0.33, NOT_NORMAL: 0.44, OPACITY: 0.23}
OPACITIES = (0.35, 0.5, 0.1, 0.05)  # share of opacity images with 1, 2, 3, 4 boxes
NOT_NORMAL_PATTERNS = ("Cardiomegaly", "Effusion", "Support_Devices")
TEST_SHARE = 0.05  # unlabelled stage_2_test_images, per labelled image
JPEG_QUALITY = 95
_CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[common.Item]:
    shares = dict(SHARES)
    shares[OPACITY] = max(shares[OPACITY], config.prevalence_floor)
    names = list(shares)
    p = np.array([shares[c] for c in names])
    n_test = max(1, round(TEST_SHARE * config.n))
    items = []
    for index in range(config.n + n_test):
        labelled = index < config.n
        cls = names[int(rng.choice(len(names), p=p / p.sum()))]
        if cls == OPACITY:
            drawn = ("Lung_Opacity",) * (int(rng.choice(len(OPACITIES), p=OPACITIES)) + 1)
        elif cls == NOT_NORMAL:
            drawn = (str(rng.choice(NOT_NORMAL_PATTERNS)),)
        else:
            drawn = ()
        patient = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        folder = "stage_2_train_images" if labelled else "stage_2_test_images"
        extra = {
            "patient": patient,
            "class": cls if labelled else "",
            "view": str(rng.choice(["PA", "AP"], p=[0.53, 0.47])),
            "sex": str(rng.choice(["M", "F"], p=[0.57, 0.43])),
            "age": int(rng.integers(2, 92)),
        }
        items.append(common.Item(index, index, f"{folder}/{patient}.dcm", drawn, False, extra))
    return items


def _uid(config: SynthConfig, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(_UID_ROOT, entropy_srcs=[str(config.seed), *map(str, parts)]))


def dicom_bytes(gray: np.ndarray, item: common.Item, config: SynthConfig) -> bytes:
    """An 8-bit MONOCHROME2 JPEG Baseline DICOM of `gray`, tagged as the release's are."""
    from pydicom.config import IGNORE
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = io.BytesIO()
    Image.fromarray(gray, "L").save(jpeg, format="JPEG", quality=JPEG_QUALITY)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = _uid(config, "image", item.index)
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = _CR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(config, "study", item.index)
    ds.SeriesInstanceUID = _uid(config, "series", item.index)
    ds.PatientName = item.extra["patient"]
    ds.PatientID = item.extra["patient"]
    ds.PatientSex = item.extra["sex"]
    # a plain number, as the release writes it (not a valid Age String: pydicom would warn)
    ds.add(DataElement(0x00101010, "AS", str(item.extra["age"]), validation_mode=IGNORE))
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = item.extra["view"]
    ds.SeriesDescription = f"view: {item.extra['view']}"
    ds.PixelSpacing = ["0.143", "0.143"]
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the RSNA Pneumonia imitation into `config.out`.

    Returns:
        `common.own_summary`'s dict (over the labelled images), with `classes`
        (image_index -> class), `boxes` (image_index -> [(x, y, w, h)] in its pixels),
        `patients` (image_index -> PatientID) and `test_images` (the unlabelled ones).
    """
    out = Path(config.out)
    items = _plan(np.random.default_rng([config.seed, CODE]), config)
    drawn_boxes: dict[str, list[tuple[int, int, int, int]]] = {}

    def save(path: Path, item: common.Item) -> None:
        pixels, boxes = draw(item.findings, config.image_size, (config.seed, CODE, item.index),
                             STYLE)  # fmt: skip
        drawn_boxes[item.name] = [tuple(b[1:]) for b in boxes if b[0] == "Lung_Opacity"]
        path.write_bytes(dicom_bytes(common.to_uint8(pixels), item, config))

    common.write_items(out, items, config, LAYOUT, save, progress)
    labelled = [i for i in items if i.extra["class"]]
    label_rows, class_rows = [], []
    for item in labelled:
        patient, cls = item.extra["patient"], item.extra["class"]
        boxes = drawn_boxes[item.name] if cls == OPACITY else []
        for x, y, w, h in boxes:
            label_rows.append([patient, f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}", 1])
            class_rows.append([patient, cls])
        if not boxes:
            label_rows.append([patient, "", "", "", "", 0])
            class_rows.append([patient, cls])
    paths = {
        "labels": out / "stage_2_train_labels.csv",
        "classes": out / "stage_2_detailed_class_info.csv",
    }
    header = ["patientId", "x", "y", "width", "height", "Target"]
    common.write_text(paths["labels"], common.csv_text(header, label_rows))
    common.write_text(paths["classes"], common.csv_text(["patientId", "class"], class_rows))
    summary = common.own_summary(out, LAYOUT, labelled, {k: str(p) for k, p in paths.items()})
    return {
        **summary,
        "classes": {i.name: i.extra["class"] for i in labelled},
        "boxes": {
            i.name: drawn_boxes[i.name] if i.extra["class"] == OPACITY else [] for i in labelled
        },
        "patients": {i.name: i.extra["patient"] for i in labelled},
        "test_images": [i.name for i in items if not i.extra["class"]],
    }


IMITATION = common.Imitation(
    LAYOUT,
    "RSNA Pneumonia's stage-2 label and class CSVs and JPEG-compressed 8-bit DICOMs",
    generate,
)
