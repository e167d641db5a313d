"""Typed configuration, grouped by the code that reads it.

Every command builds one of these from defaults, an optional JSON config file
and dotted command-line overrides (see `cxr_tf.cli`). A run writes its resolved config
into its directory once; later commands read it back instead of re-asking for flags.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from cxr_tf.labels import FINDINGS, check_findings

SPLIT_NAMES = ("train", "validation", "test")
BATCH_SCALING = ("none", "linear", "sqrt")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass
class SplitConfig:
    """How images are assigned to train / validation / test, always by patient."""

    # official: NIH's test list, validation carved out of train_val by patient; random:
    # patient fractions; file: your own CSV.
    strategy: Literal["official", "random", "file"] = "official"
    # official: fraction of train_val patients carved out for validation.
    val_fraction: float = 0.1
    # random: patient fractions of train, validation, test.
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    # file: CSV with columns `Image Index,split` (split in train/validation/test).
    split_file: str = ""
    seed: int = 0  # seed of the validation carve-out (official) or the random split

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        _require(
            self.strategy in ("official", "random", "file"),
            "split.strategy",
            f"must be official, random or file, not {self.strategy!r}",
        )
        _require(0.0 < self.val_fraction < 1.0, "split.val_fraction", "must be in (0, 1)")
        _require(
            len(self.fractions) == 3
            and all(f >= 0 for f in self.fractions)
            and abs(sum(self.fractions) - 1.0) < 1e-6,
            "split.fractions",
            f"three non-negative fractions summing to 1, got {self.fractions}",
        )
        _require(
            self.strategy != "file" or bool(self.split_file),
            "split.split_file",
            "required with split.strategy=file",
        )


# How a record stores its pixels: lossless PNG or raw uint8 (`cxr_tf.data.schema`).
Encoding = Literal["png", "raw"]
ENCODINGS: tuple[str, ...] = typing.get_args(Encoding)


@dataclasses.dataclass
class ConvertConfig:
    """Conversion of a dataset folder into sharded TFRecords (`python -m cxr_tf.convert`)."""

    # the dataset folder (NIH, CheXpert, MIMIC-CXR-JPG, PadChest, class folders or a
    # labels CSV; see the README's "Datasets" section)
    root: str = ""
    # auto: tell from the files; or nih, chexpert, mimic, padchest, folders, csv
    source: str = "auto"
    # views kept (PA, AP, LATERAL, OTHER: not a chest view, ?: unknown); the others are
    # counted in the manifest
    views: tuple[str, ...] = ("PA", "AP", "?")
    nih_root: str = ""  # the former name of `root`, still accepted
    out_dir: str = "tfrecords"  # the dataset is written to <out_dir>/<name>/
    name: str = ""  # dataset folder name; default <source>_<size>_<encoding>
    image_size: int = 256  # stored side in pixels (64 ... 1024); models resize from it
    # raw: ~15x faster to read than PNG and faster to convert, 2x the disk (see README)
    encoding: Encoding = "raw"
    shard_mb: float = 150.0  # target size of a shard file
    workers: int = 0  # 0: every core
    # Restrict to images present on disk and record how many listed ones were absent.
    present_only: bool = False
    # Skip undecodable images (listed in the manifest) instead of stopping.
    skip_bad: bool = False
    # Seed of the random order in which each split's images are dealt into shards.
    shard_seed: int = 0
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if self.nih_root and not self.root:
            self.root = self.nih_root
        self.nih_root = ""
        self.views = tuple(v.strip().upper() for v in self.views if v.strip())
        _require(bool(self.views), "views", "keep at least one view (PA, AP, LATERAL, ?)")
        _require(
            set(self.views) <= {"PA", "AP", "LATERAL", "OTHER", "?"},
            "views",
            f"{list(self.views)}: choose from PA, AP, LATERAL, OTHER, ?",
        )
        _require(
            self.source in ("auto", "nih", "chexpert", "mimic", "padchest", "folders", "csv"),
            "source",
            f"{self.source!r}: auto, nih, chexpert, mimic, padchest, folders or csv",
        )
        _require(
            self.image_size in (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 1024),
            "image_size",
            f"unsupported size {self.image_size}",
        )
        _require(self.encoding in ENCODINGS, "encoding", "must be png or raw")
        _require(self.shard_mb > 0, "shard_mb", "must be positive")
        _require(self.workers >= 0, "workers", "must be >= 0")
        _require(
            not self.name
            or (
                self.name not in (".", "..")
                and "/" not in self.name
                and "\\" not in self.name
                and not self.name.startswith(".")
            ),
            "name",
            f"{self.name!r} must be a plain folder name inside out_dir (no '/', no leading '.')",
        )

    @property
    def dataset_name(self) -> str:
        source = "nih" if self.source == "auto" else self.source
        return self.name or f"{source}_{self.image_size}_{self.encoding}"


SynthLayout = Literal[
    "nih", "nih_folders", "chexpert", "mimic", "padchest", "folders", "csv", "dicom"
]
SYNTH_LAYOUTS: tuple[str, ...] = typing.get_args(SynthLayout)


@dataclasses.dataclass
class SynthConfig:
    """What `python -m cxr_tf.synth` generates."""

    out: str = ""  # output folder (required)
    n: int = 500  # number of images
    seed: int = 0  # same seed, same bytes
    image_size: int = 1024  # PNG side in pixels
    # 'nih' for NIH-like rates, or a per-finding floor in (0, 0.5] such as 0.1 (above
    # ~0.25 images get crowded and boxes may overlap)
    prevalence: str = "nih"
    # nih: NIH files, images in images/; nih_folders: NIH files, images in images_0NN/images/;
    # chexpert, mimic, padchest: imitations of those releases' files and folders;
    # folders: class subfolders; csv: a labels CSV; dicom: class folders of DICOM files
    layout: SynthLayout = "nih"
    rgba_fraction: float = 0.01  # share of PNGs written as RGBA
    test_fraction: float = 0.2  # share of patients in test_list.txt
    # 2017: ages as 058Y plus an empty trailing column; 2020: integers
    age_format: Literal["2017", "2020"] = "2017"
    workers: int = 0  # PNG writer threads; 0: every core

    def __post_init__(self) -> None:
        self.prevalence = str(self.prevalence).strip().lower()
        self.age_format = str(self.age_format)  # type: ignore[assignment]
        _require(bool(self.out), "out", "an output folder is required")
        _require(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _require(
            64 <= self.image_size <= 4096,
            "image_size",
            f"must be in [64, 4096], got {self.image_size}",
        )
        if self.prevalence != "nih":
            try:
                floor = float(self.prevalence)
            except ValueError:
                floor = -1.0
            _require(
                0.0 < floor <= 0.5,
                "prevalence",
                f"'nih' or a floor in (0, 0.5], got {self.prevalence!r}",
            )
        _require(
            self.layout in SYNTH_LAYOUTS, "layout", f"must be one of {', '.join(SYNTH_LAYOUTS)}"
        )
        _require(0.0 <= self.rgba_fraction <= 1.0, "rgba_fraction", "must be in [0, 1]")
        _require(0.0 <= self.test_fraction < 1.0, "test_fraction", "must be in [0, 1)")
        _require(self.age_format in ("2017", "2020"), "age_format", "must be 2017 or 2020")
        _require(self.workers >= 0, "workers", "must be >= 0")

    @property
    def prevalence_floor(self) -> float:
        """The per-finding prevalence floor; 0 for plain NIH rates."""
        return 0.0 if self.prevalence == "nih" else float(self.prevalence)


@dataclasses.dataclass
class ExploreConfig:
    """What `python -m cxr_tf.explore` reads and where it writes."""

    nih_root: str = ""  # an NIH folder
    dataset: str = ""  # a converted dataset folder
    out: str = ""  # output folder; explore/<name>
    samples_per_finding: int = 4  # images per finding in samples.png (0: no grid)
    # Used for an NIH folder only; a dataset's splits are those it was converted with.
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        _require(
            bool(self.nih_root or self.dataset),
            "nih_root",
            "give an NIH folder (--nih_root) or a dataset (--dataset)",
        )
        _require(
            not (self.nih_root and self.dataset),
            "dataset",
            "give --nih_root or --dataset, not both",
        )
        _require(
            0 <= self.samples_per_finding <= 16,
            "samples_per_finding",
            f"must be in [0, 16], not {self.samples_per_finding}",
        )

    @property
    def name(self) -> str:
        return Path(self.nih_root or self.dataset).resolve().name

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("explore") / self.name


# Keras Applications backbones; tiny: a small CNN for tests, demos and CPU runs.
Backbone = Literal["densenet121", "resnet50", "efficientnetv2b0", "convnext_tiny", "tiny"]
BACKBONES: tuple[str, ...] = typing.get_args(Backbone)
# multilabel: one sigmoid per finding; binary: one sigmoid; multiclass: softmax.
Task = Literal["multilabel", "binary", "multiclass"]
TASKS: tuple[str, ...] = typing.get_args(Task)


@dataclasses.dataclass
class ModelConfig:
    """The network: backbone, input, head (`cxr_tf.modeling.models`)."""

    # Keras Applications backbone; tiny: a small CNN for tests, demos and CPU runs
    backbone: Backbone = "densenet121"
    # "imagenet", "" (random init) or a path to a local weights file.
    weights: str = "imagenet"
    image_size: int = 224  # network input side; the stored images are resized in the model
    # multilabel: one sigmoid per finding; binary: one sigmoid; multiclass: softmax.
    task: Task = "multilabel"
    # multilabel: the findings predicted (default all 14); binary: one finding, or
    # "any" for any finding vs No Finding; multiclass: the classes (may include
    # "No Finding").
    findings: tuple[str, ...] = ()
    dropout: float = 0.0  # dropout before the output layer
    hidden_units: int = 0  # a dense ReLU layer of this width before the output (0: none)

    def __post_init__(self) -> None:
        self.findings = tuple(self.findings)
        _require(
            self.backbone in BACKBONES, "model.backbone", f"unknown backbone {self.backbone!r}"
        )
        _require(self.task in TASKS, "model.task", f"unknown task {self.task!r}")
        _require(self.image_size >= 32, "model.image_size", "must be >= 32")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _require(self.hidden_units >= 0, "model.hidden_units", "must be >= 0")
        try:
            if self.task == "binary":
                _require(
                    len(self.findings) == 1,
                    "model.findings",
                    "binary task takes exactly one finding, or 'any'",
                )
                if self.findings[0] != "any":
                    check_findings(self.findings, "model.findings")
            elif self.task == "multiclass":
                _require(len(self.findings) >= 2, "model.findings", "multiclass needs >= 2")
                check_findings([f for f in self.findings if f != "No Finding"], "model.findings")
            else:
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
class AugmentConfig:
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
        _require(0.0 <= self.zoom < 0.5, "data.augment.zoom", "must be in [0, 0.5)")
        _require(0.0 <= self.rotation_deg <= 45, "data.augment.rotation_deg", "0..45")
        _require(0.0 <= self.brightness < 1.0, "data.augment.brightness", "must be in [0, 1)")
        _require(0.0 <= self.contrast < 1.0, "data.augment.contrast", "must be in [0, 1)")
        _require(0.0 <= self.strength <= 3.0, "data.augment.strength", "must be in [0, 3]")


@dataclasses.dataclass
class DataConfig:
    """The input pipeline (`cxr_tf.data.pipeline`)."""

    # a converted dataset folder, or several separated by commas (trained on together)
    dataset: str = "tfrecords/nih_256_raw"
    # sampling weights of several datasets, in their order; empty: their training sizes
    weights: tuple[float, ...] = ()
    # images per training step over all replicas; per replica with train.batch_scaling
    # linear or sqrt
    batch_size: int = 32
    shuffle_buffer: int = 2048  # records the training order is shuffled within
    # Keep the split's serialized records (for raw storage: the uint8 pixels) in memory
    # after the first epoch; each epoch is still shuffled anew. Not with `balanced`.
    cache: bool = False
    # Exactly reproducible training order for a seed (epoch e's order depends on (seed, e)
    # either way; without this, parallel reads may swap neighbouring records, for speed).
    deterministic: bool = False
    balanced: bool = False  # binary task: sample positives and negatives 50/50
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _require(
            all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
            "data.weights",
            f"non-negative, not all zero, got {list(self.weights)}",
        )
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
        _require(
            not (self.cache and self.balanced),
            "data.cache",
            "cannot be combined with data.balanced (it would cache an endless stream)",
        )


@dataclasses.dataclass
class TrainConfig:
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
    uncertain: Literal["ignore", "ones", "zeros"] = "ignore"
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
    batch_scaling: Literal["none", "linear", "sqrt"] = "none"
    seed: int = 0  # weights, data order and augmentation of every epoch derive from it

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(
            -1 <= self.head_epochs <= self.epochs,
            "train.head_epochs",
            "must be in [0, epochs], or -1 (1 with pretrained weights, 0 without)",
        )
        _require(self.plateau_patience >= 1, "train.plateau_patience", "must be >= 1")
        _require(0.0 < self.plateau_factor < 1.0, "train.plateau_factor", "must be in (0, 1)")
        _require(self.steps_per_epoch >= 0, "train.steps_per_epoch", "must be >= 0")
        _require(self.validation_steps >= 0, "train.validation_steps", "must be >= 0")
        _require(
            self.finetune in ("all", "none") or self.finetune.isdigit(),
            "train.finetune",
            f"'all', 'none' or a number of blocks, not {self.finetune!r}",
        )
        _require(self.lr > 0 and self.finetune_lr > 0, "train.lr", "learning rates must be > 0")
        _require(self.optimizer in ("adam", "adamw"), "train.optimizer", "must be adam or adamw")
        _require(
            self.schedule in ("plateau", "cosine", "constant"),
            "train.schedule",
            "plateau, cosine or constant",
        )
        _require(
            self.loss in ("bce", "weighted_bce", "focal"),
            "train.loss",
            f"bce, weighted_bce or focal, not {self.loss!r}",
        )
        _require(
            self.strategy in ("default", "mirrored", "multi_worker"),
            "train.strategy",
            "default, mirrored or multi_worker",
        )
        _require(
            self.batch_scaling in BATCH_SCALING,
            "train.batch_scaling",
            f"none, linear or sqrt, not {self.batch_scaling!r}",
        )


@dataclasses.dataclass
class RunConfig:
    """Everything `python -m cxr_tf.fit` needs; written to `<run_dir>/config.json`."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        """Checks combinations of sections and resolves `train.head_epochs=-1`."""
        _require(
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
    _require(replicas >= 1, "replicas", f"must be >= 1, got {replicas}")
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


@dataclasses.dataclass
class ExportConfig:
    """SavedModel export of a run for TF Serving (`python -m cxr_tf.export`)."""

    run_dir: str = ""  # the training run to export
    model: Literal["best", "last"] = "best"  # best.keras or last.keras
    name: str = ""  # TF Serving model name; default cxr_<task>[-<outputs>] (export.py)
    version: int = 0  # 0: one above the highest version already exported
    out: str = "export"  # writes <out>/<name>/<version>/ and <out>/<name>/models.config
    warmup: bool = True  # write assets.extra/tf_serving_warmup_requests

    def __post_init__(self) -> None:
        _require(self.model in ("best", "last"), "model", "must be best or last")
        _require(self.version >= 0, "version", "must be >= 0 (0: next free version)")
        _require(
            not self.name or all(c.isalnum() or c in "_.-" for c in self.name),
            "name",
            f"letters, digits, '_', '.' and '-' only (a URL path segment), not {self.name!r}",
        )


@dataclasses.dataclass
class PredictConfig:
    """Prediction on image files (`python -m cxr_tf.predict`)."""

    model: str = ""  # a run directory, a .keras file, or an exported SavedModel folder
    server: str = ""  # TF Serving REST URL, e.g. http://localhost:8501/v1/models/cxr_multilabel
    json: bool = False  # print JSON instead of a table
    gradcam: str = ""  # folder for one Grad-CAM overlay PNG per image (Keras models only)
    batch_size: int = 16  # images per model call
    timeout_s: float = 30.0  # --server: seconds to wait for a reply

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.timeout_s > 0, "timeout_s", "must be > 0")


@dataclasses.dataclass
class TuneConfig:
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
        _require(bool(self.space), "space", "a search-space file is required")
        _require(
            self.tuner in ("random", "bayesian", "hyperband"),
            "tuner",
            f"random, bayesian or hyperband, not {self.tuner!r}",
        )
        _require(self.max_trials >= 1, "max_trials", "must be >= 1")
        _require(self.epochs >= 0, "epochs", "must be >= 0 (0: the base config's)")
        _require(self.hyperband_factor >= 2, "hyperband_factor", "must be >= 2")
        _require(self.seed >= 1, "seed", "must be >= 1")
        _require(
            self.max_consecutive_failed_trials >= 1, "max_consecutive_failed_trials", "must be >= 1"
        )
        _require(
            "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
            "name",
            f"a plain folder name, not {self.name!r}",
        )

    @property
    def search_name(self) -> str:
        return self.name or Path(self.space).stem


@dataclasses.dataclass
class EvaluateConfig:
    """Evaluation of a trained run on one split (`python -m cxr_tf.evaluate`)."""

    run_dir: str = ""  # the training run to evaluate
    split: Literal["train", "validation", "test"] = "test"  # the split to report on
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

    def __post_init__(self) -> None:
        _require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        _require(self.split in SPLIT_NAMES, "split", f"one of {SPLIT_NAMES}")
        _require(self.model in ("best", "last"), "model", "best or last")
        _require(
            self.threshold_method in ("youden", "max_f1", "sensitivity"),
            "threshold_method",
            "youden, max_f1 or sensitivity",
        )
        _require(0.0 < self.target_sensitivity <= 1.0, "target_sensitivity", "must be in (0, 1]")
        _require(self.bootstrap >= 1, "bootstrap", "must be >= 1")
        _require(self.tta in ("none", "flip", "tencrop"), "tta", "none, flip or tencrop")
        _require(self.batch_size >= 0, "batch_size", "must be >= 0")


@dataclasses.dataclass
class LocalizeConfig:
    """Heatmap localization against the NIH boxes (`python -m cxr_tf.localize`)."""

    run_dir: str = ""  # the training run whose heatmaps are scored
    split: Literal["train", "validation", "test"] = "test"  # NIH boxes are all in test
    model: Literal["best", "last"] = "best"  # best.keras or last.keras
    finding: str = ""  # only this finding (evaluation and overlays)
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
        _require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        _require(self.split in SPLIT_NAMES, "split", f"one of {SPLIT_NAMES}")
        _require(self.model in ("best", "last"), "model", "best or last")
        _require(self.method in ("gradcam", "cam"), "method", "gradcam or cam")
        _require(self.top_k >= 0, "top_k", "must be >= 0")
        _require(0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        _require(self.max_boxes >= 1, "max_boxes", "must be >= 1")
        _require(self.tolerance >= 0, "tolerance", "must be >= 0")
        _require(self.overlays >= 0, "overlays", "must be >= 0")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.finding:
            try:
                check_findings([self.finding], "finding")
            except ValueError as err:
                raise ConfigError(str(err)) from err


# --- benchmarks (`python -m cxr_tf.bench <what>`) -------------------------------------------

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _check_encodings(encodings: tuple[str, ...]) -> tuple[str, ...]:
    encodings = tuple(encodings)
    _require(
        bool(encodings) and all(e in ENCODINGS for e in encodings),
        "encodings",
        f"one or more of {', '.join(ENCODINGS)}, not {list(encodings)}",
    )
    return encodings


@dataclasses.dataclass
class BenchConvertConfig:
    """Conversion images/s vs bare PNG decoding (`python -m cxr_tf.bench convert`)."""

    n: int = 200  # synthetic 1024 px images
    seed: int = 0  # synthetic data seed
    size: int = 256  # stored image size
    encodings: tuple[str, ...] = ENCODINGS  # storage encodings to time: png, raw
    workers: int = 0  # threads (0: every core)
    workdir: str = "bench_out"  # scratch folder (reused)
    # other sources' imitations to time too (raw storage), each against bare decoding of
    # its own files: chexpert, mimic (JPEG), padchest (16-bit PNG), folders, csv, dicom
    layouts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.encodings = _check_encodings(self.encodings)
        bad = [x for x in self.layouts if x not in SYNTH_LAYOUTS or x.startswith("nih")]
        _require(not bad, "layouts", f"{bad}: choose from {', '.join(SYNTH_LAYOUTS[2:])}")
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.workers >= 0, "workers", "must be >= 0 (0: every core)")


@dataclasses.dataclass
class BenchReadConfig:
    """TFDS reader vs the project's batch parser (`python -m cxr_tf.bench read DATASET`)."""

    dataset: str = ""  # a converted dataset folder (also the first positional argument)
    batch: int = 64  # records per batch
    epochs: int = 2  # timed passes after one warm-up

    def __post_init__(self) -> None:
        _require(bool(self.dataset), "dataset", "required (a converted dataset folder)")
        _require(self.batch >= 1, "batch", "must be >= 1")
        _require(self.epochs >= 1, "epochs", "must be >= 1")


