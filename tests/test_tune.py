"""Tuning: search-space defaults, a tiny search, resume, failed trials, the best config,
and a chief with two workers sharing one search."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import pandas as pd
import pytest
from helpers import PROJECT, tiny_run_config

from cxr_tf import config as config_lib
from cxr_tf import fit as fit_cli
from cxr_tf import python_command, tune
from cxr_tf.config import DataConfig, RunConfig, TrainConfig, TuneConfig
from cxr_tf.training import tuning
from cxr_tf.training.hypermodel import (
    OBJECTIVE,
    CxrHyperModel,
    HpSpec,
    SearchSpace,
    SpaceError,
    load_space,
    parse_space,
)

# A small space around the tiny config whose points all learn within 20 steps (val mean
# AUROC ~0.7-0.8 at a constant learning rate; a cosine decay over 20 steps learns less).
TEST_SPACE = {
    "description": "test space",
    "hyperparameters": {
        "train.lr": {"min": 0.005, "max": 0.01, "sampling": "log"},
        "model.dropout": {"values": [0.0, 0.1]},
        "train.loss": {"values": ["bce", "focal"]},
        "train.focal_gamma": {
            "min": 1.0,
            "max": 2.0,
            "step": 0.5,
            "when": {"train.loss": ["focal"]},
        },
    },
}


def _base_args(dataset: Path, steps: int = 20, validation_steps: int = 0) -> list[str]:
    return [
        "--data.dataset", str(dataset), "--model.backbone", "tiny", "--model.weights", "",
        "--model.input_size", "64", "--train.head_epochs", "0", "--train.lr", "0.007",
        "--train.schedule", "constant", "--data.deterministic",
        "--train.steps_per_epoch", str(steps), "--train.validation_steps", str(validation_steps),
        "--epochs", "1", "--quiet",
    ]  # fmt: skip


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TEST_SPACE))
    return path


def _rows(out: Path) -> list[dict]:
    with open(out / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def _begins(out: Path) -> dict[str, list[str]]:
    """Trial ids each tuner started, from the workers' logs."""
    begun: dict[str, list[str]] = {}
    for log in (out / "workers").glob("*.jsonl"):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "begin":
                begun.setdefault(record["tuner_id"], []).append(record["trial_id"])
    return begun


# --- search space ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("space_file", ["tiny.json", "default.json"])
def test_empty_hyperparameters_reproduce_the_base_config(train_dataset, tmp_path, space_file):
    if space_file == "tiny.json":
        base = tiny_run_config(train_dataset, tmp_path / "run")
    else:
        base = RunConfig(data=DataConfig(dataset=str(train_dataset)))
    space = load_space(PROJECT / "tuning" / space_file, base)
    hypermodel = CxrHyperModel(base, space)
    hp = kt.HyperParameters()
    assert hypermodel.config_for(hp) == base
    # every hyperparameter of the file is declared, with the base value as default
    names = [spec.name for spec in space.hyperparameters]
    assert sorted(h.name for h in hp.space) == sorted(names)
    for spec in space.hyperparameters:
        section, field = spec.name.split(".", 1)
        value = config_lib.to_dict(base)[section]
        for part in field.split("."):
            value = value[part]
        assert spec.default == value, spec.name
        if spec.when is None:  # conditional ones are inactive unless their parent matches
            assert hp.get(spec.name) == value, spec.name


@pytest.mark.slow
def test_build_with_empty_hyperparameters_compiles_the_base_model(train_dataset, tmp_path):
    base = tiny_run_config(train_dataset, tmp_path / "run")
    hypermodel = CxrHyperModel(base, load_space(PROJECT / "tuning" / "tiny.json", base))
    model = hypermodel.build(kt.HyperParameters())
    assert model.optimizer is not None and model.output_shape == (None, 14)
    assert not any(layer.name.startswith("head_hidden") for layer in model.layers)


