"""The PadChest source: its labels CSV and 16-bit PNGs read into a catalog.

Layout: the labels CSV in `--root` (`PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`,
plain or gzipped, any name: it is recognised by its columns `ImageID`, `ImageDir`,
`PatientID`, `Projection`, `Labels`) and the 16-bit PNGs in numbered folders,
`<ImageDir>/<ImageID>`. Images lying directly in `--root` (`<ImageID>`) are taken when the
numbered folder does not exist.

Decisions:

- `image_index` is `<ImageDir>/<ImageID>`, the release's relative path, even when the
  images lie directly in `--root`.
- Labels: `Labels` is a list written like Python's (`['pleural effusion', 'cardiomegaly']`),
  read with a small parser (never evaluated); terms are lower-cased and stripped (the file
  has stray spaces). A labelled image has every finding `PADCHEST_LABELS` (below) maps
  to NEGATIVE, made POSITIVE by any term mapping to it: PadChest's terms list everything
  its report found, so an absent finding is a negative. `normal` means no finding; terms
  the map does not name are ignored. Vocabulary findings PadChest has no term for (Lung
  opacity, lung lesion, enlarged cardiomediastinum, pleural other) are not labelled. An
  empty list (`[]`, `['']`) or a blank / `nan` cell means the image was not labelled:
  every finding not labelled, counted in a note.
- View from `Projection`: PA; AP and AP_horizontal (supine) -> AP; L -> LATERAL; COSTAL
  (rib views) and EXCLUDE (flagged by PadChest's curators) -> OTHER, which `--views` cannot
  keep; UNK and blank -> `?`. Other values go through `catalog.normalize_view`.
- Patient: `PatientID` (long strings) numbered by `catalog.number_patients`. Follow-up: the
  study's rank among the patient's studies by `StudyDate_DICOM`, then `StudyID`. Age: the
  study year less `PatientBirth` (a year, `1946` or `1946.0`) when both parse and the
  difference lies in 0-120, else unknown: blank or `nan` cells silently, other values
  (`abc`) and ages out of range counted in a note. Sex from `PatientSex_DICOM` (values
  neither a sex nor unknown/other counted in a note too). Original size from
  `Columns_DICOM` x `Rows_DICOM` when present.
- No official split: the converter makes seeded patient-level splits.
- Pixels: the PNGs are 16-bit; the converter maps 16-bit values linearly over the full
  range (`round(v * 255 / 65535)`, see `cxr_tf.data.preprocessing`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.labels import NEGATIVE, POSITIVE, VOCABULARY
from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    MAX_AGE,
    Source,
    int_column,
    raise_first,
    read_header,
    read_table,
    sex_column,
    unread_note,
    where_row,
)

# PadChest's `Labels` column (lower-case terms from its report-derived hierarchy). Terms
# not listed here are kept in no finding; "normal" means no finding.
PADCHEST_LABELS: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "lobar atelectasis": "Atelectasis",
    "segmental atelectasis": "Atelectasis",
    "round atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Effusion",
    "loculated pleural effusion": "Effusion",
    "infiltrates": "Infiltration",
    "interstitial pattern": "Infiltration",
    "mass": "Mass",
    "pulmonary mass": "Mass",
    "nodule": "Nodule",
    "multiple nodules": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "alveolar pattern": "Consolidation",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "pleural thickening": "Pleural_Thickening",
    "apical pleural thickening": "Pleural_Thickening",
    "hiatal hernia": "Hernia",
    "rib fracture": "Fracture",
    "clavicle fracture": "Fracture",
    "humeral fracture": "Fracture",
    "vertebral fracture": "Fracture",
    "callus rib fracture": "Fracture",
    "pacemaker": "Support_Devices",
    "dual chamber device": "Support_Devices",
    "single chamber device": "Support_Devices",
    "electrical device": "Support_Devices",
    "endotracheal tube": "Support_Devices",
    "nsg tube": "Support_Devices",
    "chest drain tube": "Support_Devices",
    "central venous catheter": "Support_Devices",
    "central venous catheter via jugular vein": "Support_Devices",
    "central venous catheter via subclavian vein": "Support_Devices",
    "tracheostomy tube": "Support_Devices",
}
PADCHEST_NORMAL = "normal"
LABELS_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS: tuple[str, ...] = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
PROJECTIONS: dict[str, str] = {
    "PA": "PA",
    "AP": "AP",
    "AP_HORIZONTAL": "AP",
    "L": "LATERAL",
    "COSTAL": "OTHER",
    "EXCLUDE": "OTHER",
    "UNK": "?",
    "": "?",
}
_NOT_LABELLED = {"", "nan", "none", "[]"}
# Cells that give no value (age unknown without a note): blank, or pandas' words for none.
_NOT_GIVEN = ["", "nan", "none", "null"]
_TERM = re.compile(r"""\s*(?:'([^']*)'|"([^"]*)")\s*(?:,|$)""")
_UNSAFE = re.compile(r"[/\\\x00]")
_MAPPED = tuple(sorted(set(PADCHEST_LABELS.values()), key=VOCABULARY.index))


