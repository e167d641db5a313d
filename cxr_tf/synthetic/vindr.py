"""The VinDr-CXR imitation (`python -m cxr_tf.synth --layout vindr`): PhysioNet's files,
columns and quirks, with several readers' boxes.

It writes `annotations/annotations_{train,test}.csv`, `annotations/image_labels_{train,
test}.csv` and `train/<image_id>.dicom`, `test/<image_id>.dicom`, as the release does:

- image IDs are 32 hex digits; `test_fraction` of the images are test images;
- a training image is read by three distinct radiologists of R1..R17: each marks each drawn
  finding with probability 0.8 (at least one of them marks it), with a box whose edges are
  jittered by about 4% of its side; a reader who marks nothing writes one `No finding` row
  with blank coordinates; `image_labels_train.csv` has one row per reader;
- a test image has one consensus reading: every drawn finding, its exact box, and no
  `rad_id` column; `image_labels_test.csv` spells `Other disease` (train: `Other
  diseases`);
- global labels are never boxed: a reader marks `Lung tumor` with `Nodule/Mass`,
  `Pneumonia` with `Consolidation`, `COPD` with `Emphysema` and `Other diseases` with
  `Other lesion`; `No finding` when the reader marks nothing;
- DICOMs (pydicom, Explicit VR Little Endian, 16 bits allocated) of varied, non-square
  sizes (0.85-1.15 x `image_size` per side, as the release's 2000-3000 px vary), 12, 14 or
  16 bits stored, some MONOCHROME1, some with a window that decodes back to the drawn
  8-bit levels and some without (decoded by min-max); no PatientID (the release has none).

Findings are drawn with `cxr_tf.synthetic.drawing`'s patterns: VinDr's names that map onto
the vocabulary draw that finding's pattern, its own findings borrow the pattern of a
vocabulary finding VinDr does not name (`PATTERNS`); drawing happens at `image_size`
square and is resized to the image's size with its boxes. The same config gives the same
bytes (UIDs derived from the seed).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style, draw

LAYOUT = "vindr"
CODE = 5  # part of the plan's and each image's seed
STYLE = Style(gain=0.92, offset=10.0, gamma=0.9, noise=1.0)
LOCAL: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Other lesion",
    "Pleural effusion", "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
    "Rib fracture",
)  # fmt: skip
GLOBAL: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases")
NO_FINDING = "No finding"
# Global label -> the local one whose mark brings it.
GLOBAL_FROM: dict[str, str] = {
    "Lung tumor": "Nodule/Mass",
    "Pneumonia": "Consolidation",
    "COPD": "Emphysema",
    "Other diseases": "Other lesion",
}
# Local labels drawn -> the drawing pattern; the others are never marked.
PATTERNS: dict[str, str] = {
    "Aortic enlargement": "Enlarged_Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural thickening": "Pleural_Thickening",
    "Pulmonary fibrosis": "Fibrosis",
    "Lung Opacity": "Lung_Opacity",
    "Nodule/Mass": "Mass",
    "Pleural effusion": "Effusion",
    "Other lesion": "Pleural_Other",
    "ILD": "Hernia",
    "Infiltration": "Infiltration",
    "Calcification": "Nodule",
    "Consolidation": "Consolidation",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Rib fracture": "Fracture",
    "Emphysema": "Emphysema",
}
# Per-image rates of the imitation (its own, ordered roughly as the release's counts).
RATES: dict[str, float] = {
    "Aortic enlargement": 0.14, "Cardiomegaly": 0.11, "Pleural thickening": 0.09,
    "Pulmonary fibrosis": 0.07, "Lung Opacity": 0.06, "Nodule/Mass": 0.05,
    "Pleural effusion": 0.05, "Other lesion": 0.04, "ILD": 0.03, "Infiltration": 0.03,
    "Calcification": 0.03, "Consolidation": 0.03, "Atelectasis": 0.02, "Pneumothorax": 0.02,
    "Rib fracture": 0.02, "Emphysema": 0.02,
}  # fmt: skip
READERS = tuple(f"R{i}" for i in range(1, 18))
MARK_PROBABILITY = 0.8
JITTER = 0.04  # box edge jitter, share of the box's side
# (photometric, bits stored, windowed)
KINDS: tuple[tuple[str, int, bool], ...] = (
    ("MONOCHROME2", 12, True),
    ("MONOCHROME2", 14, False),
    ("MONOCHROME1", 12, True),
    ("MONOCHROME2", 16, True),
    ("MONOCHROME1", 16, False),
)
_BOX_HEADER = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
_DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root (generate_uid's default)

Box = tuple[float, float, float, float]  # x, y, w, h in the image's pixels


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[common.Item]:
    n, size = config.n, config.image_size
    test = set(rng.permutation(n)[: common.test_count(config.test_fraction, n)].tolist())
    items = []
    for index in range(n):
        found = tuple(
            name
            for name, rate in RATES.items()
            if rng.random() < max(rate, config.prevalence_floor)
        )
        width, height = (int(round(size * rng.uniform(0.85, 1.15))) for _ in range(2))
        extra = {
            "image_id": "".join(f"{v:08x}" for v in rng.integers(0, 2**32, 4)),
            "size": (width, height),
            "kind": int(rng.integers(len(KINDS))),
            "sex": str(rng.choice(["M", "F", "O"])),
            "age": int(rng.integers(18, 90)) if rng.random() < 0.7 else None,
            "readers": [str(r) for r in rng.choice(READERS, 3, replace=False)],
            "marks": rng.random((3, len(found))) < MARK_PROBABILITY,
            "jitter": rng.normal(0.0, JITTER, (3, len(found), 4)),
        }
        split = "test" if index in test else "train"
        name = f"{split}/{extra['image_id']}.dicom"
        items.append(common.Item(index, index + 1, name, found, index in test, extra))
    return items


def _render(item: common.Item, config: SynthConfig) -> tuple[np.ndarray, dict[str, Box]]:
    """The image's 8-bit pixels at its own size, and each drawn finding's box there."""
    size = config.image_size
    patterns = [PATTERNS[f] for f in item.findings]
    pixels, boxes = draw(patterns, size, (config.seed, CODE, item.index), STYLE)
    width, height = item.extra["size"]
    image = Image.fromarray(pixels, "F").resize((width, height), Image.BILINEAR)
    sx, sy = width / size, height / size
    by_pattern = {b[0]: (b[1] * sx, b[2] * sy, b[3] * sx, b[4] * sy) for b in boxes}
    found = {f: by_pattern[PATTERNS[f]] for f in item.findings}
    return common.to_uint8(np.asarray(image)), found


def _readings(item: common.Item, truth: dict[str, Box]) -> list[tuple[str, dict[str, Box]]]:
    """(reader, finding -> box) per reading: three jittered readers, or the consensus."""
    if item.test:
        return [("", dict(truth))]
    marks = item.extra["marks"].copy()
    for j in range(len(item.findings)):
        if not marks[:, j].any():  # somebody saw it
            marks[int(np.argmax(item.extra["jitter"][:, j, 0])), j] = True
    width, height = item.extra["size"]
    out = []
    for r, reader in enumerate(item.extra["readers"]):
        boxes = {}
        for j, finding in enumerate(item.findings):
            if not marks[r, j]:
                continue
            x, y, w, h = truth[finding]
            dx0, dy0, dx1, dy1 = item.extra["jitter"][r, j] * (w, h, w, h)
            x0, y0 = min(max(x + dx0, 0.0), width - 2), min(max(y + dy0, 0.0), height - 2)
            x1 = min(max(x + w + dx1, x0 + 1), width)
            y1 = min(max(y + h + dy1, y0 + 1), height)
            boxes[finding] = (x0, y0, x1 - x0, y1 - y0)
        out.append((reader, boxes))
    return out


def _labels_row(marked: set[str]) -> list[int]:
    """One reading's 0/1 cells: its local marks, the global labels they bring, No finding."""
    found = set(marked) | {g for g, local in GLOBAL_FROM.items() if local in marked}
    return [*(int(n in found) for n in (*LOCAL, *GLOBAL)), int(not marked)]