@pytest.mark.slow
def test_space_errors_name_the_entry(train_dataset, tmp_path):
    base = tiny_run_config(train_dataset, tmp_path / "run")
    cases = {
        "train.nope": ({"values": [1]}, "no config field"),
        "train.lr": ({"min": 0.1, "max": 0.5}, "outside"),
        "train.run_dir": ({"values": ["a"]}, "cannot be tuned"),
        "model.backbone": ({"values": ["vgg"]}, "not one of"),
        "train.focal_gamma": ({"min": 1, "max": 3, "when": {"train.loss": ["focal"]}}, "above"),
        "model.input_size": ({"values": [64, 128]}, "no dataset stores"),
        "model.dropout": ({"values": [0.1], "size": 3}, "unknown key"),
        "model.hidden_units": ({"values": [8, -1]}, "-1: model.hidden_units: must be >= 0"),
    }
    for name, (entry, message) in cases.items():
        with pytest.raises(SpaceError, match=message):
            parse_space({"hyperparameters": {name: entry}}, base)
    with pytest.raises(SpaceError, match="model.input_size: no dataset stores"):  # old name
        parse_space({"hyperparameters": {"model.image_size": {"values": [64, 128]}}}, base)
    # a choice always includes the base value, so the defaults stay reachable
    space = parse_space({"hyperparameters": {"data.batch_size": {"values": [16, 64]}}}, base)
    assert space.hyperparameters[0].values == (32, 16, 64)


# --- a tiny search, resumed, retrained -------------------------------------------------------


@pytest.fixture(scope="module")
def search(train_dataset, tmp_path_factory):
    """A 3-trial random search, not quiet (Keras Tuner prints its own trial lines).

    Returns (args, out dir, exit code, seconds, trial files, summary rows, stdout, and the
    text of summary.md and summary.csv as this search left them).
    """
    tmp = tmp_path_factory.mktemp("tune")
    base = [a for a in _base_args(train_dataset) if a != "--quiet"]
    args = ["--space", str(_space(tmp)), "--name", "tiny", "--out_dir", str(tmp),
            "--tuner", "random", "--max_trials", "3", *base]  # fmt: skip
    start = time.time()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = tune.main(args)
    seconds = time.time() - start
    out = tmp / "tiny"
    trials = {p.parent.name: p.read_text() for p in out.glob("trial_*/trial.json")}
    summaries = {name: (out / name).read_text() for name in ("summary.md", "summary.csv")}
    return args, out, code, seconds, trials, _rows(out), printed.getvalue(), summaries


@pytest.mark.slow
def test_tiny_random_search_succeeds(search):
    _, out, code, seconds, trials, rows, _, _ = search
    assert code == 0
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3, rows
    best = max(float(r["score"]) for r in rows)
    assert best > 0.6, rows
    for name in ("summary.md", "scores.png", "hyperparameters.png", "best_config.json"):
        assert (out / name).stat().st_size > 0, name
    assert f"{OBJECTIVE} {best:.4f}" in (out / "summary.md").read_text()
    assert {"train.lr", "model.dropout", "train.loss"} <= set(rows[0])
    print(f"tiny search: 3 trials, best {best:.4f}, {seconds:.0f} s")


@pytest.mark.slow
def test_trials_are_numbered_one_way_everywhere(search):
    _, out, code, _, _, rows, printed, summaries = search
    assert code == 0
    # Keras Tuner's own lines, the project's lines, summary.csv / .md and scores.png agree.
    assert re.findall(r"Running Trial #(\d+)", printed) == ["1", "2", "3"]
    assert sorted(re.findall(r"\[tuner0\] trial #(\d+) COMPLETED", printed)) == ["1", "2", "3"]
    assert sorted(re.findall(r"^Trial (\d+) Complete", printed, re.M)) == ["1", "2", "3"]
    assert [r["trial"] for r in rows] == ["1", "2", "3"]
    for row in rows:  # the folder holds the trial Keras Tuner numbered so
        trial = json.loads((out / row["folder"] / "trial.json").read_text())
        assert tuning.trial_number(trial["trial_id"]) == int(row["trial"])
        assert trial["score"] == pytest.approx(float(row["score"]))
    best = max(rows, key=lambda r: float(r["score"]))
    assert f"- best: trial #{best['trial']} (`{best['folder']}`)" in summaries["summary.md"]
    assert f"best: trial #{best['trial']}, {OBJECTIVE}" in printed
    table = pd.read_csv(io.StringIO(summaries["summary.csv"]))
    assert table["trial"].tolist() == [1, 2, 3]
    figure = tuning.plot_scores(table, out.parent / "scores_again.png")
    (axes,) = figure.axes
    assert axes.lines[0].get_xdata().tolist() == [1, 2, 3]  # completed trials, by number
    assert axes.get_xlabel() == "trial #"


