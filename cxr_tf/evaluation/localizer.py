"""Localization of a trained run against a dataset's expert boxes (`python -m
cxr_tf.localize`): the boxed records of a split, their heatmaps, the IoBB table, the pointing
game, overlays.

Boxes come from the records of any source that has them (NIH's `BBox_List_2017.csv`,
VinDr-CXR's radiologists, RSNA Pneumonia's opacities): a box's finding is an index into
the manifest's `labels`, so it may be a vocabulary finding or one of the dataset's own.
Only boxed findings the run's model outputs are scored; the others are counted as skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cxr_tf.config import ConfigError, LocalizeConfig
from cxr_tf.data import schema
from cxr_tf.data.manifest import DatasetError, Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.evaluation import evaluator, html, localization, report
from cxr_tf.modeling import models
from cxr_tf.runs import folder as runs

LOCALIZATION_JSON = "localization.json"
LOCALIZATION_MD = "localization.md"
OVERLAY_DIR = "overlays"


@dataclasses.dataclass
class BoxedImage:
    """One record with ground-truth boxes, boxes in pixels of the stored image."""

    image_id: str
    image: np.ndarray  # (S, S, 1) uint8
    boxes: list[tuple[str, localization.Box]]  # (finding, (x, y, w, h))


def read_boxed_images(dataset_dir: str | Path, split: str) -> list[BoxedImage]:
    """Every record of a split that has at least one box, decoded the TFDS way."""
    manifest = Manifest.load(dataset_dir)
    labels = list(manifest.labels)  # what a box's finding index names
    files = manifest.split_files(split)
    size = manifest.stored_size
    features = manifest.features()
    spec = {"boxes/finding": schema.feature_spec(features)["boxes/finding"]}

    def has_boxes(serialized: tf.Tensor) -> tf.Tensor:
        return tf.size(tf.io.parse_single_example(serialized, spec)["boxes/finding"]) > 0

    out = []
    for serialized in tf.data.TFRecordDataset(files).filter(has_boxes):
        record = features.deserialize_example(serialized)
        pixels = schema.boxes_xywh(record["boxes"]["bbox"].numpy(), size)
        findings = [labels[int(i)] for i in record["boxes"]["finding"].numpy()]
        out.append(
            BoxedImage(
                image_id=record["image_index"].numpy().decode(),
                image=record["image"].numpy(),
                boxes=[
                    (f, tuple(float(v) for v in box))
                    for f, box in zip(findings, pixels, strict=True)
                ],
            )
        )
    return out


def output_for(finding: str, names: Sequence[str]) -> int | None:
    """The output whose heatmap explains a boxed finding (binary "any": its one output)."""
    if tuple(names) == ("any",):
        return 0
    return list(names).index(finding) if finding in names else None


def _heatmaps(
    model: keras.Model,
    config: LocalizeConfig,
    layer: str,
    images: np.ndarray,
    classes: Sequence[int],
) -> np.ndarray:
    method = localization.cam if config.method == "cam" else localization.gradcam
    if len(classes) == 0:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    return method(model, images, list(classes), layer, batch_size=config.batch_size)


def _pairs(
    boxed: Sequence[BoxedImage], names: Sequence[str], only: str
) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """(image position, finding) for every boxed finding a heatmap can explain; skipped counts."""
    pairs, skipped = [], {}
    for i, item in enumerate(boxed):
        for finding in dict.fromkeys(f for f, _ in item.boxes):  # unique, in box order
            if only and finding != only:
                continue
            if output_for(finding, names) is None:
                skipped[finding] = skipped.get(finding, 0) + 1
                continue
            pairs.append((i, finding))
    return pairs, skipped


def _case_record(case: localization.LocalizationCase, probability: float) -> dict[str, Any]:
    return {
        "image": case.image_id,
        "finding": case.finding,
        "probability": probability,
        "gt_box": list(case.gt_box),
        "pred_boxes": [list(b) for b in case.pred_boxes],
        "best_iou": max((localization.iou(b, case.gt_box) for b in case.pred_boxes), default=0.0),
        "best_iobb": max((localization.iobb(b, case.gt_box) for b in case.pred_boxes), default=0.0),
        "pointing_hit": case.pointing_hit,
    }


def _overlays(
    model: keras.Model,
    config: LocalizeConfig,
    layer: str,
    boxed: Sequence[BoxedImage],
    names: Sequence[str],
    probs: np.ndarray,
    out: Path,
) -> list[str]:
    """Overlay PNGs for the first `config.overlays` images; returns their relative paths."""
    jobs = []  # (image position, output index)
    for i, item in enumerate(boxed[: config.overlays]):
        shown: list[int] = []
        if config.finding:
            index = output_for(config.finding, names)
            shown = [] if index is None else [index]
        else:
            shown = [j for f, _ in item.boxes if (j := output_for(f, names)) is not None]
            shown += [int(j) for j in np.argsort(-probs[i])[: config.top_k]]
        jobs += [(i, j) for j in dict.fromkeys(shown)]
    images = np.stack([boxed[i].image for i, _ in jobs]) if jobs else np.zeros((0, 1, 1, 1))
    heat = _heatmaps(model, config, layer, images, [j for _, j in jobs])
    written = []
    for (i, j), heatmap in zip(jobs, heat, strict=True):
        item, name = boxed[i], names[j]
        gt = [b for f, b in item.boxes if name in ("any", f)]
        pred = localization.boxes_from_heatmap(
            heatmap, config.threshold, max_boxes=config.max_boxes
        )
        stem = Path(item.image_id).stem
        path = out / OVERLAY_DIR / f"{stem}_{name}.png"
        title = f"{item.image_id} {name} p={probs[i, j]:.2f}" + ("" if gt else " (no GT box)")
        localization.overlay_png(item.image, heatmap, path, gt, pred, title=title)
        written.append(str(path.relative_to(out)))
    return written


def remove_overlays(out: str | Path) -> list[Path]:
    """Deletes the overlay PNGs an earlier run left in `out`/overlays; returns them.

    Overlays are named by image and output, so a new run with other options would
    otherwise leave earlier ones beside its own.
    """
    folder = Path(out) / OVERLAY_DIR
    stale = sorted(folder.glob("*.png")) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    return stale


def markdown(result: dict[str, Any], table: dict[str, Any]) -> str:
    """The `localization.md` text."""
    overall = result["table"]["all"]
    lines = [
        f"# Localization: `{result['run_dir']}`",
        "",
        f"- split: **{result['split']}**, {result['n_images']} images with boxes, "
        f"{result['n_cases']} ground-truth boxes (cases)",
        f"- heatmaps: {result['method']} on layer `{result['layer']}`, upsampled to the "
        f"{result['stored_size']} px stored image; boxes: connected regions with heat >= "
        f"{result['threshold']:g} x the map's maximum, at most {result['max_boxes']} per map",
        f"- **pointing game: {report.fmt(overall['pointing'])}** "
        f"(the heatmap's peak inside the box, tolerance {result['tolerance']:g} px)",
    ]
    if result["skipped"]:
        lines.append(f"- boxed findings the model does not predict (skipped): {result['skipped']}")
    lines += [
        "",
        "Accuracy at T(IoBB): share of ground-truth boxes for which some predicted box has "
        "IoBB (intersection over the predicted box's area) > T; `all` pools every case.",
        "",
        localization.localization_markdown(table),
    ]
    return "\n".join(lines)


def localize(config: LocalizeConfig, progress: bool = True) -> dict[str, Any]:
    """Heatmaps, boxes and scores over every boxed image of the split; writes the outputs."""
    from cxr_tf.progress import progress_bar as tqdm

    run_dir = Path(config.run_dir)
    run = runs.load_run_config(run_dir)
    names = LabelSpec.from_config(run.model).names
    if config.finding and output_for(config.finding, names) is None:
        raise ConfigError(f"finding: {config.finding!r} is not an output of {run_dir} {names}")
    out = Path(config.out) if config.out else run_dir / f"localize_{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    model = runs.load_model(run_dir, config.model)
    layer = config.layer or models.feature_layer_name(run.model)
    boxed = read_boxed_images(run.data.dataset, config.split)
    if not boxed:
        raise DatasetError(f"{run.data.dataset}: split {config.split!r} has no boxes")
    images = np.stack([b.image for b in boxed])
    probs = np.concatenate(
        [
            evaluator.predict_batch(model, images[s : s + config.batch_size], run.model.task)
            for s in range(0, len(images), config.batch_size)
        ]
    )
    pairs, skipped = _pairs(boxed, names, config.finding)
    cases, records = [], []
    step = config.batch_size
    for start in tqdm(
        range(0, len(pairs), step), unit="batch", desc="heatmaps", disable=not progress
    ):
        chunk = pairs[start : start + step]
        heat = _heatmaps(
            model, config, layer, images[[i for i, _ in chunk]],
            [output_for(f, names) for _, f in chunk],
        )  # fmt: skip
        for (i, finding), heatmap in zip(chunk, heat, strict=True):
            if not np.all(np.isfinite(heatmap)):
                raise FloatingPointError(f"{boxed[i].image_id}: non-finite heatmap for {finding}")
            new = localization.localization_cases(
                finding,
                heatmap,
                [b for f, b in boxed[i].boxes if f == finding],
                image_id=boxed[i].image_id,
                tolerance=config.tolerance,
                threshold=config.threshold,
                max_boxes=config.max_boxes,
            )
            cases += new
            p = float(probs[i, output_for(finding, names)])
            records += [_case_record(c, p) for c in new]
    if not cases:
        raise ValueError(f"no boxed finding of split {config.split!r} is an output of {run_dir}")
    table = localization.localization_table(cases)
    result = {
        "run_dir": str(run_dir),
        "split": config.split,
        "model_file": runs.MODEL_FILES[config.model],
        "method": config.method,
        "layer": layer,
        "stored_size": int(images.shape[1]),
        "threshold": config.threshold,
        "max_boxes": config.max_boxes,
        "tolerance": config.tolerance,
        "n_images": len(boxed),
        "n_cases": len(cases),
        "skipped": skipped,
        "pointing_game": table["all"]["pointing"],
        "table": table,
        "cases": records,
    }
    stale = remove_overlays(out)
    if stale and progress:
        print(f"removed {len(stale)} overlay(s) of an earlier run from {out / OVERLAY_DIR}")
    result["overlays"] = _overlays(model, config, layer, boxed, names, probs, out)
    result = report.json_safe(result)
    (out / LOCALIZATION_JSON).write_text(json.dumps(result, indent=1) + "\n")
    (out / LOCALIZATION_MD).write_text(markdown(result, table))
    html.write_localization_html(result, out)
    result["out"] = str(out)
    return result
