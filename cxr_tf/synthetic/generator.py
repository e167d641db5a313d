"""Synthetic NIH ChestX-ray14-like datasets for tests, the demo and benchmarks.

`generate(SynthConfig)` (`python -m cxr_tf.synth`) writes the same files, columns and
quirks as the NIH release: `Data_Entry_2017.csv`, `BBox_List_2017.csv` (boxes only on
test-list images, `Infiltrate` spelling, empty trailing columns), `train_val_list.txt`,
`test_list.txt` (patient-disjoint) and PNGs in `images/` or `images_0NN/images/`. Most
PNGs are 8-bit grayscale (`L`); about `rgba_fraction` are `RGBA` (gray replicated,
opaque alpha), as some NIH images are.

Each image is a smooth chest-like background (dark surround, brighter torso, two darker
lungs, mild 2x2-pixel Gaussian grain) that differs per image. Each positive finding adds one
pattern inside the chest area, with contrast far above the noise, and records its box.
The box file holds `x, y, w, h` in NIH's 1024-pixel frame, as NIH's does, whatever
`image_size` the PNGs are written at (like a downsampled NIH mirror); the summary's
`boxes` are in the saved PNG's own pixels. Patterns are 12-22% of
the image side and textures have periods of at least 1/16 of the side, so they survive
downsampling to 64 px:

| finding | pattern |
|---|---|
| Atelectasis | horizontal stripes (square patch) |
| Cardiomegaly | large bright filled disk |
| Effusion | bright filled triangle, apex up |
| Infiltration | checkerboard |
| Mass | bright filled square |
| Nodule | small, very bright disk |
| Pneumonia | grid of bright dots |
| Pneumothorax | dark filled disk (a hole) |
| Consolidation | diagonal stripes |
| Edema | vertical stripes |
| Emphysema | thick ring |
| Fibrosis | X (two diagonal bars) |
| Pleural_Thickening | wide ellipse outline (2:1 to 5:3) |
| Hernia | plus-shaped cross |

"No Finding" images carry no pattern. The same config gives byte-identical files: the
plan (labels, patients, boxes) comes from one `numpy` Generator seeded with `seed`, and
each image's pixels from a Generator seeded with `(seed, index)`, so the thread pool that
encodes PNGs cannot change the result.
"""

from __future__ import annotations

import dataclasses
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
    BOX_FRAME,
    BOX_LABEL_ALIASES,
    EXTRA_FINDINGS,
    FINDINGS,
    NO_FINDING,
    NUM_FINDINGS,
)

# Per-finding image prevalence and the No Finding rate, computed once from the full
# Data_Entry_2017_v2020.csv (112,120 images; ../shared/data/nih) and rounded.
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
# Pattern width range as a fraction of the image side (square boxes but one, see
# `_box_shape`).
_SIZE = {
    "Cardiomegaly": (0.17, 0.22),
    "Nodule": (0.12, 0.13),
    "Mass": (0.14, 0.19),
    "Pleural_Thickening": (0.19, 0.22),
}
_DEFAULT_SIZE = (0.16, 0.21)
_TEXTURE_SIZE = (0.19, 0.22)
_TEXTURES = ("Atelectasis", "Infiltration", "Pneumonia", "Consolidation", "Edema")
# Placement: every box corner inside this ellipse (cx, cy, rx, ry as fractions of the
# side), the smallest torso `_background` draws, and inside the margin below.
_TORSO = (0.5, 0.58, 0.40, 0.55)
_MARGIN = 0.06

_NAMES = {
    "data_entry": "Data_Entry_2017.csv",
    "bbox_list": "BBox_List_2017.csv",
    "train_val_list": "train_val_list.txt",
    "test_list": "test_list.txt",
}


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


