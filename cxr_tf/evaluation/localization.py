"""Weakly supervised localization: class heatmaps, boxes from heatmaps, and the scores of
Wang et al. 2017 (ChestX-ray8, arXiv 1705.02315, Table 19).

Data path: model + images -> `gradcam` (or `cam`) heatmaps (B, H, W) in [0, 1] at the input
image size -> `boxes_from_heatmap` -> `localization_cases` (one case per ground-truth box) ->
`localization_table` -> `localization_markdown`.

Boxes everywhere are `(x, y, w, h)` in pixels of the image fed to the model, with `(x, y)`
the top-left corner (`cxr_tf.data.schema.boxes_xywh` turns stored boxes into this form). Pixel
`(row, col)` covers `[col, col + 1) x [row, row + 1)`.

Heatmap post-processing is shared by Grad-CAM and CAM: ReLU at feature-map resolution,
bilinear upsampling to the input's H x W, division by the per-image maximum (a map with no
positive value stays all zero). With a global-average-pooling + single dense head, Grad-CAM's
channel weights are the dense kernel column divided by the number of feature-map cells, so
both methods give the same normalised map.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike
from scipy import ndimage

from cxr_tf.labels import FINDING_INDEX
from cxr_tf.modeling.models import LOGITS_NAME

Box = tuple[float, float, float, float]
ScoredBox = tuple[float, float, float, float, float]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)

# Wang et al. 2017, "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
# Weakly-Supervised Classification and Localization of Common Thorax Diseases",
# arXiv 1705.02315 v5, Table 19: localization accuracy at T(IoBB), official split, boxes
# from thresholded 32x32 heatmaps (~1-3 per image).
# Laid out as the paper's table: one row per T(IoBB), one column per finding.
_WANG2017_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration",
    "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)  # fmt: skip
_WANG2017_ROWS = {
    0.1: (0.6222, 1.0, 0.7974, 0.9106, 0.5882, 0.1519, 0.8583, 0.5204),
    0.25: (0.3944, 0.9863, 0.6339, 0.7967, 0.4588, 0.0506, 0.7083, 0.3367),
    0.5: (0.1944, 0.9452, 0.4183, 0.6504, 0.3058, 0.0, 0.4833, 0.2653),
    0.75: (0.0889, 0.8151, 0.2287, 0.4390, 0.1647, 0.0, 0.2917, 0.1735),
    0.9: (0.0722, 0.6507, 0.1373, 0.3577, 0.0941, 0.0, 0.2333, 0.1224),
}
WANG2017_IOBB_ACCURACY: dict[float, dict[str, float]] = {
    t: dict(zip(_WANG2017_FINDINGS, row, strict=True)) for t, row in _WANG2017_ROWS.items()
}

# Layers that pass pooled features through unchanged at inference (allowed between the
# pooling layer and the logits layer for CAM).
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.Identity,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)

# model -> {feature layer name: compiled step}; weak keys so cached graphs die with the model.
_GRADCAM_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FEATURE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------ heatmaps


def _class_indices(class_index: int | Sequence[int], batch: int, num_classes: int) -> np.ndarray:
    indices = np.asarray(class_index, dtype=np.int64).reshape(-1)
    if indices.size == 1:
        indices = np.repeat(indices, batch)
    if indices.size != batch:
        raise ValueError(f"class_index: expected 1 or {batch} indices, got {indices.size}")
    if np.any(indices < 0) or np.any(indices >= num_classes):
        raise ValueError(f"class_index: values must be in [0, {num_classes}), got {indices}")
    return indices


def _images(model: keras.Model, images: ArrayLike) -> tf.Tensor:
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r}: expected one input, got {len(model.inputs)}")
    array = np.asarray(images)
    if array.ndim == 3:  # (B, H, W) -> (B, H, W, 1)
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"images: expected (B, H, W, 1), got shape {array.shape}")
    return tf.convert_to_tensor(array, dtype=model.inputs[0].dtype)


def _postprocess(maps: tf.Tensor, size: tuple[int, int]) -> np.ndarray:
    """ReLU -> bilinear upsampling to `size` -> per-image division by the maximum."""
    maps = tf.nn.relu(tf.cast(maps, tf.float32))
    maps = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0]
    maps = np.nan_to_num(maps.numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    maps = np.maximum(maps, 0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1, initial=0.0)
    # An all-zero map stays zero instead of becoming 0 / 0.
    scale = np.where(peak > 0, peak, 1.0)
    return (maps / scale[:, None, None]).astype(np.float32)


def _gradcam_step(model: keras.Model, feature_layer: str) -> Callable:
    per_model = _GRADCAM_CACHE.setdefault(model, {})
    if feature_layer in per_model:
        return per_model[feature_layer]
    if len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r}: expected one output, got {len(model.outputs)}")
    features = model.get_layer(feature_layer).output
    sub = keras.Model(model.inputs, [features, model.outputs[0]], name=f"{model.name}_gradcam")

    @tf.function(reduce_retracing=True)
    def step(images: tf.Tensor, classes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            feature_map, logits = sub(images, training=False)
            target = tf.gather(tf.cast(logits, tf.float32), classes, axis=1, batch_dims=1)
        # Each image's logit depends on its own features only, so the gradient of the
        # batch sum holds every image's own gradient.
        grads = tape.gradient(target, feature_map)
        if grads is None:
            raise ValueError(f"the output does not depend on layer {feature_layer!r}")
        return tf.cast(feature_map, tf.float32), tf.cast(grads, tf.float32)

    per_model[feature_layer] = step
    return step


def gradcam(
    model: keras.Model,
    images: ArrayLike,
    class_index: int | Sequence[int],
    feature_layer: str,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM heatmaps (Selvaraju et al. 2017) of one logit per image.

    Args:
        model: a functional model whose single output is logits.
        images: (B, H, W, 1) uint8 or float images in 0..255, as the model takes them.
        class_index: the logit explained, one for all images or one per image.
        feature_layer: name of the convolutional feature layer (`models.feature_layer_name`).
        batch_size: images per gradient computation.

    Returns:
        (B, H, W) float32 maps in [0, 1]; all zero where no location raises the logit.
    """
    x = _images(model, images)
    classes = _class_indices(class_index, int(x.shape[0]), int(model.outputs[0].shape[-1]))
    step = _gradcam_step(model, feature_layer)
    maps = []
    for start in range(0, int(x.shape[0]), batch_size):
        stop = start + batch_size
        feature_map, grads = step(x[start:stop], tf.constant(classes[start:stop]))
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        maps.append(tf.reduce_sum(weights * feature_map, axis=-1))
    if not maps:
        return np.zeros((0, *x.shape[1:3]), dtype=np.float32)
    return _postprocess(tf.concat(maps, axis=0), tuple(x.shape[1:3]))


