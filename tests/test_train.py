"""Training: learning on synthetic data, run directory, resume after a kill, heads,
config errors, and two CPU workers under MultiWorkerMirroredStrategy."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import PROJECT, tiny_run_config

from cxr_tf import config as config_lib
from cxr_tf import fit as fit_cli
from cxr_tf import testing, tune
from cxr_tf.config import AugmentConfig, ConfigError, DataConfig, ModelConfig, RunConfig
from cxr_tf.data import reader
from cxr_tf.data.manifest import DatasetError
from cxr_tf.data.reader import ReadOptions
from cxr_tf.data.targets import LabelSpec
from cxr_tf.labels import FINDINGS
from cxr_tf.modeling import models
from cxr_tf.modeling.augment import augmentation_layers
from cxr_tf.runs import folder as runs
from cxr_tf.training import callbacks, checkpoint, distribute, trainer


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def run_epochs(run_dir: Path) -> int:
    return runs.load_run_config(run_dir).train.epochs


@pytest.mark.slow
def test_tiny_model_learns_and_run_dir_is_complete(trained_run):
    summary = json.loads((trained_run / runs.SUMMARY_FILE).read_text())
    assert summary["best_val_mean_auroc"] > 0.85, summary["best_val_mean_auroc"]
    for name in ("config.json", "best.keras", "last.keras", "history.csv", "state.json"):
        assert (trained_run / name).exists(), name
    assert list((trained_run / "logs").rglob("events.out.tfevents*"))
    rows = _history(trained_run)
    assert [int(r["epoch"]) for r in rows] == list(range(run_epochs(trained_run)))
    assert {f"val_auroc/{f}" for f in FINDINGS} <= set(rows[0])
    scores = [float(r["val_mean_auroc"]) for r in rows]
    state = json.loads((trained_run / runs.STATE_FILE).read_text())
    assert state["best"] == pytest.approx(max(scores))
    # the saved best model reproduces the best validation score
    run = runs.load_run_config(trained_run)
    model = keras.models.load_model(trained_run / runs.BEST_MODEL)
    spec = LabelSpec.from_config(run.model)
    val = reader.make_dataset(run.data, spec, "validation")
    result = callbacks.evaluate_auroc(model, val, spec)
    assert result["count"] == 14
    assert result["mean"] == pytest.approx(state["best"], abs=1e-6)
    # the config written before training reads back equal
    assert config_lib.to_dict(run) == json.loads((trained_run / "config.json").read_text())


@pytest.mark.slow
def test_the_printed_validation_auroc_is_what_evaluate_reports(trained_run, tmp_path):
    """The AUROC an epoch logs (one compiled predict pass) is the evaluation report's
    AUROC of the saved best model on the validation split, finding by finding."""
    from cxr_tf.config import EvaluateConfig
    from cxr_tf.evaluation import evaluator

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("logs", "checkpoints"))
    state = json.loads((run_dir / runs.STATE_FILE).read_text())
    best_row = next(r for r in _history(run_dir) if int(r["epoch"]) == state["best_epoch"] - 1)
    config = EvaluateConfig(run_dir=str(run_dir), split="validation", bootstrap=2)
    report = evaluator.evaluate(config, progress=False)
    assert report["mean_auroc"]["value"] == pytest.approx(state["best"], abs=1e-6)
    for name in FINDINGS:
        logged = float(best_row[f"val_auroc/{name}"])
        assert report["per_output"][name]["auroc"] == pytest.approx(logged, abs=1e-6), name


def _fit_args(dataset: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        "--data.dataset", str(dataset), "--model.backbone", "tiny", "--model.weights", "",
        "--model.input_size", "64", "--train.head_epochs", "0", "--train.epochs", str(epochs),
        "--train.steps_per_epoch", "6", "--train.validation_steps", "3",
        "--train.lr", "0.002", "--train.run_dir", str(run_dir), "--quiet",
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_after_kill_continues_and_keeps_best(train_dataset, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cxr_tf.fit", *_fit_args(train_dataset, run_dir, 5)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True)
    state = run_dir / runs.STATE_FILE
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        if state.exists() and json.loads(state.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = json.loads(state.read_text())["epochs_done"]
    assert 2 <= done_before < 5
    best_before = json.loads(state.read_text())["best"]
    resumed = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Epoch 1/5" not in resumed.stdout  # continued, not restarted
    assert resumed.stdout.startswith(f"resuming {run_dir} at epoch {done_before + 1}\n")
    final = json.loads(state.read_text())
    assert final["epochs_done"] == 5
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(5))  # no duplicated row
    assert final["best"] >= best_before
    assert final["best"] == pytest.approx(max(float(r["val_mean_auroc"]) for r in rows))
    run = runs.load_run_config(run_dir)
    spec = LabelSpec.from_config(run.model)
    val = reader.make_dataset(run.data, spec, "validation").take(3)
    best = keras.models.load_model(run_dir / runs.BEST_MODEL)
    auroc = callbacks.evaluate_auroc(best, val, spec)
    assert auroc["mean"] == pytest.approx(final["best"], abs=1e-6)
    # a finished run rerun does no more epochs
    again = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Epoch" not in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, findings, loss, balanced",
    [
        ("binary", ("any",), "weighted_bce", True),
        ("binary", ("Mass",), "focal", False),
        ("multiclass", ("No Finding", "Mass", "Edema"), "weighted_bce", False),
        ("multilabel", ("Mass", "Edema", "Hernia"), "weighted_bce", False),
    ],
)
def test_each_head_trains(train_dataset, tmp_path, task, findings, loss, balanced):
    run = tiny_run_config(
        train_dataset, tmp_path / "run", epochs=1, steps_per_epoch=3, validation_steps=2,
        loss=loss,
    )  # fmt: skip
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, task=task,
                            findings=findings)  # fmt: skip
    run.data.balanced = balanced
    summary = trainer.fit(run, verbose=0)
    assert summary["outputs"] == list(findings)
    model = keras.models.load_model(tmp_path / "run" / runs.LAST_MODEL)
    logits = np.asarray(model(np.zeros((2, 64, 64, 1), np.float32)))
    assert logits.shape == (2, len(findings)) and np.isfinite(logits).all()


@pytest.mark.slow
def test_head_then_finetune_phases(train_dataset, tmp_path):
    run = tiny_run_config(
        train_dataset, tmp_path / "run", epochs=2, head_epochs=1, steps_per_epoch=3,
        validation_steps=2, finetune="1",
    )  # fmt: skip
    run.train.mixed_precision = True
    summary = trainer.fit(run, verbose=0)
    assert summary["epochs_done"] == 2
    state = json.loads((tmp_path / "run" / runs.STATE_FILE).read_text())
    assert state["phase"] == "finetune" and [r["epoch"] for r in state["history"]] == [0, 1]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run


@pytest.mark.slow
def test_config_errors_are_clear(train_dataset, tmp_path, capsys):
    # a finding the dataset does not have (any name may be a dataset's own: checked there)
    unknown = tiny_run_config(train_dataset, tmp_path / "r0")
    unknown.model.findings = ("Pneumonitis",)
    with pytest.raises(ConfigError, match=r"has no finding \['Pneumonitis'\]"):
        trainer.fit(unknown, verbose=0)
    # a dataset whose manifest has another label order is refused
    copy = tmp_path / "data"
    shutil.copytree(train_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"] = manifest["labels"][:13]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    run = tiny_run_config(copy, tmp_path / "r1")
    with pytest.raises(DatasetError, match="label order"):
        trainer.fit(run, verbose=0)
    # missing shards
    shutil.rmtree(copy)
    shutil.copytree(train_dataset, copy)
    next(copy.glob("train-*.tfrecord")).unlink()
    code = fit_cli.main(_fit_args(copy, tmp_path / "r2", 1))
    assert code == 2 and "missing shard" in capsys.readouterr().err
    # a run directory holding another config with finished epochs is not silently reused
    first = tiny_run_config(train_dataset, tmp_path / "r3")
    runs.prepare_run_dir(first)
    second = tiny_run_config(train_dataset, tmp_path / "r3", lr=0.5)
    runs.prepare_run_dir(second)  # no finished epoch yet: the corrected config replaces it
    assert runs.load_run_config(tmp_path / "r3").train.lr == 0.5
    (tmp_path / "r3" / runs.STATE_FILE).write_text(json.dumps({"epochs_done": 1}))
    with pytest.raises(ConfigError, match=r"train\.lr"):
        runs.prepare_run_dir(first)


def test_cli_help_and_overrides(capsys):
    with pytest.raises(SystemExit) as info:
        fit_cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--model.backbone" in text and "--train.strategy" in text and "--resume" in text
    with pytest.raises(SystemExit):
        fit_cli.main(["--model.backbone", "vgg"])
    assert "invalid choice" in capsys.readouterr().err


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch_workers(args: list[str], cluster: dict, extra_env: dict) -> list[tuple[int, str]]:
    procs = []
    try:
        for index in range(2):
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                    "index": index}}),
                CUDA_VISIBLE_DEVICES="",
                **extra_env,
            )  # fmt: skip
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cxr_tf.fit", *args],
                    cwd=PROJECT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )  # fmt: skip
            )
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]


@pytest.mark.slow
def test_two_cpu_workers_killed_and_restarted(train_dataset, tmp_path):
    """MultiWorkerMirroredStrategy on two CPU processes: both killed at the end of epoch 2
    (before it counts), restarted, and ending with the same weights and 2 epochs.

    Uses `ReadOptions(shard=...)` of cxr_tf.data.reader: rerun after merging a new reader."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "mw"
    args = _fit_args(train_dataset, run_dir, 2) + ["--train.strategy", "multi_worker",
                                                    "--train.steps_per_epoch", "3"]  # fmt: skip
    killed = _launch_workers(args, cluster, {"CXR_TF_FAULT_AT": "2:monitors"})
    assert [code for code, _ in killed] == [75, 75], killed[0][1][-3000:]
    assert json.loads((run_dir / runs.STATE_FILE).read_text())["epochs_done"] == 1
    restarted = _launch_workers(args, cluster, {})
    for code, out in restarted:
        assert code == 0, out[-3000:]
    assert f"resuming {run_dir} at epoch 2" in restarted[0][1]
    state = json.loads((run_dir / runs.STATE_FILE).read_text())
    assert state["epochs_done"] == 2 and [r["epoch"] for r in state["history"]] == [0, 1]
    assert (run_dir / runs.SUMMARY_FILE).exists() and (run_dir / runs.BEST_MODEL).exists()
    # the non-chief's scratch folder is keyed by its task index, stable across restarts
    assert [p.name for p in run_dir.glob("worker_*")] == ["worker_1"]
    chief = keras.models.load_model(run_dir / runs.LAST_MODEL)
    worker = keras.models.load_model(run_dir / "worker_1" / runs.LAST_MODEL)
    # All-reduced gradients keep the trained weights equal; BatchNorm moving statistics are
    # each worker's own (Keras does not synchronise them), so they are left out.
    assert len(chief.trainable_weights) == len(worker.trainable_weights) > 0
    for a, b in zip(chief.trainable_weights, worker.trainable_weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert runs.load_run_config(run_dir).model.output_names == FINDINGS
    assert chief.output_shape == (None, 14)


def test_multi_worker_workaround_checks_the_keras_version():
    distribute.check_version("3.15.1")
    with pytest.raises(distribute.UnsupportedKerasVersion, match="72388"):
        distribute.check_version("3.16.0")


# --- run directory, resume, kills at every step ----------------------------------------------


@pytest.mark.slow
def test_default_run_dir_is_stable_and_names_the_finding(train_dataset):
    def run(**model):
        return RunConfig(
            data=DataConfig(dataset=str(train_dataset)),
            model=ModelConfig(backbone="tiny", weights="", input_size=64, **model),
        )

    first, again = runs.default_run_dir(run()), runs.default_run_dir(run())
    assert first == again and first.startswith("runs/tiny-multilabel-")
    binary = runs.default_run_dir(run(task="binary", findings=("Pleural_Thickening",)))
    assert Path(binary).name.startswith("tiny-binary-Pleural_Thickening-")
    assert runs.default_run_dir(run(dropout=0.1)) != first
    # the run directory itself is not part of the config's identity
    named = run()
    named.train.run_dir = "elsewhere"
    assert runs.config_hash(named) == runs.config_hash(run())


class _Killed(Exception):
    """Stands for a kill at a step boundary (nothing after it runs)."""


def _deterministic_run(dataset: Path, run_dir: Path, **train_settings) -> RunConfig:
    settings = dict(epochs=2, steps_per_epoch=3, validation_steps=2, lr=0.003,
                    schedule="plateau", plateau_patience=1)  # fmt: skip
    settings.update(train_settings)
    run = tiny_run_config(dataset, run_dir, **settings)
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, dropout=0.2)
    return run


