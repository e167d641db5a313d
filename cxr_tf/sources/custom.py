"""A user's own images as a catalog: class folders (source "folders") or a labels CSV
(source "csv"). Images may be PNG, JPEG, BMP or DICOM (`.dcm`, `.dicom`, or a file without
an extension that starts like a DICOM file, as many DICOM exports are; see
`cxr_tf.sources.dicom`).

Source "folders": the `keras.utils.image_dataset_from_directory` layout, one subfolder per
class, images anywhere below it::

    root/                         root/
      No Finding/a.png              train/No Finding/a.png
      Effusion/b.dcm          or    train/Effusion/b.png
      Effusion/2019/c.jpg           valid/...   (or validation/; optional)
      patients.csv  (optional)      test/...

- Class names are vocabulary findings (`cxr_tf.labels.VOCABULARY`), matched ignoring case
  and with spaces and underscores alike (`pleural thickening` is `Pleural_Thickening`), or
  `No Finding` / `normal` for images without findings. Any other name is refused with the
  list of names to rename it to: a label outside the vocabulary cannot be stored, and a
  guessed synonym would silently change what the model learns.
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

Source "csv": `labels.csv` at the root, or, when there is none, the one `.csv` file there::

    path,patient,view,sex,age,split,Effusion,Cardiomegaly,Pleural Thickening
    images/a.png,p1,PA,F,45,train,1,0,
    images/b.dcm,p1,AP,F,045Y,test,-1,1,0

- `path` (or `image`): the image, relative to the CSV's folder (`/` or `\\` separators).
  Listed files that do not exist are left out of the images, so conversion reports them as
  absent (or skips them with --present_only).
- Optional: `patient` (or `patient_id`; without it each image is its own patient), `view`
  (PA, AP, LATERAL, DICOM spellings; blank or other: unknown), `sex` (M/F/male/female),
  `age` (years, or a DICOM age such as `045Y`), `split` (train, valid/validation, test; a
  blank cell counts as train; test images are required once any image has a split).
- Labels, one of two forms:
  - one column per finding (names as for class folders): `1` positive, `0` negative, `-1`
    uncertain, blank not labelled (`1.0`, `0.0`, `-1.0` too); findings without a column are
    not labelled. An optional `No Finding` column with `1` makes the row's blank finding
    cells negative (a positive or uncertain finding in such a row is refused);
  - or one `label` (or `labels`) column: a finding name, several joined by `|`, or `No
    Finding`; as with class folders, the findings named anywhere in the column are labelled
    (positive where named, negative elsewhere), the others not labelled.
- Any other column is refused with the list of accepted ones (a misspelled finding column
  would otherwise be dropped in silence); columns whose name starts with `_` are ignored,
  for the user's own notes.
- DICOM files listed in the CSV give what the CSV leaves out: patient, view, sex, age (only
  for columns the CSV does not have), and always the original size and pixel spacing.

Every error names the file (and the data row, line and column for CSV cells) and what to
change. Detection claims a folder only when nothing else could: "folders" needs class
folders of which at least one has a vocabulary name and no CSV file at the root besides
patients.csv; "csv" needs `labels.csv` with a path/image column, or a single CSV all of
whose columns this reader accepts (so CheXpert's or NIH's files are never claimed).
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf.labels import NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.sources import catalog, dicom
from cxr_tf.sources.catalog import Catalog, CatalogError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")
PATIENTS_FILE = "patients.csv"
LABELS_FILE = "labels.csv"
# Split folder names and split cell values (lower case) -> official split names.
SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
_NO_FINDING_KEYS = ("no_finding", "normal")
_SKIPPED_DIRS = ("__MACOSX",)


def _key(name: str) -> str:
    """A class or column name as compared: lower case, spaces and underscores alike."""
    return "_".join(str(name).strip().lower().replace("_", " ").split())


_FINDING_KEYS: dict[str, str] = {_key(f): f for f in VOCABULARY}


def finding_of(name: str) -> str | None:
    """The vocabulary finding a class, label or column name means, `NO_FINDING` for
    `No Finding`/`normal`, or None for any other name."""
    key = _key(name)
    if key in _NO_FINDING_KEYS:
        return NO_FINDING
    return _FINDING_KEYS.get(key)


def _accepted_names() -> str:
    return f"{', '.join(VOCABULARY)}, or {NO_FINDING!r} (also 'normal')"


def _hint(names: Iterable[str]) -> str:
    """' (did you mean ...?)' for names close to a vocabulary name."""
    choices = [*VOCABULARY, NO_FINDING]
    keys = {_key(c): c for c in choices}
    pairs = []
    for name in names:
        close = difflib.get_close_matches(_key(name), list(keys), n=1, cutoff=0.75)
        if close:
            pairs.append(f"{name!r} -> {keys[close[0]]!r}")
    return f" (did you mean {', '.join(pairs)}?)" if pairs else ""


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIPPED_DIRS


def _starts_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return dicom.is_dicom(handle.read(dicom.MAGIC_OFFSET + 4))
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    """An image file by its suffix, or an extension-less DICOM file (by its bytes)."""
    name = path.name
    if _hidden(name):
        return False
    if name.lower().endswith(IMAGE_SUFFIXES):
        return True
    return "." not in name and _starts_like_dicom(path)


def _subfolders(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p for p in entries if not _hidden(p.name) and p.is_dir()]


def _images_under(folder: Path, first_only: bool = False) -> list[Path]:
    """Image files anywhere under `folder`, sorted (symbolic links followed, each real
    folder visited once)."""
    found: list[Path] = []
    seen: set[str] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if _is_image(Path(current) / name):
                found.append(Path(current) / name)
                if first_only:
                    return found
    return found


def _loose_images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))
    except OSError:
        return []


def _relative(root: Path, path: Path) -> str:
    return PurePosixPath(*path.relative_to(root).parts).as_posix()


def _where(path: Path, row: int) -> str:
    # `row` is 0-based among data rows; line numbers count the header line.
    return f"{path}, data row {row + 1} (line {row + 2})"


def _read_table(path: Path) -> pd.DataFrame:
    from cxr_tf.sources.nih import MetadataError, read_csv

    try:
        return read_csv(path)
    except MetadataError as err:
        raise CatalogError(str(err)) from err


def _official(
    members: Mapping[str, list[str]], where: str
) -> tuple[dict[str, list[str]] | None, str | None]:
    """Split name (train/validation/test) -> images, as the catalog's official split, and a
    note when there is none."""
    present = {k for k, v in members.items() if v}
    if not present:
        return None, None
    if present == {"train"}:
        return None, f"{where}: every image is in train, so there is no official split"
    if present == {"train", "validation", "test"}:
        return {k: list(members[k]) for k in ("train", "validation", "test")}, None
    if present == {"train", "test"}:
        return {"train_val": list(members["train"]), "test": list(members["test"])}, None
    found = ", ".join(sorted(present))
    raise CatalogError(
        f"{where}: images in {found} only; an official split needs train and test (and "
        f"optionally validation). Add the missing part, or drop the split to let conversion "
        f"make one (--split.strategy random)"
    )


# --- DICOM headers ---------------------------------------------------------------------------


def _dicom_headers(paths: Mapping[str, Path]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Header fields of the DICOM images, told by their bytes whatever their names (name ->
    header), and the names whose header could not be read (conversion then reports those
    files as undecodable)."""
    headers: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name, path in paths.items():
        if not _starts_like_dicom(path):
            if name.lower().endswith((".dcm", ".dicom")):
                failed.append(name)  # no 'DICM' marker: a DICOM file without its preamble
            continue
        try:
            headers[name] = dicom.header(path)
        except (OSError, ValueError):
            failed.append(name)
    return headers, failed