def _patients(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """(patient id, follow-up) per image, patients numbered from 1 like NIH."""
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < n:
        patient += 1
        count = int(rng.choice(len(_FOLLOW_UP_SHARES), p=_FOLLOW_UP_SHARES)) + 1
        out.extend((patient, f) for f in range(min(count, n - len(out))))
    return out


def _label_matrix(rng: np.random.Generator, n: int, floor: float) -> np.ndarray:
    """An (n, 14) bool matrix with exact per-finding counts and a No Finding share.

    Counts are `round(rate * n)` (at least 1 once n >= 50), spread over a fixed set of
    abnormal images; any abnormal image left empty takes a finding from an image with
    two or more, so every count stays exact.
    """
    rates = np.array([max(NIH_RATES[f], floor) for f in FINDINGS])
    counts = np.round(rates * n).astype(int)
    if n >= 50:
        counts = np.maximum(counts, 1)
    abnormal = round((1.0 - NIH_NO_FINDING_RATE) * n)
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


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min(a[2] * a[3], b[2] * b[3])


def _box_shape(rng: np.random.Generator, finding: str, size: int) -> tuple[int, int]:
    lo, hi = _TEXTURE_SIZE if finding in _TEXTURES else _SIZE.get(finding, _DEFAULT_SIZE)
    w = max(8, round(rng.uniform(lo, hi) * size))
    aspect = rng.uniform(0.5, 0.6) if finding == "Pleural_Thickening" else 1.0
    return w, max(6, round(w * aspect))


def _place(
    rng: np.random.Generator, labels: Sequence[int], size: int, names: Sequence[str] = FINDINGS
) -> tuple[tuple[int, int, int, int, int], ...]:
    """One box per finding (an index into `names`) inside the chest area, avoiding
    overlaps where it can."""
    lo, hi = round(_MARGIN * size), round((1 - _MARGIN) * size)
    cx, cy, rx, ry = (f * size for f in _TORSO)
    gap = round(0.02 * size)  # keep neighbouring patterns apart, for clean localization checks
    placed: list[tuple[int, int, int, int, int]] = []
    for finding in labels:
        w, h = _box_shape(rng, names[finding], size)
        best, best_overlap = (round(cx - w / 2), round(cy - h / 2), w, h), math.inf
        for _ in range(200):
            box = (int(rng.integers(lo, hi - w + 1)), int(rng.integers(lo, hi - h + 1)), w, h)
            corners = ((box[0] + dx, box[1] + dy) for dx in (0, w) for dy in (0, h))
            if any(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 > 1 for x, y in corners):
                continue
            grown = (box[0] - gap, box[1] - gap, w + 2 * gap, h + 2 * gap)
            worst = max((_overlap(grown, p[1:]) for p in placed), default=0.0)
            if worst < best_overlap:
                best, best_overlap = box, worst
            if worst == 0.0:
                break
        placed.append((finding, *best))
    return tuple(placed)


def _plan(rng: np.random.Generator, config: SynthConfig) -> list[_Image]:
    n = config.n
    patients = _patients(rng, n)
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
                boxes=_place(rng, found, config.image_size),
                rgba=i in rgba,
            )
        )
    return plan


def _split(rng: np.random.Generator, plan: list[_Image], test_fraction: float) -> set[int]:
    """Test patients: `test_fraction` of all patients (at least one when asked for)."""
    patients = sorted({im.patient for im in plan})
    n_test = round(test_fraction * len(patients))
    if test_fraction > 0 and len(patients) >= 2:
        n_test = min(max(n_test, 1), len(patients) - 1)
    return set(rng.permutation(patients)[:n_test].tolist())


# --- pixels --------------------------------------------------------------------------------


