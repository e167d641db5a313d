"""What every dataset source is, and the CSV and table helpers the readers share.

A source module (`nih`, `chexpert`, `mimic`, `padchest`, `folders`, `csv_labels`) defines one
`SOURCE = Source(...)`: its name for `--source`, how to recognise its folder (`detect`;
`why_not`, why a folder is not one), how to
read that folder into a `cxr_tf.sources.catalog.Catalog` (`read`), the map from the
dataset's own label names to the vocabulary, and what the TFDS metadata and the datasets
table (docs/datasets.md) say about it.
`cxr_tf.sources.registry` lists them. No reader imports another, so what two readers share
lives here: reading a plain or gzipped CSV with every cell a string, naming the file, row
and column in errors (as a CatalogError, or the NIH readers' MetadataError), the CheXpert
labeller's names and values, and what class folders and a labels CSV share (name matching,
image files, DICOM headers, split folders or cells).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf.labels import (  # noqa: F401  (name matching: re-exported for the readers)
    FINDING_KEYS,
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    UNCERTAIN,
    UNLABELLED,
    VOCABULARY,
    close_names,
    finding_of,
    label_names,
    name_key,
)
from cxr_tf.sources import dicom
from cxr_tf.sources.catalog import Catalog, CatalogError, empty_states, normalize_sex

# (root, cache_dir) -> Catalog; cache_dir holds the archive index when images are in archives.
Reader = Callable[[Path, Path | None], Catalog]


@dataclasses.dataclass(frozen=True)
class Source:
    """One kind of dataset folder `--source` names."""

    name: str  # the `--source` value, also the converted dataset folder's prefix
    title: str  # "NIH ChestX-ray14 (Wang et al. 2017)": the TFDS description's subject
    detect: Callable[[Path], bool]  # does this folder hold this source's files?
    read: Reader
    # what the datasets table (docs/datasets.md) says: what --root holds, its labels, official split
    holds: str
    labels_note: str
    split_note: str
    # the dataset's own label names -> vocabulary names (empty: the names are the user's
    # own, matched to the vocabulary when read)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    homepage: str = ""
    citation: str = ""  # BibTeX, written into the TFDS metadata
    licence: str = ""  # who may use the images and how one gets them
    # why a folder is not this source, in a few words ("" when it is); None: not said
    why_not: Callable[[Path], str] | None = None
    # what a folder lacks of the release's official split ("" when nothing): a folder that
    # lacks it converts with --split.strategy random or file only; None: not checked
    missing_split: Callable[[Path], str] | None = None

    def labelled(self) -> tuple[str, ...]:
        """The vocabulary findings this source's label map reaches, in vocabulary order."""
        mapped = set(self.labels.values())
        return tuple(name for name in VOCABULARY if name in mapped)


# --- CSV reading ------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
# The oldest age a reader accepts (years).
MAX_AGE = 120


class MetadataError(ValueError):
    """A metadata file is malformed; the message names the file, row and value."""


