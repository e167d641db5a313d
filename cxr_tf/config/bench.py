"""Configs of the benchmarks (`python -m cxr_tf.bench <what>`)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from cxr_tf.config.base import Config, require
from cxr_tf.config.data import ENCODINGS, Encoding
from cxr_tf.config.model import Backbone

# Keras dtype policies the model benchmark times.
Precision = Literal["float32", "mixed_bfloat16", "mixed_float16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# Real-size imitations the conversion benchmark writes (`cxr_tf.benchmarks.data.REAL_SIZE`):
# MIMIC-CXR-JPG-like 2,544 x 3,056 JPEGs, CheXpert-like 2,320 x 2,828 JPEGs, 12-bit CR DICOMs
# 2,500 x 3,000 (a quarter RLE), PadChest-like 2,800 px 16-bit PNGs, NIH-like 1,024 px 8-bit
# PNGs; png_nih: real NIH PNGs (`nih_images`).
RealSize = Literal["jpeg_3k", "jpeg_2800", "dicom_12bit", "png16_2800", "png_1024", "png_nih"]
REAL_SIZES: tuple[str, ...] = typing.get_args(RealSize)


@dataclasses.dataclass
class BenchConvertConfig(Config, renamed={"size": "stored_size"}):
    """Conversion images/s vs bare PNG decoding (`python -m cxr_tf.bench convert`)."""

    n: int = 200  # synthetic 1024 px images
    seed: int = 0  # synthetic data seed
    stored_size: int = 256  # stored image side (convert's --stored_size)
    encodings: tuple[Encoding, ...] = ENCODINGS  # storage encodings to time: png, raw
    workers: int = 0  # threads (0: every core)
    workdir: str = "bench_out"  # scratch folder (reused)
    # imitations of other sources (synth layouts other than nih) to time too, raw storage,
    # each against bare decoding of its own files (checked by the benchmark:
    # `cxr_tf.benchmarks.data.check_layouts`)
    layouts: tuple[str, ...] = ()
    # real-size imitations to time (raw storage), each against bare decoding of its files
    real_size: tuple[RealSize, ...] = ()
    real_n: int = 24  # images per real-size imitation
    # a folder of real NIH PNGs (e.g. images_001/images, or the 96-image sample's images/)
    # that the real-size kind png_nih copies its first --real_n files from (if it holds
    # fewer, all of them, then again from the first)
    nih_images: str = ""
    # conversion processes (`convert --processes`) each real-size imitation is timed with
    processes: tuple[int, ...] = (1, 2)
    # rounds of the real-size figures, each figure their median (figures on a shared
    # machine move between runs)
    repeats: int = 1

    def __post_init__(self) -> None:
        self.encodings = tuple(self.encodings)
        self.layouts = tuple(self.layouts)
        self.real_size = tuple(self.real_size)
        self.processes = tuple(int(p) for p in self.processes)
        super().__post_init__()
        require(bool(self.encodings), "encodings", f"one or more of {', '.join(ENCODINGS)}")
        require(self.n >= 1, "n", "must be >= 1")
        require(self.real_n >= 2, "real_n", "must be >= 2")
        require(self.repeats >= 1, "repeats", "must be >= 1")
        require(bool(self.processes) and min(self.processes) >= 1, "processes", "counts >= 1")
        require(self.workers >= 0, "workers", "must be >= 0 (0: every core)")


@dataclasses.dataclass
class BenchReadConfig(Config):
    """TFDS reader vs the project's batch parser (`python -m cxr_tf.bench read DATASET`)."""

    dataset: str = ""  # a converted dataset folder (also the first positional argument)
    batch: int = 64  # records per batch
    epochs: int = 2  # timed passes after one warm-up

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.dataset), "dataset", "required (a converted dataset folder)")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.epochs >= 1, "epochs", "must be >= 1")


@dataclasses.dataclass
class BenchPipelineConfig(Config, renamed={"size": "stored_size"}):
    """Training input pipeline vs decoding PNGs (`python -m cxr_tf.bench pipeline`)."""

    n: int = 300  # synthetic 1024 px images
    seed: int = 0  # synthetic data seed
    stored_size: int = 256  # stored image side (convert's --stored_size)
    batch: int = 64  # images per batch
    batches: int = 30  # timed batches
    encodings: tuple[Encoding, ...] = ENCODINGS  # storage encodings to time: png, raw
    cache: bool = False  # cache parsed records in memory
    workdir: str = "bench_out"  # scratch folder (reused)

    def __post_init__(self) -> None:
        self.encodings = tuple(self.encodings)
        super().__post_init__()
        require(bool(self.encodings), "encodings", f"one or more of {', '.join(ENCODINGS)}")
        require(self.n >= 1, "n", "must be >= 1")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.batches >= 1, "batches", "must be >= 1")


