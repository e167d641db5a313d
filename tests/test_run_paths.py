"""A run answers from any working folder: its dataset is recorded absolute, and a relative
path of an older run is found from the run's own folder (`cxr_tf.runs.folder`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxr_tf.runs import folder as runs


def test_relative_datasets_resolve_from_the_working_folder_then_the_runs_ancestors(
    tmp_path, monkeypatch
):
    project = tmp_path / "project"
    (project / "tfrecords" / "a_64").mkdir(parents=True)
    (project / "tfrecords" / "b_64").mkdir(parents=True)
    run_dir = project / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(project)
    assert runs.resolve_datasets("tfrecords/a_64, tfrecords/b_64") == ",".join(
        str(project / "tfrecords" / n) for n in ("a_64", "b_64")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # not under the working folder: found from the run's parents; absent: kept as written
    bases = [run_dir, *run_dir.parents]
    assert runs.resolve_datasets("tfrecords/a_64", bases) == str(project / "tfrecords" / "a_64")
    assert runs.resolve_datasets("tfrecords/missing", bases) == "tfrecords/missing"

    # a new run records its dataset absolute
    from cxr_tf.config import DataConfig, RunConfig, TrainConfig

    monkeypatch.chdir(project)
    run = RunConfig(data=DataConfig(dataset="tfrecords/a_64"),
                    train=TrainConfig(run_dir=str(run_dir)))  # fmt: skip
    runs.prepare_run_dir(run)
    recorded = json.loads((run_dir / "config.json").read_text())["data"]["dataset"]
    assert recorded == str(project / "tfrecords" / "a_64")


@pytest.mark.slow
def test_an_older_run_with_a_relative_dataset_evaluates_from_another_folder(
    trained_run, train_dataset, tmp_path, monkeypatch
):
    from cxr_tf import evaluate

    project = tmp_path / "project"
    run_dir = project / "runs" / "tiny"
    shutil.copytree(trained_run, run_dir)
    (project / "tfrecords").mkdir()
    (project / "tfrecords" / "train64").symlink_to(train_dataset, target_is_directory=True)
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["dataset"] = "tfrecords/train64"  # as a run made in `project` recorded it
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    monkeypatch.chdir(tmp_path)  # another folder
    run = runs.load_run_config(run_dir)
    assert Path(run.data.dataset) == train_dataset.resolve()
    out = tmp_path / "report"
    argv = ["--run_dir", str(run_dir), "--bootstrap", "10", "--out", str(out), "--quiet"]
    assert evaluate.main(argv) == 0
    assert (out / "report.json").exists()