def _producer(model: keras.Model, tensor: Any) -> keras.layers.Layer | None:
    for layer in model.layers:
        try:
            if layer.output is tensor:
                return layer
        except (AttributeError, ValueError):  # layers never called, or shared
            continue
    return None


def _check_cam_head(model: keras.Model, feature_layer: str, logits: keras.layers.Layer) -> None:
    """Raises ValueError unless logits = Dense(GlobalAveragePooling2D(features))."""
    if not isinstance(logits, keras.layers.Dense):
        raise ValueError(f"CAM: layer {logits.name!r} is not a Dense layer")
    features = model.get_layer(feature_layer).output
    channels = int(features.shape[-1])
    kernel_in = int(logits.kernel.shape[0])
    hint = "CAM needs features -> GlobalAveragePooling2D -> Dense logits; use gradcam instead"
    if kernel_in != channels:
        raise ValueError(
            f"CAM: layer {logits.name!r} takes {kernel_in} inputs but {feature_layer!r} has "
            f"{channels} channels (a hidden layer in the head?); {hint}"
        )
    tensor, pooled = logits.input, False
    for _ in range(len(model.layers)):
        if tensor is features:
            break
        layer = _producer(model, tensor)
        if isinstance(layer, keras.layers.GlobalAveragePooling2D) and not pooled:
            if layer.data_format != "channels_last" or layer.keepdims:
                break
            pooled = True
        elif not isinstance(layer, _PASS_THROUGH):
            name = layer.name if layer is not None else "?"
            raise ValueError(f"CAM: layer {name!r} sits between pooling and logits; {hint}")
        tensor = layer.input
    if not (pooled and tensor is features):
        raise ValueError(f"CAM: {logits.name!r} is not fed by pooled {feature_layer!r}; {hint}")