@pytest.mark.slow
def test_kill_at_every_epoch_end_step_resumes_to_the_same_run(train_dataset, tmp_path, monkeypatch):
    """A kill after any write of the epoch-end sequence (also during the recovery of an
    earlier kill) loses at most the epoch in progress, and the resumed run ends exactly
    like an uninterrupted one: same epochs and rows, same best epoch, same metrics.

    Exact equality relies on the `ReadOptions(first_epoch=, steps_per_epoch=)` contract
    of cxr_tf.data.reader (rerun after merging a new reader)."""
    reference = trainer.fit(_deterministic_run(train_dataset, tmp_path / "ref"), verbose=0)
    expected = json.loads((tmp_path / "ref" / runs.STATE_FILE).read_text())
    kills = [(1, "monitors"), (1, "checkpoint"), (1, "commit"), (2, "best"), (2, "last"),
             (2, "history"), (2, "cleanup")]  # fmt: skip
    assert {step for _, step in kills} == set(checkpoint.FAULT_STEPS)
    pending = list(kills)

    def hook(epoch: int, step: str) -> None:
        if pending and pending[0] == (epoch, step):
            pending.pop(0)
            raise _Killed(f"{epoch}:{step}")

    monkeypatch.setattr(testing, "FAULT_HOOK", hook)
    run_dir = tmp_path / "killed"
    for _ in range(len(kills) + 1):
        try:
            summary = trainer.fit(_deterministic_run(train_dataset, run_dir), verbose=0)
            break
        except _Killed:
            continue
    assert not pending
    state = json.loads((run_dir / runs.STATE_FILE).read_text())
    assert summary["epochs_done"] == reference["epochs_done"] == 2
    assert state["best_epoch"] == expected["best_epoch"]
    assert state["best"] == pytest.approx(expected["best"], abs=1e-6)
    rows, ref_rows = _history(run_dir), _history(tmp_path / "ref")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row.keys() == ref.keys()
        for key in row:
            assert float(row[key]) == pytest.approx(float(ref[key]), abs=1e-6), key
    assert [p.name for p in (run_dir / runs.CHECKPOINT_DIR).iterdir()] == ["epoch-0002.npz"]
    assert not list(run_dir.glob(".tmp-*")) and not list(run_dir.glob("tmp-*"))