def _header_columns(
    names: Sequence[str], headers: Mapping[str, Mapping[str, Any]], keys: Iterable[str]
) -> dict[str, list]:
    """Frame columns filled from DICOM headers (unknown values for other images)."""
    fields = {
        "view_position": ("view", "?"),
        "sex": ("sex", "?"),
        "age": ("age", -1),
        "original_width": ("columns", 0),
        "original_height": ("rows", 0),
        "pixel_spacing_x": ("pixel_spacing_x", 0.0),
        "pixel_spacing_y": ("pixel_spacing_y", 0.0),
    }
    columns = {}
    for column in keys:
        field, unknown = fields[column]
        columns[column] = [headers.get(n, {}).get(field, unknown) for n in names]
    return columns


_HEADER_FIELDS = (
    "view_position", "sex", "age", "original_width", "original_height",
    "pixel_spacing_x", "pixel_spacing_y",
)  # fmt: skip


# --- class folders ----------------------------------------------------------------------------


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


def _is_folders(root: Path) -> bool:
    if not root.is_dir():
        return False
    try:
        files = [p.name.lower() for p in root.iterdir() if p.is_file()]
    except OSError:
        return False
    if any(n.endswith((".csv", ".csv.gz")) and n != PATIENTS_FILE for n in files):
        return False  # a labels file: NIH, CheXpert, MIMIC, PadChest or a labels CSV
    try:
        groups = _class_groups(root)
    except CatalogError:
        return False
    for _, folder in groups:
        for class_dir in _subfolders(folder):
            if finding_of(class_dir.name) is not None and _images_under(class_dir, True):
                return True
    return False


