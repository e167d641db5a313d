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
from conftest import PROJECT, tiny_run_config

from cxr_tf import config as config_lib
from cxr_tf import fit as fit_cli
from cxr_tf import models, pipeline, train
from cxr_tf.config import ConfigError, ModelConfig
from cxr_tf.labels import FINDINGS


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def run_epochs(run_dir: Path) -> int:
    return train.load_run_config(run_dir).train.epochs


def test_tiny_model_learns_and_run_dir_is_complete(trained_run):
    summary = json.loads((trained_run / train.SUMMARY_FILE).read_text())
    assert summary["best_val_mean_auroc"] > 0.85, summary["best_val_mean_auroc"]
    for name in ("config.json", "best.keras", "last.keras", "history.csv", "state.json"):
        assert (trained_run / name).exists(), name
    assert list((trained_run / "logs").rglob("events.out.tfevents*"))
    rows = _history(trained_run)
    assert [int(r["epoch"]) for r in rows] == list(range(run_epochs(trained_run)))
    assert {f"val_auroc/{f}" for f in FINDINGS} <= set(rows[0])
    scores = [float(r["val_mean_auroc"]) for r in rows]
    state = json.loads((trained_run / train.STATE_FILE).read_text())
    assert state["best"] == pytest.approx(max(scores))
    # the saved best model reproduces the best validation score
    run = train.load_run_config(trained_run)
    model = keras.models.load_model(trained_run / train.BEST_MODEL)
    spec = pipeline.LabelSpec.from_config(run.model)
    val = pipeline.make_dataset(run.data, spec, "validation", training=False)
    result = train.evaluate_auroc(model, val, spec)
    assert result["count"] == 14
    assert result["mean"] == pytest.approx(state["best"], abs=1e-6)
    # the config written before training reads back equal
    assert config_lib.to_dict(run) == json.loads((trained_run / "config.json").read_text())


def _fit_args(dataset: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        "--data.dataset", str(dataset), "--model.backbone", "tiny", "--model.weights", "",
        "--model.image_size", "64", "--train.head_epochs", "0", "--train.epochs", str(epochs),
        "--train.steps_per_epoch", "6", "--train.validation_steps", "3",
        "--train.lr", "0.002", "--train.run_dir", str(run_dir), "--quiet",
    ]  # fmt: skip


def test_resume_after_kill_continues_and_keeps_best(train_dataset, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "cxr_tf.fit", *_fit_args(train_dataset, run_dir, 5)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True)
    state = run_dir / train.STATE_FILE
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
    final = json.loads(state.read_text())
    assert final["epochs_done"] == 5
    rows = _history(run_dir)
    assert {int(r["epoch"]) for r in rows} == set(range(5))
    assert final["best"] >= best_before
    assert final["best"] == pytest.approx(max(float(r["val_mean_auroc"]) for r in rows))
    run = train.load_run_config(run_dir)
    spec = pipeline.LabelSpec.from_config(run.model)
    val = pipeline.make_dataset(run.data, spec, "validation", training=False).take(3)
    best = keras.models.load_model(run_dir / train.BEST_MODEL)
    assert train.evaluate_auroc(best, val, spec)["mean"] == pytest.approx(final["best"], abs=1e-6)
    # a finished run rerun does no more epochs
    again = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Epoch" not in again.stdout


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
    run.model = ModelConfig(backbone="tiny", weights="", image_size=64, task=task,
                            findings=findings)  # fmt: skip
    run.data.balanced = balanced
    summary = train.fit(run, verbose=0)
    assert summary["outputs"] == list(findings)
    model = keras.models.load_model(tmp_path / "run" / train.LAST_MODEL)
    logits = np.asarray(model(np.zeros((2, 64, 64, 1), np.float32)))
    assert logits.shape == (2, len(findings)) and np.isfinite(logits).all()


def test_head_then_finetune_phases(train_dataset, tmp_path):
    run = tiny_run_config(
        train_dataset, tmp_path / "run", epochs=2, head_epochs=1, steps_per_epoch=3,
        validation_steps=2, finetune="1",
    )  # fmt: skip
    summary = train.fit(run, verbose=0)
    assert summary["epochs_done"] == 2
    state = json.loads((tmp_path / "run" / train.STATE_FILE).read_text())
    assert state["phase"] == "finetune" and [r["epoch"] for r in state["history"]] == [0, 1]


def test_config_errors_are_clear(train_dataset, tmp_path, capsys):
    with pytest.raises(ConfigError, match="Pneumonitis"):
        ModelConfig(findings=("Pneumonitis",))
    # a dataset whose manifest has another label order is refused
    copy = tmp_path / "data"
    shutil.copytree(train_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"] = manifest["labels"][:13]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    run = tiny_run_config(copy, tmp_path / "r1")
    with pytest.raises(pipeline.DatasetError, match="label order"):
        train.fit(run, verbose=0)
    # missing shards
    shutil.rmtree(copy)
    shutil.copytree(train_dataset, copy)
    next(copy.glob("train-*.tfrecord")).unlink()
    code = fit_cli.main(_fit_args(copy, tmp_path / "r2", 1))
    assert code == 2 and "missing shard" in capsys.readouterr().err
    # a run directory holding another config with finished epochs is not silently reused
    first = tiny_run_config(train_dataset, tmp_path / "r3")
    train.prepare_run_dir(first)
    second = tiny_run_config(train_dataset, tmp_path / "r3", lr=0.5)
    train.prepare_run_dir(second)  # no finished epoch yet: the corrected config replaces it
    assert train.load_run_config(tmp_path / "r3").train.lr == 0.5
    (tmp_path / "r3" / train.STATE_FILE).write_text(json.dumps({"epochs_done": 1}))
    with pytest.raises(ConfigError, match=r"train\.lr"):
        train.prepare_run_dir(first)


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


def test_two_cpu_workers_multi_worker_strategy(train_dataset, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir = tmp_path / "mw"
    args = _fit_args(train_dataset, run_dir, 1) + ["--train.strategy", "multi_worker",
                                                    "--train.steps_per_epoch", "3"]  # fmt: skip
    procs = []
    try:
        for index in range(2):
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                    "index": index}}),
                CUDA_VISIBLE_DEVICES="",
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
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert (run_dir / train.SUMMARY_FILE).exists()
    assert json.loads((run_dir / train.STATE_FILE).read_text())["epochs_done"] == 1
    assert (run_dir / train.BEST_MODEL).exists()
    assert list(run_dir.glob("worker_*")), "the non-chief worker writes to its own scratch dir"
    model = keras.models.load_model(run_dir / train.LAST_MODEL)
    assert models.output_names(train.load_run_config(run_dir).model) == FINDINGS
    assert model.output_shape == (None, 14)