@pytest.mark.slow
def test_rerun_and_resume_flag_continue_the_same_run(train_dataset, tmp_path, monkeypatch, capsys):
    args = _fit_args(train_dataset, tmp_path, 2)
    args = args[: args.index("--train.run_dir")] + ["--quiet"]  # the default run directory

    def hook(epoch: int, step: str) -> None:
        if (epoch, step) == (2, "monitors"):
            raise _Killed

    monkeypatch.setattr(testing, "FAULT_HOOK", hook)
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(_Killed):
        fit_cli.main(args)
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("run directory: runs/tiny-multilabel-")
    run_dir = first_line.split(": ", 1)[1]
    with pytest.raises(_Killed):  # the same command finds the same directory
        fit_cli.main(args)
    assert capsys.readouterr().out.startswith(f"resuming {run_dir} at epoch 2\n")
    monkeypatch.setattr(testing, "FAULT_HOOK", None)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")  # --resume DIR from elsewhere resumes DIR itself
    absolute = tmp_path / "a" / run_dir
    assert fit_cli.main(["--resume", str(absolute), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {absolute} at epoch 2\n")
    assert not (tmp_path / "b" / "runs").exists()
    assert [r["epoch"] for r in _history(absolute)] == ["0", "1"]
    with pytest.raises(SystemExit) as info:
        fit_cli.main(["--resume", str(tmp_path / "none")])
    assert info.value.code == 2 and "no run there" in capsys.readouterr().err


def test_epoch_seeds_make_augmentation_a_function_of_the_epoch():
    layers = augmentation_layers(AugmentConfig(flip=True), seed=3)
    seeds = [layer.seed for layer in layers]
    assert len(set(seeds)) == len(seeds) == 5  # each layer draws its own numbers
    config = ModelConfig(backbone="tiny", weights="", input_size=64, dropout=0.3)
    model = models.build_model(config, augment=AugmentConfig(), seed=3)
    callback = checkpoint.EpochSeeds(seed=3)
    callback.set_model(model)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 1)).astype("float32")

    def epoch_output(epoch: int) -> np.ndarray:
        callback.on_epoch_begin(epoch)
        return np.asarray(model(x, training=True))

    first = epoch_output(2)
    epoch_output(5)
    np.testing.assert_array_equal(epoch_output(2), first)  # whatever ran before
    assert not np.allclose(epoch_output(3), first)


