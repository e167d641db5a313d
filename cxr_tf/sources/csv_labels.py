"""The labels-CSV source ("csv"): a user's own images listed in a CSV with their labels.

Images may be PNG, JPEG, BMP or DICOM (`.dcm`, `.dicom`, or a file without an extension that
starts like a DICOM file, as many DICOM exports are; see `cxr_tf.sources.dicom`).

`labels.csv` at the root, or, when there is none, the one `.csv` file there::

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
change. Detection claims a folder only when nothing else could: it needs `labels.csv` with
a path/image column, or a single CSV all of whose columns this reader accepts (so
CheXpert's or NIH's files are never claimed). The module is not named csv.py so that it
cannot shadow the standard library's csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf.labels import NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.sources import catalog, dicom
from cxr_tf.sources.base import (
    FINDING_KEYS,
    HEADER_FIELDS,
    PATIENTS_FILE,
    SPLIT_NAMES,
    Source,
    accepted_names,
    dicom_headers,
    did_you_mean,
    finding_of,
    header_columns,
    labeller_states,
    name_key,
    official_split,
    read_header,
    read_table,
    utf8_problem,
    where_row,
)
from cxr_tf.sources.catalog import Catalog, CatalogError

LABELS_FILE = "labels.csv"

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
    key = name_key(column)
    if key in _COLUMN_ROLES:
        return _COLUMN_ROLES[key]
    finding = FINDING_KEYS.get(key)
    return f"finding:{finding}" if finding else None


def why_not(root: Path) -> str:
    """Why `root` is not a folder with a labels CSV; "" when it is one."""
    if not root.is_dir():
        return "not a folder"
    if any(root.glob("Data_Entry_2017*")):
        return "holds NIH's Data_Entry_2017 file"
    path = _labels_file(root)
    if path is None:
        return f"no {LABELS_FILE}, and not exactly one other .csv file, in it"
    columns = [c for c in read_header(path) if c]
    roles = [_role(c) for c in columns]
    reason = ""
    if "image" not in roles:
        reason = f"{path.name} has no 'path' or 'image' column"
    # Another name than labels.csv is claimed only when this reader accepts every column.
    elif path.name != LABELS_FILE and None in roles:
        unknown = [c for c, r in zip(columns, roles, strict=True) if r is None]
        reason = (
            f"{path.name} is not {LABELS_FILE} and has column(s) {unknown[:5]} it does not know"
        )
    encoding = utf8_problem(path) if reason else ""
    return f"{reason}; also, {encoding}" if encoding else reason


def _is_csv(root: Path) -> bool:
    return not why_not(root)


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
            f"{path}: column(s) {unknown} not understood{did_you_mean(unknown)}. Accepted: "
            f"path (or image), patient, view, sex, age, split, and either one column per finding "
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
                f"{where_row(path, row, column)}: {what}; image paths are relative "
                f"to the CSV's folder"
            )
        names.append(posix.as_posix())
    seen: dict[str, int] = {}
    for row, name in enumerate(names):
        if name in seen:
            raise CatalogError(
                f"{where_row(path, row, column)}: image {name!r} is listed already "
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
                f"{where_row(path, row, column)}: blank label; write the finding(s) "
                f"or {NO_FINDING!r}"
            )
        findings = [finding_of(p) for p in parts]
        bad = [p for p, f in zip(parts, findings, strict=True) if f is None or not p]
        if bad:
            raise CatalogError(
                f"{where_row(path, row, column)}: {bad[0]!r} is not a finding of the "
                f"vocabulary{did_you_mean(bad)}; use {accepted_names()}, several joined by '|'"
            )
        if NO_FINDING in findings and len(findings) > 1:
            raise CatalogError(
                f"{where_row(path, row, column)}: {raw!r} names {NO_FINDING!r} "
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
            f"{where_row(path, row, column)}: {cells.iloc[row]!r} is not 1, 0 or blank"
        )
    rows = np.flatnonzero(flags.to_numpy(bool))
    indices = [VOCABULARY.index(f) for f in labelled]
    block = states[np.ix_(rows, indices)]
    conflict = np.isin(block, (POSITIVE, UNCERTAIN))
    if conflict.any():
        r, c = np.argwhere(conflict)[0]
        raise CatalogError(
            f"{where_row(path, int(rows[r]), column)}: 1 (no finding) but "
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
                f"{where_row(path, row, column)}: age {raw!r} is not a number of years "
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
                f"{where_row(path, row, column)}: {raw!r} is not train, valid, "
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
    table = read_table(path, strip=False)
    if table.empty:
        raise CatalogError(f"{path}: no data row")
    roles = _column_roles(path, list(table.columns))
    names = _image_names(path, table[roles["image"]], roles["image"])

    if "label" in roles:
        states, labelled = _label_states(path, table[roles["label"]], roles["label"])
        form = f"a label column ({roles['label']!r})"
    else:
        mapping = {c: r.split(":", 1)[1] for r, c in roles.items() if r.startswith("finding:")}
        states = labeller_states(table, mapping, path)
        labelled = sorted(mapping.values(), key=VOCABULARY.index)
        if "no_finding" in roles:
            _no_finding(path, states, table[roles["no_finding"]], roles["no_finding"], labelled)
        form = "finding columns (1 positive, 0 negative, -1 uncertain, blank not labelled)"

    paths = {n: root / n for n in names}
    headers, failed = dicom_headers({n: p for n, p in paths.items() if p.is_file()})
    notes: list[str] = []
    columns: dict[str, Any] = {"image_index": names}
    if "patient" in roles:
        column = roles["patient"]
        keys = table[column].str.strip()
        blank = np.flatnonzero((keys == "").to_numpy())
        if len(blank):
            raise CatalogError(
                f"{where_row(path, int(blank[0]), column)}: blank patient "
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
    from_headers = [c for c in HEADER_FIELDS if c not in columns]
    columns.update(header_columns(names, headers, from_headers))
    if failed:
        notes.append(f"{len(failed)} DICOM file(s) with an unreadable header, e.g. {failed[:3]}")

    official = None
    if "split" in roles:
        members: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for name, split in zip(names, _splits(path, table[roles["split"]], roles["split"]),
                               strict=True):  # fmt: skip
            members[split].append(name)
        official, note = official_split(members, f"{path}, column {roles['split']!r}")
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
        patient_names=catalog.patient_names(key_list, columns["patient_id"]),
        notes=notes,
        described=(
            f"{path.name}: {form}; labelled findings: {', '.join(labelled)}; other findings "
            f"not labelled"
        ),
    )


SOURCE = Source(
    name="csv",
    title="Images listed in a labels CSV",
    detect=_is_csv,
    read=read_csv_source,
    why_not=why_not,
    holds="`labels.csv` (or the root's only CSV): `path` (relative to the CSV), optional "
    "`patient`, `view`, `sex`, `age`, `split`; images anywhere under the root",
    labels_note="one column per finding (`1` / `0` / `-1` / blank: positive / negative / "
    "uncertain / not labelled; optional `No Finding` column) or one `label` column "
    "(`Effusion\\|Mass`, `No Finding`); other columns are refused (prefix `_` to keep notes)",
    split_note="a `split` column, if any",
)
