"""Configs of training: optimisation and callbacks, the whole run, scaling on replicas."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from cxr_tf.config.base import Config, require
from cxr_tf.config.data import DataConfig
from cxr_tf.config.model import ModelConfig

# How the batch and the learning rates follow the replica count (`TrainConfig.batch_scaling`).
# What an uncertain label becomes: unknown (masked), positive or negative.
Uncertain = Literal["ignore", "ones", "zeros"]
UNCERTAIN_POLICIES: tuple[str, ...] = typing.get_args(Uncertain)
BatchScaling = Literal["none", "linear", "sqrt"]
BATCH_SCALING: tuple[str, ...] = typing.get_args(BatchScaling)


@dataclasses.dataclass
class TrainConfig(Config, section="train"):
    """Optimisation, callbacks and run directory (`cxr_tf.training`)."""

    # default runs/<backbone>-<task>[-<findings>]-<config hash>: the same command resumes
    run_dir: str = ""
    epochs: int = 10  # total, head phase included
    # phase 1, backbone frozen; -1: 1 with pretrained weights, 0 without (a frozen random
    # backbone teaches the head nothing)
    head_epochs: int = -1
    # phase 2: "all", "none" or a number of top backbone blocks to unfreeze
    finetune: str = "all"
    lr: float = 1e-3  # phase 1
    finetune_lr: float = 1e-4  # phase 2
    optimizer: Literal["adam", "adamw"] = "adam"  # AdamW decouples the weight decay
    weight_decay: float = 1e-4  # adamw only
    # plateau: cut the rate when val mean AUROC stalls; cosine: decay with warm-up
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    warmup_epochs: float = 0.0  # cosine only
    # plateau: epochs without a better val mean AUROC before the rate is cut. Patience 2
    # and factor 0.5 (floor lr / 100): patience 1 and factor 0.1 cut the rate to 1e-7
    # within 8 epochs of a from-scratch run, which then stopped learning.
    plateau_patience: int = 2
    plateau_factor: float = 0.5  # plateau: the rate is multiplied by this
    early_stopping_patience: int = 5  # epochs without a better val mean AUROC, per phase
    # weighted_bce: positives weighted by the training split's negatives/positives
    loss: Literal["bce", "weighted_bce", "focal"] = "bce"
    # uncertain labels (CheXpert -1): ignore (no loss), ones (positive) or zeros (negative);
    # findings a dataset does not label never reach the loss
    uncertain: Uncertain = "ignore"
    focal_gamma: float = 2.0  # focal loss focusing exponent
    focal_alpha: float = 0.25  # focal loss weight of the positives
    steps_per_epoch: int = 0  # 0: one pass over the training split
    validation_steps: int = 0  # 0: the whole validation split
    mixed_precision: bool = False  # float16 compute, float32 weights (GPUs with tensor cores)
    xla: bool = False  # compile the train step with XLA (jit_compile)
    # tf.distribute: mirrored = the GPUs of one machine; multi_worker = hosts in TF_CONFIG
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    # none: data.batch_size is the global batch, split over the replicas, and the learning
    # rates apply as given; linear / sqrt: data.batch_size is per replica (global batch =
    # data.batch_size x replicas) and lr / finetune_lr, set for data.batch_size on one
    # device, are multiplied by the replica count (linear) or its square root (sqrt)
    batch_scaling: BatchScaling = "none"
    seed: int = 0  # weights, data order and augmentation of every epoch derive from it

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.epochs >= 1, "train.epochs", "must be >= 1")
        require(
            -1 <= self.head_epochs <= self.epochs,
            "train.head_epochs",
            "must be in [0, epochs], or -1 (1 with pretrained weights, 0 without)",
        )
        require(self.plateau_patience >= 1, "train.plateau_patience", "must be >= 1")
        require(0.0 < self.plateau_factor < 1.0, "train.plateau_factor", "must be in (0, 1)")
        require(self.steps_per_epoch >= 0, "train.steps_per_epoch", "must be >= 0")
        require(self.validation_steps >= 0, "train.validation_steps", "must be >= 0")
        require(
            self.finetune in ("all", "none") or self.finetune.isdigit(),
            "train.finetune",
            f"'all', 'none' or a number of blocks, not {self.finetune!r}",
        )
        for name in ("lr", "finetune_lr"):
            value = getattr(self, name)
            require(
                math.isfinite(value) and value > 0, f"train.{name}", f"must be > 0, not {value}"
            )
        require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "train.weight_decay",
            f"must be >= 0, not {self.weight_decay}",
        )
        require(
            math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            "train.warmup_epochs",
            f"must be in [0, epochs={self.epochs}], not {self.warmup_epochs}",
        )
        require(
            self.early_stopping_patience >= 0,
            "train.early_stopping_patience",
            f"must be >= 0, not {self.early_stopping_patience}",
        )
        require(
            math.isfinite(self.focal_gamma) and self.focal_gamma >= 0,
            "train.focal_gamma",
            f"must be >= 0, not {self.focal_gamma}",
        )
        require(
            0.0 <= self.focal_alpha <= 1.0,
            "train.focal_alpha",
            f"must be in [0, 1], not {self.focal_alpha}",
        )
        # Keras and NumPy take seeds in [0, 2**32); the epoch seeds derive from it mod 2**31.
        require(0 <= self.seed < 2**31, "train.seed", f"must be in [0, 2**31), not {self.seed}")


@dataclasses.dataclass
class RunConfig(Config):
    """Everything `python -m cxr_tf.fit` needs; written to `<run_dir>/config.json`."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """Checks combinations of sections and resolves `train.head_epochs=-1`."""
        super().__post_init__()
        require(
            not (self.model.backbone == "tiny" and self.model.weights == "imagenet"),
            "model.weights",
            "the tiny backbone has no ImageNet weights; use --model.weights '' (random "
            "init) or a local weights file",
        )
        if self.train.head_epochs == -1:
            self.train.head_epochs = min(1, self.train.epochs) if self.model.weights else 0


# --- batch size and learning rate on several replicas ----------------------------------------


def lr_factor(batch_scaling: str, replicas: int) -> float:
    """What the learning rates are multiplied by on `replicas` devices.

    linear: the global batch grows `replicas`-fold and so does the rate (Goyal et al. 2017,
    arXiv 1706.02677, for SGD with a gradual warm-up); sqrt: the rate grows with the square
    root (the learning-rate part of the rule Malladi et al. 2022, arXiv 2205.10287, derive
    for Adam, which also adjusts its betas: left as they are here); none: the global batch
    does not grow.
    """
    require(replicas >= 1, "replicas", f"must be >= 1, got {replicas}")
    if batch_scaling == "linear":
        return float(replicas)
    if batch_scaling == "sqrt":
        return float(replicas) ** 0.5
    return 1.0


def for_replicas(run: RunConfig, replicas: int) -> RunConfig:
    """The run as it trains on `replicas` devices, `train.batch_scaling` applied.

    With linear or sqrt, `data.batch_size` is per replica: the copy's batch is
    `data.batch_size x replicas` (the pipeline's batch is the global one) and its learning
    rates are scaled by `lr_factor`; its `batch_scaling` is "none", so applying this twice
    changes nothing. With none the run is returned as it is.
    """
    scaling = run.train.batch_scaling
    if scaling == "none":
        return run
    factor = lr_factor(scaling, replicas)
    return dataclasses.replace(
        run,
        data=dataclasses.replace(run.data, batch_size=run.data.batch_size * replicas),
        train=dataclasses.replace(
            run.train,
            lr=run.train.lr * factor,
            finetune_lr=run.train.finetune_lr * factor,
            batch_scaling="none",
        ),
    )


def describe_scaling(run: RunConfig, replicas: int) -> str:
    """One line saying the global batch and learning rates `run` trains with."""
    scaling = run.train.batch_scaling
    if scaling == "none":
        per = run.data.batch_size / replicas
        per_text = f"{per:g}" if per == int(per) else f"{per:.1f} on average"
        return (
            f"batch: {run.data.batch_size} per step over {replicas} replica(s), {per_text} "
            f"each (train.batch_scaling none: learning rates as configured)"
        )
    scaled = for_replicas(run, replicas)
    factor = lr_factor(scaling, replicas)
    line = (
        f"batch: {run.data.batch_size} per replica x {replicas} replica(s) = "
        f"{scaled.data.batch_size} per step; learning rates x{factor:.3g} "
        f"(train.batch_scaling {scaling}): lr {run.train.lr:g} -> {scaled.train.lr:.3g}, "
        f"finetune_lr {run.train.finetune_lr:g} -> {scaled.train.finetune_lr:.3g}"
    )
    if factor > 1 and not (run.train.schedule == "cosine" and run.train.warmup_epochs > 0):
        line += "; no warm-up (--train.schedule cosine --train.warmup_epochs 1 adds one)"
    return line