def is_gzip(path: Path) -> bool:
    """Whether a file is gzipped, from its content (renamed copies are common)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def read_csv(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Reads a plain or gzipped CSV with every cell as a string and column names stripped.

    Unnamed columns that are empty in every row (trailing commas) are dropped. `encoding`:
    the file's text encoding (UTF-8 unless a reader has found otherwise, see `utf8_problem`).
    """
    path = Path(path)
    # Strings everywhere so that each column is validated by our own code, with row numbers;
    # index_col=False keeps a row-only trailing comma from turning column 1 into the index.
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            index_col=False,
            compression="gzip" if is_gzip(path) else None,
            encoding=encoding,
        )
    except pd.errors.EmptyDataError as err:
        raise MetadataError(f"{path}: empty file, no header row ({err})") from err
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise MetadataError(f"{path}: not a readable CSV ({' '.join(str(err).split())})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    # pandas reads missing trailing cells as blanks; a short row has a blank last column.
    named = len(frame.columns)
    while named and frame.columns[named - 1].startswith("Unnamed:"):
        named -= 1  # a header's trailing commas (NIH's BBox_List_2017.csv) name no column
    if named > 1 and frame[frame.columns[named - 1]].eq("").any():
        if short := short_row(path, named, encoding):
            raise MetadataError(short)
    for column in [c for c in frame.columns if c.startswith("Unnamed:")]:
        if frame[column].str.strip().eq("").all():
            frame = frame.drop(columns=column)
    return frame


def short_row(path: Path, columns: int, encoding: str = "utf-8") -> str:
    """Where a CSV's data row with fewer than `columns` cells is (the last row when the file
    ends inside it, else the first), and how many such rows there are; "" when there is
    none. pandas reads missing trailing cells as blanks ("not labelled" to a reader), so a
    row cut short would pass for a complete one."""
    last_line = [""]

    def lines(handle: Iterable[str]) -> Iterable[str]:
        for line in handle:
            last_line[0] = line
            yield line

    short: list[tuple[int, int]] = []  # (line, cells)
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt", encoding=encoding, errors="replace", newline="") as handle:
        reader = csv.reader(lines(handle))
        next(reader, None)  # the header
        for row in reader:
            if len(row) < columns and (len(row) > 1 or "".join(row).strip()):
                short.append((reader.line_num, len(row)))  # blank lines are skipped
        end = reader.line_num
    if not short:
        return ""
    cut = short[-1][0] == end and not last_line[0].endswith(("\n", "\r"))
    line, cells = short[-1] if cut else short[0]
    if cut:
        why = "the file ends inside this row: it was cut short (an interrupted download or copy?)"
    else:
        why = "the row is missing its last cells (blank cells still need their commas)"
    more = f"; {len(short) - 1} more such row(s)" if len(short) > 1 else ""
    return f"{path}, line {line}: {cells} of the header's {columns} cells; {why}{more}"


def read_header(path: Path) -> list[str]:
    """The column names of a plain or gzipped CSV (its first line, ended by CR, LF or CRLF);
    [] when unreadable."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            line = f.readline(1 << 16).decode("utf-8-sig", errors="replace")
        return [c.strip() for c in next(csv.reader(io.StringIO(line, newline="")), [])]
    except (OSError, EOFError, csv.Error):
        return []


def utf8_problem(path: Path) -> str:
    """Where a plain or gzipped text file stops being UTF-8 ("byte 0xe9 on line 2 is not
    UTF-8 (cp1252 or latin-1?)"); "" when it all is, or cannot be read."""
    try:
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    byte = line[err.start]
                    return f"byte 0x{byte:02x} on line {number} is not UTF-8 (cp1252 or latin-1?)"
    except (OSError, EOFError):
        return ""
    return ""


def read_table(
    path: Path,
    required: Sequence[str] = (),
    *,
    strip: bool = True,
    error: type[ValueError] = CatalogError,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Every cell of a plain or gzipped CSV as a string (stripped unless `strip` is False);
    `error` (CatalogError, or MetadataError for the NIH readers) naming the file when it
    cannot be read or lacks a required column. `encoding` as in `read_csv`."""
    try:
        frame = read_csv(path, encoding)
    except MetadataError as err:
        if isinstance(err, error):
            raise
        raise error(str(err)) from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise error(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame.apply(lambda column: column.str.strip()) if strip else frame


def where_row(path: Path | str, row: int, column: str | None = None) -> str:
    """`file, data row N (line N+1)` for a 0-based data row, then `, column 'C'` when given."""
    where = f"{path}, data row {row + 1} (line {row + 2})"
    return where if column is None else f"{where}, column {column!r}"


def raise_first(
    path: Path,
    column: str,
    values: pd.Series,
    bad: np.ndarray,
    what: str,
    *,
    error: type[ValueError] = CatalogError,
    column_after: bool = False,
) -> None:
    """`error` naming the first row flagged in `bad`, if any: `<where_row>, column 'C': what
    'value'`, or with `column_after` (the NIH readers' wording) `<where_row>: what 'value'
    in column 'C'`."""
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    row = int(rows[0])
    more = f" ({len(rows) - 1} more such rows)" if len(rows) > 1 else ""
    value = values.iloc[row]
    if column_after:
        raise error(f"{where_row(path, row)}: {what} {value!r} in column {column!r}{more}")
    raise error(f"{where_row(path, row, column)}: {what} {value!r}{more}")


def unread_note(path: Path, column: str, values: pd.Series, bad: np.ndarray, became: str) -> str:
    """A note counting the cells of `column` flagged in `bad`, values a reader could not
    understand and turned into `became` (`age unknown`), with the first row and a few of
    the values; "" when none is flagged. Such values are shown, never silently unknown."""
    if not bad.any():
        return ""
    rows = np.flatnonzero(bad)
    examples = list(dict.fromkeys(str(v) for v in values.iloc[rows]))
    shown = ", ".join(repr(v) for v in examples[:3]) + (", ..." if len(examples) > 3 else "")
    return (
        f"{path.name}: {len(rows)} {column} value(s) not understood, read as {became} "
        f"({shown}; first at line {int(rows[0]) + 2})"
    )


# Sex values that say "not known" or "other" (DICOM's O and U, CheXpert's Unknown): read as
# `?` without a note. Any other value that is not male or female is counted in a note.
SEX_UNKNOWN = frozenset({"", "O", "U", "OTHER", "UNKNOWN", "NAN", "NONE"})


def sex_column(path: Path, frame: pd.DataFrame, column: str) -> tuple[list[str], str]:
    """A column of sexes -> M / F / ? per row, and a note (`unread_note`) counting the
    values that are neither a sex nor one of `SEX_UNKNOWN`."""
    values = frame[column]
    sexes = [normalize_sex(v) for v in values]
    text = values.astype(str).str.strip().str.upper()
    bad = (np.array(sexes) == "?") & ~text.isin(SEX_UNKNOWN).to_numpy()
    return sexes, unread_note(path, column, values, bad, "unknown sex")


def int_column(
    path: Path,
    frame: pd.DataFrame,
    column: str,
    blank: int | None = None,
    *,
    strict: bool = False,
    error: type[ValueError] = CatalogError,
    column_after: bool = False,
) -> np.ndarray:
    """A column of non-negative integers (`12`, or with `strict` False `12.0` too), cells
    stripped; blank cells give `blank`, or an error when it is None. `error` and
    `column_after` as in `raise_first`."""
    values = frame[column].str.strip()
    if strict:
        pattern, what = r"^(\d+)$", "not an integer:"
    else:
        pattern, what = r"^(\d+)(?:\.0*)?$", "not a whole number:"
    digits = values.str.extract(pattern)[0]
    bad = digits.isna().to_numpy()
    if blank is not None:
        bad = bad & values.ne("").to_numpy()
    raise_first(path, column, values, bad, what, error=error, column_after=column_after)
    return digits.fillna(str(blank)).astype(np.int64).to_numpy()


# --- the CheXpert labeller's output: the chexpert and mimic sources, and csv's finding columns ---

# The CheXpert labeller (Irvin et al. 2019) labelled both CheXpert and MIMIC-CXR-JPG: the
# same 14 observations ("No Finding" is not a finding: it is the absence of all of them),
# each valued 1 / 0 / -1 / blank; a labels CSV's finding columns take the same values.
# Several names may map to one finding (positive when any of them is); a finding no name
# maps to is not labelled.
LABELLER_LABELS: dict[str, str] = {
    "Enlarged Cardiomediastinum": "Enlarged_Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Lung_Opacity",
    "Lung Lesion": "Lung_Lesion",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Other",
    "Fracture": "Fracture",
    "Support Devices": "Support_Devices",
}


# Precedence when several label columns map to one finding, indexed by state code.
_RANK = np.zeros(max(NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED) + 1, np.int64)
_RANK[[UNLABELLED, NEGATIVE, UNCERTAIN, POSITIVE]] = [0, 1, 2, 3]


def labeller_states(
    values: pd.DataFrame, mapping: Mapping[str, str], path: Path, own: Sequence[str] = ()
) -> np.ndarray:
    """Label columns valued as the CheXpert labeller writes them (1.0 positive, 0.0
    negative, -1.0 uncertain, blank not mentioned) -> an (N, V + len(own)) state matrix;
    `mapping` names the columns' findings (`LABELLER_LABELS` for CheXpert and MIMIC; a
    labels CSV's columns may also name the dataset's `own` findings).

    A column absent from the file leaves its finding not labelled. "Not mentioned" is kept
    apart from negative: the report said nothing about it.
    """
    states = empty_states(len(values), own)
    names = label_names(own)
    codes = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE,
             "-1": UNCERTAIN, "-1.0": UNCERTAIN, "": UNLABELLED}  # fmt: skip
    for column, finding in mapping.items():
        if column not in values.columns:
            continue
        cells = values[column].astype(str).str.strip()
        mapped = cells.map(codes)
        bad = mapped.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise CatalogError(
                f"{where_row(path, row, column)}: label {cells.iloc[row]!r} is not 1, 0, -1 "
                f"or blank"
            )
        index = names.index(finding)
        column_states = mapped.to_numpy(np.uint8)
        # Several columns may map to one finding: positive wins, then uncertain, negative.
        take = _RANK[column_states] > _RANK[states[:, index]]
        states[take, index] = column_states[take]
    return states


def label_cell_counts(states: np.ndarray, findings: Sequence[str]) -> tuple[int, int]:
    """(uncertain, not labelled) cells among `findings`' columns of a state matrix."""
    columns = [VOCABULARY.index(f) for f in findings]
    part = states[:, columns]
    return int((part == UNCERTAIN).sum()), int((part == UNLABELLED).sum())


# --- a user's own images: what class folders and a labels CSV share ---------------------------

# Image files a user's own folder may hold (DICOM also without an extension, by its bytes).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")
# image -> patient for class folders; never a labels CSV.
PATIENTS_FILE = "patients.csv"
# Split folder names and split cell values (lower case) -> official split names.
SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
_SKIPPED_DIRS = ("__MACOSX",)


def accepted_names() -> str:
    """The names a user's class, label or column may take, for messages."""
    return f"{', '.join(VOCABULARY)}, or {NO_FINDING!r} (also 'normal')"


def did_you_mean(names: Iterable[str]) -> str:
    """' (did you mean ...?)' for names close to a vocabulary name."""
    return close_names(names, [*VOCABULARY, NO_FINDING])


def is_hidden(name: str) -> bool:
    """Hidden files and folders, and archive tools' leftovers, are never images."""
    return name.startswith(".") or name in _SKIPPED_DIRS


def starts_like_dicom(path: Path) -> bool:
    """Whether a file's first bytes carry the DICOM marker, or start a DICOM data set
    written without preamble and marker (`dicom.is_dicom`)."""
    try:
        with open(path, "rb") as handle:
            return dicom.is_dicom(handle.read(dicom.HEAD_BYTES))
    except OSError:
        return False


def is_image(path: Path) -> bool:
    """An image file by its suffix, or an extension-less DICOM file (by its bytes)."""
    name = path.name
    if is_hidden(name):
        return False
    if name.lower().endswith(IMAGE_SUFFIXES):
        return True
    return "." not in name and starts_like_dicom(path)


def official_split(
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


def dicom_headers(paths: Mapping[str, Path]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Header fields of the DICOM images, told by their bytes whatever their names (name ->
    header), and the names whose header could not be read (conversion then reports those
    files as undecodable)."""
    headers: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for name, path in paths.items():
        if not starts_like_dicom(path):
            if name.lower().endswith((".dcm", ".dicom")):
                failed.append(name)  # named DICOM, but neither marker nor data set start
            continue
        try:
            headers[name] = dicom.header(path)
        except (OSError, ValueError):
            failed.append(name)
    return headers, failed


def header_columns(
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


HEADER_FIELDS = (
    "view_position", "sex", "age", "original_width", "original_height",
    "pixel_spacing_x", "pixel_spacing_y",
)  # fmt: skip
