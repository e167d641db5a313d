"""The labels-CSV source ("csv"): a user's own images listed in a CSV with their labels.

Images may be PNG, JPEG, BMP or DICOM (`.dcm`, `.dicom`, or a file without an extension that
starts like a DICOM file, as many DICOM exports are; see `cxr_tf.sources.dicom`).

`labels.csv` at the root, or, when there is none, the one `.csv` file there::

    path,patient,view,sex,age,split,Effusion,Cardiomegaly,COVID-19,_notes
    images/a.png,p1,PA,F,45,train,1,0,,
    images/b.dcm,,AP erect,F,045Y,test,-1,1,0,opacité

- `path` (or `image`): the image, relative to the CSV's folder (`/` or `\\` separators).
  Listed files that do not exist are left out of the images, so conversion reports them as
  absent (or skips them with --present_only).
- Optional: `patient` (or `patient_id`; a blank cell, or no such column: the DICOM
  PatientID where the image is a DICOM file that has one, else the image is its own
  patient, noted), `view` (PA, AP, LATERAL, DICOM spellings, and with a position word:
  `AP erect`, `portable AP`, `AP supine`; blank: unknown; anything else: unknown, counted
  in a note), `sex` (M/F/male/female), `age` (years: `45`, `45.0`, `90+`, `45 Y`, a DICOM
  age such as `045Y`; blank or `unknown`: unknown; anything else: unknown, counted in a
  note), `split` (train, valid/validation, test; a blank cell counts as train; test images
  are required once any image has a split).
- Labels, one of two forms:
  - one column per finding: `1` positive, `0` negative, `-1` uncertain, blank not labelled
    (`1.0`, `0.0`, `-1.0` too); findings without a column are not labelled. A column named
    after a vocabulary finding (as class folders are matched: case, spaces, underscores and
    a leading order number free) is that finding; a column of another name whose cells
    are all such values (at least one not blank) is a finding of the dataset's own, named
    as given (`COVID-19`). An optional `No Finding` (or `normal`) column with `1` makes the
    row's blank finding cells negative (a positive or uncertain finding in such a row is
    refused);
  - or one `label` (or `labels`) column: a finding name, several joined by `|`, or `No
    Finding` / `normal`; names outside the vocabulary are the dataset's own findings. As
    with class folders, the findings named anywhere in the column are labelled (positive
    where named, negative elsewhere), the others not labelled; a blank cell leaves its row
    not labelled at all (counted in a note).
- The dataset's own findings are printed (`own findings: COVID-19`, with a "did you mean"
  where a name is close to a vocabulary name, e.g. `Efusion`) and kept after the vocabulary,
  sorted, in the manifest's `labels`.
- Any other column is refused with the list of accepted ones (a column of free text would
  otherwise be dropped in silence); columns whose name starts with `_` are ignored, for the
  user's own notes.
- A file that is not UTF-8 is read as cp1252 (what Excel on Windows writes; latin-1 where a
  byte is not cp1252 either), with a note naming the first byte that is not UTF-8.
- DICOM files listed in the CSV give what the CSV leaves out or unknown: patient, view, sex,
  age, and always the original size and pixel spacing.

Every error names the file (and the data row, line and column for CSV cells) and what to
change. Detection claims a folder only when nothing else could: it needs `labels.csv` with
a path/image column, or a single CSV all of whose columns this reader knows by name (so
CheXpert's or NIH's files are never claimed). The module is not named csv.py so that it
cannot shadow the standard library's csv.
"""

from __future__ import annotations

