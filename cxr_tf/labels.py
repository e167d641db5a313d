"""The finding vocabulary: the one place that names and orders the findings, and the label
states a record keeps. How each dataset's own label names map onto the vocabulary is said
by its source (`cxr_tf.sources.<source>`, listed in `cxr_tf.sources.registry`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

# Fixed order used by every label vector, model output and report (Wang et al. 2017).
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_FINDINGS = len(FINDINGS)
NO_FINDING = "No Finding"

# What other public datasets label beyond NIH's 14 (CheXpert / MIMIC-CXR observations).
# Multi-word names are written with underscores, like NIH's Pleural_Thickening.
EXTRA_FINDINGS: tuple[str, ...] = (
    "Lung_Opacity",
    "Lung_Lesion",
    "Enlarged_Cardiomediastinum",
    "Fracture",
    "Support_Devices",
    "Pleural_Other",
)
# Every record stores one label state per VOCABULARY entry, in this order, then one per
# finding of the dataset's own (`own_findings`), in sorted order: its manifest's `labels`.
VOCABULARY: tuple[str, ...] = FINDINGS + EXTRA_FINDINGS
FINDING_INDEX: dict[str, int] = {name: i for i, name in enumerate(VOCABULARY)}

# Class, label and column names a user's dataset gives that mean "no finding" (compared by
# `name_key`, after a leading order number such as `0_` is dropped).
NO_FINDING_NAMES: tuple[str, ...] = ("No Finding", "normal", "healthy", "health", "nofinding")

# Label states a record keeps per finding (uint8 codes; schema version 1 stored 0/1 only).
NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED = 0, 1, 2, 3
STATES: dict[int, str] = {
    NEGATIVE: "negative",
    POSITIVE: "positive",
    UNCERTAIN: "uncertain",
    UNLABELLED: "not labelled",
}
# The target of a label the losses and the metrics skip (float): the finding is not labelled
# by the image's dataset, or uncertain where uncertain labels are ignored (always in
# evaluation). Targets are otherwise 0.0 or 1.0 (`cxr_tf.data.targets` makes them).
MASKED = -1.0

# The box file spells one finding differently from the label file.
# NIH's box coordinates are pixels of the released 1024 x 1024 PNGs, whatever size the
# image files a user has (downsampled mirrors are common).
BOX_FRAME = 1024
BOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}


class UnknownFindingError(ValueError):
    """A label string names no ChestX-ray14 finding."""


def name_key(name: str) -> str:
    """A class, label or column name as compared: lower case, spaces and underscores alike."""
    return "_".join(str(name).strip().lower().replace("_", " ").split())


_ORDER_PREFIX = re.compile(r"^\d+[ _.\-]+")  # "0_normal", "1-abnormal", "2. tb"
FINDING_KEYS: dict[str, str] = {name_key(f): f for f in VOCABULARY}
_NO_FINDING_KEYS = frozenset(name_key(n) for n in NO_FINDING_NAMES)


def finding_of(name: str) -> str | None:
    """The vocabulary finding a dataset's class, label or column name means (ignoring case,
    spaces and underscores, and a leading order number such as `0_`), `NO_FINDING` for one
    of `NO_FINDING_NAMES`, or None: a name of the dataset's own (`own_findings`)."""
    for key in dict.fromkeys((name_key(name), name_key(_ORDER_PREFIX.sub("", str(name).strip())))):
        if key in _NO_FINDING_KEYS:
            return NO_FINDING
        if key in FINDING_KEYS:
            return FINDING_KEYS[key]
    return None


def own_findings(names: Iterable[str]) -> tuple[str, ...]:
    """A dataset's own findings from the names it uses that `finding_of` does not place:
    named as given (stripped), one per `name_key` (the first spelling in sorted order), in
    sorted order; what follows the vocabulary in its records' label states.

    Raises:
        UnknownFindingError: an empty name, or one with `|` (the label separator).
    """
    own: dict[str, str] = {}
    for name in sorted({str(n).strip() for n in names}):
        if not name or "|" in name:
            raise UnknownFindingError(f"{name!r} cannot name a finding (empty, or has '|')")
        if finding_of(name) is None:
            own.setdefault(name_key(name), name)
    return tuple(sorted(own.values(), key=name_key))


