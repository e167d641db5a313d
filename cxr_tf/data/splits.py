"""Patient-disjoint train / validation / test splits of a dataset's images.

A patient's images always stay together: follow-up images of one person are highly
correlated, so letting them straddle two splits inflates test scores. Every split made
here is checked with `check_patient_disjoint` before it is returned.

Validation and random splits are stratified by each patient's rarest finding, so that
rare findings (Hernia: 227 images) reach every split instead of depending on the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tf.config import SPLIT_NAMES, SplitConfig
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN, VOCABULARY
from cxr_tf.sources.base import MetadataError, read_csv
from cxr_tf.sources.catalog import frame_labels

SPLITS = SPLIT_NAMES
# How many offending patients or images an error message spells out.
_SHOW = 20


def _isin(values: pd.Series, names: Iterable[str]) -> np.ndarray:
    # Series.isin on pyarrow strings walks the candidates in Python and is ~10x slower.
    wanted = set(names)
    return np.fromiter((v in wanted for v in values.to_numpy(object)), bool, len(values))


def _listing(items: Sequence[object]) -> str:
    shown = ", ".join(str(i) for i in items[:_SHOW])
    return shown + (f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


class PatientOverlapError(ValueError):
    """Some patients have images in more than one split.

    Attributes:
        patients: the offending patient IDs, sorted.
        splits_by_patient: patient ID -> names of the splits holding their images.
    """

    def __init__(self, splits_by_patient: Mapping[int | str, Sequence[str]]):
        self.patients = sorted(splits_by_patient)
        self.splits_by_patient = {p: list(splits_by_patient[p]) for p in self.patients}
        described = [f"{p} ({'/'.join(self.splits_by_patient[p])})" for p in self.patients]
        super().__init__(
            f"{len(self.patients)} patient(s) have images in more than one split: "
            f"{_listing(described)}"
        )


def check_patient_disjoint(splits: Mapping[str, Sequence[str]], df: pd.DataFrame) -> None:
    """Checks that no image repeats, every image is in `df` and no patient spans two splits.

    Args:
        splits: split name -> image names.
        df: a `read_data_entry` frame (image_index, patient_id).

    Raises:
        ValueError: an image is listed twice or is not in `df`.
        PatientOverlapError: a patient has images in two or more splits.
    """
    order = list(splits)
    listed = pd.DataFrame(
        {
            "image_index": [image for images in splits.values() for image in images],
            "split": [name for name, images in splits.items() for _ in images],
        }
    )
    repeated = listed["image_index"].duplicated(keep=False)
    if repeated.any():
        where = listed[repeated].groupby("image_index", sort=True)["split"].agg(list)
        described = [f"{image} ({'/'.join(names)})" for image, names in where.items()]
        raise ValueError(f"{len(where)} image(s) listed more than once: {_listing(described)}")

    patient_of = pd.Series(df["patient_id"].to_numpy(), index=df["image_index"].to_numpy())
    patients = listed["image_index"].map(patient_of)
    unknown = patients.isna().to_numpy()
    if unknown.any():
        names = sorted(listed["image_index"][unknown])
        raise ValueError(f"{len(names)} image(s) not in the label file: {_listing(names)}")

    listed["patient_id"] = patients.astype(np.int64)
    # Vectorized: a per-group unique() over 30k patients takes seconds.
    pairs = listed[["patient_id", "split"]].drop_duplicates()
    spanning = pairs[pairs["patient_id"].duplicated(keep=False)]
    if len(spanning):
        per_patient = spanning.groupby("patient_id")["split"].agg(list)
        raise PatientOverlapError(
            {int(p): sorted(names, key=order.index) for p, names in per_patient.items()}
        )


def _label_columns(df: pd.DataFrame) -> list[str]:
    """The findings `df` has a column for (an NIH frame: the 14; a catalog: the vocabulary,
    then the dataset's own findings)."""
    if all(f in df.columns for f in VOCABULARY):
        return list(frame_labels(df))
    columns = [f for f in VOCABULARY if f in df.columns]
    if not columns:
        raise ValueError("frame has no finding column; use a catalog frame")
    return columns


def _states(df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    columns = _label_columns(df)
    return columns, df[columns].to_numpy(dtype=np.uint8)


def _patient_strata(df: pd.DataFrame) -> pd.Series:
    """Each patient's stratum: the column index of the rarest finding positive among all
    their images (rarity counted in `df`), or -1 for patients with no positive finding."""
    labels = _states(df)[1] == POSITIVE
    counts = labels.sum(axis=0)
    per_patient = pd.DataFrame(labels).groupby(df["patient_id"].to_numpy()).any()
    rarest_first = np.argsort(counts, kind="stable")
    has = per_patient.to_numpy()[:, rarest_first]
    stratum = np.where(has.any(axis=1), rarest_first[has.argmax(axis=1)], -1)
    return pd.Series(stratum, index=per_patient.index, name="stratum")


def _assign_stratified(strata: pd.Series, fractions: Sequence[float], seed: int) -> pd.Series:
    """Assigns each patient (the index of `strata`) a part number 0..len(fractions)-1.

    Within every stratum the patients are shuffled with `seed`; parts 1, 2, ... then take
    ceil(fraction * size) patients each, in order, and part 0 keeps the rest. Rounding up
    puts at least one patient of every stratum into each non-empty held-out part.
    """
    rng = np.random.default_rng(seed)
    part = np.zeros(len(strata), dtype=np.int64)
    values = strata.to_numpy()
    for key in np.unique(values):  # sorted, so the random stream is used in a fixed order
        members = rng.permutation(np.flatnonzero(values == key))
        start = 0
        for number, fraction in enumerate(fractions[1:], start=1):
            # A relative epsilon keeps float noise (0.7 * 10 = 7.000000000000001) from
            # rounding up, while any positive fraction still takes at least one patient.
            wanted = math.ceil(fraction * len(members) * (1 - 1e-12))
            take = min(wanted, len(members) - start)
            part[members[start : start + take]] = number
            start += take
    return pd.Series(part, index=strata.index, name="part")


def _images_by_part(df: pd.DataFrame, parts: pd.Series, names: Sequence[str]) -> dict:
    image_part = df["patient_id"].map(parts).to_numpy()
    images = df["image_index"].to_numpy()
    return {name: sorted(images[image_part == i].tolist()) for i, name in enumerate(names)}


def read_split_file(path: str | Path) -> pd.DataFrame:
    """Reads a user split CSV with columns `Image Index,split` (train/validation/test).

    Returns:
        A frame with the file's columns `Image Index` and `split`, values stripped.

    Raises:
        MetadataError: missing column, empty image name, unknown split or repeated image.
    """
    path = Path(path)
    raw = read_csv(path)
    missing = [c for c in ("Image Index", "split") if c not in raw.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    table = pd.DataFrame(
        {"Image Index": raw["Image Index"].str.strip(), "split": raw["split"].str.strip()}
    )
    bad = (~table["split"].isin(SPLITS) | table["Image Index"].eq("")).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetadataError(
            f"{path}, data row {row + 1} (line {row + 2}): bad entry "
            f"{table['Image Index'].iloc[row]!r},{table['split'].iloc[row]!r}; "
            f"split must be one of {', '.join(SPLITS)}"
        )
    repeated = table["Image Index"][table["Image Index"].duplicated()].unique().tolist()
    if repeated:
        raise MetadataError(f"{path}: image(s) listed more than once: {_listing(repeated)}")
    return table


def _require_all_assigned(df: pd.DataFrame, assigned: set[str], source: str) -> None:
    unassigned = sorted(set(df["image_index"].to_numpy(object)) - assigned)
    if unassigned:
        raise ValueError(
            f"{len(unassigned)} image(s) not assigned by {source}: {_listing(unassigned)}"
        )


def _official(
    df: pd.DataFrame, config: SplitConfig, train_val: Sequence[str], test: Sequence[str]
) -> dict[str, list[str]]:
    known = set(df["image_index"].to_numpy(object))
    # `df` may cover only part of the dataset (e.g. the images on disk): list entries outside it
    # are not part of this dataset, but every image of `df` must be on a list.
    train_val = [i for i in train_val if i in known]
    test = [i for i in test if i in known]
    check_patient_disjoint({"train_val": train_val, "test": test}, df)
    _require_all_assigned(df, set(train_val) | set(test), "the official lists")

    pool = df[_isin(df["image_index"], train_val)]
    parts = _assign_stratified(
        _patient_strata(pool), (1.0 - config.val_fraction, config.val_fraction), config.seed
    )
    splits = _images_by_part(pool, parts, ("train", "validation"))
    splits["test"] = sorted(test)
    return splits


def _from_assignments(df: pd.DataFrame, assignments: pd.DataFrame) -> dict[str, list[str]]:
    missing = [c for c in ("Image Index", "split") if c not in assignments.columns]
    unknown = sorted(set(assignments.get("split", [])) - set(SPLITS))
    if missing or unknown:
        raise ValueError(
            f"split assignments need columns 'Image Index' and 'split' with values in "
            f"{SPLITS}; missing columns {missing}, unknown splits {unknown}"
        )
    table = assignments[_isin(assignments["Image Index"], df["image_index"])]
    _require_all_assigned(df, set(table["Image Index"]), "the split file")
    return {name: sorted(table["Image Index"][table["split"] == name]) for name in SPLITS}


def make_splits(
    df: pd.DataFrame,
    config: SplitConfig,
    train_val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
    assignments: pd.DataFrame | None = None,
) -> dict[str, list[str]]:
    """Splits the images of `df` by patient, following `config.strategy`.

    - official: `test` as given; validation is `config.val_fraction` of the `train_val`
      patients, stratified and seeded.
    - random: patients split by `config.fractions` (train, validation, test), stratified.
    - file: `assignments` (columns `Image Index`, `split`), or else `config.split_file` read with
      `read_split_file`.

    For official and file, list entries outside `df` are ignored (`df` may be a subset such
    as the images on disk), but every image of `df` must be assigned.

    Args:
        df: a catalog frame (`cxr_tf.sources.catalog`; image_index, patient_id, labels).
        config: the split strategy, fractions and seed.
        train_val: the official train_val list, `Catalog.official` (official only).
        test: the official test list, `Catalog.official` (official only).
        assignments: a `read_split_file` frame (file only).

    Returns:
        Split name -> sorted image names, for train, validation and test.

    Raises:
        PatientOverlapError: a patient would have images in two splits.
        ValueError: missing lists, unknown or repeated images, unassigned images.
    """
    if config.strategy == "official":
        if train_val is None or test is None:
            raise ValueError(
                "split.strategy=official needs the train_val and test lists "
                "(the catalog's official split, `Catalog.official`)"
            )
        splits = _official(df, config, train_val, test)
    elif config.strategy == "random":
        parts = _assign_stratified(_patient_strata(df), config.fractions, config.seed)
        splits = _images_by_part(df, parts, SPLITS)
    elif config.strategy == "file":
        if assignments is None:
            assignments = read_split_file(config.split_file)
        splits = _from_assignments(df, assignments)
    else:
        raise ValueError(f"unknown split strategy {config.strategy!r}")
    splits = {name: splits[name] for name in SPLITS}
    check_patient_disjoint(splits, df)
    return splits


def split_summary(splits: Mapping[str, Sequence[str]], df: pd.DataFrame) -> dict[str, dict]:
    """Per split: image and patient counts, and per finding (each finding column of `df`)
    the positives, the images labelled positive or negative and the uncertain ones; `No
    Finding` counts images without any positive.

    Returns:
        Split name -> {"images", "patients", "positives": {finding: count},
        "labelled": {finding: count}, "uncertain": {finding: count}, "no_finding"}.
    """
    by_image = df.set_index("image_index")
    columns = _label_columns(df)
    summary = {}
    for name, images in splits.items():
        rows = by_image.loc[list(images)]
        states = rows[columns].to_numpy(dtype=np.uint8)
        positive = states == POSITIVE
        known = positive | (states == NEGATIVE)
        summary[name] = {
            "images": len(rows),
            "patients": int(rows["patient_id"].nunique()),
            "positives": {f: int(n) for f, n in zip(columns, positive.sum(axis=0), strict=True)},
            "labelled": {f: int(n) for f, n in zip(columns, known.sum(axis=0), strict=True)},
            "uncertain": {
                f: int(n) for f, n in zip(columns, (states == UNCERTAIN).sum(axis=0), strict=True)
            },
            "no_finding": int((positive.sum(axis=1) == 0).sum()),
        }
    return summary