@dataclasses.dataclass
class BenchFitConfig(Config, renamed={"image_size": "input_size"}):
    """Per-epoch seconds of `cxr_tf.fit` vs a plain Keras loop (`python -m cxr_tf.bench fit`)."""

    # a converted dataset folder (also the first positional argument); default: synthetic
    # NIH-like images converted at 64 px in `workdir`
    dataset: str = ""
    # model.backbone of each timed model
    backbones: tuple[Backbone, ...] = ("tiny", "densenet121")
    input_size: int = 64  # network input side (model.input_size)
    batch: int = 32  # images per step
    steps: int = 20  # training steps per epoch
    epochs: int = 2  # N: each loop runs N and 3N epochs; per epoch = time difference / 2N
    images: int = 800  # synthetic images when no dataset is given
    workdir: str = "bench_out"  # scratch folder (the synthetic dataset is reused)

    def __post_init__(self) -> None:
        self.backbones = tuple(self.backbones)
        super().__post_init__()
        require(bool(self.backbones), "backbones", "one or more backbones")
        require(self.input_size >= 32, "input_size", "must be >= 32")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.images >= 100, "images", "must be >= 100")


@dataclasses.dataclass
class BenchShardsConfig(Config, renamed={"size": "stored_size"}):
    """Patients per batch: contiguous vs random shards (`python -m cxr_tf.bench shards`)."""

    data_entry: str = ""  # an NIH label file; without one, NIH-like synthetic patients
    stored_size: int = 256  # stored image side (sets the shard count)
    shard_mb: float = 150.0  # as in convert
    batch: int = 32  # images per batch
    buffer: int = 2048  # shuffle buffer (records)
    seed: int = 0  # split and patient seed
    workdir: str = "bench_out"  # scratch folder (reused)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.shard_mb > 0, "shard_mb", "must be positive")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.buffer >= 1, "buffer", "must be >= 1")


@dataclasses.dataclass
class BenchServeConfig(Config):
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
        super().__post_init__()
        require(bool(self.run_dir), "run_dir", "required (a training run directory)")
        require(bool(self.batches) and min(self.batches) >= 1, "batches", "sizes >= 1")
        require(self.repeats >= 1, "repeats", "must be >= 1")
        require(self.min_seconds >= 0, "min_seconds", "must be >= 0")


@dataclasses.dataclass
class BenchModelConfig(Config, renamed={"image_size": "input_size"}):
    """Training and inference speed of the project's model on synthetic batches, on any
    Keras backend (`python -m cxr_tf.bench model`)."""

    # models.build_model with random weights (the timed network; tiny: for tests)
    backbone: Backbone = "densenet121"
    batch_sizes: tuple[int, ...] = (32, 64, 128)  # images per step; each size timed apart
    input_size: int = 224  # network input side (model.input_size)
    stored_size: int = 256  # side of the uint8 images fed in, resized inside the model
    # Keras dtype policies timed: float32, mixed_bfloat16, mixed_float16 (which gets
    # fit's loss scaling)
    precision: tuple[Precision, ...] = ("float32", "mixed_bfloat16")
    # compiled train and predict steps: on (XLA on jax and tensorflow, torch.compile on
    # torch), off, or both
    jit: tuple[Literal["on", "off"], ...] = ("on",)
    # the in-model augmentation (data.augment defaults) as fit builds it, compiled with
    # the rest of the step; --no-augment times the model without it
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
        super().__post_init__()
        require(bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch_sizes", "sizes >= 1")
        require(self.input_size >= 32, "input_size", "must be >= 32")
        require(self.stored_size >= 32, "stored_size", "must be >= 32")
        require(bool(self.precision), "precision", f"one or more of {', '.join(PRECISIONS)}")
        require(bool(self.jit), "jit", "on, off or both")
        require(self.warmup >= 1, "warmup", "must be >= 1 (the first step compiles)")
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.windows >= 1, "windows", "must be >= 1")
        require(bool(self.peer_model), "peer_model", "a timm model name")
