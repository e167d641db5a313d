"""Shared fixtures: the real NIH sample folder (when present), synthetic NIH data converted
with the real converter, and one tiny trained model shared by the tests needing it.

The tests write only under temporary folders: pytest's own (kept only after a failing
session, see `tmp_path_retention_*` in pyproject.toml) and one for the libraries' caches,
removed when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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
_sandbox: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test module imports Keras, which reads KERAS_HOME once on import.
    global _sandbox
    _sandbox = Path(tempfile.mkdtemp(prefix="cxr_tf-tests-"))
    for variable, folder in LIBRARY_HOMES.items():
        os.environ[variable] = str(_sandbox / folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sandbox is not None:
        shutil.rmtree(_sandbox, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def repository_root_untouched():
    """Errors at the end of the session when a test left a new entry in the repository root
    (e.g. runs/, export/, demo/ from a command run without an output folder)."""
    before = {p.name for p in PROJECT.iterdir()}
    yield
    new = sorted({p.name for p in PROJECT.iterdir()} - before - {".pytest_cache"})
    assert not new, f"tests wrote into the repository root: {new}"


def nih_path() -> Path:
    """The real NIH sample folder, or skip the calling test when this clone lacks it."""
    if not (NIH_DIR / "Data_Entry_2017_v2020.csv.gz").exists():
        pytest.skip(f"real NIH files not found at {NIH_DIR} (only present next to the repo in CI)")
    return NIH_DIR


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    return nih_path()


def make_synth(root: Path, n: int, seed: int, image_size: int, **kwargs) -> Path:
    """Synthetic NIH-like folder written by the project's generator."""
    from cxr_tf.data import synthetic

    synthetic.generate(
        synthetic.SynthConfig(
            out=str(root), n=n, seed=seed, image_size=image_size, prevalence="0.1", **kwargs
        )
    )
    return root


def convert_folder(root: Path, out: Path, **kwargs) -> Path:
    """Runs the real converter; returns the dataset folder."""
    from cxr_tf.config import ConvertConfig, SplitConfig
    from cxr_tf.data import conversion

    split = kwargs.pop("split", SplitConfig(strategy="official", val_fraction=0.2, seed=0))
    config = ConvertConfig(nih_root=str(root), out_dir=str(out), split=split, **kwargs)
    conversion.convert(config, progress=False)
    return out / config.dataset_name


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """60 synthetic 256 px images: the source folder for conversion tests (read-only)."""
    return make_synth(tmp_path_factory.mktemp("synth_small"), n=60, seed=1, image_size=256)


@pytest.fixture(scope="session")
def small_dataset(synth_small, tmp_path_factory) -> Path:
    """`synth_small` converted at 64 px, PNG storage."""
    out = tmp_path_factory.mktemp("tfrecords_small")
    return convert_folder(synth_small, out, image_size=64, encoding="png", name="small")


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
        model=ModelConfig(backbone="tiny", weights="", image_size=64),
        train=TrainConfig(**settings),
    )


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory) -> Path:
    """1,200 synthetic images (128 px sources) converted at 64 px: enough to learn from."""
    root = make_synth(tmp_path_factory.mktemp("synth_train"), n=1200, seed=7, image_size=128)
    out = tmp_path_factory.mktemp("tfrecords_train")
    return convert_folder(root, out, image_size=64, name="train64")


@pytest.fixture(scope="session")
def trained_run(train_dataset, tmp_path_factory) -> Path:
    """One tiny multi-label model trained once (~1 min) and shared by every test needing one.

    24 epochs: validation mean AUROC ~0.95 and a Grad-CAM pointing game ~0.9 (at 10
    epochs: AUROC ~0.9 but pointing ~0.5, too little for the localization test).

    Tests must not modify the run directory (copy it first).
    """
    from cxr_tf.training import trainer

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    trainer.fit(tiny_run_config(train_dataset, run_dir), verbose=0)
    return run_dir