def cam(
    model: keras.Model,
    images: ArrayLike,
    class_index: int | Sequence[int],
    feature_layer: str,
    logits_layer: str = LOGITS_NAME,
    batch_size: int = 32,
) -> np.ndarray:
    """Class activation maps (Zhou et al. 2016): the logits kernel applied to the feature map.

    Post-processed like `gradcam` (ReLU, bilinear upsampling, divided by the maximum).

    Args:
        model: a functional model with head features -> GlobalAveragePooling2D ->
            [Dropout] -> Dense named `logits_layer`.
        images: (B, H, W, 1) images in 0..255.
        class_index: the logit explained, one for all images or one per image.
        feature_layer: name of the convolutional feature layer.
        logits_layer: name of the dense logits layer.
        batch_size: images per forward pass.

    Raises:
        ValueError: the head is not global average pooling + one dense layer.
    """
    logits = model.get_layer(logits_layer)
    _check_cam_head(model, feature_layer, logits)
    x = _images(model, images)
    kernel = np.asarray(keras.ops.convert_to_numpy(logits.kernel), dtype=np.float32)
    classes = _class_indices(class_index, int(x.shape[0]), kernel.shape[1])
    per_model = _FEATURE_CACHE.setdefault(model, {})
    if feature_layer not in per_model:
        output = model.get_layer(feature_layer).output
        per_model[feature_layer] = keras.Model(model.inputs, output, name=f"{model.name}_cam")
    sub = per_model[feature_layer]
    maps = []
    for start in range(0, int(x.shape[0]), batch_size):
        feature_map = tf.cast(sub(x[start : start + batch_size], training=False), tf.float32)
        weights = tf.transpose(tf.constant(kernel[:, classes[start : start + batch_size]]))
        maps.append(tf.einsum("bhwk,bk->bhw", feature_map, weights))
    if not maps:
        return np.zeros((0, *x.shape[1:3]), dtype=np.float32)
    return _postprocess(tf.concat(maps, axis=0), tuple(x.shape[1:3]))


# --------------------------------------------------------------------------------- boxes


def boxes_from_heatmap(
    heatmap: ArrayLike,
    threshold: float = 0.5,
    min_area_fraction: float = 0.001,
    max_boxes: int = 3,
) -> list[ScoredBox]:
    """Boxes around the connected regions where the heatmap reaches `threshold` x its max.

    Regions are 4-connected components (`scipy.ndimage.label`); regions smaller than
    `min_area_fraction` of the map are dropped.

    Returns:
        Up to `max_boxes` `(x, y, w, h, score)`, score = the region's peak heat, highest
        first; empty for a map with no positive value.
    """
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap: expected (H, W), got shape {heat.shape}")
    peak = heat.max(initial=0.0)
    if peak <= 0 or max_boxes <= 0:
        return []
    mask = heat >= threshold * peak
    mask &= heat > 0
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(heat), labels, index)
    scores = ndimage.maximum(heat, labels, index)
    min_area = min_area_fraction * heat.size
    boxes = []
    for slices, area, score in zip(ndimage.find_objects(labels), areas, scores, strict=True):
        if area < min_area:
            continue
        rows, cols = slices
        y, x = rows.start, cols.start
        boxes.append((x, y, cols.stop - x, rows.stop - y, float(score), float(area)))
    # Highest peak first; larger region first among equal peaks.
    boxes.sort(key=lambda b: (-b[4], -b[5]))
    return [(float(x), float(y), float(w), float(h), s) for x, y, w, h, s, _ in boxes[:max_boxes]]


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = (float(v) for v in a[:4])
    bx, by, bw, bh = (float(v) for v in b[:4])
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    return max(w, 0.0) * max(h, 0.0)