def _number(value: float) -> str:
    return f"{round(float(value), 2):g}" if abs(value) < 1e5 else f"{value:.2f}"


def _uid(config: SynthConfig, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(_UID_ROOT, entropy_srcs=[str(config.seed), *map(str, parts)]))


def dicom_bytes(gray: np.ndarray, item: common.Item, config: SynthConfig) -> bytes:
    """A DICOM file of `gray` (8-bit levels) in the item's pixel kind (`KINDS`)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    photometric, bits, windowed = KINDS[item.extra["kind"]]
    per_level = (2**bits - 1) // 255
    levels = gray.astype(np.int64)
    if photometric == "MONOCHROME1":
        levels = 255 - levels
    stored = (levels * per_level).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = _uid(config, "image", item.index)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = _DX_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(config, "study", item.index)
    ds.SeriesInstanceUID = _uid(config, "series", item.index)
    ds.Modality = "DX"
    ds.PatientSex = item.extra["sex"]
    if item.extra["age"] is not None:
        ds.PatientAge = f"{item.extra['age']:03d}Y"
    ds.PixelSpacing = ["0.139", "0.139"]
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if windowed:  # level L decodes to L (LINEAR window, DICOM PS3.3 C.11.2.1.2)
        width = 255.0 * per_level + 1.0
        ds.WindowCenter, ds.WindowWidth = f"{0.5 + (width - 1) / 2:g}", f"{width:g}"
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the VinDr-CXR imitation into `config.out`.

    Returns:
        `common.own_summary`'s dict, with `positive` (image_index -> the VinDr labels any
        reader marked, sorted), `boxes` (image_index -> [(VinDr label, x, y, w, h,
        reader)] as written, reader "" for the test consensus), `drawn_boxes` (the true
        boxes) and `sizes` (image_index -> (width, height)).
    """
    out = Path(config.out)
    items = _plan(np.random.default_rng([config.seed, CODE]), config)
    rendered: dict[str, tuple[np.ndarray, dict[str, Box]]] = {}

    def save(path: Path, item: common.Item) -> None:
        gray, truth = _render(item, config)
        rendered[item.name] = (gray, truth)
        path.write_bytes(dicom_bytes(gray, item, config))

    common.write_items(out, items, config, LAYOUT, save, progress)
    folder = out / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    label_rows = {"train": [], "test": []}
    positive, written = {}, {}
    for item in items:
        truth = rendered[item.name][1]
        split = "test" if item.test else "train"
        image_id = item.extra["image_id"]
        marked_any: set[str] = set()
        written[item.name] = []
        for reader, boxes in _readings(item, truth):
            marked_any |= set(boxes)
            lead = [image_id, reader] if split == "train" else [image_id]
            for finding, (x, y, w, h) in boxes.items():
                coords = [_number(x), _number(y), _number(x + w), _number(y + h)]
                rows[split].append([*lead, finding, *coords])
                written[item.name].append((finding, x, y, w, h, reader))
            if not boxes:
                rows[split].append([*lead, NO_FINDING, "", "", "", ""])
            label_rows[split].append([*lead, *_labels_row(set(boxes))])
        found = marked_any | {g for g, local in GLOBAL_FROM.items() if local in marked_any}
        positive[item.name] = sorted(found)
    labels = [*LOCAL, *GLOBAL, NO_FINDING]
    test_labels = ["Other disease" if n == "Other diseases" else n for n in labels]
    header_test = [c for c in _BOX_HEADER if c != "rad_id"]
    common.write_text(folder / "annotations_train.csv", common.csv_text(_BOX_HEADER, rows["train"]))
    common.write_text(folder / "annotations_test.csv", common.csv_text(header_test, rows["test"]))
    common.write_text(
        folder / "image_labels_train.csv",
        common.csv_text(["image_id", "rad_id", *labels], label_rows["train"]),
    )
    common.write_text(
        folder / "image_labels_test.csv",
        common.csv_text(["image_id", *test_labels], label_rows["test"]),
    )
    names = ("annotations_train", "annotations_test", "image_labels_train", "image_labels_test")
    files = {k: str(folder / f"{k}.csv") for k in names}
    summary = common.own_summary(out, LAYOUT, items, files)
    return {
        **summary,
        "positive": positive,
        "boxes": written,
        "drawn_boxes": {name: truth for name, (_, truth) in rendered.items()},
        "sizes": {i.name: tuple(i.extra["size"]) for i in items},
        "kinds": {i.name: KINDS[i.extra["kind"]] for i in items},
    }


IMITATION = common.Imitation(
    LAYOUT,
    "VinDr-CXR's annotation CSVs (three readers' boxes on train, consensus on test) and "
    "DICOMs of varied sizes and bit depths",
    generate,
)