@dataclasses.dataclass
class BenchPipelineConfig:
    """Training input pipeline vs decoding PNGs (`python -m cxr_tf.bench pipeline`)."""

    n: int = 300  # synthetic 1024 px images
    seed: int = 0  # synthetic data seed
    size: int = 256  # stored image size
    batch: int = 64  # images per batch
    batches: int = 30  # timed batches
    encodings: tuple[str, ...] = ENCODINGS  # storage encodings to time: png, raw
    cache: bool = False  # cache parsed records in memory
    workdir: str = "bench_out"  # scratch folder (reused)

    def __post_init__(self) -> None:
        self.encodings = _check_encodings(self.encodings)
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.batch >= 1, "batch", "must be >= 1")
        _require(self.batches >= 1, "batches", "must be >= 1")


@dataclasses.dataclass
class BenchFitConfig:
    """Per-epoch seconds of `cxr_tf.fit` vs a plain Keras loop (`python -m cxr_tf.bench fit`)."""

    # a converted dataset folder (also the first positional argument); default: synthetic
    # NIH-like images converted at 64 px in `workdir`
    dataset: str = ""
    backbones: tuple[str, ...] = ("tiny", "densenet121")  # model.backbone of each timed model
    image_size: int = 64  # network input side
    batch: int = 32  # images per step
    steps: int = 20  # training steps per epoch
    epochs: int = 2  # N: each loop runs N and 3N epochs; per epoch = time difference / 2N
    images: int = 800  # synthetic images when no dataset is given
    workdir: str = "bench_out"  # scratch folder (the synthetic dataset is reused)

    def __post_init__(self) -> None:
        self.backbones = tuple(self.backbones)
        _require(
            bool(self.backbones) and all(b in BACKBONES for b in self.backbones),
            "backbones",
            f"one or more of {', '.join(BACKBONES)}",
        )
        _require(self.image_size >= 32, "image_size", "must be >= 32")
        _require(self.batch >= 1, "batch", "must be >= 1")
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.epochs >= 1, "epochs", "must be >= 1")
        _require(self.images >= 100, "images", "must be >= 100")


