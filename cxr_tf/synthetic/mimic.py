"""The MIMIC-CXR-JPG imitation (`python -m cxr_tf.synth --layout mimic`), read by the
`mimic` source as the real release would be.

It writes `mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz` (gzipped like the release) and
`files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`; labels per study (the CheXpert labeller's
cells), some studies (about 4%) without a label row; ViewPosition PA, AP, AP AXIAL,
LATERAL, LL or blank; study ids in no particular order, StudyDate/StudyTime giving the
studies' order; an official train / validate / test split. Images are 8-bit JPEGs
(quality 90) in this imitation's `STYLE`; rates as in the CheXpert imitation (the same
labeller).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.sources import registry
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import Style

LAYOUT = "mimic"
STYLE = Style(gain=0.9, offset=10.0)
FILES = {
    "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "metadata": "mimic-cxr-2.0.0-metadata.csv.gz",
    "split": "mimic-cxr-2.0.0-split.csv.gz",
}
_META_HEADER = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
    "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
    "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip


def _unique_ints(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    return [int(v) for v in rng.choice(np.arange(low, high), size=count, replace=False)]


def _write_files(rng: np.random.Generator, out: Path, studies: list[common.Study]) -> common.Files:
    mapping = registry.get(LAYOUT).labels  # the label file's columns -> vocabulary findings
    unlabelled = set(common.unlabel(rng, studies))
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
            shots.append(common.Shot(len(shots), name, out / name, study.drawn))
        if study.number not in unlabelled:
            cells = common.labeller_cells(study.states, mapping)
            cells["No Finding"] = "" if common.labeller_found(study.states) else "1.0"
            label_rows.append([subject, sid, *(cells[c] for c in sorted(cells))])
    label_header = ["subject_id", "study_id", *sorted([*mapping, "No Finding"])]
    paths = {key: out / name for key, name in FILES.items()}
    key = lambda r: (r[1], r[2], r[0])  # noqa: E731  subject, study, dicom
    out.mkdir(parents=True, exist_ok=True)
    common.write_gzip(paths["chexpert"], common.csv_text(label_header, sorted(label_rows)))
    common.write_gzip(paths["metadata"], common.csv_text(_META_HEADER, sorted(meta_rows, key=key)))
    split_key = lambda r: (r[2], r[1], r[0])  # noqa: E731  subject, study, dicom
    split_header = ["dicom_id", "study_id", "subject_id", "split"]
    split_rows.sort(key=split_key)
    common.write_gzip(paths["split"], common.csv_text(split_header, split_rows))
    splits = {
        name: sum(s.n_images for s in studies if (s.test, s.validation) == flags)
        for name, flags in (("train", (False, False)), ("validation", (False, True)),
                            ("test", (True, False)))
    }  # fmt: skip
    return common.Files(shots, views, paths, splits)


RELEASE = common.Release(
    layout=LAYOUT,
    code=2,
    style=STYLE,
    rates=common.LABELLER_RATES,
    uncertain=common.LABELLER_UNCERTAIN,
    explicit_negative=0.3,
    write_files=_write_files,
    save=common.save_drawn_jpeg,
    validation=True,
)


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the MIMIC-CXR-JPG imitation into `config.out`; the summary of
    `common.generate_release` (splits: train, validation and test images)."""
    return common.generate_release(config, RELEASE, progress)


IMITATION = common.Imitation(
    LAYOUT, "the three gzipped CSVs and files/pNN/pSUBJECT/sSTUDY/*.jpg", generate
)
