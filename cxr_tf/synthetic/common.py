"""What the imitations share: the `Imitation` record the registry lists, patients and test
patients, the study plan and label-state drawing of the public releases' imitations, the
image plan of the user's-own-images imitations, and writing files (text, gzip, PNG, JPEG)
so that the same config gives the same bytes.

An imitation module (`nih`, `chexpert`, `mimic`, `padchest`, `folders`, `csv_labels`,
`dicom`) defines its `IMITATION` and imports this module and `cxr_tf.synthetic.drawing`,
never another imitation; `cxr_tf.synthetic.layouts` lists them.

Determinism: a plan comes from one `numpy` Generator seeded with the config's seed (the
own-images imitations add their `code`), each image's pixels from a Generator seeded with
`(seed, code, image number)`, so the thread pool that encodes the files cannot change the
result; gzip headers carry no time and no name; PIL's JPEG and PNG encoders are
deterministic.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from cxr_tf.config import SynthConfig
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.progress import progress_bar as tqdm
from cxr_tf.sources import registry
from cxr_tf.synthetic.drawing import Style, draw

# Writes an imitation into `config.out` and returns its summary (at least `out`,
# `n_images`, `n_patients`).
Generate = Callable[[SynthConfig, bool], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Imitation:
    """One `--layout` of `python -m cxr_tf.synth`."""

    layout: str  # the `--layout` value
    about: str  # what it writes, one line for `--help`
    generate: Generate


# Per-finding image prevalence and the No Finding rate, computed once from the full NIH
# Data_Entry_2017_v2020.csv (112,120 images; ../shared/data/nih) and rounded: the NIH
# imitation's rates, and the class shares of the own-images imitations.
NIH_RATES: dict[str, float] = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}
NIH_NO_FINDING_RATE = 0.538

# Per-study positive rates of the CheXpert labeller's findings (about half the real
# datasets', capped at 0.25) and uncertain rates (the labeller is most often unsure of
# atelectasis and consolidation): CheXpert and MIMIC-CXR-JPG are both labelled by it.
LABELLER_RATES: dict[str, float] = {
    "Support_Devices": 0.25, "Lung_Opacity": 0.22, "Effusion": 0.20, "Edema": 0.12,
    "Atelectasis": 0.08, "Cardiomegaly": 0.07, "Pneumothorax": 0.05, "Consolidation": 0.04,
    "Enlarged_Cardiomediastinum": 0.03, "Lung_Lesion": 0.03, "Fracture": 0.02,
    "Pneumonia": 0.02, "Pleural_Other": 0.01,
}  # fmt: skip
LABELLER_UNCERTAIN: dict[str, float] = {
    "Atelectasis": 0.08, "Consolidation": 0.06, "Pneumonia": 0.04, "Edema": 0.03,
    "Enlarged_Cardiomediastinum": 0.03, "Effusion": 0.03, "Cardiomegaly": 0.02,
}  # fmt: skip
# The labeller's cell text per state, and the findings its "No Finding" ignores.
LABELLER_CELLS = {POSITIVE: "1.0", NEGATIVE: "0.0", UNCERTAIN: "-1.0", UNLABELLED: ""}
_SUPPORT = VOCABULARY.index("Support_Devices")


# --- files -------------------------------------------------------------------------------


def write_text(path: Path, text: str) -> None:
    """`text` as UTF-8 with its newlines as written (the same bytes on every platform)."""
    path.write_text(text, encoding="utf-8", newline="")


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_gzip(path: Path, text: str) -> None:
    """Gzipped text with no time or name in the header, so equal text gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Drawn 0-255 float pixels rounded (half to even) to 8 bits."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    """8-bit gray, 8-bit RGBA or 16-bit gray pixels as a PNG (fast compression)."""
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def paeth_png(gray: np.ndarray, level: int = 6, chunk: int = 8192) -> bytes:
    """8-bit gray pixels as a PNG encoded the way NIH's files are: every row Paeth-filtered
    (NIH's rows are mostly Average and Paeth, which cost a decoder more than the Sub and Up
    rows Pillow's fast setting writes), zlib at its default level, IDAT chunks of 8 KiB."""
    import zlib

    raw = gray.astype(np.int16)
    left = np.zeros_like(raw)
    left[:, 1:] = raw[:, :-1]
    up = np.zeros_like(raw)
    up[1:] = raw[:-1]
    corner = np.zeros_like(raw)
    corner[1:, 1:] = raw[:-1, :-1]
    guess = left + up - corner
    far_left, far_up, far_corner = abs(guess - left), abs(guess - up), abs(guess - corner)
    predictor = np.where(
        (far_left <= far_up) & (far_left <= far_corner),
        left,
        np.where(far_up <= far_corner, up, corner),
    )
    rows = ((raw - predictor) % 256).astype(np.uint8)
    body = zlib.compress(np.concatenate([np.full((len(rows), 1), 4, np.uint8), rows], 1), level)

    def piece(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    height, width = gray.shape
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = b"".join(piece(b"IDAT", body[i : i + chunk]) for i in range(0, len(body), chunk))
    return b"\x89PNG\r\n\x1a\n" + piece(b"IHDR", header) + idat + piece(b"IEND", b"")


def save_jpeg(path: Path, gray: np.ndarray, quality: int) -> None:
    Image.fromarray(gray, "L").save(path, format="JPEG", quality=quality)


def save_drawn_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Drawn 0-255 pixels as an 8-bit JPEG of quality 90 (the CheXpert-labelled releases)."""
    save_jpeg(path, to_uint8(pixels), quality=90)


T = TypeVar("T")


def write_all(
    write: Callable[[T], None], jobs: Sequence[T], workers: int, desc: str, progress: bool
) -> None:
    """`write(job)` for every job on a pool of `workers` threads (0: every core)."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        done = pool.map(write, jobs)
        for _ in tqdm(done, total=len(jobs), desc=desc, disable=not progress):
            pass


# --- patients ----------------------------------------------------------------------------


def patients(rng: np.random.Generator, n: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """(patient, image number) for `n` images: patients numbered from 1, each with 1 to
    len(shares) images (`shares[k]`: the share of patients with k + 1), the last cut short."""
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < n:
        patient += 1
        count = int(rng.choice(len(shares), p=shares)) + 1
        out.extend((patient, k) for k in range(min(count, n - len(out))))
    return out


def test_count(fraction: float, n_patients: int) -> int:
    """Test patients: `fraction` of them, at least one when asked for, never all."""
    count = round(fraction * n_patients)
    if fraction > 0 and n_patients >= 2:
        count = min(max(count, 1), n_patients - 1)
    return count


def test_patients(rng: np.random.Generator, ids: Iterable[int], fraction: float) -> set[int]:
    """A seeded `test_count` of the distinct patient `ids`."""
    unique = sorted(set(ids))
    return set(rng.permutation(unique)[: test_count(fraction, len(unique))].tolist())


# --- the public releases: studies, label states, images ----------------------------------

_STUDIES_PER_PATIENT = (0.5, 0.25, 0.15, 0.1)
_IMAGES_PER_STUDY = (0.55, 0.4, 0.05)
_UNLABELLED_SHARE = 0.04  # MIMIC studies without a label row, PadChest images without terms


@dataclasses.dataclass
class Study:
    """One study of a release's plan."""

    number: int  # 0-based, in plan order
    patient: int  # 0-based, in plan order
    rank: int  # the study's place among its patient's studies (0 first)
    n_images: int
    states: np.ndarray  # (V,) uint8: what the release's files say
    drawn: tuple[str, ...]  # findings whose patterns its images show
    test: bool = False
    validation: bool = False


@dataclasses.dataclass
class Shot:
    """One image: where it goes and what its pixels show."""

    number: int
    name: str  # image_index as the reader gives it
    path: Path
    drawn: tuple[str, ...]


@dataclasses.dataclass
class Files:
    """What a release's `write_files` wrote: its images still to draw, each image's view
    value as the files give it, the metadata files (key -> path) and the official split's
    image counts ({} when the release has none)."""

    shots: list[Shot]
    views: dict[str, str]
    paths: dict[str, Path]
    splits: dict[str, int]


@dataclasses.dataclass(frozen=True)
class Release:
    """What sets one public release's imitation apart from the others."""

    layout: str  # the `--layout` value, also the source whose label map it follows
    code: int  # part of each image's pixel seed
    style: Style
    rates: Mapping[str, float]  # per-study positive rates (0 for a finding not listed)
    uncertain: Mapping[str, float]  # per-study uncertain rates
    # share of the cells neither positive nor uncertain written negative (the rest blank)
    explicit_negative: float
    # writes the metadata files for the planned studies (it may use the Generator)
    write_files: Callable[[np.random.Generator, Path, list[Study]], Files]
    save: Callable[[Path, np.ndarray], None]  # drawn 0-255 float pixels -> an image file
    validation: bool = False  # the release has an official validation split


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


def label_states(
    rng: np.random.Generator, release: Release, n_studies: int, floor: float
) -> np.ndarray:
    """(studies, V) label states with exact per-finding positive and uncertain counts:
    `round(rate * studies)` studies per finding the release labels (the rate raised to
    `floor`), at least one once there are 20 studies."""
    states = np.full((n_studies, len(VOCABULARY)), UNLABELLED, dtype=np.uint8)
    at_least = 1 if n_studies >= 20 else 0
    for finding in registry.labelled_by(release.layout):
        column = VOCABULARY.index(finding)
        rate = max(release.rates.get(finding, 0.0), floor)
        n_pos = min(n_studies, max(round(rate * n_studies), at_least))
        order = rng.permutation(n_studies)
        states[order[:n_pos], column] = POSITIVE
        u = release.uncertain.get(finding, 0.0)
        n_unc = min(n_studies - n_pos, max(round(u * n_studies), at_least if u else 0))
        states[order[n_pos : n_pos + n_unc], column] = UNCERTAIN
        rest = order[n_pos + n_unc :]
        states[rest[rng.random(len(rest)) < release.explicit_negative], column] = NEGATIVE
    return states


def _plan(rng: np.random.Generator, config: SynthConfig, release: Release) -> list[Study]:
    shape = _studies(rng, config.n)
    states = label_states(rng, release, len(shape), config.prevalence_floor)
    studies = []
    for i, (patient, rank, n_images) in enumerate(shape):
        drawn = tuple(
            f
            for f in VOCABULARY
            if states[i, VOCABULARY.index(f)] == POSITIVE
            or (states[i, VOCABULARY.index(f)] == UNCERTAIN and rng.random() < 0.5)
        )
        studies.append(Study(i, patient, rank, n_images, states[i].copy(), drawn))
    patients = max(s.patient for s in studies) + 1
    order = rng.permutation(patients)
    n_test = test_count(config.test_fraction, patients)
    test = set(order[:n_test].tolist())
    n_val = min(max(round(0.1 * patients), 1), patients - n_test - 1) if patients >= 3 else 0
    validation = set(order[n_test : n_test + n_val].tolist())
    for study in studies:
        study.test = study.patient in test
        study.validation = release.validation and study.patient in validation
    return studies


def unlabel(rng: np.random.Generator, studies: list[Study]) -> list[int]:
    """Studies whose labels are withheld (about 4%, at least two of ten or more)."""
    count = min(len(studies), max(round(_UNLABELLED_SHARE * len(studies)),
                                  2 if len(studies) >= 10 else 0))  # fmt: skip
    chosen = np.sort(rng.permutation(len(studies))[:count])
    for i in chosen:
        studies[i].states[:] = UNLABELLED
    return [int(i) for i in chosen]


def labeller_cells(states: np.ndarray, mapping: Mapping[str, str]) -> dict[str, str]:
    """A study's CheXpert-labeller cells: each of `mapping`'s columns (column -> vocabulary
    finding) as 1.0, 0.0, -1.0 or blank."""
    return {c: LABELLER_CELLS[int(states[VOCABULARY.index(f)])] for c, f in mapping.items()}


def labeller_found(states: np.ndarray) -> bool:
    """Whether the labeller's "No Finding" is off: something but support devices is
    positive or uncertain."""
    found = np.isin(states, (POSITIVE, UNCERTAIN))
    found[_SUPPORT] = False
    return bool(found.any())


def generate_release(config: SynthConfig, release: Release, progress: bool) -> dict[str, Any]:
    """Writes `release`'s imitation into `config.out`.

    A finding's pattern is drawn in every image of a study labelled positive for it, in
    the images of a study labelled uncertain with probability 0.5 (decided once per study),
    and never for a negative or blank label.

    Returns:
        A dict with `out`, `layout`, `n_images`, `n_patients`, `n_studies`, `positives`
        and `uncertain` (finding -> images so labelled), `not_labelled_images` (images
        with every finding not labelled), `views` (the file's view value -> images),
        `splits` (official split -> images; {} when the release has none), `paths`
        (metadata files), and per image (keyed by the image_index its reader gives):
        `image_paths`, `labels` (the states the reader should give, VOCABULARY order) and
        `drawn` (findings whose patterns it shows).
    """
    out = Path(config.out)
    rng = np.random.default_rng(config.seed)
    studies = _plan(rng, config, release)
    files = release.write_files(rng, out, studies)
    shots = files.shots

    def write(shot: Shot) -> None:
        seed = (config.seed, release.code, shot.number)
        pixels, _ = draw(shot.drawn, config.image_size, seed, release.style)
        shot.path.parent.mkdir(parents=True, exist_ok=True)
        release.save(shot.path, pixels)

    write_all(write, shots, config.workers, f"synth {release.layout}", progress)

    image_states = {}
    for study in studies:
        for _ in range(study.n_images):
            image_states[len(image_states)] = study.states
    labels = {shot.name: image_states[shot.number].tolist() for shot in shots}
    matrix = np.array([labels[s.name] for s in shots], dtype=np.uint8)
    value_counts: dict[str, int] = {}
    for value in files.views.values():
        value_counts[value] = value_counts.get(value, 0) + 1
    return {
        "out": str(out),
        "layout": release.layout,
        "n_images": len(shots),
        "n_patients": len({s.patient for s in studies}),
        "n_studies": len(studies),
        "positives": {f: int((matrix[:, i] == POSITIVE).sum()) for i, f in enumerate(VOCABULARY)},
        "uncertain": {f: int((matrix[:, i] == UNCERTAIN).sum()) for i, f in enumerate(VOCABULARY)},
        "not_labelled_images": int((matrix == UNLABELLED).all(axis=1).sum()),
        "views": dict(sorted(value_counts.items())),
        "splits": files.splits,
        "paths": {key: str(p) for key, p in files.paths.items()},
        "image_paths": {s.name: str(s.path) for s in shots},
        "labels": labels,
        "drawn": {s.name: list(s.drawn) for s in shots},
    }


# --- a user's own images: class folders, a labels CSV, DICOM files -----------------------

_IMAGES_PER_PATIENT = (0.6, 0.3, 0.1)  # 1, 2 or 3 images
JPEG_FRACTION = 0.15  # own images saved as JPEG rather than PNG


@dataclasses.dataclass
class Item:
    """One image of an own-images imitation."""

    index: int
    patient: int
    name: str  # path relative to the output folder
    findings: tuple[str, ...]  # drawn
    test: bool
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def own_patients(rng: np.random.Generator, n: int) -> list[int]:
    """Patient number (1-based) of each of n images, 1-3 images per patient."""
    return [patient for patient, _ in patients(rng, n, _IMAGES_PER_PATIENT)]


def own_rates(findings: Sequence[str], floor: float) -> np.ndarray:
    """Per-finding prevalence: NIH's rate (0.05 for a finding NIH does not label), at
    least `floor`."""
    return np.array([max(NIH_RATES.get(f, 0.05), floor) for f in findings])


def class_plan(
    rng: np.random.Generator, config: SynthConfig, classes: Mapping[str, str | None]
) -> list[tuple[str, str | None]]:
    """(class folder, finding) per image: class shares from NIH's rates (or the floor);
    `classes` maps a folder name to its finding (None: no finding)."""
    findings = [f for f in classes.values() if f is not None]
    weights = np.concatenate([[NIH_NO_FINDING_RATE],
                              own_rates(findings, config.prevalence_floor)])  # fmt: skip
    names = [c for c, f in classes.items() if f is None] + [
        c for c, f in classes.items() if f is not None
    ]
    picks = rng.choice(len(names), size=config.n, p=weights / weights.sum())
    return [(names[i], classes[names[i]]) for i in picks]


def picture_suffix(rng: np.random.Generator) -> str:
    return ".jpg" if rng.random() < JPEG_FRACTION else ".png"


def own_pixels(item: Item, config: SynthConfig, code: int, style: Style) -> np.ndarray:
    """The 8-bit pixels of one own-images item, seeded by (seed, code, index)."""
    pixels, _ = draw(item.findings, config.image_size, (config.seed, code, item.index), style)
    return to_uint8(pixels)


def save_picture(path: Path, gray: np.ndarray) -> None:
    """A `.jpg` (quality 95) or PNG by the path's suffix."""
    if path.suffix == ".jpg":
        save_jpeg(path, gray, quality=95)
    else:
        save_png(path, gray)


def write_items(
    out: Path,
    items: Sequence[Item],
    config: SynthConfig,
    layout: str,
    save: Callable[[Path, Item], None],
    progress: bool,
) -> None:
    """`save(path, item)` for every item, its folder made first."""

    def write(item: Item) -> None:
        path = out / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path, item)

    write_all(write, items, config.workers, f"synth {layout}", progress)


def lines_text(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def own_summary(
    out: Path, layout: str, items: Sequence[Item], files: dict[str, str]
) -> dict[str, Any]:
    """The summary every own-images imitation returns: `out`, `layout`, `n_images`,
    `n_patients`, `n_test` (images of test patients), `image_paths` (name -> path),
    `findings` (name -> the findings drawn) and `files` (metadata files written)."""
    return {
        "out": str(out),
        "layout": layout,
        "n_images": len(items),
        "n_patients": len({i.patient for i in items}),
        "n_test": sum(i.test for i in items),
        "image_paths": {i.name: str(out / i.name) for i in items},
        "findings": {i.name: list(i.findings) for i in items},
        "files": files,
    }


def class_counts(items: Sequence[Item]) -> dict[str, Any]:
    """`class_counts` (class folder -> images) and `no_finding` (images with nothing drawn)."""
    counts: dict[str, int] = {}
    for item in items:
        folder = item.name.split("/")[-2]
        counts[folder] = counts.get(folder, 0) + 1
    return {
        "class_counts": dict(sorted(counts.items())),
        "no_finding": sum(not i.findings for i in items),
    }
