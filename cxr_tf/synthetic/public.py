"""Synthetic imitations of CheXpert, MIMIC-CXR-JPG and PadChest, for tests and the demo.

`generate(SynthConfig)` (`python -m cxr_tf.synth --layout chexpert|mimic|padchest`) writes
the release's files, columns, folder layout and value codes, so that the readers
(`cxr_tf.sources.chexpert`, `mimic`, `padchest`) meet what they meet in the real data:

- chexpert: `CheXpert-v1.0-small/` inside `out`, with `train.csv`, `valid.csv` and
  `train|valid/patientNNNNN/studyN/viewN_frontal|lateral.jpg`. Label cells are `1.0`,
  `0.0`, `-1.0` (uncertain) or blank (not mentioned), `No Finding` 1.0 when nothing but
  support devices is positive or uncertain; `valid.csv` (the test patients) is fully
  labelled with 1.0 / 0.0 like the real one. Frontal images have AP/PA (a few blank),
  laterals a blank AP/PA.
- mimic: `mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz` (gzipped like the release) and
  `files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`; labels per study, some studies (about 4%)
  without a label row; ViewPosition PA, AP, AP AXIAL, LATERAL, LL or blank; study ids in
  no particular order, StudyDate/StudyTime giving the studies' order.
- padchest: `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz` and 16-bit PNGs in
  numbered folders `<ImageDir>/<ImageID>`; `Labels` lists like
  `['pleural effusion', ' cardiomegaly']` (stray spaces, terms PadChest has but the
  vocabulary does not, `['normal']`), about 4% of the images not labelled (`[]` or a blank
  cell); Projection PA, AP, AP_horizontal, L, and a few COSTAL, EXCLUDE and UNK.

Images are drawn by `cxr_tf.synthetic.generator.draw` in each layout's `STYLES` entry (a domain
shift against the NIH imitation): a finding's pattern is drawn in every image of a study
labelled positive for it, in the images of a study labelled uncertain with probability
0.5 (decided once per study), and never for a negative or blank label. Only the findings a
layout labels occur (`cxr_tf.labels.labelled_by`). CheXpert and MIMIC images are 8-bit
JPEGs (quality 90). PadChest images are 16-bit PNGs holding 12-bit data shifted left by 4
bits (`round(v * 4095 / 255) << 4`, values 0-65520), as a 12-bit detector's output
left-aligned in 16 bits; the converter maps 16-bit values linearly over the full range,
`round(q * 255 / 65535)`, which gives back the drawn 8-bit value within 1.

Rates: `--prevalence nih` uses each layout's base rates (`RATES`, per study, damped from
the real datasets' so that images do not get crowded); a floor such as 0.1 raises every
labelled finding's positive rate to at least the floor. Counts are exact:
`round(rate * studies)` studies per finding, at least one once there are 20 studies.

The same config gives byte-identical files: one `numpy` Generator seeded with `seed` makes
the plan (patients, studies, labels, names, CSV values), each image's pixels come from
`draw(..., seed=(seed, layout code, image number))`, the gzip headers carry no time and
no name, and PIL's JPEG and PNG encoders are deterministic.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr_tf.config import SynthConfig
from cxr_tf.labels import (
    CHEXPERT_LABELS,
    NEGATIVE,
    PADCHEST_LABELS,
    PADCHEST_NORMAL,
    POSITIVE,
    UNCERTAIN,
    UNLABELLED,
    VOCABULARY,
    labelled_by,
)
from cxr_tf.synthetic.generator import Style, draw

LAYOUTS = ("chexpert", "mimic", "padchest")
_CODES = {"chexpert": 1, "mimic": 2, "padchest": 3}  # part of each image's pixel seed
STYLES: dict[str, Style] = {
    "chexpert": Style(gain=0.85, offset=20.0, gamma=0.7, noise=10.0),
    "mimic": Style(gain=0.9, offset=10.0),
    "padchest": Style(gamma=1.2),
}
CHEXPERT_RELEASE = "CheXpert-v1.0-small"
MIMIC_FILES = {
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
}
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
PNG_SHIFT = 4  # PadChest: 12-bit values << 4

# Per-study positive rates (about half the real datasets', capped at 0.25) and uncertain
# rates (CheXpert's labeler is most often unsure of atelectasis and consolidation).
_CHEXPERT_RATES = {
    "Support_Devices": 0.25, "Lung_Opacity": 0.22, "Effusion": 0.20, "Edema": 0.12,
    "Atelectasis": 0.08, "Cardiomegaly": 0.07, "Pneumothorax": 0.05, "Consolidation": 0.04,
    "Enlarged_Cardiomediastinum": 0.03, "Lung_Lesion": 0.03, "Fracture": 0.02,
    "Pneumonia": 0.02, "Pleural_Other": 0.01,
}  # fmt: skip
_CHEXPERT_UNCERTAIN = {
    "Atelectasis": 0.08, "Consolidation": 0.06, "Pneumonia": 0.04, "Edema": 0.03,
    "Enlarged_Cardiomediastinum": 0.03, "Effusion": 0.03, "Cardiomegaly": 0.02,
}  # fmt: skip
_PADCHEST_RATES = {
    "Cardiomegaly": 0.09, "Effusion": 0.07, "Infiltration": 0.06, "Atelectasis": 0.05,
    "Support_Devices": 0.05, "Nodule": 0.04, "Pneumonia": 0.03, "Consolidation": 0.03,
    "Pleural_Thickening": 0.03, "Fracture": 0.03, "Emphysema": 0.02, "Hernia": 0.02,
    "Mass": 0.01, "Edema": 0.01, "Fibrosis": 0.01, "Pneumothorax": 0.01,
}  # fmt: skip
RATES: dict[str, dict[str, float]] = {
    "chexpert": _CHEXPERT_RATES,
    "mimic": _CHEXPERT_RATES,
    "padchest": _PADCHEST_RATES,
}
UNCERTAIN_RATES: dict[str, dict[str, float]] = {
    "chexpert": _CHEXPERT_UNCERTAIN,
    "mimic": _CHEXPERT_UNCERTAIN,
    "padchest": {},  # PadChest's terms carry no uncertainty
}
# Share of the cells neither positive nor uncertain written 0.0 (the rest blank).
_EXPLICIT_NEGATIVE = 0.3
_UNLABELLED_SHARE = 0.04  # MIMIC studies without a label row, PadChest images without terms
_STUDIES_PER_PATIENT = (0.5, 0.25, 0.15, 0.1)
_IMAGES_PER_STUDY = (0.55, 0.4, 0.05)
_CODE_TEXT = {POSITIVE: "1.0", NEGATIVE: "0.0", UNCERTAIN: "-1.0", UNLABELLED: ""}
# PadChest terms the vocabulary has no finding for (ignored by the reader).
_PADCHEST_OTHER_TERMS = (
    "chronic changes", "kyphosis", "aortic elongation", "scoliosis", "granuloma",
    "costophrenic angle blunting", "calcified granuloma", "hilar congestion",
)  # fmt: skip


@dataclasses.dataclass
class _Study:
    """One study of the plan."""

    number: int  # 0-based, in plan order
    patient: int  # 0-based, in plan order
    rank: int  # the study's place among its patient's studies (0 first)
    n_images: int
    states: np.ndarray  # (V,) uint8: what the layout's files say
    drawn: tuple[str, ...]  # findings whose patterns its images show
    test: bool = False
    validation: bool = False


@dataclasses.dataclass
class _Shot:
    """One image: where it goes and what its pixels show."""

    number: int
    name: str  # image_index as the reader gives it
    path: Path
    drawn: tuple[str, ...]


# --- the plan ----------------------------------------------------------------------------


def _studies(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """(patient, rank, images) per study, `n` images in all."""
    out, total, patient = [], 0, 0
    while total < n:
        count = int(rng.choice(len(_STUDIES_PER_PATIENT), p=_STUDIES_PER_PATIENT)) + 1
        for rank in range(count):
            images = int(rng.choice(len(_IMAGES_PER_STUDY), p=_IMAGES_PER_STUDY)) + 1
            images = min(images, n - total)
            if images == 0:
                break
            out.append((patient, rank, images))
            total += images
        patient += 1
    return out


def _label_states(
    rng: np.random.Generator, layout: str, n_studies: int, floor: float
) -> np.ndarray:
    """(studies, V) label states with exact per-finding positive and uncertain counts."""
    states = np.full((n_studies, len(VOCABULARY)), UNLABELLED, dtype=np.uint8)
    explicit = 1.0 if layout == "padchest" else _EXPLICIT_NEGATIVE
    at_least = 1 if n_studies >= 20 else 0
    for finding in labelled_by(layout):
        column = VOCABULARY.index(finding)
        rate = max(RATES[layout].get(finding, 0.0), floor)
        n_pos = min(n_studies, max(round(rate * n_studies), at_least))
        order = rng.permutation(n_studies)
        states[order[:n_pos], column] = POSITIVE
        u = UNCERTAIN_RATES[layout].get(finding, 0.0)
        n_unc = min(n_studies - n_pos, max(round(u * n_studies), at_least if u else 0))
        states[order[n_pos : n_pos + n_unc], column] = UNCERTAIN
        rest = order[n_pos + n_unc :]
        states[rest[rng.random(len(rest)) < explicit], column] = NEGATIVE
    return states


def _pick(rng: np.random.Generator, n: int, share: float, at_least: int) -> np.ndarray:
    """Indices of about `share` of `n` items (at least `at_least` when n allows)."""
    count = min(n, max(round(share * n), at_least))
    return np.sort(rng.permutation(n)[:count])


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[_Study]:
    layout = config.layout
    shape = _studies(rng, config.n)
    states = _label_states(rng, layout, len(shape), config.prevalence_floor)
    studies = []
    for i, (patient, rank, n_images) in enumerate(shape):
        drawn = tuple(
            f
            for f in VOCABULARY
            if states[i, VOCABULARY.index(f)] == POSITIVE
            or (states[i, VOCABULARY.index(f)] == UNCERTAIN and rng.random() < 0.5)
        )
        studies.append(_Study(i, patient, rank, n_images, states[i].copy(), drawn))
    patients = max(s.patient for s in studies) + 1
    order = rng.permutation(patients)
    n_test = round(config.test_fraction * patients)
    if config.test_fraction > 0 and patients >= 2:
        n_test = min(max(n_test, 1), patients - 1)
    test = set(order[:n_test].tolist())
    n_val = min(max(round(0.1 * patients), 1), patients - n_test - 1) if patients >= 3 else 0
    validation = set(order[n_test : n_test + n_val].tolist())
    for study in studies:
        study.test = study.patient in test
        study.validation = layout == "mimic" and study.patient in validation
    return studies


def _unlabel(rng: np.random.Generator, studies: list[_Study]) -> list[int]:
    """Studies whose labels are withheld (MIMIC: no label row; PadChest: empty Labels)."""
    chosen = _pick(rng, len(studies), _UNLABELLED_SHARE, 2 if len(studies) >= 10 else 0)
    for i in chosen:
        studies[i].states[:] = UNLABELLED
    return [int(i) for i in chosen]


# --- files -------------------------------------------------------------------------------


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_gzip(path: Path, text: str) -> None:
    """Gzipped text with no time or name in the header, so equal text gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def _digits(rng: np.random.Generator, count: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, count))