def _area(box: Sequence[float]) -> float:
    return max(float(box[2]), 0.0) * max(float(box[3]), 0.0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when the union is empty."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def iobb(pred: Sequence[float], truth: Sequence[float]) -> float:
    """Intersection over the predicted box's area (Wang et al. 2017); 0 for an empty box."""
    area = _area(pred)
    return _intersection(pred, truth) / area if area > 0 else 0.0


def pointing_hit(heatmap: ArrayLike, box: Sequence[float], tolerance: float = 0.0) -> bool:
    """Whether the heatmap's peak pixel (first on ties) lies in the box grown by `tolerance`.

    The pixel counts as inside when its centre does.
    """
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=-np.inf)
    if heat.ndim != 2:
        raise ValueError(f"heatmap: expected (H, W), got shape {heat.shape}")
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x, y, w, h = (float(v) for v in box[:4])
    cx, cy = col + 0.5, row + 0.5
    return (x - tolerance <= cx <= x + w + tolerance) and (y - tolerance <= cy <= y + h + tolerance)


# ---------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class LocalizationCase:
    """One ground-truth box of one finding on one image, with the boxes predicted for it."""

    finding: str
    gt_box: Box
    pred_boxes: tuple[Box, ...]
    pointing_hit: bool
    image_id: str = ""


def localization_cases(
    finding: str,
    heatmap: ArrayLike,
    gt_boxes: Iterable[Sequence[float]],
    image_id: str = "",
    tolerance: float = 0.0,
    **box_options: Any,
) -> list[LocalizationCase]:
    """One case per ground-truth box of `finding`, boxes taken from the finding's heatmap.

    Args:
        finding: the finding the heatmap explains.
        heatmap: (H, W) map in pixels of the boxes.
        gt_boxes: the finding's (x, y, w, h) boxes on this image.
        image_id: for tracing cases back.
        tolerance: pixels for `pointing_hit`.
        **box_options: passed to `boxes_from_heatmap`.
    """
    preds = tuple(tuple(b[:4]) for b in boxes_from_heatmap(heatmap, **box_options))
    return [
        LocalizationCase(
            finding=finding,
            gt_box=tuple(float(v) for v in box[:4]),
            pred_boxes=preds,
            pointing_hit=pointing_hit(heatmap, box, tolerance),
            image_id=image_id,
        )
        for box in gt_boxes
    ]


def _as_case(record: LocalizationCase | Mapping[str, Any]) -> LocalizationCase:
    if isinstance(record, LocalizationCase):
        return record
    return LocalizationCase(
        finding=str(record["finding"]),
        gt_box=tuple(record["gt_box"][:4]),
        pred_boxes=tuple(tuple(b[:4]) for b in record["pred_boxes"]),
        pointing_hit=bool(record["pointing_hit"]),
        image_id=str(record.get("image_id", "")),
    )


def _row(cases: list[LocalizationCase], thresholds: Sequence[float]) -> dict[str, Any]:
    best_iobb = np.array(
        [max((iobb(p, c.gt_box) for p in c.pred_boxes), default=0.0) for c in cases]
    )
    best_iou = np.array([max((iou(p, c.gt_box) for p in c.pred_boxes), default=0.0) for c in cases])
    return {
        "n": len(cases),
        # Strictly greater, as "IoBB exceeds T" in Wang et al.
        "accuracy": {float(t): float(np.mean(best_iobb > t)) for t in thresholds},
        "mean_best_iou": float(best_iou.mean()),
        "pointing": float(np.mean([c.pointing_hit for c in cases])),
    }


