"""The NIH ChestX-ray14 imitation (`python -m cxr_tf.synth --layout nih|nih_folders`), the
default synthetic dataset of the tests, the demo and the benchmarks.

`generate(SynthConfig)` writes the same files, columns and quirks as the NIH release:
`Data_Entry_2017.csv`, `BBox_List_2017.csv` (boxes only on test-list images, `Infiltrate`
spelling, empty trailing columns), `train_val_list.txt`, `test_list.txt`
(patient-disjoint) and PNGs in `images/` (`nih`) or `images_0NN/images/` (`nih_folders`,
as NIH ships its 12 archives). Most PNGs are 8-bit grayscale (`L`); about `rgba_fraction`
are `RGBA` (gray replicated, opaque alpha), as some NIH images are.

Each positive finding adds its pattern (`cxr_tf.synthetic.drawing`) and records its box;
"No Finding" images carry no pattern. The box file holds `x, y, w, h` in NIH's 1024-pixel
frame, as NIH's does, whatever `image_size` the PNGs are written at (like a downsampled
NIH mirror); the summary's `boxes` are in the saved PNG's own pixels.

The same config gives byte-identical files: the plan (labels, patients, boxes) comes from
one `numpy` Generator seeded with `seed`, and each image's pixels from a Generator seeded
with `(seed, index)`, so the thread pool that encodes PNGs cannot change the result.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.config import SynthConfig
from cxr_tf.labels import BOX_FRAME, BOX_LABEL_ALIASES, FINDINGS, NO_FINDING, NUM_FINDINGS
from cxr_tf.synthetic import common
from cxr_tf.synthetic.drawing import background, pattern, place

DATA_ENTRY_COLUMNS: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# Box-file spelling of each finding (the box file says Infiltrate).
BOX_SPELLING: dict[str, str] = {v: k for k, v in BOX_LABEL_ALIASES.items()}

# The commonest NIH originals: (width, height, pixel spacing, share of images).
_ORIGINALS = (
    (2500, 2048, 0.168, 0.27),
    (2992, 2991, 0.143, 0.20),
    (3056, 2544, 0.139, 0.14),
    (2500, 2048, 0.171, 0.06),
    (2048, 2500, 0.168, 0.05),
    (2021, 2021, 0.1943, 0.04),
    (2048, 2500, 0.171, 0.03),
    (2544, 3056, 0.139, 0.02),
)
# Images per patient, 1..6.
_FOLLOW_UP_SHARES = (0.45, 0.2, 0.12, 0.09, 0.08, 0.06)
_NAMES = {
    "data_entry": "Data_Entry_2017.csv",
    "bbox_list": "BBox_List_2017.csv",
    "train_val_list": "train_val_list.txt",
    "test_list": "test_list.txt",
}
ARCHIVES = "nih_folders"  # the layout with NIH's 12 image folders


@dataclasses.dataclass(frozen=True)
class _Image:
    """Everything decided about one image before its pixels are drawn."""

    index: int
    name: str
    patient: int
    follow_up: int
    labels: tuple[int, ...]  # finding indices, FINDINGS order
    boxes: tuple[tuple[int, int, int, int, int], ...]  # (finding index, x, y, w, h)
    rgba: bool


# --- plan: patients, labels, boxes ---------------------------------------------------------


def _label_matrix(rng: np.random.Generator, n: int, floor: float) -> np.ndarray:
    """An (n, 14) bool matrix with exact per-finding counts and a No Finding share.

    Counts are `round(rate * n)` (at least 1 once n >= 50), spread over a fixed set of
    abnormal images; any abnormal image left empty takes a finding from an image with
    two or more, so every count stays exact.
    """
    rates = np.array([max(common.NIH_RATES[f], floor) for f in FINDINGS])
    counts = np.round(rates * n).astype(int)
    if n >= 50:
        counts = np.maximum(counts, 1)
    abnormal = round((1.0 - common.NIH_NO_FINDING_RATE) * n)
    if floor > 0:  # spread the extra positives: about 2.5 findings per abnormal image
        abnormal = max(abnormal, math.ceil(counts.sum() / 2.5))
    abnormal = int(min(n, counts.sum(), max(abnormal, counts.max())))
    labels = np.zeros((n, NUM_FINDINGS), dtype=bool)
    rows = rng.permutation(n)[:abnormal]
    for i, count in enumerate(counts):
        labels[rng.choice(rows, size=count, replace=False), i] = True
    for row in rows:
        if labels[row].any():
            continue
        donors = np.argwhere(labels & (labels.sum(axis=1, keepdims=True) >= 2))
        donor, finding = donors[rng.integers(len(donors))]
        labels[donor, finding] = False
        labels[row, finding] = True
    return labels


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[_Image]:
    n = config.n
    patients = common.patients(rng, n, _FOLLOW_UP_SHARES)
    labels = _label_matrix(rng, n, config.prevalence_floor)
    n_rgba = round(config.rgba_fraction * n)
    if config.rgba_fraction > 0 and n >= 50:
        n_rgba = max(n_rgba, 1)
    rgba = set(rng.permutation(n)[:n_rgba].tolist())
    plan = []
    for i, (patient, follow_up) in enumerate(patients):
        found = tuple(int(j) for j in np.flatnonzero(labels[i]))
        plan.append(
            _Image(
                index=i,
                name=f"{patient:08d}_{follow_up:03d}.png",
                patient=patient,
                follow_up=follow_up,
                labels=found,
                boxes=place(rng, found, config.image_size),
                rgba=i in rgba,
            )
        )
    return plan


# --- pixels --------------------------------------------------------------------------------


def _render(image: _Image, size: int, seed: int) -> np.ndarray:
    """The uint8 (size, size) pixels of one planned image, seeded by (seed, index)."""
    rng = np.random.default_rng((seed, image.index))
    pixels = background(rng, size)
    for finding, x, y, w, h in image.boxes:
        amplitude = rng.uniform(70, 95)
        pixels[y : y + h, x : x + w] += amplitude * pattern(FINDINGS[finding], w, h, size)
    return common.to_uint8(pixels)


def _write_png(image: _Image, path: Path, size: int, seed: int) -> None:
    gray = _render(image, size, seed)
    if image.rgba:
        gray = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    common.save_png(path, gray)


# --- files ---------------------------------------------------------------------------------


def _image_dir(out: Path, config: SynthConfig, index: int) -> Path:
    if config.layout != ARCHIVES:
        return out / "images"
    per_folder = math.ceil(config.n / 12)  # NIH ships 12 archives
    return out / f"images_{index // per_folder + 1:03d}" / "images"


def _data_entry(rng: np.random.Generator, plan: list[_Image], age_format: str) -> str:
    """Data_Entry_2017.csv text; realistic age, sex, view and original geometry."""
    shares = np.array([o[3] for o in _ORIGINALS])
    trailing = "," if age_format == "2017" else ""
    lines = [",".join(DATA_ENTRY_COLUMNS) + trailing]
    age, sex = 0, "M"
    for im in plan:
        if im.follow_up == 0:
            age = int(np.clip(round(rng.normal(47, 16.6)), 1, 94))
            sex = "M" if rng.random() < 0.565 else "F"
        else:
            age = min(age + int(rng.random() < 0.3), 95)
        view = "PA" if rng.random() < 0.6 else "AP"
        width, height, spacing, _ = _ORIGINALS[rng.choice(len(_ORIGINALS), p=shares / shares.sum())]
        labels = "|".join(FINDINGS[i] for i in im.labels) or NO_FINDING
        age_text = f"{age:03d}Y" if age_format == "2017" else str(age)
        row = (
            f"{im.name},{labels},{im.follow_up},{im.patient},{age_text},{sex},{view},"
            f"{width},{height},{spacing},{spacing}"
        )
        lines.append(row + trailing)
    return "\n".join(lines) + "\n"


def _bbox_list(plan: list[_Image], test_patients: set[int], image_size: int) -> str:
    lines = [BBOX_HEADER]
    scale = BOX_FRAME / image_size
    for im in plan:
        if im.patient not in test_patients:
            continue
        for finding, x, y, w, h in im.boxes:
            name = BOX_SPELLING.get(FINDINGS[finding], FINDINGS[finding])
            x, y, w, h = (round(v * scale, 4) for v in (x, y, w, h))
            lines.append(f"{im.name},{name},{float(x)},{float(y)},{float(w)},{float(h)}")
    return "\n".join(lines) + "\n"


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes a synthetic NIH-like dataset into `config.out` and summarises it.

    Returns:
        A dict with `out`, `layout`, `n_images`, `n_patients`, `finding_counts` (finding ->
        images), `no_finding`, `n_train_val`, `n_test`, `n_boxes` (rows of the box file),
        `rgba_images`, `paths` (the four metadata files and the image folders),
        `image_paths` (name -> PNG path) and `boxes` (name -> [(finding, x, y, w, h)] for
        every image, test or not; the box file holds the test images' ones).
    """
    out = Path(config.out)
    rng = np.random.default_rng(config.seed)  # the whole plan; pixels use (seed, index)
    plan = _plan(rng, config)
    test_patients = common.test_patients(rng, (im.patient for im in plan), config.test_fraction)
    paths = {key: out / name for key, name in _NAMES.items()}
    image_paths = {im.name: _image_dir(out, config, im.index) / im.name for im in plan}
    image_dirs = sorted({p.parent for p in image_paths.values()})
    for folder in image_dirs:
        folder.mkdir(parents=True, exist_ok=True)

    common.write_text(paths["data_entry"], _data_entry(rng, plan, config.age_format))
    common.write_text(paths["bbox_list"], _bbox_list(plan, test_patients, config.image_size))
    test = sorted(im.name for im in plan if im.patient in test_patients)
    train_val = sorted(im.name for im in plan if im.patient not in test_patients)
    common.write_text(paths["train_val_list"], common.lines_text(train_val))
    common.write_text(paths["test_list"], common.lines_text(test))

    common.write_all(
        lambda im: _write_png(im, image_paths[im.name], config.image_size, config.seed),
        plan,
        config.workers,
        "synth PNGs",
        progress,
    )

    counts = {f: sum(i in im.labels for im in plan) for i, f in enumerate(FINDINGS)}
    return {
        "out": str(out),
        "layout": ARCHIVES if config.layout == ARCHIVES else "nih",
        "n_images": len(plan),
        "n_patients": len({im.patient for im in plan}),
        "finding_counts": counts,
        "no_finding": sum(not im.labels for im in plan),
        "n_train_val": len(train_val),
        "n_test": len(test),
        "n_boxes": sum(len(im.boxes) for im in plan if im.patient in test_patients),
        "rgba_images": [im.name for im in plan if im.rgba],
        "paths": {**{k: str(v) for k, v in paths.items()}, "images": [str(d) for d in image_dirs]},
        "image_paths": {name: str(p) for name, p in image_paths.items()},
        "boxes": {im.name: [(FINDINGS[b[0]], *b[1:]) for b in im.boxes] for im in plan},
    }


IMITATION = common.Imitation("nih", "NIH's files, images in images/", generate)
IMITATION_ARCHIVES = common.Imitation(
    ARCHIVES, "NIH's files, images in images_001/images/ ... images_012/images/", generate
)
