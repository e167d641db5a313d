"""Configs of the data stage: splits, conversion, synthetic data, exploration, the input."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Literal

from cxr_tf.config.base import Config, require
from cxr_tf.config.model import AugmentConfig

Split = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[str, ...] = typing.get_args(Split)
# The stored sides conversion offers, in pixels.
STORED_SIZES = (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 1024)


@dataclasses.dataclass
class SplitConfig(Config, section="split"):
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
        super().__post_init__()
        require(0.0 < self.val_fraction < 1.0, "split.val_fraction", "must be in (0, 1)")
        require(
            len(self.fractions) == 3
            and all(f >= 0 for f in self.fractions)
            and abs(sum(self.fractions) - 1.0) < 1e-6,
            "split.fractions",
            f"three non-negative fractions summing to 1, got {self.fractions}",
        )
        require(
            self.strategy != "file" or bool(self.split_file),
            "split.split_file",
            "required with split.strategy=file",
        )


# How a record stores its pixels: lossless PNG or raw uint8 (`cxr_tf.data.schema`).
# Views a catalog knows: PA, AP, LATERAL, OTHER (not a chest view), ? (unknown).
View = Literal["PA", "AP", "LATERAL", "OTHER", "?"]
VIEWS: tuple[str, ...] = typing.get_args(View)

Encoding = Literal["png", "raw"]
ENCODINGS: tuple[str, ...] = typing.get_args(Encoding)
# How a non-square image becomes the stored square (`cxr_tf.data.preprocessing.to_square`).
Resize = Literal["squash", "crop", "pad"]
RESIZES: tuple[str, ...] = typing.get_args(Resize)
# How JPEG files are decoded (`cxr_tf.data.preprocessing`, "JPEG decoding"): reduced
# (libjpeg's 1/2 or 1/4 scale where the stored side leaves room), full (full size,
# accurate integer IDCT), fast (full size, TensorFlow's default fast IDCT: conversions
# made before the choice).
JpegDecode = Literal["reduced", "full", "fast"]
JPEG_DECODES: tuple[str, ...] = typing.get_args(JpegDecode)
DEFAULT_JPEG_DECODE: JpegDecode = "reduced"


@dataclasses.dataclass
class ConvertConfig(Config, renamed={"nih_root": "root", "image_size": "stored_size"}):
    """Conversion of a dataset folder into sharded TFRecords (`python -m cxr_tf.convert`)."""

    # the dataset folder, in one of the layouts docs/datasets.md lists
    root: str = ""
    # auto: tell from the files; or the name of a source (docs/datasets.md)
    source: str = "auto"
    # views kept (PA, AP, LATERAL, OTHER: not a chest view, ?: unknown); the others are
    # counted in the manifest
    views: tuple[View, ...] = ("PA", "AP", "?")
    out_dir: str = "tfrecords"  # the dataset is written to <out_dir>/<name>/
    name: str = ""  # dataset folder name; default <source>_<stored_size>_<encoding>
    stored_size: int = 256  # stored side in pixels (64 ... 1024); models resize from it
    # raw: ~15x faster to read than PNG and faster to convert, 2x the disk (docs/datasets.md)
    encoding: Encoding = "raw"
    # how a non-square image becomes square: squash (resize the whole image, as CheXNet and
    # CheXpert did), crop (the centre square of the shorter side, as torchxrayvision), pad
    # (black bars out to the longer side); boxes follow, serving repeats it (docs/datasets.md)
    resize: Resize = "squash"
    # JPEG files: reduced decodes at 1/2 or 1/4 scale when the reduced image keeps twice
    # the stored side (mean difference 0.05-0.26 grey level, docs/datasets.md); full:
    # always full size; fast: full size with TensorFlow's fast IDCT (before this choice)
    jpeg_decode: JpegDecode = DEFAULT_JPEG_DECODE
    shard_mb: float = 150.0  # target size of a shard file
    workers: int = 0  # threads decoding in each process; 0: every core (shared out)
    # processes each writing whole shards (pydicom decodes under the GIL, so DICOM needs
    # them to use every core); 0: every core. The shards are the same whatever the count
    processes: int = 1
    # local: this machine; beam: an Apache Beam pipeline, one element per shard (README
    # "Conversion on a cluster"; pip install -e '.[beam]')
    runner: Literal["local", "beam"] = "local"
    # Beam pipeline options, as on a Beam command line ("--runner=DataflowRunner
    # --project=P ..."); empty: DirectRunner on this machine
    beam_options: str = ""
    # Restrict to images present on disk and record how many listed ones were absent.
    present_only: bool = False
    # Skip undecodable images (listed in the manifest) instead of stopping.
    skip_bad: bool = False
    # Seed of the random order in which each split's images are dealt into shards.
    shard_seed: int = 0
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        self.views = tuple(v.strip().upper() for v in self.views if v.strip())
        super().__post_init__()
        require(bool(self.views), "views", f"keep at least one view ({', '.join(VIEWS)})")
        require(bool(self.source), "source", "auto, or the name of a source")
        require(
            self.stored_size in STORED_SIZES, "stored_size", f"unsupported size {self.stored_size}"
        )
        require(self.shard_mb > 0, "shard_mb", "must be positive")
        require(self.workers >= 0, "workers", "must be >= 0")
        require(self.processes >= 0, "processes", "must be >= 0")
        require(
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

    def dataset_name(self, source: str) -> str:
        """The dataset's folder name: `name`, else `<source>_<stored_size>_<encoding>`.

        Args:
            source: the resolved source (the detected one when `source` is auto).
        """
        return self.name or f"{source}_{self.stored_size}_{self.encoding}"


@dataclasses.dataclass
class SynthConfig(Config):
    """What `python -m cxr_tf.synth` generates."""

    out: str = ""  # output folder (required)
    n: int = 500  # number of images
    seed: int = 0  # same seed, same bytes
    image_size: int = 1024  # PNG side in pixels
    # 'nih' for NIH-like rates, or a per-finding floor in (0, 0.5] such as 0.1 (above
    # ~0.25 images get crowded and boxes may overlap)
    prevalence: str = "nih"
    # which dataset's files and folders to imitate (the choices and what each writes:
    # `python -m cxr_tf.synth --help`, from the imitations' registry cxr_tf.synthetic.layouts)
    layout: str = "nih"
    rgba_fraction: float = 0.01  # share of PNGs written as RGBA
    test_fraction: float = 0.2  # share of patients in test_list.txt
    # 2017: ages as 058Y plus an empty trailing column; 2020: integers
    age_format: Literal["2017", "2020"] = "2017"
    workers: int = 0  # PNG writer threads; 0: every core

    def __post_init__(self) -> None:
        self.prevalence = str(self.prevalence).strip().lower()
        self.age_format = str(self.age_format)  # type: ignore[assignment]
        require(bool(self.out), "out", "an output folder is required")
        require(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(
            64 <= self.image_size <= 4096,
            "image_size",
            f"must be in [64, 4096], got {self.image_size}",
        )
        if self.prevalence != "nih":
            try:
                floor = float(self.prevalence)
            except ValueError:
                floor = -1.0
            require(
                0.0 < floor <= 0.5,
                "prevalence",
                f"'nih' or a floor in (0, 0.5], got {self.prevalence!r}",
            )
        super().__post_init__()
        require(0.0 <= self.rgba_fraction <= 1.0, "rgba_fraction", "must be in [0, 1]")
        require(0.0 <= self.test_fraction < 1.0, "test_fraction", "must be in [0, 1)")
        require(self.workers >= 0, "workers", "must be >= 0")

    @property
    def prevalence_floor(self) -> float:
        """The per-finding prevalence floor; 0 for plain NIH rates."""
        return 0.0 if self.prevalence == "nih" else float(self.prevalence)


@dataclasses.dataclass
class ExploreConfig(Config):
    """What `python -m cxr_tf.explore` reads and where it writes."""

    nih_root: str = ""  # an NIH folder
    dataset: str = ""  # a converted dataset folder
    out: str = ""  # output folder; explore/<name>
    samples_per_finding: int = 4  # images per finding in samples.png (0: no grid)
    # Used for an NIH folder only; a dataset's splits are those it was converted with.
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            bool(self.nih_root or self.dataset),
            "nih_root",
            "give an NIH folder (--nih_root) or a dataset (--dataset)",
        )
        require(
            not (self.nih_root and self.dataset),
            "dataset",
            "give --nih_root or --dataset, not both",
        )
        require(
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


def split_datasets(value: str) -> tuple[str, ...]:
    """The dataset folders of a `dataset` value: one, or several separated by commas."""
    return tuple(d.strip() for d in str(value).split(",") if d.strip())


@dataclasses.dataclass
class DataConfig(Config, section="data"):
    """The input pipeline (`cxr_tf.data`)."""

    # a converted dataset folder, or several separated by commas (trained on together)
    dataset: str = "tfrecords/nih_384_raw"
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
        super().__post_init__()
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        self.weights = tuple(float(w) for w in self.weights)
        require(
            all(math.isfinite(w) and w >= 0 for w in self.weights)
            and (not self.weights or sum(self.weights) > 0),
            "data.weights",
            f"finite, non-negative, not all zero, got {list(self.weights)}",
        )
        datasets = self.datasets
        require(bool(datasets), "data.dataset", "name a converted dataset folder")
        resolved = [os.path.realpath(d) for d in datasets]
        twice = sorted(
            {d for d, r in zip(datasets, resolved, strict=True) if resolved.count(r) > 1}
        )
        require(
            not twice,
            "data.dataset",
            f"lists the same dataset more than once ({', '.join(twice)}): each is read once",
        )
        require(
            not self.weights or len(self.weights) == len(datasets),
            "data.weights",
            f"{len(self.weights)} weight(s) for {len(datasets)} dataset(s)",
        )
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
        require(
            not (self.cache and self.balanced),
            "data.cache",
            "cannot be combined with data.balanced (it would cache an endless stream)",
        )

    @property
    def datasets(self) -> tuple[str, ...]:
        """The converted dataset folders of `dataset`, in order."""
        return split_datasets(self.dataset)
