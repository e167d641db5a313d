"""Shared fixtures: the real NIH sample folder (when present), synthetic NIH data converted
with the real converter, and one tiny trained model shared by the tests needing it.

The tests write only under temporary folders: pytest's own (kept only after a failing
session, see `tmp_path_retention_*` in pyproject.toml) and one for the libraries' caches,
removed when the session ends.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import LIBRARY_HOMES, PROJECT, convert_folder, make_synth, nih_path, tiny_run_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


_sandbox: Path | None = None
# What makes a test end-to-end: it trains (or reads what training wrote). Such a test is
# marked slow, so that `pytest -m "not slow"` stays the fast tier.
SLOW_FIXTURES = ("train_dataset", "trained_run")


def pytest_configure(config: pytest.Config) -> None:
    # Set before any test module imports Keras, which reads KERAS_HOME once on import.
    global _sandbox
    _sandbox = Path(tempfile.mkdtemp(prefix="cxr_tf-tests-"))
    # Hypothesis keeps no example database, and its folder (.hypothesis/ in the current
    # folder by default) goes to the sandbox.
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(str(_sandbox / "hypothesis"))
    settings.register_profile("cxr_tf", database=None)
    settings.load_profile("cxr_tf")
    for variable, folder in LIBRARY_HOMES.items():
        os.environ[variable] = str(_sandbox / folder)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuses a test that needs the training data or the trained model, directly or through
    another fixture, without `@pytest.mark.slow`: the fast tier would build them."""
    unmarked = [
        item.nodeid
        for item in items
        if set(SLOW_FIXTURES) & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            f"mark these tests @pytest.mark.slow (they use {' or '.join(SLOW_FIXTURES)}):\n"
            + "\n".join(unmarked)
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sandbox is not None:
        shutil.rmtree(_sandbox, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def repository_root_untouched():
    """Errors at the end of the session when a test left a new entry in the repository root
    (e.g. runs/, export/, demo/ from a command run without an output folder)."""
    before = {p.name for p in PROJECT.iterdir()}
    yield
    new = sorted({p.name for p in PROJECT.iterdir()} - before)
    assert not new, f"tests wrote into the repository root: {new}"


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    return nih_path()


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """60 synthetic 256 px images: the source folder for conversion tests (read-only)."""
    return make_synth(tmp_path_factory.mktemp("synth_small"), n=60, seed=1, image_size=256)


@pytest.fixture(scope="session")
def small_dataset(synth_small, tmp_path_factory) -> Path:
    """`synth_small` converted at 64 px, PNG storage."""
    out = tmp_path_factory.mktemp("tfrecords_small")
    return convert_folder(synth_small, out, stored_size=64, encoding="png", name="small")


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` run once per test session, even when pytest-xdist runs the tests in
    several processes (`-n 2`): the first process to ask builds under a file lock with the
    machine to itself, the others wait and reuse the result (two tiny trainings at once on
    2 cores take twice as long each)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # gw0, gw1...: the session's folder is above
        base = base.parent
    folder, done = base / f"shared-{name}", base / f"shared-{name}.done"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            done.write_text(str(build(folder)))
        return Path(done.read_text())


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory) -> Path:
    """1,200 synthetic images (128 px sources) converted at 64 px: enough to learn from."""

    def build(folder: Path) -> Path:
        root = make_synth(folder / "synth_train", n=1200, seed=7, image_size=128)
        return convert_folder(root, folder / "tfrecords_train", stored_size=64, name="train64")

    return _built_once(tmp_path_factory, "train_dataset", build)


@pytest.fixture(scope="session")
def trained_run(train_dataset, tmp_path_factory) -> Path:
    """One tiny multi-label model trained once (~1 min) and shared by every test needing one.

    24 epochs: validation mean AUROC ~0.95 and a Grad-CAM pointing game ~0.9 (at 10
    epochs: AUROC ~0.9 but pointing ~0.5, too little for the localization test).

    Tests must not modify the run directory (copy it first).
    """

    def build(folder: Path) -> Path:
        from cxr_tf.training import trainer

        run_dir = folder / "tiny"
        trainer.fit(tiny_run_config(train_dataset, run_dir), verbose=0)
        return run_dir

    return _built_once(tmp_path_factory, "trained_run", build)
