"""Synthetic imitations of a user's own images, read by the "folders" and "csv" sources
(`cxr_tf.sources.custom`): `python -m cxr_tf.synth --layout folders|csv|dicom`.

- `folders`: `train/<class>/` and `test/<class>/` (patients in `test_fraction` go to test),
  classes `No Finding`, `Effusion`, `Cardiomegaly`, `Pneumothorax` and `Pleural Thickening`
  (written with a space, as users do); one finding per image; PNGs with some JPEGs; a
  `patients.csv` (image, patient) at the root, 1-3 images per patient.
- `csv`: `images/<patient>/<n>.png|.jpg` and `labels.csv` with columns `path, patient_id,
  view, sex, age, split` and one column per finding (`Effusion`, `Cardiomegaly`,
  `Pneumothorax`, `Mass`, `Nodule`, `Pleural Thickening`): `1` drawn, `0` not drawn, `-1`
  uncertain (drawn or not), blank not labelled (and `1.0`-style cells on some rows; `Mass`
  left blank for the last quarter of the patients, as when one site did not label it).
  Views are PA, AP, a few `LL` (lateral) and some blank; ages plain (`45`) or DICOM-style
  (`045Y`); `split` is `test` for the test patients, `valid` for about a tenth of the
  others, and `train` or blank for the rest.
- `dicom`: flat class folders (`normal`, `Effusion`, `Cardiomegaly`, `Pneumothorax`) of
  `.dcm` files with PatientID, PatientSex, PatientAge (`045Y`), ViewPosition, Modality and
  ImagerPixelSpacing, written with pydicom in four pixel encodings (`DICOM_KINDS`): 16-bit
  MONOCHROME2 (12 bits stored), 16-bit MONOCHROME2 with RescaleSlope 0.5 and
  RescaleIntercept -1024, 16-bit MONOCHROME1 (inverted pixels) and 8-bit MONOCHROME2. Each
  has a WindowCenter/WindowWidth chosen so that `cxr_tf.sources.dicom.decode` gives back the
  drawn 8-bit image exactly; about a quarter are RLE Lossless compressed (pydicom's own
  encoder), the others uncompressed (Explicit VR Little Endian).

Images are drawn by `cxr_tf.synthetic.generator.draw` in a style per layout (`STYLES`) and
rounded to 8 bits. The same config gives byte-identical files: the plan comes from one
Generator seeded with `seed`, each image's pixels from `(seed, layout, index)`, and DICOM
UIDs are derived from the same numbers.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import generator as synthetic

STYLES: dict[str, synthetic.Style] = {
    "folders": synthetic.Style(gain=0.92, offset=12.0, gamma=1.1, noise=2.0),
    "csv": synthetic.Style(gain=1.05, offset=-6.0, gamma=0.9, noise=3.0),
    "dicom": synthetic.Style(gain=1.0, offset=0.0, gamma=1.25, noise=1.5),
}
_LAYOUT_SEED = {"folders": 1, "csv": 2, "dicom": 3}
# Class folder name -> vocabulary finding (None: No Finding).
FOLDER_CLASSES: dict[str, str | None] = {
    "No Finding": None,
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
    "Pleural Thickening": "Pleural_Thickening",
}
DICOM_CLASSES: dict[str, str | None] = {
    "normal": None,
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
}
# labels.csv finding column -> vocabulary finding.
CSV_FINDINGS: dict[str, str] = {
    "Effusion": "Effusion",
    "Cardiomegaly": "Cardiomegaly",
    "Pneumothorax": "Pneumothorax",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pleural Thickening": "Pleural_Thickening",
}
# name -> (photometric, bits allocated, rescale slope, rescale intercept, stored per level)
DICOM_KINDS: dict[str, tuple[str, int, float, float, int]] = {
    "mono2_16bit": ("MONOCHROME2", 16, 1.0, 0.0, 16),
    "mono2_16bit_rescaled": ("MONOCHROME2", 16, 0.5, -1024.0, 16),
    "mono1_16bit": ("MONOCHROME1", 16, 1.0, 0.0, 16),
    "mono2_8bit": ("MONOCHROME2", 8, 1.0, 0.0, 1),
}
RLE_FRACTION = 0.25
JPEG_FRACTION = 0.15
_IMAGES_PER_PATIENT = (0.6, 0.3, 0.1)  # 1, 2 or 3 images
_DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root (generate_uid's default)


@dataclasses.dataclass
class _Item:
    index: int
    patient: int
    name: str  # path relative to the output folder
    findings: tuple[str, ...]  # drawn
    test: bool
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _rates(findings: Sequence[str], floor: float) -> np.ndarray:
    """Per-finding prevalence: NIH's rate (Pleural_Thickening and the others as named), at
    least `floor`."""
    return np.array([max(synthetic.NIH_RATES.get(f, 0.05), floor) for f in findings])


def _patients(rng: np.random.Generator, n: int) -> list[int]:
    """Patient number (1-based) of each of n images, 1-3 images per patient."""
    patients: list[int] = []
    patient = 0
    while len(patients) < n:
        patient += 1
        count = int(rng.choice(len(_IMAGES_PER_PATIENT), p=_IMAGES_PER_PATIENT)) + 1
        patients += [patient] * min(count, n - len(patients))
    return patients


def _test_patients(rng: np.random.Generator, patients: Sequence[int], fraction: float) -> set:
    unique = sorted(set(patients))
    count = int(round(fraction * len(unique)))
    if fraction > 0 and len(unique) > 1:
        count = min(max(count, 1), len(unique) - 1)
    return set(rng.permutation(unique)[:count].tolist())


def _class_plan(
    rng: np.random.Generator, config: SynthConfig, classes: dict[str, str | None]
) -> list[tuple[str, str | None]]:
    """(class folder, finding) per image: class shares from NIH's rates (or the floor)."""
    findings = [f for f in classes.values() if f is not None]
    weights = np.concatenate([[synthetic.NIH_NO_FINDING_RATE],
                              _rates(findings, config.prevalence_floor)])  # fmt: skip
    names = [c for c, f in classes.items() if f is None] + [
        c for c, f in classes.items() if f is not None
    ]
    picks = rng.choice(len(names), size=config.n, p=weights / weights.sum())
    return [(names[i], classes[names[i]]) for i in picks]