@pytest.mark.slow
def test_epoch_batches_depend_on_the_epoch_only(train_dataset):
    """The reader contract resume relies on: epoch k's batches do not depend on where
    the dataset started. Exactly so with `data.deterministic`; without it parallel reads
    may swap neighbouring records (for speed), so only the exact case is compared."""
    spec = LabelSpec.from_config(ModelConfig(backbone="tiny", weights="", input_size=64))
    for deterministic in (True,):
        data = DataConfig(dataset=str(train_dataset), batch_size=8, shuffle_buffer=64,
                          deterministic=deterministic)  # fmt: skip

        def batches(first: int, count: int, data=data) -> list[np.ndarray]:
            options = ReadOptions(training=True, repeat=True, seed=5, first_epoch=first,
                                  steps_per_epoch=3)  # fmt: skip
            ds = reader.make_dataset(data, spec, "train", options)
            return [np.asarray(x) for x, _ in ds.take(count)]

        from_zero, from_two = batches(0, 9), batches(2, 3)
        for a, b in zip(from_zero[6:], from_two, strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(from_zero[0], from_zero[3])  # epochs differ


# --- failures ------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_best(train_dataset, tmp_path, capsys):
    run_dir = tmp_path / "nan"
    args = _fit_args(train_dataset, run_dir, 2) + [
        "--train.head_epochs", "1", "--train.finetune_lr", "1e30", "--train.schedule",
        "constant", "--train.steps_per_epoch", "3",
    ]  # fmt: skip
    assert fit_cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "epoch 2, step" in err and "learning rate 1e+30" in err and "--train.lr" in err
    state = json.loads((run_dir / runs.STATE_FILE).read_text())
    assert state["epochs_done"] == 1 and state["best_epoch"] == 1
    best = keras.models.load_model(run_dir / runs.BEST_MODEL)
    assert all(np.isfinite(np.asarray(w)).all() for w in best.weights)
    # the AUROC of a diverged model is undefined, not a crash
    for weight in best.weights:
        weight.assign(np.full(weight.shape, np.nan, "float32"))
    spec = LabelSpec.from_config(runs.load_run_config(run_dir).model)
    val = reader.make_dataset(runs.load_run_config(run_dir).data, spec, "validation").take(1)
    result = callbacks.evaluate_auroc(best, val, spec)
    assert result["mean"] is None and not result["finite"]


@pytest.mark.slow
def test_failed_starts_leave_nothing_in_the_way(train_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # an invalid combination is refused when the config is built, before anything runs
    with pytest.raises(SystemExit) as info:
        fit_cli.main([*_fit_args(train_dataset, run_dir, 1), "--model.weights", "imagenet"])
    assert info.value.code == 2
    assert "tiny backbone has no ImageNet weights" in capsys.readouterr().err
    # a start that fails while building the model writes nothing ...
    missing = str(tmp_path / "missing.weights.h5")
    assert fit_cli.main([*_fit_args(train_dataset, run_dir, 1), "--model.weights", missing]) == 2
    assert "missing.weights.h5" in capsys.readouterr().err
    assert not run_dir.exists()
    # ... so the corrected command runs
    assert fit_cli.main(_fit_args(train_dataset, run_dir, 1)) == 0
    assert json.loads((run_dir / runs.STATE_FILE).read_text())["epochs_done"] == 1


@pytest.mark.slow
def test_unavailable_imagenet_weights_give_one_clear_line(train_dataset, tmp_path, capsys):
    cached = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if list(cached.glob("resnet50_*notop.h5")):
        pytest.skip("the ResNet50 ImageNet weights are cached here: nothing to download")
    args = _fit_args(train_dataset, tmp_path / "run", 1)
    args[args.index("tiny")] = "resnet50"
    del args[args.index("--model.weights") : args.index("--model.weights") + 2]
    assert fit_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot download the resnet50 ImageNet weights" in err
    assert "--model.weights PATH" in err and "~/.keras/models" in err
    assert not (tmp_path / "run").exists()
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"hyperparameters": {"train.lr": {"values": [0.001]}}}))
    tune_args = ["--space", str(space), "--out_dir", str(tmp_path / "tune"),
                 *args[: args.index("--train.run_dir")]]  # fmt: skip
    assert tune.main(tune_args) == 2
    assert "cannot download the resnet50 ImageNet weights" in capsys.readouterr().err


