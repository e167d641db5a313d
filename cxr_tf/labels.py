"""The finding vocabulary: the one place that names and orders the findings, the label
states a record keeps, and how each dataset's own label names map onto the vocabulary."""

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

# Each dataset's own label names -> vocabulary names. A vocabulary finding that no name of a
# dataset maps to is stored as UNLABELLED for that dataset; several names may map to one
# finding (positive when any of them is). CheXpert and MIMIC-CXR-JPG share the 14 CheXpert
# observations ("No Finding" is not a finding: it is the absence of all of them).
CHEXPERT_LABELS: dict[str, str] = {
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
# PadChest's `Labels` column (lower-case terms from its report-derived hierarchy). Terms
# not listed here are kept in no finding; "normal" means no finding.
PADCHEST_LABELS: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "lobar atelectasis": "Atelectasis",
    "segmental atelectasis": "Atelectasis",
    "round atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Effusion",
    "loculated pleural effusion": "Effusion",
    "infiltrates": "Infiltration",
    "interstitial pattern": "Infiltration",
    "mass": "Mass",
    "pulmonary mass": "Mass",
    "nodule": "Nodule",
    "multiple nodules": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "alveolar pattern": "Consolidation",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "pleural thickening": "Pleural_Thickening",
    "apical pleural thickening": "Pleural_Thickening",
    "hiatal hernia": "Hernia",
    "rib fracture": "Fracture",
    "clavicle fracture": "Fracture",
    "humeral fracture": "Fracture",
    "vertebral fracture": "Fracture",
    "callus rib fracture": "Fracture",
    "pacemaker": "Support_Devices",
    "dual chamber device": "Support_Devices",
    "single chamber device": "Support_Devices",
    "electrical device": "Support_Devices",
    "endotracheal tube": "Support_Devices",
    "nsg tube": "Support_Devices",
    "chest drain tube": "Support_Devices",
    "central venous catheter": "Support_Devices",
    "central venous catheter via jugular vein": "Support_Devices",
    "central venous catheter via subclavian vein": "Support_Devices",
    "tracheostomy tube": "Support_Devices",
}
PADCHEST_NORMAL = "normal"
# NIH's own names are the vocabulary's first 14 (the box file's one alias aside).
SOURCE_LABELS: dict[str, dict[str, str]] = {
    "nih": {name: name for name in FINDINGS},
    "chexpert": CHEXPERT_LABELS,
    "mimic": CHEXPERT_LABELS,
    "padchest": PADCHEST_LABELS,
}


def labelled_by(source: str) -> tuple[str, ...]:
    """The vocabulary findings a dataset labels (in vocabulary order)."""
    mapped = set(SOURCE_LABELS[source].values())
    return tuple(name for name in VOCABULARY if name in mapped)

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
