"""The MIMIC-CXR-JPG source (2.0.0 / 2.1.0): its folder read into a catalog.

Layout, as PhysioNet releases it, all in `--root`:

- `mimic-cxr-2.0.0-chexpert.csv[.gz]`: one row per *study*: `subject_id`, `study_id` and
  the 14 CheXpert observations (`1.0`, `0.0`, `-1.0` uncertain, blank not mentioned);
- `mimic-cxr-2.0.0-metadata.csv[.gz]`: one row per *image*: `dicom_id`, `subject_id`,
  `study_id`, `ViewPosition`, `Rows`, `Columns`, `StudyDate`, `StudyTime`, ...;
- `mimic-cxr-2.0.0-split.csv[.gz]`: `dicom_id`, `study_id`, `subject_id`, `split`
  (train / validate / test);
- images at `files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`, `pNN` the subject id's first two
  digits.

Plain and gzipped CSVs are both read (gzip is told from the content). Other versions' files
(`mimic-cxr-*-chexpert.csv`, ...) are taken when the 2.0.0 names are absent.

Decisions:

- The metadata file is the list of images; `image_index` is the image's path relative to
  `--root` (`files/p10/p10000032/s50414267/02aa804e-....jpg`).
- Labels are per study and joined onto each of its images. Images of a study without a
  label row get every finding "not labelled" (a note counts them); label rows of studies
  without images are ignored (counted too).
- Patient: `subject_id` as given. Follow-up: the study's rank among the subject's studies
  by `StudyDate`, `StudyTime`, then `study_id` (by `study_id` alone without the dates).
- View: `ViewPosition` through `catalog.normalize_view` (PA, AP, AP AXIAL, LATERAL, LL,
  ...); blank gives `?`, and so does a value naming no view, counted in a note (as are
  dates and times that are not numbers). Original size: `Columns` x `Rows` (blank: taken
  from the image). Age and sex are not in these files (MIMIC-IV's patients table has them): unknown.
- Official split: train / validate / test -> train / validation / test. Images without a
  split row are in no official list (a note counts them); without the split file there is
  no official split and the converter makes its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    LABELLER_LABELS,
    Source,
    int_column,
    label_cell_counts,
    labeller_states,
    raise_first,
    read_table,
    unread_note,
    where_row,
)

FILES: dict[str, str] = {
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv",
    "metadata": "mimic-cxr-2.0.0-metadata.csv",
    "split": "mimic-cxr-2.0.0-split.csv",
}
_GLOBS: dict[str, str] = {key: f"mimic-cxr-*-{key}.csv*" for key in FILES}
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
LABEL_COLUMNS = ("subject_id", "study_id")
SPLIT_COLUMNS = ("dicom_id", "split")
SPLITS: dict[str, str] = {"train": "train", "validate": "validation", "test": "test"}
# ViewPosition values catalog.normalize_view does not know: a cross-table lateral, the
# swimmer's lateral and the oblique LPO (LAO/RAO, obliques too, count as lateral there).
_VIEWS = {"XTABLE LATERAL": "LATERAL", "SWIMMERS": "LATERAL", "LPO": "LATERAL", "RPO": "LATERAL"}


def find_files(root: Path) -> dict[str, Path]:
    """The MIMIC-CXR-JPG CSVs (plain or .gz) directly in `root`, by key (absent: left out)."""
    root = Path(root)
    found: dict[str, Path] = {}
    for key, name in FILES.items():
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            matches = sorted(root.glob(_GLOBS[key])) if root.is_dir() else []
            matches = [m for m in matches if m.name.endswith((".csv", ".csv.gz"))]
            if matches:
                found[key] = matches[-1]  # the newest version
    return found


def why_not(root: Path) -> str:
    """Why `root` is not a MIMIC-CXR-JPG folder; "" when it is one."""
    files = find_files(root)
    missing = [f"{FILES[key]}[.gz]" for key in ("chexpert", "metadata") if key not in files]
    return f"no {' and no '.join(missing)} in it" if missing else ""


def _detect(root: Path) -> bool:
    return not why_not(root)


def _view(value: str) -> str:
    text = " ".join(value.upper().split())
    return _VIEWS.get(text) or catalog.normalize_view(text)


def _follow_up(
    path: Path, meta: pd.DataFrame, subject: np.ndarray, study: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Each image's study rank among its subject's studies (by date, time, study id), and
    notes counting the dates and times that are not numbers (sorted last)."""
    order = pd.DataFrame({"subject": subject, "study": study})
    notes = []
    for column in ("StudyDate", "StudyTime"):
        values = meta[column] if column in meta.columns else pd.Series([""] * len(meta))
        # unparsable or blank dates sort last; the study id breaks ties
        numbers = pd.to_numeric(values, errors="coerce")
        unread = numbers.isna().to_numpy() & values.ne("").to_numpy()
        notes.append(unread_note(path, column, values, unread, "unknown (ordered last)"))
        order[column] = numbers.fillna(np.inf).to_numpy()
    studies = (
        order.groupby(["subject", "study"], sort=False)[["StudyDate", "StudyTime"]]
        .min()
        .reset_index()
        .sort_values(["subject", "StudyDate", "StudyTime", "study"], kind="stable")
    )
    studies["rank"] = studies.groupby("subject").cumcount()
    rank = dict(zip(studies["study"], studies["rank"], strict=True))
    return np.array([rank[s] for s in study], dtype=np.int64), [n for n in notes if n]


