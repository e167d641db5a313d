"""Reading a CheXpert release (`CheXpert-v1.0/` or `CheXpert-v1.0-small/`) into a catalog.

Layout: `train.csv` and `valid.csv` in the release folder, images under `train/` and
`valid/` as `patientNNNNN/studyN/viewN_frontal.jpg` (or `_lateral`). Both releases have the
same CSV columns: `Path`, `Sex`, `Age`, `Frontal/Lateral`, `AP/PA`, then the 14
observations (`No Finding` first) valued `1.0` (positive), `0.0` (negative), `-1.0`
(uncertain) or blank (not mentioned in the report).

Decisions:

- `Path` is written relative to the folder *containing* the release
  (`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`). `--root` may name
  the release folder or its parent; the release folder is the one holding `train.csv`, and
  every image is looked for there with `Path`'s first part (the release's own folder name)
  dropped, so a renamed release folder still works. A note says which folder `--root` was.
- `image_index` is `Path` exactly as the CSV writes it: the same whichever folder `--root`
  names, and the name CheXpert users know the image by.
- Patient: the number of the `patientNNNNN` folder; follow-up: the study number - 1.
- View: `Frontal/Lateral` = Lateral gives LATERAL; a frontal image takes `AP/PA` (AP, PA;
  blank gives `?`; LL/RL, which the CSV has for a few images, give LATERAL; other values
  give `?`, counted in a note). `Sex`: Male, Female, Unknown (other values: unknown, noted).
  `Age`: whole years, blank unknown; any other value is refused with its row.
- Labels: `base.LABELLER_LABELS` (the CheXpert labeller's names, shared with MIMIC)
  through `base.labeller_states`; uncertain stays uncertain and blank stays "not
  labelled" (the report did not mention it). `No Finding` maps to no finding.
- Official split: `train.csv` is train_val (the converter carves a validation set out of
  it by patient), `valid.csv` (the 200-study set labelled by radiologists) is test.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cxr_tf.sources import catalog
from cxr_tf.sources.base import (
    LABELLER_LABELS,
    MAX_AGE,
    Source,
    int_column,
    label_cell_counts,
    labeller_states,
    raise_first,
    read_header,
    read_table,
    sex_column,
    unread_note,
    where_row,
)

TRAIN_CSV = "train.csv"
VALID_CSV = "valid.csv"
COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_PATH_PARTS = r"(?:^|/)patient(\d+)/study(\d+)/[^/]+$"
_SPLIT_FOLDERS = ("train", "valid", "test")


# --- the release folder -----------------------------------------------------------------------


def _is_release(folder: Path) -> bool:
    header = read_header(folder / TRAIN_CSV)
    return all(c in header for c in COLUMNS)


def find_release(root: Path) -> list[Path]:
    """The CheXpert release folders `root` is or holds: [root] when `train.csv` lies in it,
    else its subfolders that hold one (normally one, `CheXpert-v1.0[-small]`)."""
    root = Path(root)
    if _is_release(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _is_release(p))


def why_not(root: Path) -> str:
    """Why `root` is not a CheXpert release (or the folder holding one); "" when it is."""
    if find_release(root):
        return ""
    return f"no {TRAIN_CSV} with columns {list(COLUMNS)} in it or in a subfolder"


def _detect(root: Path) -> bool:
    return not why_not(root)


def _release_path(path: Path, values: pd.Series) -> list[str]:
    """Each `Path` relative to the release folder: the first part (the release's folder
    name) dropped unless the path starts at train/ or valid/ already."""
    out = []
    for row, text in enumerate(values):
        parts = PurePosixPath(text).parts
        if not text or PurePosixPath(text).is_absolute() or ".." in parts or "\\" in text:
            raise catalog.CatalogError(
                f"{where_row(path, row, 'Path')}: unsafe image path {text!r}"
            )
        if parts[0] not in _SPLIT_FOLDERS:
            parts = parts[1:]
        if not parts:
            raise catalog.CatalogError(f"{where_row(path, row, 'Path')}: no image file in {text!r}")
        out.append(str(PurePosixPath(*parts)))
    return out


def _views(path: Path, frame: pd.DataFrame) -> tuple[list[str], str]:
    """Each image's view, and a note counting the frontal images' AP/PA values that name no
    view (read as unknown, `?`)."""
    kind = frame["Frontal/Lateral"].str.lower()
    bad = ~kind.isin(["frontal", "lateral"]).to_numpy()
    raise_first(path, "Frontal/Lateral", frame["Frontal/Lateral"], bad, "not Frontal or Lateral:")
    views = [
        "LATERAL" if k == "lateral" else catalog.normalize_view(v)
        for k, v in zip(kind, frame["AP/PA"], strict=True)
    ]
    unread = (np.array(views) == "?") & frame["AP/PA"].ne("").to_numpy()
    return views, unread_note(path, "AP/PA", frame["AP/PA"], unread, "unknown view (?)")


def _read_csv(path: Path) -> tuple[dict[str, object], np.ndarray, list[str], list[str]]:
    """One CheXpert CSV -> (frame columns, state matrix, files relative to the release,
    notes on values read as unknown)."""
    frame = read_table(path, COLUMNS)
    names = frame["Path"]
    parts = names.str.extract(_PATH_PARTS)
    raise_first(
        path, "Path", names, parts[0].isna().to_numpy(), "no patientNNNNN/studyN/ folders in"
    )
    study = parts[1].astype(np.int64).to_numpy()
    raise_first(path, "Path", names, study < 1, "study number below 1 in")
    ages = int_column(path, frame, "Age", blank=-1)
    raise_first(path, "Age", frame["Age"], ages > MAX_AGE, f"age outside 0-{MAX_AGE}:")
    sexes, sex_note = sex_column(path, frame, "Sex")
    views, view_note = _views(path, frame)
    columns: dict[str, object] = {
        "image_index": names.to_numpy(),
        "patient_id": parts[0].astype(np.int64).to_numpy(),
        "follow_up": study - 1,
        "age": ages,
        "sex": sexes,
        "view_position": views,
    }
    states = labeller_states(frame, LABELLER_LABELS, path)
    notes = [n for n in (sex_note, view_note) if n]
    return columns, states, _release_path(path, names), notes


def read_catalog(root: Path, cache_dir: Path | None = None) -> catalog.Catalog:
    """A CheXpert release folder (or the folder holding it) as a Catalog."""
    root = Path(root)
    releases = find_release(root)
    if not releases:
        raise catalog.CatalogError(
            f"{root}: no CheXpert {TRAIN_CSV} with columns {list(COLUMNS)} in it or in a subfolder"
        )
    if len(releases) > 1:
        raise catalog.CatalogError(
            f"{root}: holds several CheXpert releases ({', '.join(p.name for p in releases)}); "
            f"pass one of them as --root"
        )
    release = releases[0]
    files = {"train_csv": release / TRAIN_CSV}
    if (release / VALID_CSV).is_file():
        files["valid_csv"] = release / VALID_CSV
    names = [p.name for p in files.values()]
    parts = [_read_csv(path) for path in files.values()]
    columns = {key: np.concatenate([np.asarray(p[0][key]) for p in parts]) for key in parts[0][0]}
    states = np.concatenate([p[1] for p in parts])
    relative = [name for p in parts for name in p[2]]
    index = [str(n) for n in columns["image_index"]]
    repeated = pd.Series(index).duplicated()
    if repeated.any():
        raise catalog.CatalogError(
            f"{release}: image(s) listed more than once in {' and '.join(names)}: "
            f"{sorted(set(pd.Series(index)[repeated]))[:5]}"
        )

    notes = []
    if release == root:
        notes.append(f"--root is the CheXpert release folder {release.name}/")
    else:
        notes.append(f"--root is the folder holding the CheXpert release {release.name}/")
    notes.append(f"image files looked for under {release} by the CSV's Path less its first part")
    official = None
    if "valid_csv" in files:
        n_train = len(parts[0][2])
        official = {"train_val": index[:n_train], "test": index[n_train:]}
    else:
        notes.append(f"no {VALID_CSV}: no official test set, the converter makes its own splits")
    uncertain, blank = label_cell_counts(states, list(LABELLER_LABELS.values()))
    notes.append(
        f"{uncertain} uncertain (-1.0) and {blank} blank (not mentioned) label cells, kept "
        f"as uncertain and not labelled; 'No Finding' maps to no finding"
    )
    notes += [note for p in parts for note in p[3]]
    paths = {name: release / rel for name, rel in zip(index, relative, strict=True)}
    return catalog.Catalog(
        source="chexpert",
        root=root,
        frame=catalog.make_frame(columns, states),
        images=catalog.image_source(release, "chexpert", paths),
        official=official,
        input_files=files,
        notes=notes,
        described=f"CheXpert labels (1/0/-1/blank) from {' and '.join(names)}",
    )


SOURCE = Source(
    name="chexpert",
    title="CheXpert (Irvin et al. 2019)",
    detect=_detect,
    read=read_catalog,
    why_not=why_not,
    holds="`CheXpert-v1.0/` or `CheXpert-v1.0-small/` (with `train.csv`, `valid.csv`), or its "
    "parent",
    labels_note="1.0 / 0.0 / -1.0 / blank: positive / negative / uncertain / not labelled; "
    "patient from `patientNNNNN`, follow-up = study - 1",
    split_note="`train.csv` -> train + validation, `valid.csv` -> test",
    labels=LABELLER_LABELS,
    homepage="https://stanfordmlgroup.github.io/competitions/chexpert/",
    licence="Stanford's research use agreement, accepted when downloading",
)