def find_labels_csv(root: Path) -> Path | None:
    """The PadChest labels CSV in `root` (the release's name first, else any `.csv[.gz]`
    there whose header has PadChest's columns)."""
    root = Path(root)
    if not root.is_dir():
        return None
    named = [root / LABELS_CSV, root / f"{LABELS_CSV}.gz"]
    others = sorted(
        p for p in root.iterdir() if p.name.lower().endswith((".csv", ".csv.gz")) and p.is_file()
    )
    others.sort(key=lambda p: not p.name.upper().startswith("PADCHEST"))  # stable
    for path in [*named, *others]:
        if path.is_file() and all(c in read_header(path) for c in COLUMNS):
            return path
    return None


def why_not(root: Path) -> str:
    """Why `root` is not a PadChest folder; "" when it is one."""
    if find_labels_csv(root) is not None:
        return ""
    return f"no CSV with PadChest's columns {list(COLUMNS)} in it"


def _detect(root: Path) -> bool:
    return not why_not(root)


def parse_labels(text: str) -> list[str] | None:
    """A `Labels` cell -> its terms (lower-case, stripped); None when the image was not
    labelled (blank, `nan`, `[]`, only empty terms).

    Raises:
        ValueError: the cell is not a list of quoted terms.
    """
    cell = text.strip()
    if cell.lower() in _NOT_LABELLED:
        return None
    if not (cell.startswith("[") and cell.endswith("]")):
        raise ValueError("not a list like ['term', 'term']")
    inner = cell[1:-1].strip().rstrip(",")
    terms: list[str] = []
    position = 0
    while position < len(inner):
        match = _TERM.match(inner, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read the terms from {inner[position:]!r}")
        term = match.group(1) if match.group(1) is not None else match.group(2)
        terms.append(" ".join(term.lower().split()))
        position = match.end()
    terms = [t for t in terms if t]
    return terms or None


def _states(path: Path, labels: pd.Series) -> tuple[np.ndarray, int, set[str]]:
    """(state matrix, images not labelled, terms that map to no finding)."""
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)
    table = catalog.empty_states(len(uniques))
    unlabelled = np.zeros(len(uniques), dtype=bool)
    unmapped: set[str] = set()
    mapped_columns = [VOCABULARY.index(f) for f in _MAPPED]
    for code, text in enumerate(uniques):
        try:
            terms = parse_labels(str(text))
        except ValueError as err:
            row = int(np.flatnonzero(codes == code)[0])
            raise catalog.CatalogError(
                f"{where_row(path, row, 'Labels')}: {err} in {text!r}"
            ) from err
        if terms is None:
            unlabelled[code] = True
            continue
        table[code, mapped_columns] = NEGATIVE
        for term in terms:
            if term in PADCHEST_LABELS:
                table[code, VOCABULARY.index(PADCHEST_LABELS[term])] = POSITIVE
            elif term != PADCHEST_NORMAL:
                unmapped.add(term)
    return table[codes], int(unlabelled[codes].sum()), unmapped


def _views(values: pd.Series) -> tuple[list[str], dict[str, int]]:
    """Projections -> views, and the counts of values PadChest does not document."""
    views, odd = [], {}
    for value in values:
        key = value.upper()
        if key in PROJECTIONS:
            views.append(PROJECTIONS[key])
        else:
            views.append(catalog.normalize_view(value))
            odd[value] = odd.get(value, 0) + 1
    return views, odd


def _years(values: pd.Series) -> np.ndarray:
    """A leading 4-digit year as float, NaN when absent (`1946`, `1946.0`, `20140113`)."""
    return pd.to_numeric(values.str.extract(r"^(\d{4})")[0], errors="coerce").to_numpy(float)


