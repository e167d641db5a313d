"""Configs of the model: the network and its training-time augmentation."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from cxr_tf.config.base import Config, ConfigError, require
from cxr_tf.labels import FINDINGS, check_findings

# Keras Applications backbones; tiny: a small CNN for tests, demos and CPU runs.
Backbone = Literal["densenet121", "resnet50", "efficientnetv2b0", "convnext_tiny", "tiny"]
BACKBONES: tuple[str, ...] = typing.get_args(Backbone)
# multilabel: one sigmoid per finding; binary: one sigmoid; multiclass: softmax.
Task = Literal["multilabel", "binary", "multiclass"]
TASKS: tuple[str, ...] = typing.get_args(Task)


@dataclasses.dataclass
class ModelConfig(Config, section="model", renamed={"image_size": "input_size"}):
    """The network: backbone, input, head (`cxr_tf.modeling.models`)."""

    # Keras Applications backbone; tiny: a small CNN for tests, demos and CPU runs
    backbone: Backbone = "densenet121"
    # "imagenet", "" (random init) or a path to a local weights file.
    weights: str = "imagenet"
    input_size: int = 224  # network input side; the stored images are resized in the model
    # multilabel: one sigmoid per finding; binary: one sigmoid; multiclass: softmax.
    task: Task = "multilabel"
    # multilabel: the findings predicted (default all 14, or what the dataset labels);
    # binary: one finding, or "any" for any finding vs No Finding; multiclass: the classes
    # (may include "No Finding"; default the dataset's classes). A dataset's own findings
    # (class folders or CSV labels outside the vocabulary) are named as it names them.
    findings: tuple[str, ...] = ()
    dropout: float = 0.0  # dropout before the output layer
    hidden_units: int = 0  # a dense ReLU layer of this width before the output (0: none)

    def __post_init__(self) -> None:
        self.findings = tuple(self.findings)
        super().__post_init__()
        require(
            32 <= self.input_size <= 4096,
            "model.input_size",
            f"must be in [32, 4096], not {self.input_size}",
        )
        require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        require(self.hidden_units >= 0, "model.hidden_units", "must be >= 0")
        try:
            if self.task == "binary":
                require(
                    len(self.findings) == 1,
                    "model.findings",
                    "binary task takes exactly one finding, or 'any'",
                )
            elif self.task == "multiclass":
                require(
                    len(self.findings) != 1,
                    "model.findings",
                    "multiclass needs >= 2 classes (none: the dataset's classes)",
                )
            # Any name may be a finding of the dataset's own: the names are checked against
            # the dataset when training starts (`cxr_tf.data.reader.check_compatible`).
            check_findings(self.findings, "model.findings")
        except ValueError as err:
            raise ConfigError(str(err)) from err

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's outputs, in logit order: multilabel, the chosen findings (all 14 by
        default); binary, the one finding or "any" (any finding vs No Finding); multiclass,
        the classes."""
        if self.task == "multilabel":
            return tuple(self.findings) or FINDINGS
        return tuple(self.findings)


@dataclasses.dataclass
class AugmentConfig(Config, section="data.augment"):
    """Training-time augmentation (Keras layers, see `cxr_tf.modeling.augment`); off at inference.

    Horizontal flip is off by default: it moves the heart to the right, an image the model
    never meets at test time (CheXNet used it; `--data.augment.flip` turns it on).
    `strength` scales zoom, rotation, brightness and contrast together (0 disables them).
    """

    flip: bool = False  # random horizontal flip (moves the heart: off by default)
    zoom: float = 0.1  # largest zoom-in (random resized crop), fraction of the side
    rotation_deg: float = 5.0  # largest rotation, degrees either way
    brightness: float = 0.1  # fraction of the 0-255 range
    contrast: float = 0.1  # largest contrast change, fraction
    strength: float = 1.0  # scales zoom, rotation, brightness and contrast (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.zoom < 0.5, "data.augment.zoom", "must be in [0, 0.5)")
        require(0.0 <= self.rotation_deg <= 45, "data.augment.rotation_deg", "0..45")
        require(0.0 <= self.brightness < 1.0, "data.augment.brightness", "must be in [0, 1)")
        require(0.0 <= self.contrast < 1.0, "data.augment.contrast", "must be in [0, 1)")
        require(0.0 <= self.strength <= 3.0, "data.augment.strength", "must be in [0, 3]")