def _labels(path: Path, subject: dict[int, int]) -> tuple[dict[int, int], np.ndarray, int]:
    """(study id -> label row, the rows' states, label rows whose study has no image)."""
    frame = read_table(path, LABEL_COLUMNS)
    studies = int_column(path, frame, "study_id")
    subjects = int_column(path, frame, "subject_id")
    repeated = pd.Series(studies).duplicated().to_numpy()
    raise_first(path, "study_id", frame["study_id"], repeated, "study labelled twice:")
    mismatch = np.array(
        [subject.get(st, su) != su for st, su in zip(studies, subjects, strict=True)], dtype=bool
    )
    if mismatch.any():
        row = int(np.flatnonzero(mismatch)[0])
        raise catalog.CatalogError(
            f"{where_row(path, row, 'subject_id')}: study {studies[row]} belongs to subject "
            f"{subject[studies[row]]} in the metadata file, not {subjects[row]}"
        )
    states = labeller_states(frame, LABELLER_LABELS, path)
    rows = {int(s): i for i, s in enumerate(studies)}
    unused = sum(1 for s in rows if s not in subject)
    return rows, states, unused


def _official(path: Path, dicom_to_index: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """The official split lists (image names) and how many split rows name no known image."""
    frame = read_table(path, SPLIT_COLUMNS)
    bad = ~frame["split"].str.lower().isin(list(SPLITS)).to_numpy()
    raise_first(path, "split", frame["split"], bad, f"not one of {', '.join(SPLITS)}:")
    repeated = frame["dicom_id"].duplicated().to_numpy()
    raise_first(path, "dicom_id", frame["dicom_id"], repeated, "image listed twice:")
    lists: dict[str, list[str]] = {name: [] for name in SPLITS.values()}
    unknown = 0
    for dicom, split in zip(frame["dicom_id"], frame["split"].str.lower(), strict=True):
        if dicom in dicom_to_index:
            lists[SPLITS[split]].append(dicom_to_index[dicom])
        else:
            unknown += 1
    return lists, unknown


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """A MIMIC-CXR-JPG folder as a Catalog (see the module docstring)."""
    root = Path(root)
    files = find_files(root)
    for key in ("chexpert", "metadata"):
        if key not in files:
            raise catalog.CatalogError(
                f"{root}: no MIMIC-CXR-JPG {key} file ({FILES[key]} or {FILES[key]}.gz)"
            )
    meta_path = files["metadata"]
    meta = read_table(meta_path, METADATA_COLUMNS)
    dicom = meta["dicom_id"]
    raise_first(meta_path, "dicom_id", dicom, dicom.eq("").to_numpy(), "empty image id:")
    raise_first(
        meta_path, "dicom_id", dicom, ~dicom.str.fullmatch(r"[\w.-]+").to_numpy(), "bad image id:"
    )
    raise_first(meta_path, "dicom_id", dicom, dicom.duplicated().to_numpy(), "image listed twice:")
    subject = int_column(meta_path, meta, "subject_id")
    patients, patient_ids = catalog.number_patients(subject)
    study = int_column(meta_path, meta, "study_id")
    study_subject: dict[int, int] = {}
    for row, (st, su) in enumerate(zip(study, subject, strict=True)):
        if study_subject.setdefault(int(st), int(su)) != su:
            raise catalog.CatalogError(
                f"{where_row(meta_path, row, 'subject_id')}: study {st} belongs to subject "
                f"{study_subject[int(st)]} in earlier rows, not {su}"
            )
    index = [
        f"files/p{str(su)[:2]}/p{su}/s{st}/{d}.jpg"
        for su, st, d in zip(subject, study, dicom, strict=True)
    ]
    zeros = pd.Series(["0"] * len(meta))
    for column in ("Rows", "Columns"):
        if column not in meta.columns:
            meta[column] = zeros
    follow_up, notes = _follow_up(meta_path, meta, subject, study)
    views = [_view(v) for v in meta["ViewPosition"]]
    unread = (np.array(views) == "?") & meta["ViewPosition"].ne("").to_numpy()
    if note := unread_note(meta_path, "ViewPosition", meta["ViewPosition"], unread, "view ?"):
        notes.append(note)
    columns = {
        "image_index": index,
        "patient_id": patients,
        "follow_up": follow_up,
        "view_position": views,
        "original_width": int_column(meta_path, meta, "Columns", blank=0),
        "original_height": int_column(meta_path, meta, "Rows", blank=0),
    }

    rows, label_states, unused = _labels(files["chexpert"], study_subject)
    states = catalog.empty_states(len(meta))
    which = np.array([rows.get(int(s), -1) for s in study], dtype=np.int64)
    states[which >= 0] = label_states[which[which >= 0]]
    unlabelled = which < 0
    if unlabelled.any():
        n_studies = len(set(study[unlabelled].tolist()))
        notes.append(
            f"{int(unlabelled.sum())} image(s) of {n_studies} study(ies) without a row in "
            f"{files['chexpert'].name}: every finding not labelled"
        )
    if unused:
        notes.append(f"{unused} label row(s) of studies without images in {meta_path.name}")
    uncertain, blank = label_cell_counts(states[~unlabelled], list(LABELLER_LABELS.values()))
    notes.append(
        f"{uncertain} uncertain (-1.0) and {blank} blank (not mentioned) label cells on "
        f"labelled images, kept as uncertain and not labelled"
    )

    official = None
    if "split" in files:
        official, unknown = _official(files["split"], dict(zip(dicom, index, strict=True)))
        listed = sum(len(v) for v in official.values())
        if listed < len(index):
            notes.append(
                f"{len(index) - listed} image(s) without a row in {files['split'].name}: "
                f"in no official split"
            )
        if unknown:
            notes.append(f"{unknown} row(s) of {files['split'].name} name no image of the metadata")
    else:
        notes.append(f"no {FILES['split']}: the converter makes its own splits")

    return catalog.Catalog(
        source="mimic",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=catalog.image_source(root, "mimic", {name: root / name for name in index}),
        official=official,
        input_files=files,
        patient_ids=patient_ids,
        patient_names=catalog.patient_names(subject, patients),
        notes=notes,
        described=f"MIMIC-CXR-JPG CheXpert labels per study from {files['chexpert'].name}",
    )


SOURCE = Source(
    name="mimic",
    title="MIMIC-CXR-JPG (Johnson et al. 2019)",
    detect=_detect,
    read=read_catalog,
    why_not=why_not,
    holds="MIMIC-CXR-JPG: `mimic-cxr-2.0.0-{chexpert,metadata,split}.csv[.gz]` and "
    "`files/pNN/pSUBJECT/sSTUDY/*.jpg`",
    labels_note="the per-study CheXpert labels on every image of the study (a study without "
    "a label row: not labelled); view from `ViewPosition`, follow-up from the study date",
    split_note="the split file's train / validate / test",
    labels=LABELLER_LABELS,
    homepage="https://physionet.org/content/mimic-cxr-jpg/",
    licence="PhysioNet credentialed access under its data use agreement",
)