def localization_table(
    results: Iterable[LocalizationCase | Mapping[str, Any]],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, dict[str, Any]]:
    """Localization scores per finding, in the manner of Wang et al. 2017 (Table 19).

    Each record is one ground-truth box (an image with several boxes of a finding gives
    several cases). A case is correct at T when ANY predicted box has IoBB > T with its
    ground-truth box; a case without predicted boxes is wrong at every T.

    Args:
        results: `LocalizationCase`s, or mappings with keys finding, gt_box, pred_boxes,
            pointing_hit (predicted boxes may carry a fifth score element).
        thresholds: the T(IoBB) values.

    Returns:
        `{finding: row, ..., "all": row}`, findings in vocabulary order (a dataset's own
        after them, by name), where a row is `{"n", "accuracy": {T: fraction},
        "mean_best_iou", "pointing"}`; "all" pools every case (micro average).
    """
    cases = [_as_case(r) for r in results]
    if not cases:
        raise ValueError("results: no localization cases")
    order = sorted({c.finding for c in cases}, key=lambda f: (FINDING_INDEX.get(f, 99), f))
    table = {f: _row([c for c in cases if c.finding == f], thresholds) for f in order}
    table["all"] = _row(cases, thresholds)
    return table


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def localization_markdown(
    table: Mapping[str, Mapping[str, Any]], reference: bool = True, digits: int = 4
) -> str:
    """A Markdown table like Wang et al.'s: rows T(IoBB), columns findings (+ "all").

    Below the accuracy rows come mean best IoU, pointing-game accuracy and case counts; with
    `reference`, Wang et al.'s published accuracies (NIH's official split) follow for
    comparison: blank ('-') for a finding they did not box (any finding but NIH's 8, and
    "all"), and left out altogether when no column has a published value (e.g. a dataset
    whose boxes are only its own findings).
    """
    columns = list(table)
    thresholds = list(next(iter(table.values()))["accuracy"])
    lines = [
        "| T(IoBB) | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]

    def add(label: str, values: Iterable[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    for t in thresholds:
        add(f"{t:g}", (_fmt(table[c]["accuracy"][t], digits) for c in columns))
    add("mean best IoU", (_fmt(table[c]["mean_best_iou"], digits) for c in columns))
    add("pointing game", (_fmt(table[c]["pointing"], digits) for c in columns))
    add("n", (str(table[c]["n"]) for c in columns))
    published_any = any(c in WANG2017_IOBB_ACCURACY.get(t, {}) for t in thresholds for c in columns)
    if reference and published_any:
        for t in thresholds:
            published = WANG2017_IOBB_ACCURACY.get(t, {})
            add(f"{t:g} (Wang et al. 2017)", (_fmt(published.get(c), digits) for c in columns))
        lines.append("")
        lines.append(
            "Reference rows: Wang et al. 2017 (arXiv 1705.02315 v5, Table 19), NIH's boxes on "
            "its official split, ResNet-50 heatmaps at 32x32; '-' where not published (other "
            "datasets' boxes are not the same cases, so compare with care)."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- figures


def overlay_png(
    image: ArrayLike,
    heatmap: ArrayLike,
    path: str | Path,
    gt_boxes: Iterable[Sequence[float]] = (),
    pred_boxes: Iterable[Sequence[float]] = (),
    title: str = "",
) -> Path:
    """Saves the gray image with a jet heatmap overlay, GT boxes (green), predictions (red).

    Returns:
        The written path.
    """
    # The object API (no pyplot) keeps figures out of global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0]
    height, width = image.shape
    # Pixel edges in imshow coordinates, so (x, y, w, h) boxes land on pixel boundaries.
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(image, cmap="gray", vmin=0, vmax=255, extent=extent)
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    axes.imshow(heat, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0, extent=extent)
    for boxes, color, linestyle in ((gt_boxes, "lime", "-"), (pred_boxes, "red", "--")):
        for box in boxes:
            x, y, w, h = (float(v) for v in box[:4])
            corner = (x - 0.5, y - 0.5)
            axes.add_patch(
                Rectangle(
                    corner, w, h, fill=False, edgecolor=color, linewidth=1.5, linestyle=linestyle
                )
            )
    if title:
        axes.set_title(title)
    axes.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