def _patients_file(root: Path, names: Sequence[str]) -> dict[str, str]:
    """image name -> patient text from patients.csv (every image needs a row)."""
    path = root / PATIENTS_FILE
    table = _read_table(path)
    roles = {_key(c): c for c in table.columns}
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
        raise CatalogError(f"{_where(path, int(row))}, column {column!r}: blank cell")
    repeated = images[images.duplicated()]
    if len(repeated):
        row = int(repeated.index[0])
        raise CatalogError(
            f"{_where(path, row)}, column {image_col!r}: image {images.iloc[row]!r} has an "
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


def read_folders(root: Path, cache_dir: Path | None = None) -> Catalog:
    """A folder of class subfolders (see the module doc) as a Catalog."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: not a folder")
    groups = _class_groups(root)
    rows: list[tuple[str, str, str | None]] = []  # (image name, finding or NO_FINDING, split)
    paths: dict[str, Path] = {}
    unknown: dict[str, list[str]] = {}
    loose: list[str] = []
    empty: list[str] = []
    for split, folder in groups:
        loose += [_relative(root, p) for p in _loose_images(folder)]
        for class_dir in _subfolders(folder):
            finding = finding_of(class_dir.name)
            if finding is None:
                unknown.setdefault(class_dir.name, []).append(_relative(root, class_dir))
                continue
            images = _images_under(class_dir)
            if not images:
                empty.append(_relative(root, class_dir))
            for path in images:
                name = _relative(root, path)
                rows.append((name, finding, split))
                paths[name] = path
    if unknown:
        folders = sorted(f for v in unknown.values() for f in v)
        raise CatalogError(
            f"{root}: class folder(s) {folders} name no finding of the vocabulary"
            f"{_hint(unknown)}. Rename each to one of {_accepted_names()}; names match "
            f"ignoring case, with spaces and underscores alike (e.g. 'pleural thickening')"
        )
    if not rows:
        raise CatalogError(
            f"{root}: no image ({', '.join(IMAGE_SUFFIXES)}, or DICOM without an extension) "
            f"in any class folder; expected "
            f"root/<class>/<image> or root/train|valid|test/<class>/<image>"
        )
    names = [r[0] for r in rows]
    classes = sorted({r[1] for r in rows if r[1] != NO_FINDING}, key=VOCABULARY.index)
    states = catalog.empty_states(len(rows))
    class_columns = [VOCABULARY.index(c) for c in classes]
    states[:, class_columns] = NEGATIVE
    for i, (_, finding, _) in enumerate(rows):
        if finding != NO_FINDING:
            states[i, VOCABULARY.index(finding)] = POSITIVE

    notes: list[str] = []
    headers, failed = _dicom_headers(paths)
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
    official, note = _official(members, str(root))
    if note:
        notes.append(note)

    columns: dict[str, Any] = {"image_index": names, "patient_id": patient_ids}
    columns.update(_header_columns(names, headers, _HEADER_FIELDS))
    counts = pd.Series([r[1] for r in rows]).value_counts()
    described = (
        f"class folders ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
        f"labelled findings: {', '.join(classes) or 'none'}; other findings not labelled"
    )
    return Catalog(
        source="folders",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=catalog.image_source(root, "class folders", paths),
        official=official,
        input_files=inputs,
        patient_ids=f"{origin}, {how}",
        notes=notes,
        described=described,
    )


# --- labels CSV -------------------------------------------------------------------------------

# Normalised column name -> role (findings are added from the vocabulary).
_COLUMN_ROLES: dict[str, str] = {
    "path": "image",
    "image": "image",
    "patient": "patient",
    "patient_id": "patient",
    "view": "view",
    "view_position": "view",
    "sex": "sex",
    "age": "age",
    "split": "split",
    "label": "label",
    "labels": "label",
    "no_finding": "no_finding",
}


def _labels_file(root: Path) -> Path | None:
    """`labels.csv` at the root, else the root's one `.csv` file (patients.csv aside, which
    belongs to class folders); None otherwise."""
    if (root / LABELS_FILE).is_file():
        return root / LABELS_FILE
    try:
        found = sorted(
            p
            for p in root.iterdir()
            if p.is_file() and p.suffix.lower() == ".csv" and p.name != PATIENTS_FILE
        )
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def _role(column: str) -> str | None:
    """'image', 'patient', ..., 'finding:<name>', 'ignored' or None (not accepted)."""
    if column.startswith("_"):
        return "ignored"
    key = _key(column)
    if key in _COLUMN_ROLES:
        return _COLUMN_ROLES[key]
    finding = _FINDING_KEYS.get(key)
    return f"finding:{finding}" if finding else None


def _header_line(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _is_csv(root: Path) -> bool:
    if not root.is_dir() or any(root.glob("Data_Entry_2017*")):
        return False
    path = _labels_file(root)
    if path is None:
        return False
    roles = [_role(c) for c in _header_line(path) if c]
    if "image" not in roles:
        return False
    # Another name than labels.csv is claimed only when this reader accepts every column.
    return path.name == LABELS_FILE or None not in roles


def _column_roles(path: Path, columns: Sequence[str]) -> dict[str, str]:
    roles: dict[str, str] = {}
    unknown = []
    for column in columns:
        role = _role(column)
        if role is None:
            unknown.append(column)
        elif role != "ignored":
            roles[column] = role
    if unknown:
        raise CatalogError(
            f"{path}: column(s) {unknown} not understood{_hint(unknown)}. Accepted: path (or "
            f"image), patient, view, sex, age, split, and either one column per finding "
            f"({', '.join(VOCABULARY)}; case, spaces and underscores free) with an optional "
            f"'No Finding' column, or one 'label' column. Rename or remove the others, or "
            f"start their names with '_' to keep them as notes"
        )
    by_role: dict[str, list[str]] = {}
    for column, role in roles.items():
        by_role.setdefault(role, []).append(column)
    twice = {r: c for r, c in by_role.items() if len(c) > 1}
    if twice:
        raise CatalogError(f"{path}: several columns mean the same thing: {twice}; keep one")
    if "image" not in by_role:
        raise CatalogError(
            f"{path}: no image column; name the column of image paths 'path' or 'image'"
        )
    findings = [r for r in by_role if r.startswith("finding:")]
    if "label" in by_role and (findings or "no_finding" in by_role):
        raise CatalogError(
            f"{path}: both a 'label' column and finding columns; use one form: a finding "
            f"column per finding (1/0/-1/blank), or one 'label' column of finding names"
        )
    if "label" not in by_role and not findings:
        raise CatalogError(
            f"{path}: no labels; add one column per finding ({', '.join(VOCABULARY)}) with "
            f"1/0/-1/blank, or one 'label' column of finding names or 'No Finding'"
        )
    return {role: columns[0] for role, columns in by_role.items()}


def _image_names(path: Path, values: pd.Series, column: str) -> list[str]:
    names = []
    for row, raw in enumerate(values):
        text = raw.strip().replace("\\", "/")
        posix = PurePosixPath(text)
        if not text or posix.is_absolute() or ".." in posix.parts or ":" in posix.parts[0]:
            what = "blank" if not text else f"{raw!r} is not a path inside {path.parent}"
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: {what}; image paths are relative "
                f"to the CSV's folder"
            )
        names.append(posix.as_posix())
    seen: dict[str, int] = {}
    for row, name in enumerate(names):
        if name in seen:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: image {name!r} is listed already "
                f"on data row {seen[name] + 1}"
            )
        seen[name] = row
    return names


def _label_states(path: Path, values: pd.Series, column: str) -> tuple[np.ndarray, list[str]]:
    """A `label` column (finding names joined by `|`, or No Finding) -> states, and the
    findings it names (labelled: negative where not named)."""
    named: list[list[str]] = []
    for row, raw in enumerate(values):
        parts = [p.strip() for p in raw.split("|")] if raw.strip() else []
        if not parts:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: blank label; write the finding(s) "
                f"or {NO_FINDING!r}"
            )
        findings = [finding_of(p) for p in parts]
        bad = [p for p, f in zip(parts, findings, strict=True) if f is None or not p]
        if bad:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: {bad[0]!r} is not a finding of the "
                f"vocabulary{_hint(bad)}; use {_accepted_names()}, several joined by '|'"
            )
        if NO_FINDING in findings and len(findings) > 1:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: {raw!r} names {NO_FINDING!r} "
                f"together with findings"
            )
        named.append([f for f in findings if f != NO_FINDING])  # type: ignore[misc]
    labelled = sorted({f for fs in named for f in fs}, key=VOCABULARY.index)
    states = catalog.empty_states(len(values))
    states[:, [VOCABULARY.index(f) for f in labelled]] = NEGATIVE
    for row, findings in enumerate(named):
        for finding in findings:
            states[row, VOCABULARY.index(finding)] = POSITIVE
    return states, labelled


def _no_finding(path: Path, states: np.ndarray, values: pd.Series, column: str,
                labelled: Sequence[str]) -> None:  # fmt: skip
    """Applies a `No Finding` column: 1 makes the row's blank finding cells negative."""
    cells = values.str.strip()
    flags = cells.map({"1": True, "1.0": True, "0": False, "0.0": False, "": False})
    bad = flags.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CatalogError(
            f"{_where(path, row)}, column {column!r}: {cells.iloc[row]!r} is not 1, 0 or blank"
        )
    rows = np.flatnonzero(flags.to_numpy(bool))
    indices = [VOCABULARY.index(f) for f in labelled]
    block = states[np.ix_(rows, indices)]
    conflict = np.isin(block, (POSITIVE, UNCERTAIN))
    if conflict.any():
        r, c = np.argwhere(conflict)[0]
        raise CatalogError(
            f"{_where(path, int(rows[r]))}, column {column!r}: 1 (no finding) but "
            f"{labelled[c]} is {'positive' if block[r, c] == POSITIVE else 'uncertain'}"
        )
    block[block == UNLABELLED] = NEGATIVE
    states[np.ix_(rows, indices)] = block


