"""The CheXpert imitation (`python -m cxr_tf.synth --layout chexpert`), read by the
`chexpert` source as the real release would be.

It writes `CheXpert-v1.0-small/` inside `out`, with `train.csv`, `valid.csv` and
`train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg`. Label cells are `1.0`, `0.0`,
`-1.0` (uncertain) or blank (not mentioned), `No Finding` 1.0 when nothing but support
devices is positive or uncertain; `valid.csv` (the test patients) is fully labelled with
1.0 / 0.0 like the real one. Frontal images have AP/PA (a few blank), laterals a blank
AP/PA. Images are 8-bit JPEGs (quality 90) in this imitation's `STYLE`.

Rates: `--prevalence nih` uses the labeller's base rates (`common.LABELLER_RATES`, per
study, damped from the real dataset's so that images do not get crowded); a floor such as
0.1 raises every labelled finding's positive rate to at least the floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.labels import NEGATIVE, POSITIVE, VOCABULARY
from cxr_tf.sources import registry
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "chexpert"
STYLE = Style(gain=0.85, offset=20.0, gamma=0.7, noise=10.0)
RELEASE_FOLDER = "CheXpert-v1.0-small"


def _write_files(rng: np.random.Generator, out: Path, studies: list[common.Study]) -> common.Files:
    mapping = registry.get(LAYOUT).labels  # the file's label column -> vocabulary finding
    release = out / RELEASE_FOLDER
    columns = list(mapping)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *columns]
    # train patients first, then the valid.csv ones, numbered from 1 like the release
    numbers: dict[int, int] = {}
    for study in sorted(studies, key=lambda s: (s.test, s.number)):
        numbers.setdefault(study.patient, len(numbers) + 1)
    people = {
        p: (rng.choice(["Male", "Female", "Unknown"], p=[0.55, 0.44, 0.01]),
            int(np.clip(round(rng.normal(60, 17)), 18, 90)))
        for p in sorted(numbers)
    }  # fmt: skip
    rows: dict[str, list] = {"train": [], "valid": []}
    shots, views = [], {}
    for study in studies:
        folder = "valid" if study.test else "train"
        if study.test:  # fully labelled by radiologists: no blanks, no uncertainty
            for f in registry.labelled_by(LAYOUT):
                column = VOCABULARY.index(f)
                study.states[column] = POSITIVE if f in study.drawn else NEGATIVE
        cells = list(common.labeller_cells(study.states, mapping).values())
        no_finding = "" if common.labeller_found(study.states) else "1.0"
        if study.test:
            no_finding = no_finding or "0.0"
        sex, age = people[study.patient]
        for j in range(study.n_images):
            lateral = j == 1
            kind = "lateral" if lateral else "frontal"
            ap_pa = "" if lateral else str(rng.choice(["AP", "PA", ""], p=[0.65, 0.3, 0.05]))
            name = (
                f"{RELEASE_FOLDER}/{folder}/patient{numbers[study.patient]:05d}/"
                f"study{study.rank + 1}/view{j + 1}_{kind}.jpg"
            )
            row = [name, sex, age + study.rank // 2, kind.capitalize(), ap_pa, no_finding, *cells]
            rows[folder].append(row)
            views[name] = "Lateral" if lateral else ap_pa
            shots.append(common.Shot(len(shots), name, out / name, study.drawn))
    paths = {"release": release, "train_csv": release / "train.csv"}
    paths["valid_csv"] = release / "valid.csv"
    release.mkdir(parents=True, exist_ok=True)
    for key, folder in (("train_csv", "train"), ("valid_csv", "valid")):
        common.write_text(paths[key], common.csv_text(header, rows[folder]))
    splits = {"train_val": len(rows["train"]), "test": len(rows["valid"])}
    return common.Files(shots, views, paths, splits)


RELEASE = common.Release(
    layout=LAYOUT,
    code=1,
    style=STYLE,
    rates=common.LABELLER_RATES,
    uncertain=common.LABELLER_UNCERTAIN,
    explicit_negative=0.3,
    write_files=_write_files,
    save=common.save_drawn_jpeg,
)


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the CheXpert imitation into `config.out`; the summary of
    `common.generate_release` (splits: train_val and test, valid.csv's images)."""
    return common.generate_release(config, RELEASE, progress)


IMITATION = common.Imitation(
    LAYOUT,
    f"{RELEASE_FOLDER}/ with train.csv, valid.csv and JPEGs per patient and study",
    generate,
)