@dataclasses.dataclass
class BenchShardsConfig:
    """Patients per batch: contiguous vs random shards (`python -m cxr_tf.bench shards`)."""

    data_entry: str = ""  # an NIH label file; without one, NIH-like synthetic patients
    size: int = 256  # stored size (sets shard count)
    shard_mb: float = 150.0  # as in convert
    batch: int = 32  # images per batch
    buffer: int = 2048  # shuffle buffer (records)
    seed: int = 0  # split and patient seed
    workdir: str = "bench_out"  # scratch folder (reused)

    def __post_init__(self) -> None:
        _require(self.shard_mb > 0, "shard_mb", "must be positive")
        _require(self.batch >= 1, "batch", "must be >= 1")
        _require(self.buffer >= 1, "buffer", "must be >= 1")


@dataclasses.dataclass
class BenchServeConfig:
    """Exported serving_default vs model.predict, on CPU (`python -m cxr_tf.bench serve`)."""

    run_dir: str = ""  # a training run (exported to --workdir)
    model: Literal["best", "last"] = "best"  # checkpoint of the run
    batches: tuple[int, ...] = (1, 32)  # batch sizes to time
    images: str = ""  # folder of PNG/JPEG files (default: synthetic PNGs)
    source_size: int = 1024  # synthetic image side
    repeats: int = 10  # least timed calls per path
    min_seconds: float = 2.0  # least time per path
    seed: int = 0  # synthetic image seed
    workdir: str = "bench_out"  # scratch folder (reused)

    def __post_init__(self) -> None:
        self.batches = tuple(self.batches)
        _require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        _require(self.model in ("best", "last"), "model", "best or last")
        _require(bool(self.batches) and min(self.batches) >= 1, "batches", "sizes >= 1")
        _require(self.repeats >= 1, "repeats", "must be >= 1")
        _require(self.min_seconds >= 0, "min_seconds", "must be >= 0")