def _suffix(rng: np.random.Generator) -> str:
    return ".jpg" if rng.random() < JPEG_FRACTION else ".png"


def _plan_folders(rng: np.random.Generator, config: SynthConfig) -> list[_Item]:
    patients = _patients(rng, config.n)
    test = _test_patients(rng, patients, config.test_fraction)
    items, counts = [], dict.fromkeys(set(patients), 0)
    for index, ((folder, finding), patient) in enumerate(
        zip(_class_plan(rng, config, FOLDER_CLASSES), patients, strict=True)
    ):
        counts[patient] += 1
        split = "test" if patient in test else "train"
        name = f"{split}/{folder}/img{patient:05d}_{counts[patient]:02d}{_suffix(rng)}"
        items.append(_Item(index, patient, name, (finding,) if finding else (), patient in test))
    return items


def _plan_dicom(rng: np.random.Generator, config: SynthConfig) -> list[_Item]:
    patients = _patients(rng, config.n)
    sexes = {p: str(rng.choice(["M", "F"])) for p in sorted(set(patients))}
    ages = {p: int(rng.integers(18, 90)) for p in sorted(set(patients))}
    kinds = list(DICOM_KINDS)
    items, counts = [], dict.fromkeys(set(patients), 0)
    for index, ((folder, finding), patient) in enumerate(
        zip(_class_plan(rng, config, DICOM_CLASSES), patients, strict=True)
    ):
        counts[patient] += 1
        name = f"{folder}/DCM{patient:05d}_{counts[patient]:02d}.dcm"
        extra = {
            "kind": kinds[int(rng.integers(len(kinds)))],
            "rle": bool(rng.random() < RLE_FRACTION),
            "view": str(rng.choice(["PA", "PA", "AP", ""])),
            "sex": sexes[patient],
            "age": ages[patient],
            "modality": str(rng.choice(["DX", "CR"])),
        }
        items.append(_Item(index, patient, name, (finding,) if finding else (), False, extra))
    return items


