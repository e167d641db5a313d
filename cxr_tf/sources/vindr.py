"""The VinDr-CXR source: PhysioNet's release (Nguyen et al. 2022) read into a catalog, with
every radiologist's boxes.

Layout (PhysioNet `vindr-cxr/1.0.0`), the CSVs in `annotations/` or directly in `--root`,
plain or gzipped::

    root/annotations/annotations_train.csv    image_id, rad_id, class_name, x_min, y_min,
                                              x_max, y_max (one row per box; a `No finding`
                                              row, coordinates blank, per reader who found
                                              nothing)
    root/annotations/annotations_test.csv     the same, the test set's consensus
    root/annotations/image_labels_train.csv   image_id, rad_id, then one 0/1 column per
                                              label (22 local, 6 global), one row per reader
    root/annotations/image_labels_test.csv    image_id, then the label columns (consensus;
                                              `Other disease` where train says `Other
                                              diseases`)
    root/train/<image_id>.dicom, root/test/<image_id>.dicom

Decisions:

- Names: VinDr's names that mean a vocabulary finding map onto it (`VINDR_LABELS`, e.g.
  `Pleural effusion` -> Effusion, `Pulmonary fibrosis` -> Fibrosis, `Rib fracture` and
  `Clavicle fracture` -> Fracture, positive when either is); the others are the dataset's
  own findings, named as VinDr writes them (`Aortic enlargement`, `ILD`, `Nodule/Mass`,
  `COPD`, ...): `Nodule/Mass` does not say which of NIH's Nodule and Mass it is.
  `No finding` means no finding. Every finding VinDr names is positive or negative on
  every image; vocabulary findings it does not name (Mass, Nodule, Hernia, ...) are not
  labelled.
- Several readers (train: three of 17 radiologists, `rad_id` R1..R17, each reading
  alone; test: one consensus of five): a finding is positive when ANY reader marks it,
  negative when none does. The training set is not adjudicated, so nothing says which of
  two disagreeing experts is right; "any" keeps every expert's finding (the sensitive
  reading), and the test set's consensus is the reference to measure against. A finding
  a reader boxed is positive even when that reader's image-level row says 0 (counted in a
  note).
- Boxes: every reader's box is kept, in the DICOM's own pixels (`box_frame` None), with
  the reader in the boxes' `reader` column (`consensus` for the test set); nothing is
  fused, so a training image may carry three overlapping boxes of one finding. Boxes with
  no area are dropped and counted. `localize` on the test split therefore scores the
  consensus boxes, one per lesion.
- Split: the official train / test; validation is carved out of train by patient at
  conversion, as for NIH's train_val list.
- Patients: VinDr releases no patient ID (each image was de-identified on its own), so each
  image is its own patient (noted).
- View, sex, age, size and pixel spacing from the DICOM header; a missing view is PA (the
  release is PA views only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.labels import NEGATIVE, POSITIVE, label_names, own_findings
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

# The 22 local labels (boxed) and 6 global ones (image-level), as VinDr writes them.
LOCAL_LABELS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Other lesion",
    "Pleural effusion", "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
    "Rib fracture",
)  # fmt: skip
GLOBAL_LABELS: tuple[str, ...] = (
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding",
)  # fmt: skip
NO_FINDING_LABEL = "No finding"
# Other spellings in the release -> the name used here (image_labels_test.csv says
# "Other disease").
ALIASES: dict[str, str] = {"Other disease": "Other diseases"}
# VinDr's names that mean a vocabulary finding; the rest are the dataset's own findings.
VINDR_LABELS: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural effusion": "Effusion",
    "Infiltration": "Infiltration",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Pulmonary fibrosis": "Fibrosis",
    "Pleural thickening": "Pleural_Thickening",
    "Lung Opacity": "Lung_Opacity",
    "Clavicle fracture": "Fracture",
    "Rib fracture": "Fracture",
}
# The dataset's own findings, sorted as `cxr_tf.labels.own_findings` sorts them.
OWN: tuple[str, ...] = own_findings(
    n for n in (*LOCAL_LABELS, *GLOBAL_LABELS) if n not in VINDR_LABELS
)
FILES: dict[str, str] = {
    "annotations_train": "annotations_train.csv",
    "annotations_test": "annotations_test.csv",
    "labels_train": "image_labels_train.csv",
    "labels_test": "image_labels_test.csv",
}
BOX_COLUMNS: tuple[str, ...] = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
CONSENSUS = "consensus"  # the reader of the test set's boxes
IMAGE_SUFFIX = ".dicom"


def _finding(name: str) -> str:
    """A VinDr label -> its label-state column (vocabulary or own finding)."""
    return VINDR_LABELS.get(name, name)


def find_files(root: Path) -> dict[str, Path | None]:
    """The four annotation CSVs (plain or `.gz`), in `annotations/` or the root; None where
    absent."""
    found: dict[str, Path | None] = {}
    for key, name in FILES.items():
        found[key] = None
        for folder in (root / "annotations", root):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if found[key] is None and candidate.is_file():
                    found[key] = candidate
    return found


def why_not(root: Path) -> str:
    """Why `root` is not a VinDr-CXR folder; "" when it is one."""
    root = Path(root)
    if not root.is_dir():
        return "not a folder"
    missing = [FILES[k] for k, p in find_files(root).items() if p is None]
    if len(missing) == len(FILES):
        return "no annotations/annotations_train.csv or image_labels_train.csv in it"
    if missing:
        return f"VinDr-CXR's {', '.join(missing)} missing (in annotations/ or the root)"
    return ""


def _detect(root: Path) -> bool:
    return not why_not(root)


def _label_column(column: str) -> str | None:
    name = ALIASES.get(column, column)
    return name if name in LOCAL_LABELS or name in GLOBAL_LABELS else None


def _reader_column(frame: pd.DataFrame) -> str | None:
    """`rad_id` in any case (image_labels_train.csv writes `rad_ID` in some copies)."""
    return next((c for c in frame.columns if c.lower() == "rad_id"), None)


def read_image_labels(path: Path) -> pd.DataFrame:
    """An `image_labels_*.csv`: one row per image, each label 1 when any reader's row marks
    it, else 0 (columns: image_id, then the labels as VinDr names them, aliases resolved).

    Raises:
        CatalogError: missing `image_id`, an unknown label column, a cell other than 0/1.
    """
    frame = read_table(path, ["image_id"])
    reader = _reader_column(frame)
    labels = [c for c in frame.columns if c not in ("image_id", reader)]
    unknown = [c for c in labels if _label_column(c) is None]
    if unknown:
        raise catalog.CatalogError(
            f"{path}: unknown label column(s) {unknown}; VinDr-CXR's are "
            f"{', '.join((*LOCAL_LABELS, *GLOBAL_LABELS))}"
        )
    raise_first(path, "image_id", frame["image_id"], frame["image_id"].eq("").to_numpy(), "empty:")
    values: dict[str, np.ndarray] = {"image_id": frame["image_id"].to_numpy()}
    for column in labels:
        cells = frame[column]
        codes = cells.map({"0": 0, "1": 1, "0.0": 0, "1.0": 1})
        raise_first(path, column, cells, codes.isna().to_numpy(), "not 0 or 1:")
        name = str(_label_column(column))
        # a label given twice (its alias and its name) is positive when either is
        values[name] = np.maximum(values.get(name, 0), codes.to_numpy(np.uint8))
    return pd.DataFrame(values).groupby("image_id", sort=False).max().reset_index()


def read_annotations(path: Path) -> tuple[pd.DataFrame, int]:
    """An `annotations_*.csv` -> (boxes: image_id, finding, x, y, w, h, reader; boxes with
    no area dropped), the number dropped. Rows of global labels and `No finding` carry no
    box (their coordinates are ignored).

    Raises:
        CatalogError: a missing column, an unknown class name, a local label's row with a
            blank or non-numeric coordinate, or x_max < x_min / y_max < y_min.
    """
    frame = read_table(path, BOX_COLUMNS)
    reader = _reader_column(frame)
    names = frame["class_name"].map(lambda c: _label_column(c) or "")
    raise_first(path, "class_name", frame["class_name"], names.eq("").to_numpy(), "unknown label")
    local = names.isin(LOCAL_LABELS).to_numpy()
    rows = frame[local]
    coordinates = {}
    for column in BOX_COLUMNS[2:]:
        numbers = pd.to_numeric(rows[column], errors="coerce").to_numpy(np.float64)
        bad = np.zeros(len(frame), bool)
        bad[np.flatnonzero(local)] = ~np.isfinite(numbers)
        raise_first(path, column, frame[column], bad, "a box coordinate must be a number, not")
        coordinates[column] = numbers
    w = coordinates["x_max"] - coordinates["x_min"]
    h = coordinates["y_max"] - coordinates["y_min"]
    backwards = np.zeros(len(frame), bool)
    backwards[np.flatnonzero(local)] = (w < 0) | (h < 0)
    if backwards.any():
        row = int(np.flatnonzero(backwards)[0])
        raise catalog.CatalogError(
            f"{where_row(path, row)}: box with x_max < x_min or y_max < y_min "
            f"({', '.join(frame.loc[frame.index[row], list(BOX_COLUMNS[2:])])})"
        )
    boxes = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "finding": [_finding(n) for n in names[local]],
            "x": coordinates["x_min"],
            "y": coordinates["y_min"],
            "w": w,
            "h": h,
            "reader": rows[reader].to_numpy() if reader else CONSENSUS,
        }
    )
    empty = ((boxes["w"] <= 0) | (boxes["h"] <= 0)).to_numpy()
    return boxes[~empty].reset_index(drop=True), int(empty.sum())


def _states(labels: pd.DataFrame) -> np.ndarray:
    """Per image, the label states: each VinDr label 0/1 -> negative/positive, several names
    of one finding positive when any is."""
    names = label_names(OWN)
    states = catalog.empty_states(len(labels), OWN)
    for label in (*LOCAL_LABELS, *GLOBAL_LABELS):
        if label == NO_FINDING_LABEL:
            continue
        column = names.index(_finding(label))
        values = labels[label].to_numpy() if label in labels.columns else None
        if values is None:
            continue
        current = states[:, column]
        positive = (values == 1) | (current == POSITIVE)
        states[:, column] = np.where(positive, POSITIVE, NEGATIVE)
    return states


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """A VinDr-CXR folder as a Catalog (see the module docstring)."""
    root = Path(root)
    files = find_files(root)
    missing = [FILES[k] for k, p in files.items() if p is None]
    if missing:
        raise catalog.CatalogError(
            f"{root}: VinDr-CXR's {', '.join(missing)} not found (looked in "
            f"{root / 'annotations'} and {root}, plain or .gz)"
        )
    parts, boxes, dropped = [], [], 0
    for split in ("train", "test"):
        labels = read_image_labels(files[f"labels_{split}"])
        absent = [c for c in (*LOCAL_LABELS, *GLOBAL_LABELS) if c not in labels.columns]
        if absent:
            raise catalog.CatalogError(
                f"{files[f'labels_{split}']}: missing label column(s) {absent}"
            )
        labels.insert(1, "split", split)
        parts.append(labels)
        split_boxes, n = read_annotations(files[f"annotations_{split}"])
        unknown = ~split_boxes["image_id"].isin(set(labels["image_id"]))
        if unknown.any():
            first = split_boxes["image_id"][unknown].iloc[0]
            raise catalog.CatalogError(
                f"{files[f'annotations_{split}']}: boxes of image(s) not in "
                f"{files[f'labels_{split}'].name}, e.g. {first!r}"
            )
        split_boxes["image_index"] = f"{split}/" + split_boxes["image_id"] + IMAGE_SUFFIX
        boxes.append(split_boxes)
        dropped += n
    labels = pd.concat(parts, ignore_index=True)
    both = labels["image_id"].duplicated(keep=False)
    if both.any():
        raise catalog.CatalogError(
            f"{root}: image(s) in both the train and the test labels, e.g. "
            f"{labels['image_id'][both].iloc[0]!r}"
        )
    names = (labels["split"] + "/" + labels["image_id"] + IMAGE_SUFFIX).tolist()
    states = _states(labels)
    box_frame = pd.concat(boxes, ignore_index=True)
    # A boxed finding is positive even where its reader's image-level row says 0.
    position = {name: i for i, name in enumerate(names)}
    columns = label_names(OWN)
    raised = 0
    for image, finding in (
        box_frame[["image_index", "finding"]].drop_duplicates().itertuples(index=False)
    ):
        row, column = position[image], columns.index(finding)
        if states[row, column] != POSITIVE:
            states[row, column] = POSITIVE
            raised += 1
    paths = {name: root / name for name in names}
    headers, _ = dicom_headers({n: p for n, p in paths.items() if p.is_file()})
    frame_columns: dict[str, object] = header_columns(names, headers, HEADER_FIELDS)
    frame_columns["view_position"] = [
        v if v != "?" else "PA" for v in frame_columns["view_position"]
    ]
    frame_columns["image_index"] = names
    frame_columns["patient_id"], how = catalog.number_patients(labels["image_id"].tolist())
    notes = [
        "VinDr-CXR has no patient IDs: each image is its own patient",
        "a finding is positive when any reader marks it; every reader's boxes are kept",
    ]
    if dropped:
        notes.append(f"{dropped} box(es) with no area dropped")
    if raised:
        notes.append(f"{raised} boxed finding(s) positive though the image-level row says 0")
    official = {
        "train_val": [n for n in names if n.startswith("train/")],
        "test": [n for n in names if n.startswith("test/")],
    }
    return catalog.Catalog(
        source="vindr",
        root=root,
        frame=catalog.make_frame(frame_columns, states, OWN),
        images=catalog.image_source(root, "vindr", paths),
        boxes=box_frame[["image_index", "finding", "x", "y", "w", "h", "reader"]],
        official=official,
        input_files={
            key: files[key]
            for key in ("labels_train", "labels_test", "annotations_train", "annotations_test")
        },
        box_frame=None,
        patient_ids=f"one per image, {how}",
        notes=notes,
        described="VinDr-CXR radiologists' labels (any reader positive) and boxes",
    )


CITATION = """@article{nguyen2022vindrcxr,
  title={VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations},
  author={Nguyen, Ha Q. and Lam, Khanh and Le, Linh T. and Pham, Hieu H. and Tran, Dat Q.
          and Nguyen, Dung B. and Le, Dung D. and Pham, Chi M. and Tong, Hang T. T. and
          Dinh, Diep H. and others},
  journal={Scientific Data},
  volume={9},
  pages={429},
  year={2022},
  doi={10.1038/s41597-022-01498-w}
}"""

SOURCE = Source(
    name="vindr",
    title="VinDr-CXR (Nguyen et al. 2022)",
    detect=_detect,
    read=read_catalog,
    why_not=why_not,
    holds="VinDr-CXR from PhysioNet: `annotations/{annotations,image_labels}_{train,test}.csv` "
    "and `train/`, `test/` `*.dicom`",
    labels_note="the 28 labels, 0/1 per reader: positive when any reader marks it; "
    "`Pleural effusion` -> Effusion, `Pulmonary fibrosis` -> Fibrosis, `Rib fracture` / "
    "`Clavicle fracture` -> Fracture, `Lung Opacity`, `Pleural thickening` and same-named "
    "ones -> themselves; the other 13 (`Aortic enlargement`, `ILD`, `Nodule/Mass`, `COPD`, "
    "...) the dataset's own; every reader's boxes kept; one patient per image",
    split_note="train (validation carved out by patient) / test",
    labels=VINDR_LABELS,
    homepage="https://physionet.org/content/vindr-cxr/1.0.0/",
    citation=CITATION,
    licence="PhysioNet credentialed access under the VinDr-CXR data use agreement; research "
    "and education only",
)
