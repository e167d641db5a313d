"""The class-folders source ("folders"): a user's own images, one folder per class.

Images may be PNG, JPEG, BMP or DICOM (`.dcm`, `.dicom`, or a file without an extension that
starts like a DICOM file, as many DICOM exports are; see `cxr_tf.sources.dicom`).

The `keras.utils.image_dataset_from_directory` layout, one subfolder per class, images
anywhere below it::

    root/                         root/
      No Finding/a.png              train/No Finding/a.png
      Effusion/b.dcm          or    train/Effusion/b.png
      Effusion/2019/c.jpg           valid/...   (or validation/; optional)
      patients.csv  (optional)      test/...

- Class names that are vocabulary findings (`cxr_tf.labels.VOCABULARY`), matched ignoring
  case and with spaces and underscores alike (`pleural thickening` is `Pleural_Thickening`)
  and a leading order number (`1_effusion`), are those findings; `No Finding`, `normal`,
  `healthy`, `health` (`cxr_tf.labels.NO_FINDING_NAMES`, also `0_normal`) mean no finding.
  Any other name is a finding of the dataset's own, named as given (`abnormal`, `tb`,
  `pneumonia_viral`), printed (`own findings: ...`) and stored after the vocabulary in the
  manifest's `labels`: like `keras.utils.image_dataset_from_directory`, any class names
  work; no synonym is guessed.
- Each image is positive for its class's finding and negative for the other classes'
  findings; findings no class names are not labelled (one image, one class: an image copied
  into two class folders is two images with conflicting labels; use the CSV for several
  findings per image).
- Top folders `train/`, `valid/` or `validation/`, `test/` (any case) are the official split:
  train + valid + test -> train/validation/test; train + test -> train_val/test (validation
  carved out by patient at conversion); train alone -> no official split. Other
  combinations, and split folders beside class folders, are refused.
- Patients: `patients.csv` at the root (columns `image`, `patient`; `image` is the path
  relative to the root, as in `train/Effusion/b.png`; every image needs a row) when
  present; else DICOM files' PatientID; else each image is its own patient (noted: a
  patient's images may then fall on both sides of a split).
- Image files directly in the root or a split folder (outside any class) are left out with a
  note; hidden files and folders (`.name`) and files of other types are skipped.
- Symbolic links are followed, each file counted once by its real path (link loops end);
  one file reached under two class or split folders (a link to a sibling class) is refused,
  both names given.

Every error names the file and what to change. Detection claims a folder only when nothing
else could: it needs no CSV file at the root besides patients.csv, and class folders holding
images: one with a vocabulary or no-finding name, or at least two of any names (NIH's
`images_001/` ... folders without their label file are not classes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf.labels import (
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    UnknownFindingError,
    label_names,
    own_findings,
)
from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    HEADER_FIELDS,
    IMAGE_SUFFIXES,
    PATIENTS_FILE,
    SPLIT_NAMES,
    Source,
    dicom_headers,
    did_you_mean,
    finding_of,
    header_columns,
    is_hidden,
    is_image,
    name_key,
    official_split,
    read_table,
    where_row,
)
from cxr_tf.sources.catalog import Catalog, CatalogError


def _subfolders(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p for p in entries if not is_hidden(p.name) and p.is_dir()]


def _images_under(folder: Path, first_only: bool = False) -> list[Path]:
    """Image files anywhere under `folder`, sorted (symbolic links followed, each real
    folder visited once, a file reached twice through links taken once: at its first path)."""
    found: list[Path] = []
    seen: set[str] = set()
    files_seen: set[str] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        for name in sorted(files):
            path = Path(current) / name
            if is_image(path) and (real_file := os.path.realpath(path)) not in files_seen:
                files_seen.add(real_file)
                found.append(path)
                if first_only:
                    return found
    return found


def _loose_images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    except OSError:
        return []


def _relative(root: Path, path: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix()


def _class_groups(root: Path) -> list[tuple[str | None, Path]]:
    """(official split or None, folder holding class folders) for a class-folder root."""
    top = _subfolders(root)
    splits = {d: SPLIT_NAMES.get(d.name.lower()) for d in top}
    if not any(splits.values()):
        return [(None, root)]
    others = [d.name for d in top if splits[d] is None]
    if others:
        found = [d.name for d in top if splits[d]]
        raise CatalogError(
            f"{root}: split folders {found} beside other folders {others}; put every class "
            f"folder inside train/, valid/ (or validation/) and test/, or use no split folder"
        )
    named: dict[str, list[str]] = {}
    for d in top:
        named.setdefault(str(splits[d]), []).append(d.name)
    twice = {k: v for k, v in named.items() if len(v) > 1}
    if twice:
        raise CatalogError(f"{root}: one split in several folders: {twice}; keep one of each")
    return [(splits[d], d) for d in top]


def why_not(root: Path) -> str:
    """Why `root` is not a folder of class subfolders; "" when it is one."""
    if not root.is_dir():
        return "not a folder"
    try:
        files = [p.name.lower() for p in root.iterdir() if p.is_file()]
    except OSError as err:
        return f"cannot be listed ({err})"
    labels = [n for n in files if n.endswith((".csv", ".csv.gz")) and n != PATIENTS_FILE]
    if labels:
        # a labels file: NIH, CheXpert, MIMIC, PadChest or a labels CSV
        return f"holds a CSV besides {PATIENTS_FILE} ({labels[0]})"
    try:
        groups = _class_groups(root)
    except CatalogError as err:
        return str(err)
    names, holding = [], set()
    for _, folder in groups:
        for class_dir in _subfolders(folder):
            names.append(class_dir.name)
            if labels_file := _labels_file_in(class_dir):
                return (
                    f"its subfolder {class_dir.name}/ holds {labels_file}: a dataset of its own, "
                    f"not a class (pass --root {class_dir})"
                )
            if _images_under(class_dir, True):
                if finding_of(class_dir.name) is not None:
                    return ""
                holding.add(class_dir.name)
    if holding and all(_NIH_IMAGE_FOLDER.fullmatch(n) for n in holding):
        return (
            f"its subfolders ({', '.join(sorted(holding)[:3])}, ...) are NIH's image folders, "
            f"not classes; NIH needs its Data_Entry_2017.csv beside them"
        )
    if len(holding) >= 2:
        return ""
    found = sorted(set(names))
    shown = f" (subfolders: {', '.join(found[:8])}{', ...' if len(found) > 8 else ''})"
    return (
        f"no two class subfolders hold images, and none named after a finding or "
        f"No Finding does{shown if found else ''}"
    )


def _labels_file_in(folder: Path) -> str:
    """A CSV file in `folder` or one level below (a dataset's label file, which a class
    folder never holds), relative to `folder`; "" when there is none."""
    for pattern in ("*.csv", "*.csv.gz", "*/*.csv", "*/*.csv.gz"):
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not any(is_hidden(part) for part in path.parts[-2:]):
                return str(PurePosixPath(*path.relative_to(folder).parts))
    return ""


_NIH_IMAGE_FOLDER = re.compile(r"images(_\d+)?", re.IGNORECASE)


def _is_folders(root: Path) -> bool:
    return not why_not(root)


def _patients_file(root: Path, names: Sequence[str]) -> dict[str, str]:
    """image name -> patient text from patients.csv (every image needs a row)."""
    path = root / PATIENTS_FILE
    table = read_table(path, strip=False)
    roles = {name_key(c): c for c in table.columns}
    image_col = roles.get("image") or roles.get("path")
    patient_col = roles.get("patient") or roles.get("patient_id")
    if image_col is None or patient_col is None:
        raise CatalogError(
            f"{path}: needs columns 'image' (the image's path relative to {root}, e.g. "
            f"{names[0] if names else 'No Finding/a.png'!r}) and 'patient'; found "
            f"{list(table.columns)}"
        )
    images = table[image_col].str.strip().str.replace("\\", "/", regex=False)
    patients = table[patient_col].str.strip()
    for row in np.flatnonzero((images == "").to_numpy() | (patients == "").to_numpy()):
        column = image_col if images.iloc[row] == "" else patient_col
        raise CatalogError(f"{where_row(path, int(row), column)}: blank cell")
    repeated = images[images.duplicated()]
    if len(repeated):
        row = int(repeated.index[0])
        raise CatalogError(
            f"{where_row(path, row, image_col)}: image {images.iloc[row]!r} has an "
            f"earlier row already"
        )
    mapping = dict(zip(images, patients, strict=True))
    missing = [n for n in names if n not in mapping]
    if missing:
        raise CatalogError(
            f"{path}: no row for {len(missing)} image(s), e.g. {missing[:5]}; add them "
            f"(the image column holds paths relative to {root}), or delete {PATIENTS_FILE} "
            f"to count each image as its own patient"
        )
    return mapping


def _check_reached_once(root: Path, reached: dict[str, str], real: str, name: str) -> None:
    """Records that image `name` is the file `real`; refuses a file already read under
    another class or split folder (a copy or a symbolic link would give one image two
    contradicting labels)."""
    first = reached.setdefault(real, name)
    if first != name:
        raise CatalogError(
            f"{root}: one file in two folders, {first!r} and {name!r} (both are {real}, "
            f"reached through a symbolic link); an image has one class and one split here: "
            f"keep it in one folder, or use a labels CSV for several findings per image"
        )


def read_folders(root: Path, cache_dir: Path | None = None) -> Catalog:
    """A folder of class subfolders (see the module doc) as a Catalog."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: not a folder")
    groups = _class_groups(root)
    rows: list[tuple[str, str, str | None]] = []  # (image name, class name, split)
    paths: dict[str, Path] = {}
    loose: list[str] = []
    empty: list[str] = []
    reached: dict[str, str] = {}  # a file's real path -> the image name it was first read as
    for split, folder in groups:
        loose += [_relative(root, p) for p in _loose_images(folder)]
        for class_dir in _subfolders(folder):
            images = _images_under(class_dir)
            if not images:
                empty.append(_relative(root, class_dir))
            for path in images:
                name = _relative(root, path)
                _check_reached_once(root, reached, os.path.realpath(path), name)
                rows.append((name, class_dir.name, split))
                paths[name] = path
    if not rows:
        raise CatalogError(
            f"{root}: no image ({', '.join(IMAGE_SUFFIXES)}, or DICOM without an extension) "
            f"in any class folder; expected "
            f"root/<class>/<image> or root/train|valid|test/<class>/<image>"
        )
    try:
        own = own_findings(c for _, c, _ in rows if finding_of(c) is None)
    except UnknownFindingError as err:
        raise CatalogError(f"{root}: class folder {err}") from None
    own_keys = {name_key(c): c for c in own}

    def label_of(class_name: str) -> str:
        return finding_of(class_name) or own_keys[name_key(class_name)]

    names = [r[0] for r in rows]
    labels = [label_of(r[1]) for r in rows]
    every = label_names(own)
    classes = sorted({x for x in labels if x != NO_FINDING}, key=every.index)
    states = catalog.empty_states(len(rows), own)
    states[:, [every.index(c) for c in classes]] = NEGATIVE
    for i, label in enumerate(labels):
        if label != NO_FINDING:
            states[i, every.index(label)] = POSITIVE

    notes: list[str] = []
    if own:
        notes.append(
            f"own findings: {', '.join(own)} (class folders outside the vocabulary"
            f"{did_you_mean(own)}; kept as named)"
        )
    headers, failed = dicom_headers(paths)
    inputs: dict[str, Path] = {}
    if (root / PATIENTS_FILE).is_file():
        mapping = _patients_file(root, names)
        keys = [mapping[n] for n in names]
        origin = PATIENTS_FILE
        inputs["patients"] = root / PATIENTS_FILE
        if headers:
            notes.append(f"patients from {PATIENTS_FILE}, not from the DICOM headers")
    else:
        keys = [headers.get(n, {}).get("patient_id") or n for n in names]
        by_header = sum(bool(headers.get(n, {}).get("patient_id")) for n in names)
        origin = "DICOM PatientID" if by_header else "one per image"
        if by_header < len(names):
            origin = f"{origin} ({len(names) - by_header} image(s) one patient each)"
            notes.append(
                f"{len(names) - by_header} image(s) without a patient (no {PATIENTS_FILE}, "
                f"no DICOM PatientID) count as one patient each: a patient's images may fall "
                f"on both sides of a split"
            )
    patient_ids, how = catalog.number_patients(keys)
    if failed:
        notes.append(f"{len(failed)} DICOM file(s) with an unreadable header, e.g. {failed[:3]}")
    if loose:
        notes.append(f"{len(loose)} image(s) outside any class folder left out, e.g. {loose[:3]}")
    if empty:
        notes.append(f"class folder(s) without images: {empty}")

    members: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name, _, split in rows:
        if split is not None:
            members[split].append(name)
    official, note = official_split(members, str(root))
    if note:
        notes.append(note)

    columns: dict[str, Any] = {"image_index": names, "patient_id": patient_ids}
    columns.update(header_columns(names, headers, HEADER_FIELDS))
    counts = pd.Series(labels).value_counts()
    described = (
        f"class folders ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
        f"labelled findings: {', '.join(classes) or 'none'}; other findings not labelled"
    )
    return Catalog(
        source="folders",
        root=root,
        frame=catalog.make_frame(columns, states, own),
        images=catalog.image_source(root, "class folders", paths),
        official=official,
        input_files=inputs,
        patient_ids=f"{origin}, {how}",
        patient_names=catalog.patient_names(keys, patient_ids),
        notes=notes,
        described=described,
    )


SOURCE = Source(
    name="folders",
    title="A folder of class subfolders",
    detect=_is_folders,
    read=read_folders,
    why_not=why_not,
    holds="class subfolders (`keras.utils.image_dataset_from_directory`'s convention), "
    "optionally under `train/`, `valid/` or `validation/`, `test/`",
    labels_note="class names matching a vocabulary finding (case, spaces, underscores and "
    "a leading `1_` free, e.g. `Pleural Thickening`) are that finding; `No Finding` / `normal` "
    "/ `healthy` mean no finding; any other name is a finding of the dataset's own, named as "
    "given. An image is positive for its class, negative for the other classes' "
    "findings, not labelled for the rest; patients from `patients.csv` (`image,patient`), "
    "else the DICOM PatientID, else one per image",
    split_note="the top folders, if any",
)