def _cell(state: int, float_style: bool) -> str:
    text = {1: "1", 0: "0", -1: "-1"}.get(state, "")
    return f"{text}.0" if text and float_style else text


def _plan_csv(rng: np.random.Generator, config: SynthConfig) -> list[_Item]:
    patients = _patients(rng, config.n)
    unique = sorted(set(patients))
    test = _test_patients(rng, patients, config.test_fraction)
    others = [p for p in unique if p not in test]
    valid = set(rng.permutation(others)[: len(others) // 10].tolist()) if len(others) > 2 else set()
    blank_split = {p for p in others if p not in valid and rng.random() < 0.5}
    no_mass = set(unique[int(len(unique) * 0.75) :])
    sexes = {p: str(rng.choice(["M", "F", "F", "M", ""])) for p in unique}
    ages = {p: int(rng.integers(18, 90)) for p in unique}
    names = list(CSV_FINDINGS.values())
    rates = _rates(names, config.prevalence_floor)
    items, counts = [], dict.fromkeys(unique, 0)
    for index, patient in enumerate(patients):
        counts[patient] += 1
        truth = rng.random(len(names)) < rates
        if truth.sum() > 3:  # at most three patterns in one image
            truth[rng.permutation(np.flatnonzero(truth))[3:]] = False
        cells: dict[str, str] = {}
        float_style = index % 5 == 0
        for column, finding, positive in zip(CSV_FINDINGS, names, truth, strict=True):
            roll = rng.random()
            if (finding == "Mass" and patient in no_mass) or roll < 0.08:
                state = None  # not labelled
            elif roll < 0.14:
                state = -1  # uncertain (drawn or not)
            else:
                state = 1 if positive else 0
            cells[column] = _cell(state, float_style) if state is not None else ""
        split = "test" if patient in test else "valid" if patient in valid else "train"
        view = str(rng.choice(["PA", "PA", "PA", "AP", "AP", "LL", ""]))
        age = ages[patient]
        extra = {
            "cells": cells,
            "patient_id": f"P{patient:05d}",
            "view": view,
            "sex": sexes[patient],
            "age": f"{age:03d}Y" if patient % 2 else str(age),
            "split": "" if patient in blank_split else split,
        }
        name = f"images/P{patient:05d}/{counts[patient]}{_suffix(rng)}"
        drawn = tuple(f for f, t in zip(names, truth, strict=True) if t)
        items.append(_Item(index, patient, name, drawn, patient in test, extra))
    return items


# --- writing ----------------------------------------------------------------------------------


def _pixels(item: _Item, config: SynthConfig) -> np.ndarray:
    seed = (config.seed, _LAYOUT_SEED[config.layout], item.index)
    pixels, _ = synthetic.draw(item.findings, config.image_size, seed, STYLES[config.layout])
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _write_picture(path: Path, gray: np.ndarray) -> None:
    buffer = io.BytesIO()
    if path.suffix == ".jpg":
        Image.fromarray(gray, "L").save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(gray, "L").save(buffer, format="PNG", compress_level=1)
    path.write_bytes(buffer.getvalue())


def _uid(config: SynthConfig, *parts: object) -> str:
    """A UID derived from the config and `parts` (the same numbers, the same UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(_UID_ROOT, entropy_srcs=[str(config.seed), *map(str, parts)]))


def window_for(slope: float, intercept: float, per_level: int) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) under which stored value `level * per_level` decodes to
    `level` (0..255) with the LINEAR VOI function (DICOM PS3.3 C.11.2.1.2)."""
    width = 255.0 * per_level * slope + 1.0
    return intercept + 0.5 + (width - 1.0) / 2.0, width


def dicom_bytes(
    gray: np.ndarray, kind: str, rle: bool, tags: dict[str, Any], uids: Sequence[str]
) -> bytes:
    """A DICOM file holding 8-bit `gray` in encoding `kind` (see DICOM_KINDS), RLE Lossless
    when `rle`; `tags` are header keywords -> values; `uids` the SOP instance, study and
    series UIDs. `cxr_tf.sources.dicom.decode` gives `gray` back."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    photometric, bits, slope, intercept, per_level = DICOM_KINDS[kind]
    levels = gray.astype(np.int64)
    if photometric == "MONOCHROME1":
        levels = 255 - levels
    stored = (levels * per_level).astype(np.uint16 if bits == 16 else np.uint8)
    center, width = window_for(slope, intercept, per_level)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uids[0]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = _DX_IMAGE_STORAGE
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uids[:3]
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if (slope, intercept) != (1.0, 0.0):
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.RescaleType = "US"
    ds.WindowCenter, ds.WindowWidth = f"{center:g}", f"{width:g}"
    ds.PixelData = stored.tobytes()
    if rle:
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write_dicom(path: Path, gray: np.ndarray, item: _Item, config: SynthConfig) -> None:
    extra = item.extra
    tags = {
        "PatientID": f"DCM{item.patient:05d}",
        "PatientName": f"Synthetic^{item.patient:05d}",
        "PatientSex": extra["sex"],
        "PatientAge": f"{extra['age']:03d}Y",
        "Modality": extra["modality"],
        "ImagerPixelSpacing": ["0.139", "0.139"],
        "BodyPartExamined": "CHEST",
    }
    if extra["view"]:
        tags["ViewPosition"] = extra["view"]
    uids = [_uid(config, "image", item.index), _uid(config, "study", item.patient),
            _uid(config, "series", item.index)]  # fmt: skip
    path.write_bytes(dicom_bytes(gray, extra["kind"], extra["rle"], tags, uids))


def _write_item(out: Path, item: _Item, config: SynthConfig) -> None:
    path = out / item.name
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = _pixels(item, config)
    if config.layout == "dicom":
        _write_dicom(path, gray, item, config)
    else:
        _write_picture(path, gray)


def _write_text(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the `config.layout` imitation (folders, csv or dicom) into `config.out`.

    Returns:
        A dict with `out`, `layout`, `n_images`, `n_patients`, `image_paths` (name -> path),
        `findings` (name -> the findings drawn), `class_counts` (folders, dicom: class
        folder -> images), `n_test` (images of test patients; 0 for dicom, which has no
        split), `files` (metadata files written) and, for dicom, `dicom` (name -> encoding
        kind and whether RLE compressed).
    """
    if config.layout not in _LAYOUT_SEED:
        raise ValueError(f"layout {config.layout!r} is not written by {__name__}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([config.seed, _LAYOUT_SEED[config.layout]])
    planner = {"folders": _plan_folders, "csv": _plan_csv, "dicom": _plan_dicom}
    items = planner[config.layout](rng, config)
    files: dict[str, str] = {}
    if config.layout == "folders":
        path = out / "patients.csv"
        _write_text(path, ["image,patient", *(f"{i.name},P{i.patient:05d}" for i in items)])
        files["patients"] = str(path)
    elif config.layout == "csv":
        path = out / "labels.csv"
        header = ["path", "patient_id", "view", "sex", "age", "split", *CSV_FINDINGS]
        rows = [
            ",".join([i.name, *(i.extra[k] for k in header[1:6]), *i.extra["cells"].values()])
            for i in items
        ]
        _write_text(path, [",".join(header), *rows])
        files["labels"] = str(path)

    workers = config.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(lambda item: _write_item(out, item, config), items)
        for _ in tqdm(jobs, total=len(items), desc=f"synth {config.layout}", disable=not progress):
            pass

    summary: dict[str, Any] = {
        "out": str(out),
        "layout": config.layout,
        "n_images": len(items),
        "n_patients": len({i.patient for i in items}),
        "n_test": sum(i.test for i in items),
        "image_paths": {i.name: str(out / i.name) for i in items},
        "findings": {i.name: list(i.findings) for i in items},
        "files": files,
    }
    if config.layout in ("folders", "dicom"):
        counts: dict[str, int] = {}
        for item in items:
            folder = item.name.split("/")[-2]
            counts[folder] = counts.get(folder, 0) + 1
        summary["class_counts"] = dict(sorted(counts.items()))
        summary["no_finding"] = sum(not i.findings for i in items)
    if config.layout == "dicom":
        summary["dicom"] = {i.name: {"kind": i.extra["kind"], "rle": i.extra["rle"]}
                            for i in items}  # fmt: skip
    return summary