# --- defaults ------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_defaults_learn_without_pretrained_weights(train_dataset, tmp_path):
    """Only the flags that pick the tiny backbone, no weights, the data and a CPU-sized
    run: no head phase on a frozen random backbone, and a plateau schedule that keeps a
    usable learning rate."""
    run_dir = tmp_path / "defaults"
    args = ["--data.dataset", str(train_dataset), "--model.backbone", "tiny",
            "--model.weights", "", "--model.input_size", "64", "--train.epochs", "4",
            "--train.run_dir", str(run_dir), "--quiet"]  # fmt: skip
    assert fit_cli.main(args) == 0
    run = runs.load_run_config(run_dir)
    assert run.train.head_epochs == 0
    assert [p.name for p in trainer.training_phases(run.train)] == ["finetune"]
    state = json.loads((run_dir / runs.STATE_FILE).read_text())
    assert state["epochs_done"] == 4
    assert state["learning_rate"] >= run.train.lr * 0.25
    assert state["best"] > 0.7, state["best"]
    print(f"CLI defaults, 4 epochs: best val mean AUROC {state['best']:.3f}")
    # with pretrained weights the default keeps one head epoch
    pretrained = RunConfig(model=ModelConfig(weights="imagenet"))
    assert pretrained.train.head_epochs == 1


