"""The finding vocabulary: the one place that names and orders the findings, and the label
states a record keeps. How each dataset's own label names map onto the vocabulary is said
by its source (`cxr_tf.sources.<source>`, listed in `cxr_tf.sources.registry`)."""

from __future__ import annotations

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
# Every record stores one label state per VOCABULARY entry, in this order.
VOCABULARY: tuple[str, ...] = FINDINGS + EXTRA_FINDINGS
FINDING_INDEX: dict[str, int] = {name: i for i, name in enumerate(VOCABULARY)}

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


def parse_finding_labels(text: str, where: str = "") -> np.ndarray:
    """Turns a `Finding Labels` cell (`A|B` or `No Finding`) into a multi-hot uint8 vector.

    Membership is exact: the cell is split on `|` and every part must be a known finding.
    """
    vector = np.zeros(NUM_FINDINGS, dtype=np.uint8)
    parts = [p.strip() for p in str(text).split("|")]
    if parts == [NO_FINDING]:
        return vector
    for part in parts:
        index = FINDING_INDEX.get(part)
        if index is None or index >= NUM_FINDINGS:
            hint = f" ({where})" if where else ""
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


def check_findings(names: Iterable[str], what: str = "findings") -> tuple[str, ...]:
    """Validates a user-chosen subset of the vocabulary and returns it in the given order."""
    names = tuple(names)
    unknown = [n for n in names if n not in FINDING_INDEX]
    if unknown:
        raise UnknownFindingError(
            f"{what}: unknown finding(s) {unknown}; known: {', '.join(VOCABULARY)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: repeated finding in {list(names)}")
    return names


def finding_indices(names: Sequence[str]) -> list[int]:
    """Column indices of the given findings in the vocabulary vector."""
    return [FINDING_INDEX[n] for n in check_findings(names)]