def _smooth_ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    t = np.clip((1.15 - d) / 0.3, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth chest-like float32 image: surround, torso, two lungs, then noise."""
    low = max(32, size // 8)
    y, x = np.mgrid[0:low, 0:low].astype(np.float32) / low
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    torso = _smooth_ellipse(x, y, cx, 0.58, rng.uniform(0.40, 0.46), rng.uniform(0.55, 0.62))
    image = rng.uniform(15, 35) + torso * rng.uniform(120, 150)
    image += rng.uniform(-15, 15) * (y - 0.5) + rng.uniform(-8, 8) * (x - 0.5)
    for side in (-1, 1):
        lung = _smooth_ellipse(
            x,
            y,
            cx + side * rng.uniform(0.17, 0.21),
            rng.uniform(0.44, 0.50),
            rng.uniform(0.12, 0.15),
            rng.uniform(0.26, 0.31),
        )
        image -= lung * rng.uniform(50, 70)
    full = Image.fromarray(image.astype(np.float32), "F").resize((size, size), Image.BILINEAR)
    # 2x2-pixel grain: looks like noise, but PNG encodes it about 30% faster.
    half = (size + 1) // 2
    grain = rng.standard_normal((half, half), dtype=np.float32) * 3.0
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:size, :size]
    return np.asarray(full, dtype=np.float32) + grain


def _stripes(coord: np.ndarray, period: float) -> np.ndarray:
    return np.mod(coord, period) < period / 2


def _dots(xl: np.ndarray, yl: np.ndarray, w: int, h: int, spacing: float) -> np.ndarray:
    """A grid of dots, one at the box centre, radius 0.3 of the spacing."""
    dx = np.mod(xl - w / 2 + spacing / 2, spacing) - spacing / 2
    dy = np.mod(yl - h / 2 + spacing / 2, spacing) - spacing / 2
    return dx * dx + dy * dy <= (0.3 * spacing) ** 2


def _pattern(finding: str, w: int, h: int, size: int) -> np.ndarray:
    """The (h, w) float mask of a finding's pattern; negative values darken."""
    yl, xl = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres in the box
    u, v = xl / w - 0.5, yl / h - 0.5  # box-relative, centred: the inscribed ellipse is r<=0.5
    r = np.sqrt(u * u + v * v)
    period = size / 14  # textures: >= 1/16 of the side, so they survive 64 px
    cell = size / 16
    if finding == "Atelectasis":
        mask = _stripes(yl - h / 2 + period / 4, period)
    elif finding == "Cardiomegaly":
        mask = r <= 0.5
    elif finding == "Effusion":
        mask = np.abs(u) <= (v + 0.5) / 2
    elif finding == "Infiltration":
        mask = (np.floor(xl / cell) + np.floor(yl / cell)) % 2 == 0
    elif finding == "Mass":
        mask = np.ones((h, w), dtype=bool)
    elif finding == "Nodule":
        return 1.4 * (r <= 0.5).astype(np.float32)
    elif finding == "Pneumonia":
        mask = _dots(xl, yl, w, h, size / 12)
    elif finding == "Pneumothorax":
        return -1.0 * (r <= 0.5).astype(np.float32)
    elif finding == "Consolidation":
        mask = _stripes((xl + yl) / math.sqrt(2), period)
    elif finding == "Edema":
        mask = _stripes(xl - w / 2 + period / 4, period)
    elif finding == "Emphysema":
        mask = (r <= 0.5) & (r >= 0.3)
    elif finding == "Fibrosis":
        mask = (np.abs(u - v) <= 0.13) | (np.abs(u + v) <= 0.13)
    elif finding == "Pleural_Thickening":
        mask = (r <= 0.5) & (r >= 0.25)  # r is box-relative, so this is an ellipse outline
    elif finding == "Hernia":
        mask = (np.abs(u) <= 0.12) | (np.abs(v) <= 0.12)
    # The vocabulary's findings beyond NIH's, drawn by the other layouts' imitations.
    elif finding == "Lung_Opacity":
        return np.exp(-(r * r) / (2 * 0.18**2)).astype(np.float32)  # soft blob
    elif finding == "Lung_Lesion":
        mask = (np.maximum(np.abs(u), np.abs(v)) <= 0.5) & (np.maximum(np.abs(u), np.abs(v)) >= 0.3)
    elif finding == "Enlarged_Cardiomediastinum":
        mask = np.abs(u) <= 0.22  # a tall bright bar
    elif finding == "Fracture":
        mask = (np.abs(v - 0.3 * u) <= 0.1) & (np.abs(u) >= 0.08)  # a bar with a gap
    elif finding == "Support_Devices":
        return 1.4 * ((np.abs(u) <= 0.05) | (np.abs(v + 0.4) <= 0.05)).astype(np.float32)
    elif finding == "Pleural_Other":
        return -1.0 * (np.abs(u) <= (0.5 - v) / 2).astype(np.float32)  # dark, apex down
    else:
        raise ValueError(f"no pattern for {finding!r}")
    return mask.astype(np.float32)


def _render(image: _Image, size: int, seed: int) -> np.ndarray:
    """The uint8 (size, size) pixels of one planned image, seeded by (seed, index)."""
    rng = np.random.default_rng((seed, image.index))
    pixels = _background(rng, size)
    for finding, x, y, w, h in image.boxes:
        amplitude = rng.uniform(70, 95)
        pixels[y : y + h, x : x + w] += amplitude * _pattern(FINDINGS[finding], w, h, size)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Style:
    """How one imitated hospital's images differ from the NIH imitation's (a domain shift):
    `gain` and `offset` map the 0-255 pixels linearly, `gamma` bends the contrast curve and
    `noise` adds Gaussian noise of that standard deviation. Findings keep their patterns,
    so a model trained on one style still finds them on another, less well."""

    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    noise: float = 0.0

    def apply(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.clip(pixels, 0.0, 255.0)
        if self.gamma != 1.0:
            out = 255.0 * (out / 255.0) ** self.gamma
        out = out * self.gain + self.offset
        if self.noise:
            out = out + rng.normal(0.0, self.noise, out.shape).astype(np.float32)
        return out


NIH_STYLE = Style()
VOCABULARY_PATTERNS: tuple[str, ...] = FINDINGS + EXTRA_FINDINGS


def draw(
    findings: Sequence[str], size: int, seed: Sequence[int], style: Style = NIH_STYLE
) -> tuple[np.ndarray, list[tuple[str, int, int, int, int]]]:
    """One synthetic radiograph showing `findings` (vocabulary names), for the imitations
    of other datasets' layouts: float32 (size, size) pixels on a 0-255 scale (the caller
    rounds to 8 or 16 bits) and the (finding, x, y, w, h) boxes in its pixels. The same
    arguments give the same pixels."""
    rng = np.random.default_rng(list(seed))
    indices = [VOCABULARY_PATTERNS.index(f) for f in findings]
    boxes = _place(rng, indices, size, VOCABULARY_PATTERNS)
    pixels = _background(rng, size)
    for finding, x, y, w, h in boxes:
        name = VOCABULARY_PATTERNS[finding]
        pixels[y : y + h, x : x + w] += rng.uniform(70, 95) * _pattern(name, w, h, size)
    pixels = style.apply(pixels, rng)
    return pixels.astype(np.float32), [(VOCABULARY_PATTERNS[b[0]], *b[1:]) for b in boxes]


def _write_png(image: _Image, path: Path, size: int, seed: int) -> None:
    gray = _render(image, size, seed)
    if image.rgba:
        rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        Image.fromarray(rgba, "RGBA").save(path, format="PNG", compress_level=1)
    else:
        Image.fromarray(gray, "L").save(path, format="PNG", compress_level=1)


# --- files ---------------------------------------------------------------------------------


def _image_dir(out: Path, config: SynthConfig, index: int) -> Path:
    if config.layout != "nih_folders":
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


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="")


def generate(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes a synthetic NIH-like dataset into `config.out` and summarises it.

    Returns:
        A dict with `n_images`, `n_patients`, `finding_counts` (finding -> images),
        `no_finding`, `n_train_val`, `n_test`, `n_boxes` (rows of the box file),
        `rgba_images`, `paths` (the four metadata files and the image folders),
        `image_paths` (name -> PNG path) and `boxes` (name -> [(finding, x, y, w, h)] for
        every image, test or not; the box file holds the test images' ones).
    """
    out = Path(config.out)
    rng = np.random.default_rng(config.seed)  # the whole plan; pixels use (seed, index)
    plan = _plan(rng, config)
    test_patients = _split(rng, plan, config.test_fraction)
    paths = {key: out / name for key, name in _NAMES.items()}
    image_paths = {im.name: _image_dir(out, config, im.index) / im.name for im in plan}
    image_dirs = sorted({p.parent for p in image_paths.values()})
    for folder in image_dirs:
        folder.mkdir(parents=True, exist_ok=True)

    _write_text(paths["data_entry"], _data_entry(rng, plan, config.age_format))
    _write_text(paths["bbox_list"], _bbox_list(plan, test_patients, config.image_size))
    test = sorted(im.name for im in plan if im.patient in test_patients)
    train_val = sorted(im.name for im in plan if im.patient not in test_patients)
    _write_text(paths["train_val_list"], "".join(f"{name}\n" for name in train_val))
    _write_text(paths["test_list"], "".join(f"{name}\n" for name in test))

    workers = config.workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(
            lambda im: _write_png(im, image_paths[im.name], config.image_size, config.seed),
            plan,
        )
        for _ in tqdm(jobs, total=len(plan), desc="synth PNGs", disable=not progress):
            pass

    counts = {f: sum(i in im.labels for im in plan) for i, f in enumerate(FINDINGS)}
    return {
        "out": str(out),
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