def label_names(own: Sequence[str] = ()) -> tuple[str, ...]:
    """The label states a record stores: the vocabulary, then the dataset's own findings."""
    return VOCABULARY + tuple(own)


def resolve_name(name: str, labels: Sequence[str]) -> str | None:
    """`name` as spelled in `labels` (exact, else by `name_key`), or None."""
    if name in labels:
        return name
    keys = {name_key(n): n for n in labels}
    return keys.get(name_key(name))


def parse_finding_labels(text: str, where: str = "") -> np.ndarray:
    """Turns a `Finding Labels` cell (`A|B` or `No Finding`) into a multi-hot uint8 vector.

    Membership is exact: the cell is split on `|` and every part must be a known finding.
    """
    vector = np.zeros(NUM_FINDINGS, dtype=np.uint8)
    parts = [p.strip() for p in str(text).split("|")]
    if parts == [NO_FINDING]:
        return vector
    hint = f" ({where})" if where else ""
    if NO_FINDING in parts:
        raise UnknownFindingError(
            f"{NO_FINDING!r} cannot be combined with findings in {text!r}{hint}: it means "
            f"none of them; write the findings alone, or {NO_FINDING!r} alone"
        )
    for part in parts:
        index = FINDING_INDEX.get(part)
        if index is None or index >= NUM_FINDINGS:
            raise UnknownFindingError(
                f"unknown finding label {part!r} in {text!r}{hint}; "
                f"expected one of {', '.join(FINDINGS)} or {NO_FINDING!r}"
            )
        vector[index] = 1
    return vector


def canonical_box_label(label: str, where: str = "") -> str:
    """Maps a box-file label to the label-file spelling, checking it is a finding."""
    name = BOX_LABEL_ALIASES.get(label.strip(), label.strip())
    if name not in FINDINGS:
        hint = f" ({where})" if where else ""
        raise UnknownFindingError(f"unknown box finding {label!r}{hint}")
    return name


def close_names(names: Iterable[str], choices: Sequence[str]) -> str:
    """' (did you mean ...?)' for names close to one of `choices` (by `name_key`)."""
    import difflib

    keys = {name_key(c): c for c in choices}
    pairs = []
    for name in names:
        close = difflib.get_close_matches(name_key(name), list(keys), n=1, cutoff=0.75)
        if close:
            pairs.append(f"{name!r} -> {keys[close[0]]!r}")
    return f" (did you mean {', '.join(pairs)}?)" if pairs else ""


def check_findings(
    names: Iterable[str], what: str = "findings", labels: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Validates user-chosen findings and returns them in the given order, each spelled as
    in `labels` when given (a dataset's manifest `labels`: the vocabulary and its own
    findings, matched by `name_key`). Without `labels` any name may be a dataset's own
    finding: only empty names, `|` and repeats are refused."""
    names = tuple(str(n).strip() for n in names)
    bad = [n for n in names if not n or "|" in n]
    if bad:
        raise UnknownFindingError(f"{what}: {bad} cannot name a finding (empty, or has '|')")
    if labels is not None:
        resolved = [resolve_name(n, labels) for n in names]
        unknown = [n for n, r in zip(names, resolved, strict=True) if r is None]
        if unknown:
            raise UnknownFindingError(
                f"{what}: unknown finding(s) {unknown}; known: {', '.join(labels)}"
            )
        names = tuple(r for r in resolved if r is not None)
    keys = [name_key(n) for n in names]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{what}: repeated finding in {list(names)}")
    return names


def finding_indices(names: Sequence[str]) -> list[int]:
    """Column indices of the given findings in the vocabulary vector."""
    return [FINDING_INDEX[n] for n in check_findings(names, labels=VOCABULARY)]
