"""Helpers the tests share (plain functions and constants; fixtures live in conftest.py).

conftest.py imports this module before it points Keras' and TFDS' homes at a temporary
folder, so TensorFlow, Keras and cxr_tf are imported inside the functions, not here.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]


NIH_DIR = PROJECT.parent / "shared" / "data" / "nih"


# What the libraries would otherwise write under the home directory: Keras its keras.json
# (~/.keras, on import), matplotlib its font cache (~/.cache/matplotlib), TFDS its data
# (~/tensorflow_datasets). Subprocesses started by the tests inherit these variables.
LIBRARY_HOMES = {
    "KERAS_HOME": "keras",
    "MPLCONFIGDIR": "matplotlib",
    "TFDS_DATA_DIR": "tensorflow_datasets",
}


def nih_path() -> Path:
    """The real NIH sample folder, or skip the calling test when this clone lacks it."""
    if not (NIH_DIR / "Data_Entry_2017_v2020.csv.gz").exists():
        pytest.skip(f"real NIH files not found at {NIH_DIR} (only present next to the repo in CI)")
    return NIH_DIR


def make_synth(root: Path, n: int, seed: int, image_size: int, **kwargs) -> Path:
    """Synthetic NIH-like folder written by the project's generator."""
    from cxr_tf.config import SynthConfig
    from cxr_tf.synthetic.layouts import generate_layout

    generate_layout(
        SynthConfig(
            out=str(root), n=n, seed=seed, image_size=image_size, prevalence="0.1", **kwargs
        )
    )
    return root


def convert_folder(root: Path, out: Path, **kwargs) -> Path:
    """Runs the real converter; returns the dataset folder."""
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    split = kwargs.pop("split", SplitConfig(strategy="official", val_fraction=0.2, seed=0))
    config = ConvertConfig(root=str(root), out_dir=str(out), split=split, **kwargs)
    return out / conversion.convert(config, progress=False).dataset


def read_records(dataset: Path) -> dict[str, dict]:
    """Every record of a converted dataset, decoded the TFDS way, keyed by image name, with
    its split under "split"; fails if an image is stored twice."""
    import tensorflow as tf

    from cxr_tf.data.manifest import Manifest

    manifest = Manifest.load(dataset)
    features = manifest.features()
    out: dict[str, dict] = {}
    for split, entry in manifest.splits.items():
        for shard in entry.shards:
            for raw in tf.data.TFRecordDataset(str(dataset / shard.file)):
                record = features.deserialize_example(raw)
                name = record["image_index"].numpy().decode()
                assert name not in out, f"{name} stored twice"
                out[name] = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in record.items()}
                out[name]["split"] = split
    return out


def tiny_run_config(dataset: Path, run_dir: Path, **train):
    """The small, fast configuration the shared tiny model is trained with."""
    from cxr_tf.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    settings = dict(
        run_dir=str(run_dir),
        head_epochs=0,
        epochs=24,
        lr=0.003,
        schedule="cosine",
        early_stopping_patience=20,
    )
    settings.update(train)
    return RunConfig(
        # A fixed input order makes the shared model the same on every run: its Grad-CAM
        # pointing game measured 0.79-0.92 across shuffled runs, 0.88 with this order.
        data=DataConfig(dataset=str(dataset), batch_size=32, deterministic=True),
        model=ModelConfig(backbone="tiny", weights="", input_size=64),
        train=TrainConfig(**settings),
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk announcing `width` x `height`, then junk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64


def encoded_variants() -> dict[str, bytes]:
    """Encoded images of every kind clients send: 8/16 bit, 1/3/4 channels, PNG and JPEG."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65535, (300, 260, 1), dtype=np.uint16)
    rgb = rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)
    rgba = rng.integers(0, 255, (150, 150, 4), dtype=np.uint8)
    return {
        "gray16.png": tf.io.encode_png(gray16).numpy(),
        "rgb.jpg": tf.io.encode_jpeg(rgb).numpy(),
        "rgb.png": tf.io.encode_png(rgb).numpy(),
        "rgba.png": tf.io.encode_png(rgba).numpy(),
        "one_pixel.png": tf.io.encode_png(np.full((1, 1, 1), 90, np.uint8)).numpy(),
    }


def bad_inputs(valid_png: bytes) -> dict[str, bytes]:
    return {
        "not_an_image": b"this is a text file, not an image",
        "truncated_png": valid_png[: len(valid_png) // 2],
        "huge_header": png_header_only(20000, 20000),
        "empty_bytes": b"",
    }


def write_thresholds(
    run_dir: Path, thresholds: dict, checkpoint: str | None = None, **fields
) -> None:
    """A thresholds.json as evaluate writes it, chosen for `run_dir`/`checkpoint` (best)."""
    from cxr_tf.evaluation.thresholds import THRESHOLDS_FILE
    from cxr_tf.runs import folder as runs

    checkpoint = checkpoint or runs.MODEL_FILES["best"]
    content = {"method": "youden", "split": "validation", "target_sensitivity": None,
               "checkpoint": runs.file_identity(run_dir / checkpoint), "tta": "none",
               "thresholds": thresholds, **fields}  # fmt: skip
    (run_dir / THRESHOLDS_FILE).write_text(json.dumps(content))


def damaged_run(run_dir: Path, dest: Path, damage: str) -> Path:
    """A copy of a run (config and best.keras) whose best.keras is `garbage` or `truncated`."""
    from cxr_tf.runs import folder as runs

    dest.mkdir(parents=True)
    shutil.copy(run_dir / runs.CONFIG_FILE, dest)
    data = (run_dir / runs.BEST_MODEL).read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncated" else b"\x00not a zip" * 50
    (dest / runs.BEST_MODEL).write_bytes(damaged)
    return dest


def edit_dicom(data: bytes, **changes) -> bytes:
    """A DICOM file's bytes with header keywords changed (`None`: removed when present)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
