"""Configs of evaluation: scoring a run on a split, and heatmap localization."""

from __future__ import annotations

import dataclasses
from typing import Literal

from cxr_tf.config.base import Config, ConfigError, require
from cxr_tf.config.data import Split
from cxr_tf.labels import check_findings


@dataclasses.dataclass
class EvaluateConfig(Config):
    """Evaluation of a trained run on one split (`python -m cxr_tf.evaluate`)."""

    run_dir: str = ""  # the training run to evaluate
    split: Split = "test"  # the split to report on
    model: Literal["best", "last"] = "best"  # best.keras or last.keras
    # Operating threshold per output, always chosen on the validation split.
    threshold_method: Literal["youden", "max_f1", "sensitivity"] = "youden"
    target_sensitivity: float = 0.9  # threshold_method=sensitivity
    bootstrap: int = 1000  # patient-level resamples for the 95% intervals
    # test-time augmentation: average over the image and its flip, or ten crops
    tta: Literal["none", "flip", "tencrop"] = "none"
    out: str = ""  # default <run_dir>/eval/<split>-<checkpoint>[-tta-<mode>][-<method>]
    batch_size: int = 0  # 0: the run's data.batch_size
    seed: int = 0  # bootstrap seed
    # another converted dataset folder (or several, comma-separated); default: the run's own
    dataset: str = ""
    # report.html: per output, this many most confident true positives, false positives and
    # false negatives with Grad-CAM overlays (0: no gallery, no model pass for it)
    gallery: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        require(0.0 < self.target_sensitivity <= 1.0, "target_sensitivity", "must be in (0, 1]")
        require(self.bootstrap >= 1, "bootstrap", "must be >= 1")
        require(self.batch_size >= 0, "batch_size", "must be >= 0")
        require(self.gallery >= 0, "gallery", "must be >= 0")


@dataclasses.dataclass
class LocalizeConfig(Config):
    """Heatmap localization against the NIH boxes (`python -m cxr_tf.localize`)."""

    run_dir: str = ""  # the training run whose heatmaps are scored
    split: Split = "test"  # NIH boxes are all in test
    model: Literal["best", "last"] = "best"  # best.keras or last.keras
    finding: str = ""  # only this output of the run (evaluation and overlays)
    top_k: int = 3  # overlays: also the top-k predicted outputs of each image
    method: Literal["gradcam", "cam"] = "gradcam"  # Grad-CAM, or CAM (global-pooling heads)
    layer: str = ""  # feature layer; default the backbone's last feature map
    threshold: float = 0.5  # box = region where heat >= threshold x the map's maximum
    max_boxes: int = 3  # boxes per heatmap
    tolerance: float = 0.0  # pointing game: pixels the box is grown by
    overlays: int = 8  # overlay PNGs for the first N images with boxes
    out: str = ""  # default <run_dir>/localize_<split>
    batch_size: int = 32  # images per model call

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        require(self.top_k >= 0, "top_k", "must be >= 0")
        require(0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        require(self.max_boxes >= 1, "max_boxes", "must be >= 1")
        require(self.tolerance >= 0, "tolerance", "must be >= 0")
        require(self.overlays >= 0, "overlays", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.finding:
            try:
                check_findings([self.finding], "finding")
            except ValueError as err:
                raise ConfigError(str(err)) from err