def _ages(path: Path, values: pd.Series, column: str) -> list[int]:
    ages = []
    for row, raw in enumerate(values):
        if not raw.strip():
            ages.append(-1)
            continue
        age = dicom.parse_age(raw)
        if age < 0:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: age {raw!r} is not a number of years "
                f"(0-{dicom.MAX_AGE}) nor a DICOM age such as '045Y'"
            )
        ages.append(age)
    return ages


def _splits(path: Path, values: pd.Series, column: str) -> list[str]:
    splits = []
    for row, raw in enumerate(values):
        text = raw.strip().lower()
        split = SPLIT_NAMES.get(text, "train" if not text else None)
        if split is None:
            raise CatalogError(
                f"{_where(path, row)}, column {column!r}: {raw!r} is not train, valid, "
                f"validation, test or blank"
            )
        splits.append(split)
    return splits


def read_csv_source(root: Path, cache_dir: Path | None = None) -> Catalog:
    """A folder with a labels CSV (see the module doc) as a Catalog."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: not a folder")
    path = _labels_file(root)
    if path is None:
        found = sorted(p.name for p in root.glob("*.csv"))
        raise CatalogError(
            f"{root}: no labels CSV; name it {LABELS_FILE} "
            f"({'found ' + ', '.join(found) if found else 'no .csv file found'})"
        )
    table = _read_table(path)
    if table.empty:
        raise CatalogError(f"{path}: no data row")
    roles = _column_roles(path, list(table.columns))
    names = _image_names(path, table[roles["image"]], roles["image"])

    if "label" in roles:
        states, labelled = _label_states(path, table[roles["label"]], roles["label"])
        form = f"a label column ({roles['label']!r})"
    else:
        mapping = {c: r.split(":", 1)[1] for r, c in roles.items() if r.startswith("finding:")}
        states = catalog.chexpert_states(table, mapping, str(path))
        labelled = sorted(mapping.values(), key=VOCABULARY.index)
        if "no_finding" in roles:
            _no_finding(path, states, table[roles["no_finding"]], roles["no_finding"], labelled)
        form = "finding columns (1 positive, 0 negative, -1 uncertain, blank not labelled)"

    paths = {n: root / n for n in names}
    headers, failed = _dicom_headers({n: p for n, p in paths.items() if p.is_file()})
    notes: list[str] = []
    columns: dict[str, Any] = {"image_index": names}
    if "patient" in roles:
        column = roles["patient"]
        keys = table[column].str.strip()
        blank = np.flatnonzero((keys == "").to_numpy())
        if len(blank):
            raise CatalogError(
                f"{_where(path, int(blank[0]))}, column {column!r}: blank patient "
                f"({len(blank)} such row(s)); give every image its patient"
            )
        origin = f"column {column!r}"
        key_list = keys.tolist()
    else:
        key_list = [headers.get(n, {}).get("patient_id") or n for n in names]
        by_header = sum(bool(headers.get(n, {}).get("patient_id")) for n in names)
        origin = "DICOM PatientID" if by_header else "one per image"
        if by_header < len(names):
            notes.append(
                f"no patient column: {len(names) - by_header} image(s) count as one patient "
                f"each, so a patient's images may fall on both sides of a split"
            )
    columns["patient_id"], how = catalog.number_patients(key_list)
    if "view" in roles:
        columns["view_position"] = [catalog.normalize_view(v) for v in table[roles["view"]]]
    if "sex" in roles:
        columns["sex"] = [catalog.normalize_sex(v) for v in table[roles["sex"]]]
    if "age" in roles:
        columns["age"] = _ages(path, table[roles["age"]], roles["age"])
    from_headers = [c for c in _HEADER_FIELDS if c not in columns]
    columns.update(_header_columns(names, headers, from_headers))
    if failed:
        notes.append(f"{len(failed)} DICOM file(s) with an unreadable header, e.g. {failed[:3]}")

    official = None
    if "split" in roles:
        members: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for name, split in zip(names, _splits(path, table[roles["split"]], roles["split"]),
                               strict=True):  # fmt: skip
            members[split].append(name)
        official, note = _official(members, f"{path}, column {roles['split']!r}")
        if note:
            notes.append(note)
    images = catalog.image_source(root, "labels CSV", paths)
    missing = len(names) - len(images)
    if missing:
        notes.append(f"{missing} image(s) listed in {path.name} are not on disk")
    return Catalog(
        source="csv",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=images,
        official=official,
        input_files={"labels": path},
        patient_ids=f"{origin}, {how}",
        notes=notes,
        described=(
            f"{path.name}: {form}; labelled findings: {', '.join(labelled)}; other findings "
            f"not labelled"
        ),
    )


def _register() -> None:
    catalog.register("folders", _is_folders, read_folders)
    catalog.register("csv", _is_csv, read_csv_source)


_register()
