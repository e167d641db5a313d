"""The RSNA Pneumonia Detection Challenge source (Shih et al. 2019): the challenge's stage-2
training files read into a catalog with their boxes.

Layout (Kaggle's `rsna-pneumonia-detection-challenge`), plain or gzipped CSVs in `--root`::

    root/stage_2_train_labels.csv           patientId, x, y, width, height, Target: one row
                                            per box (Target 1), or one row with blank box
                                            cells (Target 0)
    root/stage_2_detailed_class_info.csv    patientId, class: `Normal`, `No Lung Opacity /
                                            Not Normal` or `Lung Opacity` (optional; one row
                                            per row of the labels file, repeats included)
    root/stage_2_train_images/<patientId>.dcm
    root/stage_2_test_images/*.dcm          not labelled: left out (counted in a note)

Decisions:

- Labels: `Lung Opacity` (Target 1) -> Lung_Opacity positive, with its boxes; `Normal` ->
  no finding (Lung_Opacity negative); `No Lung Opacity / Not Normal` -> Lung_Opacity
  negative and the dataset's own finding `Not_Normal` positive. `Not_Normal` is kept
  because it is a third of the images (abnormal for something other than an opacity: the
  challenge's hard negatives) and lets a multi-class model learn the challenge's three
  classes; it is negative on `Normal` images and not labelled on `Lung Opacity` ones (the
  class says nothing of other abnormalities there). Without the class file only Target is
  read (Lung_Opacity), and `Not_Normal` is not a finding.
- A class contradicting Target (`Lung Opacity` with Target 0), an image with both Target 0
  and 1 rows, or two different classes for one image are errors naming the row.
- The images are NIH ChestX-ray14 images re-read by radiologists for the challenge: do
  not evaluate an NIH-trained model on them as external data.
- Boxes: `x, y, width, height` in pixels of the DICOM itself (1024 x 1024 in the release;
  `box_frame` None), finding Lung_Opacity, one reader.
- `patientId` names an image, not a patient: the patient is the DICOM's PatientID (the
  same UUID in the release), else the patientId; numbered in sorted order.
- No official split (the challenge's test labels were never released): the converter
  makes a seeded split by patient.
- View (PA / AP), sex, age, size and pixel spacing from the DICOM header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.labels import NEGATIVE, POSITIVE, UNLABELLED, label_names
from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    HEADER_FIELDS,
    Source,
    dicom_headers,
    header_columns,
    raise_first,
    read_table,
    where_row,
)

LABELS_CSV = "stage_2_train_labels.csv"
CLASSES_CSV = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
LABEL_COLUMNS: tuple[str, ...] = ("patientId", "x", "y", "width", "height", "Target")
OPACITY = "Lung Opacity"
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
CLASSES: tuple[str, ...] = (NORMAL, NOT_NORMAL, OPACITY)
# The dataset's own finding for `No Lung Opacity / Not Normal`.
NOT_NORMAL_FINDING = "Not_Normal"
# RSNA's names that mean a vocabulary finding.
RSNA_LABELS: dict[str, str] = {OPACITY: "Lung_Opacity"}
_BOX = ("x", "y", "width", "height")


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def why_not(root: Path) -> str:
    """Why `root` is not an RSNA Pneumonia folder; "" when it is one."""
    if not Path(root).is_dir():
        return "not a folder"
    if _find(Path(root), LABELS_CSV) is None:
        return f"no {LABELS_CSV}[.gz] in it"
    return ""


def _detect(root: Path) -> bool:
    return not why_not(root)


def read_labels(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`stage_2_train_labels.csv` -> (one row per image: patientId, target 0/1, in file
    order; boxes: patientId, x, y, w, h).

    Raises:
        CatalogError: a missing column, a Target other than 0/1, a Target 1 row without a
            numeric positive box, an image with both Target 0 and Target 1 rows.
    """
    frame = read_table(path, LABEL_COLUMNS)
    ids = frame["patientId"]
    raise_first(path, "patientId", ids, ids.eq("").to_numpy(), "empty:")
    target = frame["Target"].map({"0": 0, "1": 1})
    raise_first(path, "Target", frame["Target"], target.isna().to_numpy(), "not 0 or 1:")
    target = target.to_numpy(np.int64)
    boxed = target == 1
    numbers = {}
    for column in _BOX:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
        bad = boxed & ~(np.isfinite(values) & (values >= 0))
        raise_first(path, column, frame[column], bad, "a Target 1 row needs a box number, not")
        numbers[column] = values
    flat = boxed & ((numbers["width"] <= 0) | (numbers["height"] <= 0))
    raise_first(path, "width", frame["width"], flat, "a box needs a positive size, not")
    mixed = pd.Series(target).groupby(ids.to_numpy()).transform("nunique").to_numpy() > 1
    if mixed.any():
        row = int(np.flatnonzero(mixed)[0])
        raise catalog.CatalogError(
            f"{where_row(path, row, 'Target')}: image {ids.iloc[row]!r} has both Target 0 "
            f"and Target 1 rows"
        )
    images = pd.DataFrame({"patientId": ids, "target": target}).drop_duplicates("patientId")
    boxes = pd.DataFrame(
        {
            "patientId": ids[boxed].to_numpy(),
            "x": numbers["x"][boxed],
            "y": numbers["y"][boxed],
            "w": numbers["width"][boxed],
            "h": numbers["height"][boxed],
        }
    )
    return images.reset_index(drop=True), boxes