@dataclasses.dataclass
class BenchModelConfig:
    """Training and inference speed of the project's model on synthetic batches, on any
    Keras backend (`python -m cxr_tf.bench model`)."""

    # models.build_model with random weights (the timed network; tiny: for tests)
    backbone: Backbone = "densenet121"
    batch_sizes: tuple[int, ...] = (32, 64, 128)  # images per step; each size timed apart
    image_size: int = 224  # network input side (model.image_size)
    stored_size: int = 256  # side of the uint8 images fed in, resized inside the model
    # Keras dtype policies timed: float32, mixed_bfloat16, mixed_float16 (which gets
    # fit's loss scaling)
    precision: tuple[str, ...] = ("float32", "mixed_bfloat16")
    # compiled train and predict steps: on (XLA on jax and tensorflow, torch.compile on
    # torch), off, or both
    jit: tuple[str, ...] = ("on",)
    # the in-model augmentation (data.augment defaults) as fit builds it; Keras runs a
    # model with RandomZoom/RandomRotation without jit, so --no-augment times jit on
    augment: bool = True
    inference: bool = True  # also time model.predict on the same batches
    # untimed steps first, in one call: compilation, and torch.compile's recompiles
    warmup: int = 3
    steps: int = 10  # steps per timed window (one fit() or predict() call)
    windows: int = 3  # timed windows; the median is reported
    # also time a PyTorch reference in the same run: timm (AMP when mixed precision,
    # channels_last, torch.compile when jit on); skipped when torch or timm is missing
    peer: Literal["none", "timm"] = "none"
    peer_model: str = "densenet121"  # the timm model name of the peer
    seed: int = 0  # synthetic images and labels, augmentation, the peer's weights

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(self.batch_sizes)
        self.precision = tuple(self.precision)
        self.jit = tuple(self.jit)
        _require(self.backbone in BACKBONES, "backbone", f"one of {', '.join(BACKBONES)}")
        _require(bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch_sizes", "sizes >= 1")
        _require(self.image_size >= 32, "image_size", "must be >= 32")
        _require(self.stored_size >= 32, "stored_size", "must be >= 32")
        _require(
            bool(self.precision) and all(p in PRECISIONS for p in self.precision),
            "precision",
            f"one or more of {', '.join(PRECISIONS)}, not {list(self.precision)}",
        )
        _require(
            bool(self.jit) and all(j in ("on", "off") for j in self.jit),
            "jit",
            f"on, off or both, not {list(self.jit)}",
        )
        _require(self.warmup >= 1, "warmup", "must be >= 1 (the first step compiles)")
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.windows >= 1, "windows", "must be >= 1")
        _require(self.peer in ("none", "timm"), "peer", f"none or timm, not {self.peer!r}")
        _require(bool(self.peer_model), "peer_model", "a timm model name")


# --- JSON (de)serialisation -------------------------------------------------------


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{field}.")
    if origin is Literal:
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value else []
        args = typing.get_args(tp)
        inner = args[0] if args else str
        return tuple(_coerce(inner, v, field) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{field}: expected a boolean, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{field}: expected {tp.__name__}, got {value!r}") from err
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds config `cls` from a (possibly partial) dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + u for u in unknown]}; "
            f"known: {sorted(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def save(config: Any, path: str | Path) -> None:
    """Writes a config as indented JSON."""
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(cls: type, path: str | Path) -> Any:
    """Reads a config file written by `save` (or by hand)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    return from_dict(cls, data)