@pytest.mark.slow
def test_rerun_continues_the_search(search):
    args, out, code, _, trials, _, _, _ = search
    assert code == 0
    assert tune.main([*args, "--max_trials", "4"]) == 0
    rows = _rows(out)
    assert [r["trial"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["folder"] for r in rows] == ["trial_0", "trial_1", "trial_2", "trial_3"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    for name, text in trials.items():  # finished trials are kept, not rerun
        assert (out / name / "trial.json").read_text() == text
    assert sorted(_begins(out)["tuner0"]) == ["0", "1", "2", "3"]
    # a different search under the same name is refused
    assert tune.main([*args, "--max_trials", "4", "--train.lr", "0.006"]) == 2


@pytest.mark.slow
def test_best_config_retrains_with_the_base_epoch_budget(search, tmp_path, monkeypatch):
    _, out, _, _, _, _, printed, _ = search
    best = tmp_path / "best_config.json"
    shutil.copy(out / "best_config.json", best)
    config = json.loads(best.read_text())
    assert config["train"]["run_dir"] == ""
    # The trials ran --epochs 1; the base config (TrainConfig's default budget) is kept.
    budget = TrainConfig()
    assert (config["train"]["epochs"], config["train"]["head_epochs"]) == (budget.epochs, 0)
    note = f"# {budget.epochs} epochs (0 head), the base config's budget; the trials trained 1"
    python = python_command()
    assert f"retrain: {python} -m cxr_tf.fit --config {out / 'best_config.json'}  {note}" in printed
    assert f"({note[2:]}; other: add --train.epochs N)" in (out / "summary.md").read_text()
    monkeypatch.chdir(tmp_path)  # fit's default run directory is runs/<backbone>-...
    assert fit_cli.main(["--config", str(best), "--train.epochs", "1", "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    written = json.loads((run_dir / "config.json").read_text())
    expected = json.loads(best.read_text())
    expected["train"]["run_dir"] = written["train"]["run_dir"]
    expected["train"]["epochs"] = 1  # the override, and nothing else changed
    assert written == expected


@pytest.mark.slow
def test_retrain_config_takes_the_budget_unless_tuned(train_dataset, tmp_path):
    budget = tiny_run_config(train_dataset, tmp_path / "run", epochs=30, head_epochs=2)
    command = TuneConfig(epochs=3)
    base = tuning.trial_base(command, budget)
    assert (base.train.epochs, base.train.head_epochs) == (3, 2)
    assert (budget.train.epochs, budget.train.head_epochs) == (30, 2)  # left as given
    space = parse_space({"hyperparameters": {"train.lr": {"values": [0.01]}}}, base)
    hp = kt.HyperParameters()
    hp.Fixed("train.lr", 0.01)
    run = tuning.retrain_config(CxrHyperModel(base, space), hp, budget)
    assert (run.train.epochs, run.train.head_epochs, run.train.lr) == (30, 2, 0.01)
    assert run.train.run_dir == ""
    # A searched epoch count is the trial's own choice, and is kept.
    space = parse_space({"hyperparameters": {"train.epochs": {"values": [2]}}}, base)
    hp = kt.HyperParameters()
    hp.Fixed("train.epochs", 2)
    run = tuning.retrain_config(CxrHyperModel(base, space), hp, budget)
    assert (run.train.epochs, run.train.head_epochs) == (2, 2)


# --- failed trials ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("max_trials, stopped", [(2, False), (5, True)])
def test_failing_trials_are_reported(
    train_dataset, tmp_path, monkeypatch, capsys, max_trials, stopped
):
    # keras-tuner imports tensorboard in every trial: without it, every trial fails.
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    args = ["--space", str(_space(tmp_path)), "--name", "broken", "--out_dir", str(tmp_path),
            "--max_trials", str(max_trials), *_base_args(train_dataset, steps=2)]  # fmt: skip
    assert tune.main(args) == 1
    err = capsys.readouterr().err
    failed = 3 if stopped else max_trials  # keras-tuner stops after 3 consecutive failures
    assert err.count("FAILED: ModuleNotFoundError") == failed, err
    assert "tensorboard" in err and "no trial succeeded" in err
    assert ("consecutive failures" in err) == stopped
    rows = _rows(tmp_path / "broken")
    assert [r["status"] for r in rows] == ["FAILED"] * failed
    assert all("tensorboard" in r["error"] for r in rows)
    assert not (tmp_path / "broken" / "best_config.json").exists()


# --- distributed: a chief and two workers ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers_share_the_trials(train_dataset, tmp_path):
    base = _base_args(train_dataset, steps=5, validation_steps=2)
    args = ["--space", str(_space(tmp_path)), "--name", "dist", "--out_dir", str(tmp_path),
            "--max_trials", "3", *base]  # fmt: skip
    common = dict(
        os.environ,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(_free_port()),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    deadline = time.time() + 300
    try:
        for tuner_id in ("chief", "worker0", "worker1"):
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w")
            procs[tuner_id] = subprocess.Popen(
                [sys.executable, "-m", "cxr_tf.tune", *args],
                cwd=PROJECT,
                env={**common, "KERASTUNER_TUNER_ID": tuner_id},
                stdout=logs[tuner_id],
                stderr=subprocess.STDOUT,
            )
        for tuner_id in ("worker0", "worker1", "chief"):  # the chief ends after its workers
            procs[tuner_id].wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()
    for tuner_id, proc in procs.items():
        text = (tmp_path / f"{tuner_id}.log").read_text()
        assert proc.returncode == 0, f"{tuner_id}:\n{text[-3000:]}"
    out = tmp_path / "dist"
    trial_ids = {json.loads(p.read_text())["trial_id"] for p in out.glob("trial_*/trial.json")}
    assert len(trial_ids) == 3
    begun = _begins(out)
    assert set(begun) == {"worker0", "worker1"}, begun
    ran = [set(begun["worker0"]), set(begun["worker1"])]
    assert all(ran), begun  # both workers ran trials
    assert not ran[0] & ran[1], begun  # none twice
    assert sum(len(b) for b in begun.values()) == 3 and ran[0] | ran[1] == trial_ids
    rows = _rows(out)  # the chief wrote the results
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert {r["worker"] for r in rows} == {"worker0", "worker1"}


def _titles_fit(figure) -> list[str]:
    """The axes titles of a drawn figure that are wider than their axes or leave the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    page = figure.bbox
    bad = []
    for ax in figure.axes:
        title, box = ax.title, ax.get_window_extent(renderer)
        extent = title.get_window_extent(renderer)
        inside = page.x0 <= extent.x0 and extent.x1 <= page.x1 and extent.y1 <= page.y1
        if extent.width > box.width or not inside:
            bad.append(title.get_text())
    return bad


def test_hyperparameter_plot_titles_fit_their_panels(tmp_path):
    specs = (
        HpSpec("train.lr", "float", 0.003, min=1e-4, max=1e-2, sampling="log"),
        HpSpec("data.augment.strength", "float", 0.5, min=0.0, max=1.0),
        HpSpec("model.hidden_units", "choice", 0, values=(0, 32, 128)),
        HpSpec("train.loss", "choice", "bce", values=("bce", "weighted_bce", "focal")),
        HpSpec("train.focal_gamma", "float", 2.0, min=1.0, max=3.0),
        HpSpec("model.a_rather_long_field_name.inner", "choice", "a", values=("a", "b")),
    )
    space = SearchSpace(hyperparameters=specs)
    rows = []
    for i in range(8):
        rows.append(
            {
                "trial": i + 1,
                "status": "COMPLETED" if i != 3 else "FAILED",
                "score": None if i == 3 else 0.6 + 0.03 * i,
                "train.lr": 10 ** (-4 + i / 4),
                "data.augment.strength": i / 8,
                "model.hidden_units": (0, 32, 128)[i % 3],
                "train.loss": ("bce", "weighted_bce", "focal")[i % 3],
                "train.focal_gamma": 1.0 + i / 4 if i % 3 == 2 else None,
                "model.a_rather_long_field_name.inner": "ab"[i % 2],
            }
        )
    table = pd.DataFrame(rows)
    ranked = tuning.importance(table, [s.name for s in specs])
    path = tmp_path / "hyperparameters.png"
    figure = tuning.plot_hyperparameters(table, ranked, space, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 6 and all("importance " in t for t in titles)
    assert "model.\na_rather_long_field_name.\ninner\nimportance" in " ".join(titles)
    assert _titles_fit(figure) == []
    # The old one-line titles at the default font size did not fit: the check can fail.
    figure.axes[1].set_title("data.augment.strength (importance 0.42)", fontsize=14)
    assert _titles_fit(figure) == ["data.augment.strength (importance 0.42)"]
