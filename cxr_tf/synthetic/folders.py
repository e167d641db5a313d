"""The class-folders imitation (`python -m cxr_tf.synth --layout folders`), a user's own
images as the `folders` source reads them.

It writes `train/<class>/` and `test/<class>/` (patients in `test_fraction` go to test),
classes `No Finding`, `Effusion`, `Cardiomegaly`, `Pneumothorax` and `Pleural Thickening`
(written with a space, as users do); one finding per image, class shares from NIH's rates
or the prevalence floor; PNGs with some JPEGs (`common.JPEG_FRACTION`); a `patients.csv`
(image, patient) at the root, 1-3 images per patient. Images are drawn in this
imitation's `STYLE` and rounded to 8 bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "folders"
CODE = 1  # part of the plan's and each image's seed
STYLE = Style(gain=0.92, offset=12.0, gamma=1.1, noise=2.0)
# Class folder name -> vocabulary finding (None: No Finding).
CLASSES: dict[str, str | None] = {
    "No Finding": None,
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
    "Pleural Thickening": "Pleural_Thickening",
}


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[common.Item]:
    patients = common.own_patients(rng, config.n)
    test = common.test_patients(rng, patients, config.test_fraction)
    items, counts = [], dict.fromkeys(set(patients), 0)
    for index, ((folder, finding), patient) in enumerate(
        zip(common.class_plan(rng, config, CLASSES), patients, strict=True)
    ):
        counts[patient] += 1
        split = "test" if patient in test else "train"
        suffix = common.picture_suffix(rng)
        name = f"{split}/{folder}/img{patient:05d}_{counts[patient]:02d}{suffix}"
        findings = (finding,) if finding else ()
        items.append(common.Item(index, patient, name, findings, patient in test))
    return items


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the class-folders imitation into `config.out`.

    Returns:
        `common.own_summary`'s dict (files: `patients`), with `class_counts` (class
        folder -> images) and `no_finding`.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    items = _plan(np.random.default_rng([config.seed, CODE]), config)
    path = out / "patients.csv"
    lines = ["image,patient", *(f"{i.name},P{i.patient:05d}" for i in items)]
    common.write_text(path, common.lines_text(lines))

    def save(path: Path, item: common.Item) -> None:
        common.save_picture(path, common.own_pixels(item, config, CODE, STYLE))

    common.write_items(out, items, config, LAYOUT, save, progress)
    summary = common.own_summary(out, LAYOUT, items, {"patients": str(path)})
    return {**summary, **common.class_counts(items)}


IMITATION = common.Imitation(
    LAYOUT, "class folders train|test/<class>/ of PNGs and JPEGs, and patients.csv", generate
)
