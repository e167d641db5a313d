"""The PadChest imitation (`python -m cxr_tf.synth --layout padchest`), read by the
`padchest` source as the real release would be.

It writes `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz` and 16-bit PNGs in
numbered folders `<ImageDir>/<ImageID>`; `Labels` lists like
`['pleural effusion', ' cardiomegaly']` (stray spaces, terms PadChest has but the
vocabulary does not, `['normal']`), about 4% of the images not labelled (`[]` or a blank
cell); Projection PA, AP, AP_horizontal, L, and a few COSTAL, EXCLUDE and UNK. A labelled
image has every finding the source's label map reaches positive or negative (no
uncertainty, no blanks).

Images are 16-bit PNGs holding 12-bit values as they are (`round(v * 4095 / 255)`, values
0-4095; PadChest's rows say BitsStored 12) with an sBIT chunk of 12, so the converter maps
them over the 12-bit range, `q * 255 / 4095`, which gives back the drawn value within 1/32
of a gray level (without the chunk they would be stored at most 16 of 255, and conversion
would warn).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from cxr_tf.config import SynthConfig
from cxr_tf.labels import POSITIVE, UNLABELLED, VOCABULARY
from cxr_tf.sources import registry
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "padchest"
STYLE = Style(gamma=1.2)
LABELS_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
SIGNIFICANT_BITS = 12  # the detector's bits, held as they are in 16-bit samples
NORMAL = "normal"  # the file's term for an image without findings
# Per-study positive rates (about half the real dataset's).
RATES = {
    "Cardiomegaly": 0.09, "Effusion": 0.07, "Infiltration": 0.06, "Atelectasis": 0.05,
    "Support_Devices": 0.05, "Nodule": 0.04, "Pneumonia": 0.03, "Consolidation": 0.03,
    "Pleural_Thickening": 0.03, "Fracture": 0.03, "Emphysema": 0.02, "Hernia": 0.02,
    "Mass": 0.01, "Edema": 0.01, "Fibrosis": 0.01, "Pneumothorax": 0.01,
}  # fmt: skip
# Terms the vocabulary has no finding for (the reader ignores them).
OTHER_TERMS = (
    "chronic changes", "kyphosis", "aortic elongation", "scoliosis", "granuloma",
    "costophrenic angle blunting", "calcified granuloma", "hilar congestion",
)  # fmt: skip
_HEADER = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
    "Modality_DICOM", "Rows_DICOM", "Columns_DICOM", "BitsStored_DICOM", "ReportID",
    "MethodLabel", "Labels",
]  # fmt: skip
_DICOM_VIEW = {"PA": "POSTEROANTERIOR", "AP": "ANTEROPOSTERIOR", "AP_horizontal": "",
               "L": "LATERAL"}  # fmt: skip


def _digits(rng: np.random.Generator, count: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, count))


def _labels(rng: np.random.Generator, study: common.Study, unlabelled_turn: int) -> str:
    if (study.states == UNLABELLED).all():
        return "[]" if unlabelled_turn % 2 == 0 else ""
    synonyms: dict[str, list[str]] = {}
    for term, finding in registry.get(LAYOUT).labels.items():
        synonyms.setdefault(finding, []).append(term)
    terms = [
        str(rng.choice(sorted(synonyms[f])))
        for f in VOCABULARY
        if study.states[VOCABULARY.index(f)] == POSITIVE
    ]
    if rng.random() < 0.3:
        terms.append(str(rng.choice(OTHER_TERMS)))
    if not terms:
        terms = [NORMAL]
    spaced = [f" {t}" if rng.random() < 0.15 else t for t in terms]
    return "[" + ", ".join(f"'{t}'" for t in spaced) + "]"


def _write_files(rng: np.random.Generator, out: Path, studies: list[common.Study]) -> common.Files:
    common.unlabel(rng, studies)
    n = sum(s.n_images for s in studies)
    per_folder = max(1, math.ceil(n / 4))
    patients = max(s.patient for s in studies) + 1
    people = {
        p: (_digits(rng, 36), str(rng.choice(["M", "F"])), int(rng.integers(1925, 2000)))
        for p in range(patients)
    }
    # a few images of projections that are not chest PA/AP/lateral
    odd = rng.permutation(n)
    n_odd = [max(round(0.02 * n), 1), max(round(0.01 * n), 1), max(round(0.01 * n), 1)]
    special = {}
    for value, start, count in zip(
        ("COSTAL", "EXCLUDE", "UNK"), np.cumsum([0, *n_odd[:-1]]), n_odd, strict=True
    ):
        for i in odd[start : start + count] if n >= 50 else []:
            special[int(i)] = value
    rows, shots, views = [], [], {}
    day: dict[int, int] = {}
    turn = 0
    for study in studies:
        patient_id, sex, birth = people[study.patient]
        # a patient's studies come in rank order, each some days after the one before
        day[study.patient] = day.get(study.patient, int(rng.integers(0, 365 * 6)))
        day[study.patient] += int(rng.integers(1, 300)) if study.rank else 0
        date = datetime.date(2009, 1, 1) + datetime.timedelta(days=day[study.patient])
        study_id = "".join(f"{v:08x}" for v in rng.integers(0, 2**32, 4))
        labels = _labels(rng, study, turn)
        turn += int((study.states == UNLABELLED).all())
        method = "Physician" if rng.random() < 0.27 else "RNN_model"
        birth_text = f"{birth}.0" if rng.random() < 0.95 else ""
        for j in range(study.n_images):
            number = len(shots)
            if number in special:
                projection = special[number]
            elif j == 1:
                projection = "L"
            else:
                projection = str(rng.choice(["PA", "AP", "AP_horizontal"], p=[0.7, 0.1, 0.2]))
            image_id = (
                f"{_digits(rng, 40)}{number:05d}_{rng.integers(0, 100):02d}-"
                f"{rng.integers(0, 1000):03d}-{rng.integers(0, 1000):03d}.png"
            )
            folder = str(number // per_folder)
            rows_, columns_ = [(2828, 2320), (2320, 2828), (3000, 2500)][int(rng.integers(3))]
            rows.append(
                [image_id, folder, date.strftime("%Y%m%d"), study_id, patient_id, birth_text,
                 sex, _DICOM_VIEW.get(projection, ""), projection, "Manual review of DICOM fields",
                 "No", str(rng.choice(["CR", "DX"])), rows_, columns_, 12, study_id[:8],
                 method, labels]
            )  # fmt: skip
            name = f"{folder}/{image_id}"
            views[name] = projection
            shots.append(common.Shot(number, name, out / name, study.drawn))
    paths = {"labels": out / LABELS_CSV}
    out.mkdir(parents=True, exist_ok=True)
    common.write_gzip(paths["labels"], common.csv_text(_HEADER, rows))
    return common.Files(shots, views, paths, {})


def _save(path: Path, pixels: np.ndarray) -> None:
    top = 2**SIGNIFICANT_BITS - 1
    twelve = np.rint(np.clip(pixels, 0, 255) * (top / 255)).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([SIGNIFICANT_BITS]))  # PIL writes it before the image data
    Image.fromarray(twelve).save(path, format="PNG", compress_level=1, pnginfo=info)


RELEASE = common.Release(
    layout=LAYOUT,
    code=3,
    style=STYLE,
    rates=RATES,
    uncertain={},  # PadChest's terms carry no uncertainty
    explicit_negative=1.0,
    write_files=_write_files,
    save=_save,
)


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the PadChest imitation into `config.out`; the summary of
    `common.generate_release` (splits: {}, PadChest has no official split)."""
    return common.generate_release(config, RELEASE, progress)


IMITATION = common.Imitation(
    LAYOUT, "the gzipped labels CSV and 16-bit PNGs in numbered folders", generate
)
