"""Configs of serving: the SavedModel export and prediction on image files."""

from __future__ import annotations

import dataclasses
from typing import Literal

from cxr_tf.config.base import Config, require


@dataclasses.dataclass
class ExportConfig(Config):
    """SavedModel export of a run for TF Serving (`python -m cxr_tf.export`)."""

    run_dir: str = ""  # the training run to export
    model: Literal["best", "last"] = "best"  # best.keras or last.keras
    name: str = ""  # TF Serving model name; default cxr_<task>[-<outputs>] (export.py)
    version: int = 0  # 0: one above the highest version already exported
    out: str = "export"  # writes <out>/<name>/<version>/ and <out>/<name>/models.config
    warmup: bool = True  # write assets.extra/tf_serving_warmup_requests

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.version >= 0, "version", "must be >= 0 (0: next free version)")
        require(
            not self.name or all(c.isalnum() or c in "_.-" for c in self.name),
            "name",
            f"letters, digits, '_', '.' and '-' only (a URL path segment), not {self.name!r}",
        )


@dataclasses.dataclass
class PredictConfig(Config):
    """Prediction on image files (`python -m cxr_tf.predict`)."""

    model: str = ""  # a run directory, a .keras file, or an exported SavedModel folder
    server: str = ""  # TF Serving REST URL, e.g. http://localhost:8501/v1/models/cxr_multilabel
    json: bool = False  # print JSON instead of a table
    gradcam: str = ""  # folder for one Grad-CAM overlay PNG per image (Keras models only)
    batch_size: int = 16  # images per model call
    timeout_s: float = 30.0  # --server: seconds to wait for a reply

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
