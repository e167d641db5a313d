"""The config of a hyperparameter search (`python -m cxr_tf.tune`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from cxr_tf.config.base import Config, require


@dataclasses.dataclass
class TuneConfig(Config):
    """A Keras Tuner search (`python -m cxr_tf.tune`); the base RunConfig is given apart."""

    space: str = "tuning/default.json"  # the search-space file (see tuning/README.md)
    name: str = ""  # results under <out_dir>/<name>; default: the space file's stem
    out_dir: str = "tuning"  # the folder holding every search
    tuner: Literal["random", "bayesian", "hyperband"] = "random"  # Keras Tuner's oracle
    max_trials: int = 10  # random / bayesian (hyperband: budget from epochs and factor)
    epochs: int = 0  # per trial (hyperband: the most); 0: the base config's train.epochs
    hyperband_factor: int = 3  # hyperband: reduction factor between brackets
    seed: int = 1  # the oracle's sampling seed (keras-tuner takes 0 as "random")
    max_consecutive_failed_trials: int = 3  # keras-tuner stops the search after this many

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.space), "space", "a search-space file is required")
        require(self.max_trials >= 1, "max_trials", "must be >= 1")
        require(self.epochs >= 0, "epochs", "must be >= 0 (0: the base config's)")
        require(self.hyperband_factor >= 2, "hyperband_factor", "must be >= 2")
        require(self.seed >= 1, "seed", "must be >= 1")
        require(
            self.max_consecutive_failed_trials >= 1, "max_consecutive_failed_trials", "must be >= 1"
        )
        require(
            "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
            "name",
            f"a plain folder name, not {self.name!r}",
        )

    @property
    def search_name(self) -> str:
        return self.name or Path(self.space).stem
