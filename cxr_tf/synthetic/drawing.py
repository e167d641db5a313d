"""What every synthetic image is drawn with: a chest-like background and one pattern per
finding, placed inside the chest area, in an imitated hospital's style.

Each image is a smooth chest-like background (dark surround, brighter torso, two darker
lungs, mild 2x2-pixel Gaussian grain) that differs per image. Each finding adds one
pattern inside the chest area, with contrast far above the noise, and has a box. Patterns
are 12-22% of the image side and textures have periods of at least 1/16 of the side, so
they survive downsampling to 64 px:

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

The vocabulary's other findings (`cxr_tf.labels.EXTRA_FINDINGS`) have patterns of their own
too (`pattern`). The NIH imitation (`cxr_tf.synthetic.nih`) draws with the pieces
(`place`, `background`, `pattern`) in its own order; every other imitation calls `draw`
with a `Style` of its own, so a model trained on one imitation and evaluated on another
meets a domain shift, as between hospitals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cxr_tf.labels import EXTRA_FINDINGS, FINDINGS

# --- placement --------------------------------------------------------------------------

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
# side), the smallest torso `background` draws, and inside the margin below.
_TORSO = (0.5, 0.58, 0.40, 0.55)
_MARGIN = 0.06


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


def place(
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


# --- pixels -----------------------------------------------------------------------------


def _smooth_ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    t = np.clip((1.15 - d) / 0.3, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
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


def pattern(finding: str, w: int, h: int, size: int) -> np.ndarray:
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
    boxes = place(rng, indices, size, VOCABULARY_PATTERNS)
    pixels = background(rng, size)
    for finding, x, y, w, h in boxes:
        name = VOCABULARY_PATTERNS[finding]
        pixels[y : y + h, x : x + w] += rng.uniform(70, 95) * pattern(name, w, h, size)
    pixels = style.apply(pixels, rng)
    return pixels.astype(np.float32), [(VOCABULARY_PATTERNS[b[0]], *b[1:]) for b in boxes]