@pytest.mark.slow
def test_an_xla_run_compiles_and_resumes_to_the_same_run(train_dataset, tmp_path, monkeypatch):
    """`--train.xla` on the tiny backbone as fit builds it (augmentation and resize
    included): the step compiles, and a run killed after an epoch's commit resumes to the
    history of an uninterrupted one."""
    from cxr_tf.training import optimization

    run = _deterministic_run(train_dataset, tmp_path / "ref", xla=True)
    model = models.build_model(run.model, 64, run.data.augment, seed=run.train.seed)
    optimization.check_jit(model)  # raises naming a layer that cannot compile
    trainer.fit(run, verbose=0)
    pending = [(1, "commit")]

    def hook(epoch: int, step: str) -> None:
        if pending and pending[0] == (epoch, step):
            pending.pop(0)
            raise _Killed(f"{epoch}:{step}")

    monkeypatch.setattr(testing, "FAULT_HOOK", hook)
    with pytest.raises(_Killed):
        trainer.fit(_deterministic_run(train_dataset, tmp_path / "killed", xla=True), verbose=0)
    trainer.fit(_deterministic_run(train_dataset, tmp_path / "killed", xla=True), verbose=0)
    rows, ref_rows = _history(tmp_path / "killed"), _history(tmp_path / "ref")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for row, ref in zip(rows, ref_rows, strict=True):
        for key in row:
            assert float(row[key]) == pytest.approx(float(ref[key]), abs=1e-6), key
