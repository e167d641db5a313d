"""The labels-CSV imitation (`python -m cxr_tf.synth --layout csv`), a user's own images as
the `csv` source reads them, with the quirks of real users' files.

It writes `images/<patient>/<n>.png|.jpg` and `labels.csv` with columns `path, patient_id,
view, sex, age, split`, one column per finding (`FINDINGS`: `Effusion`, `Cardiomegaly`,
`Pneumothorax`, `Mass`, `Nodule`, `Pleural Thickening`, and `COVID-19`, a finding of the
dataset's own, drawn as a consolidation) and a `_notes` column: `1` drawn, `0` not drawn,
`-1` uncertain (drawn or not), blank not labelled (and `1.0`-style cells on some rows;
`Mass` left blank for the last quarter of the patients, as when one site did not label it;
about one row in 25 with every finding cell blank, an image nobody labelled).
The file is saved as cp1252, as Excel on Windows saves it: some `_notes` cells hold French
words with accents (`opacité`), bytes that are not UTF-8. About half the patients with one
image have a blank `patient_id` (each is then its own patient). Views are PA, AP, `AP
erect`, `portable AP`, a few `LL` (lateral) and some blank; ages plain (`45`), DICOM-style
(`045Y`) or `45 Y`, `85+` for the oldest (ages capped as de-identified exports do) and a
few `unknown`; `split` is `test` for the test patients, `valid` for about a tenth of the
others, and `train` or blank for the rest. Images are drawn in this imitation's `STYLE`
and rounded to 8 bits.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "csv"
CODE = 2  # part of the plan's and each image's seed
STYLE = Style(gain=1.05, offset=-6.0, gamma=0.9, noise=3.0)
# labels.csv finding column -> the vocabulary finding drawn for it (the column is that
# finding, except `COVID-19`: a finding of the dataset's own, drawn as a consolidation).
FINDINGS: dict[str, str] = {
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pleural Thickening": "Pleural_Thickening",
    "COVID-19": "Consolidation",
}
ENCODING = "cp1252"
_HEADER = ["path", "patient_id", "view", "sex", "age", "split", *FINDINGS, "_notes"]
_VIEWS = ["PA", "PA", "PA", "AP", "AP erect", "portable AP", "LL", ""]
_NOTES = ["", "", "", "", "opacité basale", "contrôle à 3 mois", "épanchement ?"]
_UNLABELLED_ROWS = 0.04  # rows with every finding cell blank


def _cell(state: int, float_style: bool) -> str:
    text = {1: "1", 0: "0", -1: "-1"}.get(state, "")
    return f"{text}.0" if text and float_style else text


def _age(age: int, patient: int) -> str:
    if age >= 85:
        return "85+"
    return [str(age), f"{age:03d}Y", f"{age} Y"][patient % 3]


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[common.Item]:
    patients = common.own_patients(rng, config.n)
    unique = sorted(set(patients))
    test = common.test_patients(rng, patients, config.test_fraction)
    others = [p for p in unique if p not in test]
    valid = set(rng.permutation(others)[: len(others) // 10].tolist()) if len(others) > 2 else set()
    blank_split = {p for p in others if p not in valid and rng.random() < 0.5}
    no_mass = set(unique[int(len(unique) * 0.75) :])
    sexes = {p: str(rng.choice(["M", "F", "F", "M", ""])) for p in unique}
    ages = {p: int(rng.integers(18, 95)) if rng.random() > 0.05 else -1 for p in unique}
    # a blank patient cell only where the image is the patient's one: the patient count holds
    images = Counter(patients)
    no_patient = {p for p in unique if images[p] == 1 and rng.random() < 0.5}
    names = list(FINDINGS.values())
    rates = common.own_rates(names, config.prevalence_floor)
    items, counts = [], dict.fromkeys(unique, 0)
    for index, patient in enumerate(patients):
        counts[patient] += 1
        truth = rng.random(len(names)) < rates
        if truth.sum() > 3:  # at most three patterns in one image
            truth[rng.permutation(np.flatnonzero(truth))[3:]] = False
        cells: dict[str, str] = {}
        float_style = index % 5 == 0
        unlabelled = rng.random() < _UNLABELLED_ROWS
        for column, finding, positive in zip(FINDINGS, names, truth, strict=True):
            roll = rng.random()
            if unlabelled or (finding == "Mass" and patient in no_mass) or roll < 0.08:
                state = None  # not labelled
            elif roll < 0.14:
                state = -1  # uncertain (drawn or not)
            else:
                state = 1 if positive else 0
            cells[column] = _cell(state, float_style) if state is not None else ""
        split = "test" if patient in test else "valid" if patient in valid else "train"
        age = ages[patient]
        extra = {
            "cells": cells,
            "patient_id": "" if patient in no_patient else f"P{patient:05d}",
            "view": str(rng.choice(_VIEWS)),
            "sex": sexes[patient],
            "age": "unknown" if age < 0 else _age(age, patient),
            "split": "" if patient in blank_split else split,
            "notes": str(rng.choice(_NOTES)),
        }
        name = f"images/P{patient:05d}/{counts[patient]}{common.picture_suffix(rng)}"
        drawn = tuple(f for f, t in zip(names, truth, strict=True) if t)
        items.append(common.Item(index, patient, name, drawn, patient in test, extra))
    return items


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the labels-CSV imitation into `config.out`; `common.own_summary`'s dict
    (files: `labels`; `findings`: the patterns drawn, `Consolidation` for `COVID-19`)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    items = _plan(np.random.default_rng([config.seed, CODE]), config)
    path = out / "labels.csv"
    rows = [
        [i.name, *(i.extra[k] for k in _HEADER[1:6]), *i.extra["cells"].values(), i.extra["notes"]]
        for i in items
    ]
    path.write_bytes(common.csv_text(_HEADER, rows).encode(ENCODING))

    def save(path: Path, item: common.Item) -> None:
        common.save_picture(path, common.own_pixels(item, config, CODE, STYLE))

    common.write_items(out, items, config, LAYOUT, save, progress)
    return common.own_summary(out, LAYOUT, items, {"labels": str(path)})


IMITATION = common.Imitation(
    LAYOUT,
    "images/<patient>/ and a cp1252 labels.csv (one column per finding, 1/0/-1/blank, "
    "COVID-19 of its own)",
    generate,
)
