"""The case gallery of an evaluation's HTML report: per output, the model's most confident
true positives, false positives and false negatives at the operating threshold, each with
its Grad-CAM overlay and, where the dataset has them, the boxes of that finding.

Data path: predictions -> `select_cases` (numbers only) -> `read_records` (only those few
records, filtered by image id before decoding) -> `render_overlays` (one Grad-CAM call for
all cases) -> `Case.overlay`, a small JPEG the HTML page inlines. Only the model and the
few chosen images are needed, so the evaluator builds it while it still holds the model.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_tf.labels import MASKED, name_key

if TYPE_CHECKING:  # TensorFlow loads only when a gallery is built, not for the HTML alone
    import keras

Box = tuple[float, float, float, float]

# Kinds of case in the order the page shows them; how each is ranked: most confident first.
KINDS: dict[str, str] = {
    "tp": "true positives (highest probability)",
    "fp": "false positives (highest probability)",
    "fn": "false negatives (lowest probability)",
}
# Overlays are drawn at least this many pixels wide (64 px stored images are too small to
# see), and never wider than the stored image when that is larger.
MIN_SIDE = 192
JPEG_QUALITY = 85
HEAT_ALPHA = 0.4  # as `localization.overlay_png`
BOX_COLOR = (0, 255, 0)  # ground truth: green, as in the localization overlays


@dataclasses.dataclass
class Case:
    """One image shown for one output."""

    output: str
    kind: str  # a key of KINDS
    image: str  # image_index
    patient: int
    probability: float
    threshold: float | None  # None for multi-class (predicted = the argmax class)
    boxes: list[Box] = dataclasses.field(default_factory=list)  # this finding's, stored pixels
    overlay: bytes = b""  # JPEG

    def to_json(self) -> dict[str, Any]:
        """The case without its picture (for report.json)."""
        record = dataclasses.asdict(self)
        del record["overlay"]
        record["boxes"] = [list(b) for b in self.boxes]
        return record


def predicted_positive(probs: np.ndarray, thresholds: dict[str, float | None] | None,
                       names: Sequence[str]) -> np.ndarray:  # fmt: skip
    """(N, K) whether each output is predicted: probability >= its threshold (never where
    the threshold is None); multi-class (`thresholds` None): the argmax class."""
    if thresholds is None:
        return np.eye(len(names), dtype=bool)[np.argmax(probs, axis=1)]
    out = np.zeros(probs.shape, dtype=bool)
    for j, name in enumerate(names):
        if thresholds.get(name) is not None:
            out[:, j] = probs[:, j] >= thresholds[name]
    return out


def select_cases(
    names: Sequence[str],
    images: Sequence[str],
    patients: np.ndarray,
    probs: np.ndarray,
    targets: np.ndarray,
    thresholds: dict[str, float | None] | None,
    per_kind: int,
) -> list[Case]:
    """Up to `per_kind` cases of each kind per output, among the images whose label is
    known; ties keep dataset order. Outputs without a threshold get none."""
    predicted = predicted_positive(probs, thresholds, names)
    cases = []
    for j, name in enumerate(names):
        threshold = None if thresholds is None else thresholds.get(name)
        if thresholds is not None and threshold is None:
            continue
        known = targets[:, j] != MASKED
        positive = targets[:, j] == 1
        masks = {
            "tp": known & positive & predicted[:, j],
            "fp": known & ~positive & predicted[:, j],
            "fn": known & positive & ~predicted[:, j],
        }
        for kind, mask in masks.items():
            rows = np.flatnonzero(mask)
            key = probs[rows, j] if kind == "fn" else -probs[rows, j]
            for i in rows[np.argsort(key, kind="stable")][:per_kind]:
                cases.append(
                    Case(output=name, kind=kind, image=images[i], patient=int(patients[i]),
                         probability=float(probs[i, j]),
                         threshold=None if threshold is None else float(threshold))
                )  # fmt: skip
    return cases


def read_records(
    dataset_dirs: Sequence[str | Path], split: str, image_ids: Sequence[str]
) -> dict[str, tuple[np.ndarray, list[tuple[str, Box]]]]:
    """image id -> (stored image (S, S, 1) uint8, [(finding, (x, y, w, h)) boxes in stored
    pixels]) for the records `image_ids` of a split; the first dataset holding an id wins.

    Only each record's id is parsed until it is one of those wanted, so the pass costs
    about one read of the split's files, not a decode of its images.
    """
    import tensorflow as tf

    from cxr_tf.data import schema
    from cxr_tf.data.manifest import Manifest

    wanted = sorted(set(image_ids))
    found: dict[str, tuple[np.ndarray, list[tuple[str, Box]]]] = {}
    for folder in dataset_dirs:
        missing = [i for i in wanted if i not in found]
        if not missing:
            break
        manifest = Manifest.load(folder)
        features = manifest.features()
        spec = {"image_index": schema.feature_spec(features)["image_index"]}
        targets = tf.constant(missing)

        @tf.autograph.experimental.do_not_convert  # TF ops only, nothing to convert
        def is_wanted(serialized: Any, spec: dict = spec, targets: Any = targets) -> Any:
            image_id = tf.io.parse_single_example(serialized, spec)["image_index"]
            return tf.reduce_any(tf.equal(targets, image_id))

        files = manifest.split_files(split)
        for serialized in tf.data.TFRecordDataset(files).filter(is_wanted):
            record = features.deserialize_example(serialized)
            image_id = record["image_index"].numpy().decode()
            pixels = schema.boxes_xywh(record["boxes"]["bbox"].numpy(), manifest.stored_size)
            labels = [manifest.labels[int(i)] for i in record["boxes"]["finding"].numpy()]
            boxes = [(f, tuple(float(v) for v in b)) for f, b in zip(labels, pixels, strict=True)]
            found.setdefault(image_id, (record["image"].numpy(), boxes))
    return found


def boxes_of(output: str, boxes: Sequence[tuple[str, Box]]) -> list[Box]:
    """The boxes an output's heatmap is compared with: its finding's (binary "any": all)."""
    return [b for f, b in boxes if output == "any" or name_key(f) == name_key(output)]


def overlay_jpeg(image: np.ndarray, heatmap: np.ndarray, boxes: Sequence[Box] = ()) -> bytes:
    """The gray image with the heatmap blended in (jet colours) and boxes in green, as a
    JPEG at least `MIN_SIDE` px wide."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    gray = np.asarray(image, np.float32).reshape(image.shape[0], image.shape[1])
    heat = colormaps["jet"](np.clip(np.nan_to_num(heatmap), 0.0, 1.0))[..., :3] * 255.0
    blend = (1 - HEAT_ALPHA) * gray[..., None] + HEAT_ALPHA * heat
    picture = Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8), "RGB")
    scale = max(1, -(-MIN_SIDE // picture.width))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.BILINEAR)
    draw = ImageDraw.Draw(picture)
    for x, y, w, h in boxes:
        corner = (x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1)
        draw.rectangle(corner, outline=BOX_COLOR, width=max(1, scale))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def render_overlays(
    model: keras.Model,
    layer: str,
    model_outputs: Sequence[str],
    cases: Sequence[Case],
    records: dict[str, tuple[np.ndarray, list[tuple[str, Box]]]],
    batch_size: int = 32,
) -> None:
    """Fills each case's `overlay` (Grad-CAM of its output's logit) and `boxes`."""
    from cxr_tf.evaluation import localization

    shown = [c for c in cases if c.image in records]
    if not shown:
        return
    images = np.stack([records[c.image][0] for c in shown])
    keys = [name_key(n) for n in model_outputs]  # outputs as the dataset spells them
    classes = [keys.index(name_key(c.output)) for c in shown]
    heat = localization.gradcam(model, images, classes, layer, batch_size=batch_size)
    for case, image, heatmap in zip(shown, images, heat, strict=True):
        case.boxes = boxes_of(case.output, records[case.image][1])
        case.overlay = overlay_jpeg(image, heatmap, case.boxes)


def build_gallery(
    model: keras.Model,
    layer: str,
    model_outputs: Sequence[str],
    pred: Any,
    thresholds: dict[str, float | None] | None,
    dataset_dirs: Sequence[str | Path],
    split: str,
    per_kind: int,
    batch_size: int = 32,
) -> list[Case]:
    """The gallery of one evaluation: `select_cases`, then their records and overlays.

    Args:
        model: the evaluated model; `layer` its Grad-CAM feature layer, `model_outputs` its
            outputs in logit order.
        pred: the evaluator's `Predictions` of the split (possibly a subset of the outputs).
        thresholds: per output; None for multi-class.
        dataset_dirs: the converted dataset folder(s) `pred` was read from.
        per_kind: cases per kind and output (0: no gallery).
    """
    if per_kind <= 0:
        return []
    cases = select_cases(pred.names, pred.images, pred.patients, pred.probs, pred.targets,
                         thresholds, per_kind)  # fmt: skip
    records = read_records(dataset_dirs, split, [c.image for c in cases])
    render_overlays(model, layer, model_outputs, cases, records, batch_size)
    return cases