import collections
import gzip
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
    UNCERTAIN,
    UNLABELLED,
    VOCABULARY,
    UnknownFindingError,
    label_names,
    own_findings,
)
from cxr_tf.sources import catalog, dicom
from cxr_tf.sources.base import (
    HEADER_FIELDS,
    PATIENTS_FILE,
    SPLIT_NAMES,
    Source,
    dicom_headers,
    did_you_mean,
    finding_of,
    header_columns,
    is_gzip,
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
# The cells of a finding column (as the CheXpert labeller writes them, and without `.0`).
_LABEL_CELLS = frozenset({"1", "1.0", "0", "0.0", "-1", "-1.0", ""})
# Cells that say a value is not known (view, sex, age), compared in lower case.
_UNKNOWN_CELLS = frozenset({"", "?", "-", "unknown", "unk", "na", "n/a", "nan", "none", "null"})
# Ages in years as spreadsheets write them: `45`, `45.0`, `90+` (ages capped when
# de-identified), `45 y`, `45 years`; DICOM ages (`045Y`, `018M`) go to dicom.parse_age.
_AGE = re.compile(r"^(\d{1,3})(?:\.\d*)?\s*\+?\s*(?:y|yr|yrs|year|years)?\.?$", re.IGNORECASE)


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
    """'image', 'patient', ..., 'finding:<name>', 'ignored' or None (not known by name: a
    finding of the dataset's own, or refused; see `_own_columns`)."""
    if column.startswith("_"):
        return "ignored"
    key = name_key(column)
    if key in _COLUMN_ROLES:
        return _COLUMN_ROLES[key]
    finding = finding_of(column)
    if finding == NO_FINDING:
        return "no_finding"
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
    # Another name than labels.csv is claimed only when this reader knows every column.
    elif path.name != LABELS_FILE and None in roles:
        unknown = [c for c, r in zip(columns, roles, strict=True) if r is None]
        reason = (
            f"{path.name} is not {LABELS_FILE} and has column(s) {unknown[:5]} it does not "
            f"know (named {LABELS_FILE}, or with --source csv, it reads columns of 1/0/-1 "
            f"as findings of the dataset's own)"
        )
    encoding = utf8_problem(path) if reason else ""
    return f"{reason}; also, {encoding}" if encoding else reason


def _is_csv(root: Path) -> bool:
    return not why_not(root)


def _read(path: Path) -> tuple[pd.DataFrame, str]:
    """Every cell of the CSV as a string, and a note when it is not UTF-8: it is then read
    as cp1252, what Excel on Windows writes (latin-1 where a byte is not cp1252 either)."""
    problem = utf8_problem(path)
    if not problem:
        return read_table(path, strip=False), ""
    with (gzip.open if is_gzip(path) else open)(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("cp1252")
        encoding = "cp1252"
    except UnicodeDecodeError:
        encoding = "latin-1"
    note = f"{path.name}: {problem}; read it as {encoding}"
    return read_table(path, strip=False, encoding=encoding), note


def _own_columns(path: Path, table: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns among `columns` (known by no name) that are findings of the dataset's
    own: every cell 1/0/-1/blank, at least one not blank. Refuses a column of such cells
    with one other value, naming the cell."""
    own = []
    for column in columns:
        cells = table[column].str.strip()
        is_label = cells.isin(_LABEL_CELLS).to_numpy()
        if column.startswith("Unnamed:") or not (is_label & cells.ne("").to_numpy()).any():
            continue
        if not is_label.all():
            row = int(np.flatnonzero(~is_label)[0])
            raise CatalogError(
                f"{where_row(path, row, column)}: {cells.iloc[row]!r} in a column of "
                f"finding labels (1, 0, -1 or blank elsewhere); fix the cell, or start the "
                f"column's name with '_' to keep it as notes"
            )
        own.append(column)
    return own


def _column_roles(path: Path, table: pd.DataFrame) -> tuple[dict[str, str], tuple[str, ...]]:
    """Role -> column, and the findings of the dataset's own that columns name (sorted)."""
    roles: dict[str, str] = {}
    unknown = []
    for column in table.columns:
        role = _role(column)
        if role is None:
            unknown.append(column)
        elif role != "ignored":
            roles[column] = role
    own_columns = _own_columns(path, table, unknown)
    unknown = [c for c in unknown if c not in own_columns]
    if unknown:
        raise CatalogError(
            f"{path}: column(s) {unknown} not understood{did_you_mean(unknown)}. Accepted: "
            f"path (or image), patient, view, sex, age, split, and either one column per "
            f"finding (1/0/-1/blank; a vocabulary name such as {VOCABULARY[2]}, case, spaces "
            f"and underscores free, or a name of your own) with an optional 'No Finding' "
            f"column, or one 'label' column. Rename or remove the others, or start their "
            f"names with '_' to keep them as notes"
        )
    try:
        own = own_findings(own_columns)
    except UnknownFindingError as err:
        raise CatalogError(f"{path}: column {err}") from None
    own_keys = {name_key(n): n for n in own}
    for column in own_columns:
        roles[column] = f"finding:{own_keys[name_key(column)]}"
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
            f"{path}: both a 'label' column and finding columns "
            f"({[by_role[r][0] for r in findings] or by_role.get('no_finding')}); use one "
            f"form: a finding column per finding (1/0/-1/blank), or one 'label' column of "
            f"finding names"
        )
    if "label" not in by_role and not findings:
        raise CatalogError(
            f"{path}: no labels; add one column per finding (e.g. {', '.join(VOCABULARY[:3])}, "
            f"or a name of your own) with 1/0/-1/blank, or one 'label' column of finding "
            f"names or 'No Finding'"
        )
    return {role: columns[0] for role, columns in by_role.items()}, own


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


def _label_states(
    path: Path, values: pd.Series, column: str
) -> tuple[np.ndarray, list[str], tuple[str, ...], int]:
    """A `label` column (finding names joined by `|`, or No Finding) -> states, the findings
    it names (labelled: negative where not named), the dataset's own findings among them,
    and how many rows are blank (not labelled at all)."""
    parsed: list[list[str] | None] = []  # None: a blank cell
    for row, raw in enumerate(values):
        parts = [p.strip() for p in raw.split("|")] if raw.strip() else None
        if parts is not None and not all(parts):
            raise CatalogError(
                f"{where_row(path, row, column)}: {raw!r} has an empty name between '|'s"
            )
        parsed.append(parts)
    own = own_findings(p for parts in parsed if parts for p in parts if finding_of(p) is None)
    own_keys = {name_key(n): n for n in own}
    every = label_names(own)
    named: list[list[str] | None] = []
    for row, parts in enumerate(parsed):
        if parts is None:
            named.append(None)
            continue
        findings = [finding_of(p) or own_keys[name_key(p)] for p in parts]
        if NO_FINDING in findings and len(findings) > 1:
            raise CatalogError(
                f"{where_row(path, row, column)}: {values.iloc[row]!r} names {NO_FINDING!r} "
                f"together with findings"
            )
        named.append([f for f in findings if f != NO_FINDING])
    labelled = sorted({f for fs in named if fs for f in fs}, key=every.index)
    states = catalog.empty_states(len(values), own)
    rows = [row for row, fs in enumerate(named) if fs is not None]
    states[np.ix_(rows, [every.index(f) for f in labelled])] = NEGATIVE
    for row, findings in enumerate(named):
        for finding in findings or ():
            states[row, every.index(finding)] = POSITIVE
    return states, labelled, own, len(values) - len(rows)


def _no_finding(path: Path, states: np.ndarray, values: pd.Series, column: str,
                labelled: Sequence[str], own: Sequence[str]) -> None:  # fmt: skip
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
    every = label_names(own)
    indices = [every.index(f) for f in labelled]
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


def parse_age(value: str) -> int | None:
    """Whole years from an age cell: `45`, `45.0`, `90+`, `45 Y`, `45 years`, DICOM's `045Y`
    or `018M`; -1 when blank or written as unknown (`unknown`, `NA`, `?`); None when it is
    none of these, or over dicom.MAX_AGE."""
    text = str(value).strip()
    if text.lower() in _UNKNOWN_CELLS:
        return -1
    match = _AGE.match(text)
    if match:
        years = int(match.group(1))
        return years if years <= dicom.MAX_AGE else None
    years = dicom.parse_age(text)
    return years if years >= 0 else None


def _ages(path: Path, values: pd.Series, column: str) -> tuple[list[int], str]:
    """Ages in years (-1 unknown), and a note counting the cells that are no age at all
    (left unknown: an age only describes the dataset, so a bad cell is no reason to stop)."""
    parsed = [parse_age(v) for v in values]
    bad = [row for row, age in enumerate(parsed) if age is None]
    note = ""
    if bad:
        note = (
            f"{len(bad)} age(s) not understood, left unknown: e.g. {values.iloc[bad[0]]!r} at "
            f"{where_row(path, bad[0], column)} (ages are years, `90+`, or DICOM's `045Y`)"
        )
    return [-1 if age is None else age for age in parsed], note


def _views(path: Path, values: pd.Series, column: str) -> tuple[list[str], str]:
    """Views (`catalog.normalize_view`), and a note counting the cells written but not
    understood (left unknown, `?`), by value."""
    views = [catalog.normalize_view(v) for v in values]
    odd = collections.Counter(
        v.strip() for v, view in zip(values, views, strict=True)
        if view == "?" and v.strip().lower() not in _UNKNOWN_CELLS
    )  # fmt: skip
    note = ""
    if odd:
        shown = ", ".join(f"{v!r} ({n})" for v, n in odd.most_common(5))
        note = (
            f"{path.name}, column {column!r}: {sum(odd.values())} view(s) not understood, "
            f"left unknown ('?'): {shown}{', ...' if len(odd) > 5 else ''}"
        )
    return views, note


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


def _patients(
    names: Sequence[str],
    cells: Sequence[str] | None,
    headers: dict[str, dict[str, Any]],
    column: str | None,
) -> tuple[list[str], str, list[str]]:
    """Each image's patient: its cell, else (blank cell or no column) its DICOM PatientID,
    else the image itself; where they came from, and notes on the images without a cell."""
    keys, by_header, alone = [], 0, 0
    for index, name in enumerate(names):
        cell = cells[index].strip() if cells is not None else ""
        header = str(headers.get(name, {}).get("patient_id") or "")
        keys.append(cell or header or name)
        by_header += bool(not cell and header)
        alone += not (cell or header)
    counts = {f"column {column!r}": len(names) - by_header - alone,
              "DICOM PatientID": by_header, "one per image": alone}  # fmt: skip
    used = {k: n for k, n in counts.items() if n}
    origin = ", ".join(f"{k} ({n})" if len(used) > 1 else k for k, n in used.items())
    notes = []
    if column and by_header:
        notes.append(f"{by_header} blank patient cell(s) taken from the DICOM PatientID")
    if alone:
        where = "a blank patient cell" if column else "no patient column"
        notes.append(
            f"{alone} image(s) with {where} and no DICOM PatientID count as one patient "
            f"each, so a patient's images may fall on both sides of a split"
        )
    return keys, origin, notes


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
    table, encoding_note = _read(path)
    if table.empty:
        raise CatalogError(f"{path}: no data row")
    notes: list[str] = [encoding_note] if encoding_note else []
    roles, own = _column_roles(path, table)
    names = _image_names(path, table[roles["image"]], roles["image"])

    if "label" in roles:
        column = roles["label"]
        states, labelled, own, blank = _label_states(path, table[column], column)
        form = f"a label column ({column!r})"
        if blank:
            notes.append(
                f"{blank} row(s) with a blank {column!r} cell: their findings are not labelled"
            )
    else:
        mapping = {c: r.split(":", 1)[1] for r, c in roles.items() if r.startswith("finding:")}
        states = labeller_states(table, mapping, path, own)
        labelled = sorted(mapping.values(), key=label_names(own).index)
        if "no_finding" in roles:
            column = roles["no_finding"]
            _no_finding(path, states, table[column], column, labelled, own)
        form = "finding columns (1 positive, 0 negative, -1 uncertain, blank not labelled)"
    if own:
        notes.append(
            f"own findings: {', '.join(own)} ({path.name}'s names outside the vocabulary"
            f"{did_you_mean(own)}; kept as named)"
        )

    paths = {n: root / n for n in names}
    headers, failed = dicom_headers({n: p for n, p in paths.items() if p.is_file()})
    columns: dict[str, Any] = {"image_index": names}
    column = roles.get("patient")
    cells = table[column].tolist() if column else None
    key_list, origin, patient_notes = _patients(names, cells, headers, column)
    notes += patient_notes
    columns["patient_id"], how = catalog.number_patients(key_list)
    if "view" in roles:
        columns["view_position"], note = _views(path, table[roles["view"]], roles["view"])
        notes += [note] if note else []
    if "sex" in roles:
        columns["sex"] = [catalog.normalize_sex(v) for v in table[roles["sex"]]]
    if "age" in roles:
        columns["age"], note = _ages(path, table[roles["age"]], roles["age"])
        notes += [note] if note else []
    # DICOM headers fill what the CSV has no column for, or leaves unknown.
    from_headers = header_columns(names, headers, HEADER_FIELDS)
    for key, values in from_headers.items():
        if key not in columns:
            columns[key] = values
        elif key in ("view_position", "sex", "age"):
            unknown = -1 if key == "age" else "?"
            columns[key] = [h if c == unknown else c
                            for c, h in zip(columns[key], values, strict=True)]  # fmt: skip
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
    try:
        frame = catalog.make_frame(columns, states, own)
    except ValueError as err:  # an own finding named like a catalog column
        raise CatalogError(f"{path}: {err}; rename them") from None
    return Catalog(
        source="csv",
        root=root,
        frame=frame,
        images=images,
        official=official,
        input_files={"labels": path},
        patient_ids=f"{origin}, {how}",
        patient_names=catalog.patient_names(key_list, columns["patient_id"]),
        notes=notes,
        described=(
            f"{path.name}: {form}; labelled findings: {', '.join(labelled) or 'none'}; other "
            f"findings not labelled"
        ),
    )


SOURCE = Source(
    name="csv",
    title="Images listed in a labels CSV",
    detect=_is_csv,
    read=read_csv_source,
    why_not=why_not,
    holds="`labels.csv` (or the root's only CSV; UTF-8, else read as cp1252): `path` "
    "(relative to the CSV), optional `patient`, `view`, `sex`, `age`, `split`; images "
    "anywhere under the root",
    labels_note="one column per finding (`1` / `0` / `-1` / blank: positive / negative / "
    "uncertain / not labelled; a column named outside the vocabulary, e.g. `COVID-19`, is a "
    "finding of the dataset's own; optional `No Finding` column) or one `label` column "
    "(`Effusion\\|COVID-19`, `No Finding`; blank: not labelled); blank patients from the "
    "DICOM PatientID, else one per image; other columns are refused (prefix `_` to keep "
    "notes)",
    split_note="a `split` column, if any",
)