def read_classes(path: Path) -> dict[str, str]:
    """`stage_2_detailed_class_info.csv` -> patientId -> class (its repeated rows agree).

    Raises:
        CatalogError: a missing column, an unknown class, two classes for one image.
    """
    frame = read_table(path, ["patientId", "class"])
    unknown = ~frame["class"].isin(CLASSES).to_numpy()
    raise_first(path, "class", frame["class"], unknown, f"not one of {list(CLASSES)}:")
    differ = frame.groupby("patientId")["class"].transform("nunique").to_numpy() > 1
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        raise catalog.CatalogError(
            f"{where_row(path, row, 'class')}: image {frame['patientId'].iloc[row]!r} has "
            f"two different classes"
        )
    return dict(zip(frame["patientId"], frame["class"], strict=True))


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """An RSNA Pneumonia folder as a Catalog (see the module docstring)."""
    root = Path(root)
    labels_path = _find(root, LABELS_CSV)
    if labels_path is None:
        raise catalog.CatalogError(f"{root}: no {LABELS_CSV}[.gz] (RSNA Pneumonia's labels)")
    images, boxes = read_labels(labels_path)
    classes_path = _find(root, CLASSES_CSV)
    notes: list[str] = []
    own: tuple[str, ...] = ()
    ids = images["patientId"].tolist()
    target = images["target"].to_numpy()
    if classes_path is not None:
        classes = read_classes(classes_path)
        absent = [i for i in ids if i not in classes]
        if absent:
            raise catalog.CatalogError(
                f"{classes_path}: no class for {len(absent)} image(s) of {labels_path.name}, "
                f"e.g. {absent[0]!r}"
            )
        cls = np.array([classes[i] for i in ids], dtype=object)
        wrong = (cls == OPACITY) != (target == 1)
        if wrong.any():
            first = ids[int(np.flatnonzero(wrong)[0])]
            raise catalog.CatalogError(
                f"{classes_path}: image {first!r} is {classes[first]!r} but its Target in "
                f"{labels_path.name} is {int(target[ids.index(first)])}"
            )
        own = (NOT_NORMAL_FINDING,)
    else:
        cls = None
        notes.append(f"no {CLASSES_CSV}: Target only (Lung_Opacity), no Not_Normal")
    names = label_names(own)
    states = catalog.empty_states(len(ids), own)
    states[:, names.index("Lung_Opacity")] = np.where(target == 1, POSITIVE, NEGATIVE)
    if cls is not None:
        states[:, names.index(NOT_NORMAL_FINDING)] = np.select(
            [cls == NOT_NORMAL, cls == NORMAL], [POSITIVE, NEGATIVE], UNLABELLED
        )
    index = [f"{IMAGES}/{i}.dcm" for i in ids]
    paths = {name: root / name for name in index}
    headers, _ = dicom_headers({n: p for n, p in paths.items() if p.is_file()})
    columns: dict[str, object] = header_columns(index, headers, HEADER_FIELDS)
    patients = [headers.get(n, {}).get("patient_id") or i for n, i in zip(index, ids, strict=True)]
    columns["image_index"] = index
    columns["patient_id"], how = catalog.number_patients(patients)
    test_folder = root / TEST_IMAGES
    if test_folder.is_dir():
        unlabelled = sum(1 for _ in test_folder.glob("*.dcm"))
        notes.append(f"{unlabelled} image(s) in {TEST_IMAGES}/ have no labels: left out")
    box_frame = pd.DataFrame(
        {
            "image_index": [f"{IMAGES}/{i}.dcm" for i in boxes["patientId"]],
            "finding": "Lung_Opacity",
            "x": boxes["x"],
            "y": boxes["y"],
            "w": boxes["w"],
            "h": boxes["h"],
        }
    )
    inputs = {"labels": labels_path}
    if classes_path is not None:
        inputs["classes"] = classes_path
    return catalog.Catalog(
        source="rsna",
        root=root,
        frame=catalog.make_frame(columns, states, own),
        images=catalog.image_source(root, "rsna", paths),
        boxes=box_frame,
        official=None,
        input_files=inputs,
        box_frame=None,
        patient_ids=f"DICOM PatientID (else patientId), {how}",
        patient_names=catalog.patient_names(patients, columns["patient_id"]),
        notes=notes,
        described=f"RSNA Pneumonia challenge labels from {labels_path.name}",
    )


CITATION = """@article{shih2019rsna,
  title={Augmenting the National Institutes of Health Chest Radiograph Dataset with
         Expert Annotations of Possible Pneumonia},
  author={Shih, George and Wu, Carol C. and Halabi, Safwan S. and Kohli, Marc D. and
          Prevedello, Luciano M. and Cook, Tessa S. and others},
  journal={Radiology: Artificial Intelligence},
  volume={1},
  number={1},
  pages={e180041},
  year={2019},
  doi={10.1148/ryai.2019180041}
}"""

SOURCE = Source(
    name="rsna",
    title="RSNA Pneumonia Detection Challenge (Shih et al. 2019)",
    detect=_detect,
    read=read_catalog,
    why_not=why_not,
    holds="`stage_2_train_labels.csv`, `stage_2_detailed_class_info.csv` (optional) and "
    "`stage_2_train_images/*.dcm`",
    labels_note="`Lung Opacity` -> Lung_Opacity positive with its boxes; `Normal` -> no "
    "finding; `No Lung Opacity / Not Normal` -> Lung_Opacity negative, own finding "
    "`Not_Normal` positive; patient from the DICOM PatientID",
    split_note="none: seeded split by patient (test labels unreleased)",
    labels=RSNA_LABELS,
    homepage="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
    citation=CITATION,
    licence="Kaggle competition rules: research and education only; the images are NIH "
    "ChestX-ray14 images re-annotated by RSNA and STR radiologists",
)
