"""The NIH ChestX-ray14 source: its metadata files (labels, boxes, official split lists) and
the folder as a catalog (`read_catalog`, `SOURCE`).

Every reader accepts the plain file or its gzipped copy (detected from the content, not the
name), checks what it reads and names the file, data row and value in every error. The
label file comes in two forms: the 2017 original (ages such as `058Y`, a trailing empty
column) and the 2020 revision (integer ages); both give the same normalized frame.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.labels import (
    BOX_FRAME,
    FINDINGS,
    NUM_FINDINGS,
    UnknownFindingError,
    canonical_box_label,
    parse_finding_labels,
)
from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    MAX_AGE,
    MetadataError,
    Source,
    int_column,
    is_gzip,
    raise_first,
    read_table,
    unread_note,
    where_row,
)
from cxr_tf.sources.images import discover

# Raw label-file column -> normalized name. The real header writes
# `OriginalImage[Width,Height]` unquoted, so CSV readers see two columns per bracket pair.
DATA_ENTRY_COLUMNS: dict[str, str] = {
    "Image Index": "image_index",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view_position",
    "OriginalImage[Width": "original_width",
    "Height]": "original_height",
    "OriginalImagePixelSpacing[x": "pixel_spacing_x",
    "y]": "pixel_spacing_y",
}
# Same unquoted-bracket split in the box file: `Bbox [x,y,w,h]` is four columns.
BOX_COLUMNS: dict[str, str] = {
    "Image Index": "image_index",
    "Finding Label": "finding",
    "Bbox [x": "x",
    "y": "y",
    "w": "w",
    "h]": "h",
}

# Preferred names first; a glob is the fallback for renamed copies of the label file.
_DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_DATA_ENTRY_GLOBS = ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz")
# Ages in the 2017 file carry a unit; months and days are floored to whole years.
_AGE_UNIT_DIVISOR = {"": 1, "Y": 1, "M": 12, "D": 365}


class UnknownLabelError(MetadataError, UnknownFindingError):
    """A metadata file names a finding outside the ChestX-ray14 vocabulary."""


@dataclasses.dataclass
class NihFiles:
    """Where the metadata files of an NIH folder are; absent optional files are None."""

    data_entry: Path
    bbox: Path | None
    train_val_list: Path | None
    test_list: Path | None


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def find_metadata(root: str | Path) -> NihFiles:
    """Locates the label, box and split-list files (plain or `.gz`) directly in `root`.

    Raises:
        FileNotFoundError: no `Data_Entry_2017*.csv[.gz]` in `root`.
    """
    root = Path(root)
    data_entry = _first_existing(root, _DATA_ENTRY_NAMES)
    if data_entry is None and root.is_dir():
        matches = sorted({p for pattern in _DATA_ENTRY_GLOBS for p in root.glob(pattern)})
        data_entry = matches[0] if matches else None
    if data_entry is None:
        looked_for = [*_DATA_ENTRY_NAMES, *(f"{n}.gz" for n in _DATA_ENTRY_NAMES)]
        raise FileNotFoundError(
            f"no NIH label file in {root}: looked for {', '.join(looked_for)} "
            f"and {' / '.join(_DATA_ENTRY_GLOBS)}"
        )
    return NihFiles(
        data_entry=data_entry,
        bbox=_first_existing(root, ["BBox_List_2017.csv"]),
        train_val_list=_first_existing(root, ["train_val_list.txt"]),
        test_list=_first_existing(root, ["test_list.txt"]),
    )


# The NIH readers' errors are MetadataError, the column named after the value.
_raise_first = functools.partial(raise_first, error=MetadataError, column_after=True)
_int_column = functools.partial(int_column, strict=True, error=MetadataError, column_after=True)


def _float_column(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    numbers = pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(np.float64)
    _raise_first(path, column, frame[column], ~np.isfinite(numbers), "not a number:")
    return numbers


def _age_column(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    parts = frame[column].str.strip().str.upper().str.extract(r"^(\d+)\s*([YMD]?)$")
    _raise_first(path, column, frame[column], parts[0].isna().to_numpy(), "bad age")
    years = parts[0].astype(np.int64).to_numpy()
    divisor = parts[1].map(_AGE_UNIT_DIVISOR).astype(np.int64).to_numpy()
    ages = years // divisor
    _raise_first(path, column, frame[column], ages > MAX_AGE, f"age outside 0-{MAX_AGE} years:")
    return ages


def _label_matrix(path: Path, labels: pd.Series) -> np.ndarray:
    # ~800 distinct strings in 112k rows: parse each distinct string once, then index.
    codes, uniques = pd.factorize(labels, use_na_sentinel=False)
    table = np.zeros((len(uniques), NUM_FINDINGS), dtype=np.uint8)
    for code, text in enumerate(uniques):
        try:
            table[code] = parse_finding_labels(text)
        except UnknownFindingError as err:
            row = int(np.flatnonzero(codes == code)[0])
            raise UnknownLabelError(f"{where_row(path, row, 'Finding Labels')}: {err}") from err
    return table[codes]


def read_data_entry(path: str | Path) -> pd.DataFrame:
    """Reads `Data_Entry_2017*.csv[.gz]` into a normalized frame, one row per image.

    Columns: image_index, finding_labels, follow_up, patient_id, age, sex, view_position,
    original_width, original_height, pixel_spacing_x, pixel_spacing_y, then one uint8
    column per finding, named as in `FINDINGS` (all zeros for `No Finding`). Columns of
    the file beyond the required ones are ignored.

    Raises:
        MetadataError: missing column, bad value, unknown finding or duplicate image.
    """
    path = Path(path)
    raw = read_table(path, list(DATA_ENTRY_COLUMNS), strip=False, error=MetadataError)

    image_index = raw["Image Index"].str.strip()
    _raise_first(path, "Image Index", image_index, image_index.eq("").to_numpy(), "empty:")
    duplicated = image_index.duplicated(keep=False).to_numpy()
    if duplicated.any():
        names = sorted(set(image_index[duplicated]))
        raise MetadataError(
            f"{path}: {len(names)} image(s) listed more than once, e.g. {names[:10]}"
        )
    sex = raw["Patient Gender"].str.strip().str.upper()
    _raise_first(
        path, "Patient Gender", raw["Patient Gender"], ~sex.isin(["M", "F"]).to_numpy(), "bad sex"
    )
    finding_labels = raw["Finding Labels"].str.strip()

    frame = pd.DataFrame(
        {
            "image_index": image_index.astype(str),
            "finding_labels": finding_labels.astype(str),
            "follow_up": _int_column(path, raw, "Follow-up #"),
            "patient_id": _int_column(path, raw, "Patient ID"),
            "age": _age_column(path, raw, "Patient Age"),
            "sex": sex.astype(str),
            "view_position": raw["View Position"].str.strip().astype(str),
            "original_width": _int_column(path, raw, "OriginalImage[Width"),
            "original_height": _int_column(path, raw, "Height]"),
            "pixel_spacing_x": _float_column(path, raw, "OriginalImagePixelSpacing[x"),
            "pixel_spacing_y": _float_column(path, raw, "y]"),
        }
    )
    labels = pd.DataFrame(_label_matrix(path, finding_labels), columns=list(FINDINGS))
    return pd.concat([frame, labels], axis=1)


def read_boxes(path: str | Path) -> pd.DataFrame:
    """Reads `BBox_List_2017.csv[.gz]`: columns image_index, finding, x, y, w, h.

    Findings use the label-file spelling (`Infiltrate` becomes `Infiltration`); x, y, w, h
    are floats in pixels of the 1024x1024 image.

    Raises:
        MetadataError: missing column, non-empty extra column, bad number or unknown finding.
    """
    path = Path(path)
    raw = read_table(path, list(BOX_COLUMNS), strip=False, error=MetadataError)
    extra = [c for c in raw.columns if c not in BOX_COLUMNS]
    if extra:
        # A filled unnamed column means the rows do not line up with the header.
        raise MetadataError(f"{path}: unexpected non-empty column(s) {extra}")

    findings = raw["Finding Label"].str.strip()
    codes, uniques = pd.factorize(findings, use_na_sentinel=False)
    canonical = []
    for code, label in enumerate(uniques):
        try:
            canonical.append(canonical_box_label(label))
        except UnknownFindingError as err:
            row = int(np.flatnonzero(codes == code)[0])
            raise UnknownLabelError(f"{where_row(path, row, 'Finding Label')}: {err}") from err

    boxes = pd.DataFrame(
        {
            "image_index": raw["Image Index"].str.strip().astype(str),
            "finding": np.asarray(canonical, dtype=object)[codes].astype(str),
        }
    )
    for column, name in list(BOX_COLUMNS.items())[2:]:
        boxes[name] = _float_column(path, raw, column)
    _raise_first(
        path,
        "w/h",
        boxes["w"].astype(str) + "x" + boxes["h"].astype(str),
        ((boxes["w"] <= 0) | (boxes["h"] <= 0)).to_numpy(),
        "non-positive box size",
    )
    outside = (
        (boxes["x"] < 0)
        | (boxes["y"] < 0)
        | (boxes["x"] + boxes["w"] > BOX_FRAME)
        | (boxes["y"] + boxes["h"] > BOX_FRAME)
    ).to_numpy()
    _raise_first(
        path,
        "Bbox [x,y,w,h]",
        boxes[["x", "y", "w", "h"]].astype(str).agg(",".join, axis=1),
        outside,
        f"box outside NIH's {BOX_FRAME}x{BOX_FRAME} pixel frame:",
    )
    return boxes


def read_split_list(path: str | Path) -> list[str]:
    """Reads an official split list (`train_val_list.txt[.gz]`): image names, blanks skipped."""
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise MetadataError(f"{path}: empty split list (no image names)")
    return names


# --- the NIH folder as a catalog -----------------------------------------------------------


def why_not(root: Path) -> str:
    """Why `root` is not an NIH folder, in a few words; "" when it is one."""
    try:
        find_metadata(root)
    except FileNotFoundError:
        return f"no {' or '.join(_DATA_ENTRY_GLOBS)} in it"
    return ""


def missing_split(root: Path) -> str:
    """What an NIH folder lacks of the official split lists ("" when both are there): one
    line naming the folder, the missing files and the way out."""
    files = find_metadata(root)
    lists = {"train_val_list.txt": files.train_val_list, "test_list.txt": files.test_list}
    missing = [name for name, path in lists.items() if path is None]
    if not missing:
        return ""
    return (
        f"{root}: NIH's official split lists are missing ({' and '.join(missing)}, plain or "
        f".gz); add them from the NIH download, or pass --split.strategy random (or file) to "
        f"split by patient yourself"
    )


def _is_nih(root: Path) -> bool:
    return not why_not(root)


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """An NIH folder (label file, boxes, split lists, images in any of the three layouts)
    as a `cxr_tf.sources.catalog.Catalog`: NIH's 14 findings positive or negative, the
    vocabulary's other findings not labelled."""
    files = find_metadata(root)
    df = read_data_entry(files.data_entry)
    states = catalog.empty_states(len(df))
    states[:, :NUM_FINDINGS] = df[list(FINDINGS)].to_numpy(np.uint8)
    columns = {c: df[c].to_numpy() for c in catalog.FRAME_COLUMNS if c != "view_position"}
    views = [catalog.normalize_view(v) for v in df["view_position"]]
    columns["view_position"] = views
    unread = (np.array(views) == "?") & df["view_position"].str.strip().ne("").to_numpy()
    note = unread_note(files.data_entry, "View Position", df["view_position"], unread, "view ?")
    official = None
    if files.train_val_list is not None and files.test_list is not None:
        official = {
            "train_val": read_split_list(files.train_val_list),
            "test": read_split_list(files.test_list),
        }
    inputs = {
        "data_entry": files.data_entry,
        "bbox": files.bbox,
        "train_val_list": files.train_val_list,
        "test_list": files.test_list,
    }
    return catalog.Catalog(
        source="nih",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=discover(root, cache_dir=cache_dir),
        boxes=read_boxes(files.bbox) if files.bbox is not None else None,
        official=official,
        input_files={k: p for k, p in inputs.items() if p is not None},
        box_frame=(BOX_FRAME, BOX_FRAME),
        notes=[note] if note else [],
        described=f"NIH ChestX-ray14 labels from {files.data_entry.name}",
    )


CITATION = """@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
         Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and
          Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={3462--3471},
  year={2017}
}"""

SOURCE = Source(
    name="nih",
    title="NIH ChestX-ray14 (Wang et al. 2017)",
    detect=_is_nih,
    read=read_catalog,
    why_not=why_not,
    missing_split=missing_split,
    holds="NIH ChestX-ray14 (section 1)",
    labels_note="`Finding Labels`: the 14 positive or negative",
    split_note="`train_val_list.txt` / `test_list.txt`",
    # NIH's own names are the vocabulary's first 14 (the box file's one alias aside).
    labels={name: name for name in FINDINGS},
    homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
    citation=CITATION,
    licence="released by the NIH Clinical Center for unrestricted use; cite the paper",
)
