"""The common table every dataset source is read into before conversion. A source reader
(`nih`, `chexpert`, `mimic`, `padchest`, `folders`, `csv_labels`, listed in
`cxr_tf.sources.registry`) turns a folder into a `Catalog`: one row per image with the same
normalised columns whatever the dataset (`FRAME_COLUMNS`), one label-state column per
vocabulary finding (`cxr_tf.labels.VOCABULARY`: negative, positive, uncertain or not
labelled) and one per finding of the dataset's own (`Catalog.own_findings`: class or label
names that match no vocabulary name), the images' locations (an `ImageSource`), the
dataset's official split if it has one, and the metadata files whose content shapes the
records (hashed into the manifest). The converter (`cxr_tf.data.conversion`) only ever sees
a Catalog. This module imports no reader: the readers import it.

Views: every reader maps its view names onto `PA`, `AP`, `LATERAL`, `OTHER` (a projection
that is not a chest view, such as PadChest's rib views) or `?` (unknown); `filter_views`
then keeps the views asked for (`--views`; `cxr_tf.config.ConvertConfig.views` keeps
frontal and unknown by default) and counts what it dropped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.config import VIEWS
from cxr_tf.labels import NEGATIVE, POSITIVE, UNLABELLED, VOCABULARY, label_names
from cxr_tf.sources.images import ImageSource

# Columns of every catalog frame besides the vocabulary's label-state columns. Unknown
# values: age -1, sex "?", view "?", sizes and spacings 0 (sizes are then taken from
# the decoded image).
FRAME_COLUMNS: tuple[str, ...] = (
    "image_index",  # the image's unique name in this dataset (a relative path for most)
    "patient_id",  # int64; see `number_patients` for datasets with non-numeric IDs
    "follow_up",
    "age",
    "sex",
    "view_position",
    "original_width",
    "original_height",
    "pixel_spacing_x",
    "pixel_spacing_y",
)

# Spellings of views across datasets and DICOM headers -> VIEWS (`cxr_tf.config`).
_VIEW_ALIASES: dict[str, str] = {
    "PA": "PA",
    "POSTEROANTERIOR": "PA",
    "AP": "AP",
    "ANTEROPOSTERIOR": "AP",
    "AP_HORIZONTAL": "AP",
    "AP AXIAL": "AP",
    "AP LLD": "AP",
    "AP RLD": "AP",
    "AP SUPINE": "AP",
    "APS": "AP",
    "L": "LATERAL",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
    "LAO": "LATERAL",
    "RAO": "LATERAL",
    "PA LLD": "PA",
    "PA RLD": "PA",
    "LEFT LATERAL": "LATERAL",
    "RIGHT LATERAL": "LATERAL",
    # Not chest views (PadChest's rib views and images its curators flagged for exclusion).
    "COSTAL": "OTHER",
    "EXCLUDE": "OTHER",
}


class CatalogError(ValueError):
    """A source folder cannot be read into a catalog; the message names the file and row."""


# Words of the patient's position or the machine that say nothing of the beam's direction:
# "AP erect", "AP semi-erect", "portable AP", "PA upright" are AP or PA ("AP supine" too).
_VIEW_MODIFIERS = frozenset(
    {"ERECT", "SEMI", "SEMIERECT", "UPRIGHT", "SITTING", "SUPINE", "PORTABLE", "MOBILE"}
)


def normalize_view(value: object) -> str:
    """A dataset's or DICOM header's view name -> PA, AP, LATERAL, OTHER or ? (unknown)."""
    text = " ".join(str(value or "").strip().upper().replace("-", " ").split())
    words = text.replace("_", " ").split()
    for key in (text, " ".join(w for w in words if w not in _VIEW_MODIFIERS)):
        view = _VIEW_ALIASES.get(key, _VIEW_ALIASES.get(key.replace(" ", "_")))
        if view:
            return view
    return "?"


def normalize_sex(value: object) -> str:
    text = str(value or "").strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}.get(text, "?")


def number_patients(ids: Sequence[object]) -> tuple[np.ndarray, str]:
    """Patient IDs as int64, and how they were made.

    All-numeric IDs that fit int32 are kept ("as given"); otherwise each distinct ID gets
    its 1-based rank in sorted order ("numbered"), so the same ID list always gives the
    same numbers.
    """
    text = pd.Series([str(i).strip() for i in ids], dtype=object)
    if len(text) and text.str.fullmatch(r"\d{1,9}").all():
        return text.astype(np.int64).to_numpy(), "as given"
    codes, _ = pd.factorize(text, sort=True)
    return codes.astype(np.int64) + 1, "numbered in sorted order of the dataset's IDs"


def patient_names(ids: Sequence[object], numbers: np.ndarray) -> dict[int, str]:
    """Number -> the dataset's own patient ID, for messages, when `number_patients`
    numbered them (empty when the IDs were kept as given)."""
    names = {int(n): str(i).strip() for n, i in zip(numbers.tolist(), ids, strict=True)}
    return {} if all(str(n) == name for n, name in names.items()) else names


def empty_states(n: int, own: Sequence[str] = ()) -> np.ndarray:
    """An (n, V + len(own)) uint8 state matrix with every finding not labelled (V: the
    vocabulary's size; `own`: the dataset's own findings, after it)."""
    return np.full((n, len(VOCABULARY) + len(own)), UNLABELLED, dtype=np.uint8)


def frame_labels(frame: pd.DataFrame) -> tuple[str, ...]:
    """The label-state columns of a catalog frame: the vocabulary, then its own findings
    (the columns after the vocabulary's)."""
    columns = list(frame.columns)
    missing = [f for f in VOCABULARY if f not in columns]
    if missing:
        raise ValueError(f"frame has no label column(s) {missing}")
    return tuple(columns[columns.index(VOCABULARY[0]) :])


def state_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The (N, L) uint8 label states of a catalog frame, in `frame_labels` order."""
    return frame[list(frame_labels(frame))].to_numpy(dtype=np.uint8)


def make_frame(
    columns: Mapping[str, Sequence | np.ndarray], states: np.ndarray, own: Sequence[str] = ()
) -> pd.DataFrame:
    """A catalog frame from per-column values (missing optional ones get their unknown
    value) and an (N, V + len(own)) state matrix (`own`: the dataset's own findings, as
    `cxr_tf.labels.own_findings` orders them)."""
    n = len(columns["image_index"])
    defaults: dict[str, object] = {
        "follow_up": 0,
        "age": -1,
        "sex": "?",
        "view_position": "?",
        "original_width": 0,
        "original_height": 0,
        "pixel_spacing_x": 0.0,
        "pixel_spacing_y": 0.0,
    }
    data: dict[str, object] = {}
    for name in FRAME_COLUMNS:
        if name in columns:
            data[name] = np.asarray(columns[name])
        elif name in defaults:
            data[name] = [defaults[name]] * n
        else:
            raise ValueError(f"catalog frame needs column {name!r}")
    frame = pd.DataFrame(data)
    for name in ("patient_id", "follow_up", "age", "original_width", "original_height"):
        frame[name] = frame[name].astype(np.int64)
    for name in ("pixel_spacing_x", "pixel_spacing_y"):
        frame[name] = frame[name].astype(np.float64)
    for name in ("image_index", "sex", "view_position"):
        frame[name] = frame[name].astype(str)
    names = label_names(own)
    states = np.asarray(states, dtype=np.uint8)
    if states.shape != (n, len(names)):
        raise ValueError(f"states must be ({n}, {len(names)}), got {states.shape}")
    clash = [c for c in own if c in FRAME_COLUMNS]
    if clash:
        raise ValueError(f"own finding(s) {clash} clash with catalog columns")
    labels = pd.DataFrame(states, columns=list(names))
    return pd.concat([frame, labels], axis=1)


def labelled_findings(frame: pd.DataFrame) -> tuple[str, ...]:
    """Findings (vocabulary, then own) with at least one known (positive or negative) label."""
    states = state_matrix(frame)
    known = ((states == POSITIVE) | (states == NEGATIVE)).any(axis=0)
    return tuple(name for name, k in zip(frame_labels(frame), known, strict=True) if k)


@dataclasses.dataclass
class Catalog:
    """Everything conversion needs to know about one dataset folder."""

    source: str  # the source's name (cxr_tf.sources.registry.SOURCES)
    root: Path
    frame: pd.DataFrame  # FRAME_COLUMNS + one uint8 state column per `label_names` name
    images: ImageSource  # image_index -> bytes
    # image_index, finding (a `label_names` name), x, y, w, h in pixels of `box_frame`, or
    # of the image itself when `box_frame` is None; optionally `reader` (who drew it)
    boxes: pd.DataFrame | None = None
    # split name -> image names: {"train_val", "test"} (validation carved out by patient)
    # or {"train", "validation", "test"}; None when the dataset has no official split.
    official: dict[str, list[str]] | None = None
    # files whose content ends up in records or splits: key -> path (hashed in the plan);
    # the first is the label file (named in messages and the manifest)
    input_files: dict[str, Path] = dataclasses.field(default_factory=dict)
    box_frame: tuple[int, int] | None = None  # pixel frame the boxes refer to
    patient_ids: str = "as given"  # how patient_id was made (see number_patients)
    # patient_id -> the dataset's own ID where they differ (see patient_names), for messages
    patient_names: dict[int, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)  # printed and in the manifest
    views_dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    described: str = ""  # where labels came from, for the manifest

    @property
    def own_findings(self) -> tuple[str, ...]:
        """The dataset's own findings: its label columns after the vocabulary's."""
        return frame_labels(self.frame)[len(VOCABULARY) :]

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label states each record of this dataset stores, in order."""
        return frame_labels(self.frame)

    def __post_init__(self) -> None:
        missing = [c for c in (*FRAME_COLUMNS, *VOCABULARY) if c not in self.frame.columns]
        if missing:
            raise ValueError(f"catalog frame lacks column(s) {missing}")
        repeated = self.frame["image_index"].duplicated()
        if repeated.any():
            names = self.frame["image_index"][repeated].tolist()
            raise CatalogError(f"{self.root}: image(s) listed more than once: {names[:5]}")


def filter_views(catalog: Catalog, views: Iterable[str]) -> Catalog:
    """Keeps the images whose view is in `views` (PA, AP, LATERAL, ?); counts the rest per
    view in `views_dropped` and drops them from the official split lists too."""
    wanted = {v.strip().upper() for v in views}
    unknown = sorted(wanted - set(VIEWS))
    if unknown:
        raise CatalogError(f"views: unknown view(s) {unknown}; choose from {', '.join(VIEWS)}")
    keep = catalog.frame["view_position"].isin(wanted).to_numpy()
    dropped = catalog.frame.loc[~keep, "view_position"].value_counts().sort_index()
    catalog.views_dropped = {str(k): int(v) for k, v in dropped.items()}
    if (~keep).any():
        catalog.frame = catalog.frame[keep].reset_index(drop=True)
        kept = set(catalog.frame["image_index"])
        if catalog.official is not None:
            catalog.official = {
                k: [n for n in names if n in kept] for k, names in catalog.official.items()
            }
        if catalog.boxes is not None:
            catalog.boxes = catalog.boxes[catalog.boxes["image_index"].isin(kept)]
    if catalog.frame.empty:
        raise CatalogError(
            f"{catalog.root}: no image left after keeping views {sorted(wanted)} "
            f"(dropped {catalog.views_dropped}); pass --views with the views you want"
        )
    return catalog


def image_source(root: Path, layout: str, paths: Mapping[str, Path]) -> ImageSource:
    """An ImageSource over image files on disk (name -> path); files that do not exist are
    left out, so conversion reports them as absent like missing NIH images."""
    source = ImageSource(root=root, layout=layout)
    for name, path in paths.items():
        try:
            stat = os.stat(path)
        except OSError:
            continue
        source.files[name] = Path(path)
        source.stats[name] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return source