def _chexpert(rng: np.random.Generator, out: Path, studies: list[_Study]) -> tuple:
    release = out / CHEXPERT_RELEASE
    columns = list(CHEXPERT_LABELS)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *columns]
    support = VOCABULARY.index("Support_Devices")
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
            for f in labelled_by("chexpert"):
                column = VOCABULARY.index(f)
                study.states[column] = POSITIVE if f in study.drawn else NEGATIVE
        cells = [
            _CODE_TEXT[int(study.states[VOCABULARY.index(CHEXPERT_LABELS[c])])] for c in columns
        ]
        found = np.isin(study.states, (POSITIVE, UNCERTAIN))
        found[support] = False
        no_finding = "" if found.any() else "1.0"
        if study.test:
            no_finding = no_finding or "0.0"
        sex, age = people[study.patient]
        for j in range(study.n_images):
            lateral = j == 1
            kind = "lateral" if lateral else "frontal"
            ap_pa = "" if lateral else str(rng.choice(["AP", "PA", ""], p=[0.65, 0.3, 0.05]))
            name = (
                f"{CHEXPERT_RELEASE}/{folder}/patient{numbers[study.patient]:05d}/"
                f"study{study.rank + 1}/view{j + 1}_{kind}.jpg"
            )
            row = [name, sex, age + study.rank // 2, kind.capitalize(), ap_pa, no_finding, *cells]
            rows[folder].append(row)
            views[name] = "Lateral" if lateral else ap_pa
            shots.append(_Shot(len(shots), name, out / name, study.drawn))
    paths = {"release": release, "train_csv": release / "train.csv"}
    paths["valid_csv"] = release / "valid.csv"
    release.mkdir(parents=True, exist_ok=True)
    for key, folder in (("train_csv", "train"), ("valid_csv", "valid")):
        paths[key].write_text(_csv_text(header, rows[folder]), encoding="utf-8", newline="")
    splits = {"train_val": len(rows["train"]), "test": len(rows["valid"])}
    return shots, views, paths, splits


def _unique_ints(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    return [int(v) for v in rng.choice(np.arange(low, high), size=count, replace=False)]


def _mimic(rng: np.random.Generator, out: Path, studies: list[_Study]) -> tuple:
    unlabelled = set(_unlabel(rng, studies))
    patients = max(s.patient for s in studies) + 1
    subjects = _unique_ints(rng, patients, 10_000_000, 20_000_000)
    study_ids = _unique_ints(rng, len(studies), 50_000_000, 60_000_000)
    first_day = {p: int(rng.integers(0, 90 * 365)) for p in range(patients)}
    day = dict(first_day)
    meta_rows, split_rows, label_rows, shots, views = [], [], [], [], {}
    dicoms: set[str] = set()
    for study in studies:  # a patient's studies come in rank order
        subject, sid = subjects[study.patient], study_ids[study.number]
        day[study.patient] += int(rng.integers(1, 400)) if study.rank else 0
        date = datetime.date(2110, 1, 1) + datetime.timedelta(days=day[study.patient])
        time = f"{rng.integers(0, 24):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
        time += f".{rng.integers(0, 1000):03d}"
        split = "test" if study.test else "validate" if study.validation else "train"
        portable = rng.random() < 0.4
        for j in range(study.n_images):
            dicom = "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, 5))
            while dicom in dicoms:
                dicom = "-".join(f"{v:08x}" for v in rng.integers(0, 2**32, 5))
            dicoms.add(dicom)
            if j == 1:
                view = "LATERAL" if rng.random() < 0.85 else "LL"
            else:
                choices = ["AP", "AP AXIAL", ""] if portable else ["PA", "AP AXIAL", ""]
                view = str(rng.choice(choices, p=[0.95, 0.03, 0.02]))
            rows_, columns_ = [(3056, 2544), (2544, 3056), (2539, 3050)][int(rng.integers(3))]
            procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
            meta_rows.append(
                [dicom, subject, sid, procedure, view, rows_, columns_,
                 date.strftime("%Y%m%d"), time, procedure, "", "Erect"]
            )  # fmt: skip
            split_rows.append([dicom, sid, subject, split])
            name = f"files/p{str(subject)[:2]}/p{subject}/s{sid}/{dicom}.jpg"
            views[name] = view
            shots.append(_Shot(len(shots), name, out / name, study.drawn))
        if study.number not in unlabelled:
            cells = {c: _CODE_TEXT[int(study.states[VOCABULARY.index(f)])]
                     for c, f in CHEXPERT_LABELS.items()}  # fmt: skip
            found = np.isin(study.states, (POSITIVE, UNCERTAIN))
            found[VOCABULARY.index("Support_Devices")] = False
            cells["No Finding"] = "" if found.any() else "1.0"
            label_rows.append([subject, sid, *(cells[c] for c in sorted(cells))])
    label_header = ["subject_id", "study_id", *sorted([*CHEXPERT_LABELS, "No Finding"])]
    meta_header = [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
        "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
        "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]  # fmt: skip
    paths = {key: out / name for key, name in MIMIC_FILES.items()}
    key = lambda r: (r[1], r[2], r[0])  # noqa: E731  subject, study, dicom
    out.mkdir(parents=True, exist_ok=True)
    _write_gzip(paths["chexpert"], _csv_text(label_header, sorted(label_rows)))
    _write_gzip(paths["metadata"], _csv_text(meta_header, sorted(meta_rows, key=key)))
    split_key = lambda r: (r[2], r[1], r[0])  # noqa: E731
    _write_gzip(paths["split"], _csv_text(["dicom_id", "study_id", "subject_id", "split"],
                                          sorted(split_rows, key=split_key)))  # fmt: skip
    splits = {
        name: sum(s.n_images for s in studies if (s.test, s.validation) == flags)
        for name, flags in (("train", (False, False)), ("validation", (False, True)),
                            ("test", (True, False)))
    }  # fmt: skip
    return shots, views, paths, splits


def _padchest_labels(rng: np.random.Generator, study: _Study, unlabelled_turn: int) -> str:
    if (study.states == UNLABELLED).all():
        return "[]" if unlabelled_turn % 2 == 0 else ""
    synonyms: dict[str, list[str]] = {}
    for term, finding in PADCHEST_LABELS.items():
        synonyms.setdefault(finding, []).append(term)
    terms = [
        str(rng.choice(sorted(synonyms[f])))
        for f in VOCABULARY
        if study.states[VOCABULARY.index(f)] == POSITIVE
    ]
    if rng.random() < 0.3:
        terms.append(str(rng.choice(_PADCHEST_OTHER_TERMS)))
    if not terms:
        terms = [PADCHEST_NORMAL]
    spaced = [f" {t}" if rng.random() < 0.15 else t for t in terms]
    return "[" + ", ".join(f"'{t}'" for t in spaced) + "]"


def _padchest(rng: np.random.Generator, out: Path, studies: list[_Study]) -> tuple:
    _unlabel(rng, studies)
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
    header = [
        "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
        "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
        "Modality_DICOM", "Rows_DICOM", "Columns_DICOM", "BitsStored_DICOM", "ReportID",
        "MethodLabel", "Labels",
    ]  # fmt: skip
    dicom_view = {"PA": "POSTEROANTERIOR", "AP": "ANTEROPOSTERIOR", "AP_horizontal": "",
                  "L": "LATERAL"}  # fmt: skip
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
        labels = _padchest_labels(rng, study, turn)
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
                 sex, dicom_view.get(projection, ""), projection, "Manual review of DICOM fields",
                 "No", str(rng.choice(["CR", "DX"])), rows_, columns_, 12, study_id[:8],
                 method, labels]
            )  # fmt: skip
            name = f"{folder}/{image_id}"
            views[name] = projection
            shots.append(_Shot(number, name, out / name, study.drawn))
    paths = {"labels": out / PADCHEST_CSV}
    out.mkdir(parents=True, exist_ok=True)
    _write_gzip(paths["labels"], _csv_text(header, rows))
    return shots, views, paths, {}


# --- pixels ------------------------------------------------------------------------------


def _write_image(shot: _Shot, layout: str, size: int, seed: int) -> None:
    pixels, _ = draw(shot.drawn, size, (seed, _CODES[layout], shot.number), STYLES[layout])
    shot.path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "padchest":
        twelve = np.rint(np.clip(pixels, 0, 255) * (4095 / 255)).astype(np.uint16)
        Image.fromarray(twelve << PNG_SHIFT).save(shot.path, format="PNG", compress_level=1)
    else:
        gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        Image.fromarray(gray, "L").save(shot.path, format="JPEG", quality=90)


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the imitation `config.layout` (chexpert, mimic or padchest) into `config.out`.

    Returns:
        A dict with `out`, `layout`, `n_images`, `n_patients`, `n_studies`, `positives`
        and `uncertain` (finding -> images so labelled), `not_labelled_images` (images
        with every finding not labelled), `views` (the file's view value -> images),
        `splits` (official split -> images; {} for PadChest), `paths` (metadata files),
        and per image (keyed by the image_index its reader gives): `image_paths`,
        `labels` (the states the reader should give, VOCABULARY order) and `drawn`
        (findings whose patterns it shows).
    """
    layout = config.layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: this module writes {', '.join(LAYOUTS)}")
    out = Path(config.out)
    rng = np.random.default_rng(config.seed)
    studies = _plan(rng, config)
    writer = {"chexpert": _chexpert, "mimic": _mimic, "padchest": _padchest}[layout]
    shots, views, paths, splits = writer(rng, out, studies)

    workers = config.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(
            lambda shot: _write_image(shot, layout, config.image_size, config.seed), shots
        )
        for _ in tqdm(jobs, total=len(shots), desc=f"synth {layout}", disable=not progress):
            pass

    image_states = {}
    for study in studies:
        for _ in range(study.n_images):
            image_states[len(image_states)] = study.states
    labels = {shot.name: image_states[shot.number].tolist() for shot in shots}
    matrix = np.array([labels[s.name] for s in shots], dtype=np.uint8)
    value_counts: dict[str, int] = {}
    for value in views.values():
        value_counts[value] = value_counts.get(value, 0) + 1
    return {
        "out": str(out),
        "layout": layout,
        "n_images": len(shots),
        "n_patients": len({s.patient for s in studies}),
        "n_studies": len(studies),
        "positives": {f: int((matrix[:, i] == POSITIVE).sum()) for i, f in enumerate(VOCABULARY)},
        "uncertain": {
            f: int((matrix[:, i] == UNCERTAIN).sum()) for i, f in enumerate(VOCABULARY)
        },
        "not_labelled_images": int((matrix == UNLABELLED).all(axis=1).sum()),
        "views": dict(sorted(value_counts.items())),
        "splits": splits,
        "paths": {key: str(p) for key, p in paths.items()},
        "image_paths": {s.name: str(s.path) for s in shots},
        "labels": labels,
        "drawn": {s.name: list(s.drawn) for s in shots},
    }