def _ages(path: Path, frame: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Ages (-1 unknown), and notes counting the birth years and study dates that could not
    be read and the ages outside 0-MAX_AGE (each made unknown)."""
    if "PatientBirth" not in frame.columns or "StudyDate_DICOM" not in frame.columns:
        return np.full(len(frame), -1, np.int64), []
    born, dated = frame["PatientBirth"], frame["StudyDate_DICOM"]
    birth = born.where(born.str.fullmatch(r"\d{4}(\.0*)?"), "")
    study = _years(dated)
    age = study - _years(birth)
    good = np.isfinite(age) & (age >= 0) & (age <= MAX_AGE)
    unread_birth = birth.eq("").to_numpy() & ~born.str.lower().isin(_NOT_GIVEN).to_numpy()
    unread_date = np.isnan(study) & ~dated.str.lower().isin(_NOT_GIVEN).to_numpy()
    notes = [
        unread_note(path, "PatientBirth", born, unread_birth, "age unknown"),
        unread_note(path, "StudyDate_DICOM", dated, unread_date, "age unknown"),
        unread_note(
            path, "PatientBirth", born, np.isfinite(age) & ~good,
            f"age unknown (the age at the study is outside 0-{MAX_AGE})",
        ),
    ]  # fmt: skip
    return np.where(good, np.nan_to_num(age), -1).astype(np.int64), [n for n in notes if n]


def _follow_up(frame: pd.DataFrame, patients: np.ndarray) -> np.ndarray:
    empty = pd.Series([""] * len(frame))
    order = pd.DataFrame(
        {
            "patient": patients,
            "date": frame.get("StudyDate_DICOM", empty).to_numpy(),
            "study": frame.get("StudyID", empty).to_numpy(),
        }
    )
    studies = order.drop_duplicates().sort_values(["patient", "date", "study"], kind="stable")
    studies["rank"] = studies.groupby("patient").cumcount()
    merged = order.merge(studies, on=["patient", "date", "study"], how="left")
    return merged["rank"].to_numpy(np.int64)


def _image_paths(path: Path, root: Path, frame: pd.DataFrame) -> tuple[list[str], dict, int]:
    """(image_index per row, image_index -> file, images looked for directly in root)."""
    folders = frame["ImageDir"].str.replace(r"^(\d+)\.0*$", r"\1", regex=True)
    index, files, flat = [], {}, 0
    exists: dict[str, bool] = {}
    for row, (folder, name) in enumerate(zip(folders, frame["ImageID"], strict=True)):
        for column, part in (("ImageID", name), ("ImageDir", folder)):
            # one plain name each: no folders, nothing that leaves --root
            if (column == "ImageID" and not part) or _UNSAFE.search(part) or part in (".", ".."):
                raise catalog.CatalogError(f"{where_row(path, row, column)}: bad name {part!r}")
        image = f"{folder}/{name}" if folder else name
        index.append(image)
        if folder not in exists:
            exists[folder] = bool(folder) and (root / folder).is_dir()
        if exists[folder]:
            files[image] = root / folder / name
        else:
            files[image] = root / name
            flat += 1
    return index, files, flat


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """A PadChest folder as a Catalog (see the module docstring)."""
    root = Path(root)
    path = find_labels_csv(root)
    if path is None:
        raise catalog.CatalogError(
            f"{root}: no PadChest labels CSV ({LABELS_CSV}[.gz] or a CSV with columns "
            f"{list(COLUMNS)})"
        )
    frame = read_table(path, COLUMNS)
    raise_first(
        path, "PatientID", frame["PatientID"], frame["PatientID"].eq("").to_numpy(), "empty:"
    )
    index, files, flat = _image_paths(path, root, frame)
    repeated = pd.Series(index).duplicated().to_numpy()
    raise_first(path, "ImageID", frame["ImageID"], repeated, "image listed twice:")
    patients, patient_ids = catalog.number_patients(frame["PatientID"].tolist())
    states, unlabelled, unmapped = _states(path, frame["Labels"])
    views, odd = _views(frame["Projection"])
    ages, unread = _ages(path, frame)
    columns: dict[str, object] = {
        "image_index": index,
        "patient_id": patients,
        "follow_up": _follow_up(frame, patients),
        "age": ages,
        "view_position": views,
    }
    if "PatientSex_DICOM" in frame.columns:
        columns["sex"], sex_note = sex_column(path, frame, "PatientSex_DICOM")
        unread += [sex_note] if sex_note else []
    for column, name in (("Columns_DICOM", "original_width"), ("Rows_DICOM", "original_height")):
        if column in frame.columns:
            columns[name] = int_column(path, frame, column, blank=0)

    notes = [f"labels from {path.name}; no official split: the converter makes its own"]
    if unlabelled:
        notes.append(
            f"{unlabelled} image(s) with an empty or blank Labels cell: every finding not labelled"
        )
    if unmapped:
        notes.append(
            f"{len(unmapped)} label term(s) map to no vocabulary finding and are ignored, "
            f"e.g. {sorted(unmapped)[:5]}"
        )
    other = views.count("OTHER")
    if other:
        notes.append(f"{other} COSTAL / EXCLUDE image(s) have view OTHER (not a chest view)")
    if odd:
        notes.append(f"Projection values PadChest does not document, read as views: {odd}")
    if flat:
        notes.append(f"{flat} image(s) looked for directly in {root} (no <ImageDir> folder)")
    notes += unread
    return catalog.Catalog(
        source="padchest",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=catalog.image_source(root, "padchest", files),
        official=None,
        input_files={"labels": path},
        patient_ids=patient_ids,
        patient_names=catalog.patient_names(frame["PatientID"].tolist(), patients),
        notes=notes,
        described=f"PadChest report terms (Labels) from {path.name}, mapped by PADCHEST_LABELS",
    )


SOURCE = Source(
    name="padchest",
    title="PadChest (Bustos et al. 2020)",
    detect=_detect,
    read=read_catalog,
    why_not=why_not,
    holds="PadChest's labels CSV (found by its columns) and the 16-bit PNGs in `<ImageDir>/` "
    "(or the root)",
    labels_note="`Labels` terms mapped as below: mapped findings positive or negative, the "
    "others not labelled; an empty `Labels` leaves the image not labelled; age = study year "
    "- birth year",
    split_note="none: seeded split by patient",
    labels=PADCHEST_LABELS,
    homepage="https://bimcv.cipf.es/bimcv-projects/padchest/",
    licence="BIMCV's PadChest licence, accepted when requesting the download",
)
