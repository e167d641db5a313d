"""Exploration reports: real NIH numbers checked against counts made here from the raw files,
a converted dataset against its manifest, a patient overlap reported (not raised), the CLI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import nih_path
from PIL import Image

from cxr_tf import explore
from cxr_tf.analysis import exploration
from cxr_tf.config import ConfigError, ExploreConfig, SplitConfig
from cxr_tf.data.manifest import Manifest
from cxr_tf.labels import FINDINGS
from cxr_tf.sources import nih


def _check_outputs(out: Path, summary: dict) -> None:
    """Every plot exists, is a readable non-empty PNG and is linked from report.md."""
    report = (out / "report.md").read_text()
    assert report.strip()
    assert json.loads((out / "summary.json").read_text())["prevalence"] == summary["prevalence"]
    for name in summary["files"]["plots"]:
        path = out / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        assert f"]({name})" in report, name


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("explore_nih")
    summary = exploration.explore(ExploreConfig(nih_root=str(nih_path()), out=str(out)), False)
    return summary, out


@pytest.mark.slow
def test_real_official_counts_match_the_raw_files(real):
    summary, _ = real
    root = nih_path()
    raw = pd.read_csv(root / "Data_Entry_2017_v2020.csv.gz", usecols=[0, 1, 3])
    raw.columns = ["image", "labels", "patient"]
    with gzip.open(root / "test_list.txt.gz", "rt") as f:
        test = {line.strip() for line in f if line.strip()}
    raw["split"] = np.where(raw["image"].isin(test), "test", "train_val")
    labels = raw.assign(label=raw["labels"].str.split("|")).explode("label")
    counts = labels.groupby(["split", "label"]).size()

    prev = summary["prevalence"]
    assert set(prev) == {"train", "validation", "test", "all"}
    assert prev["test"]["positives"]["Hernia"] == counts["test", "Hernia"] == 86
    for finding in FINDINGS:
        assert prev["test"]["positives"][finding] == counts["test", finding], finding
        train_val = prev["train"]["positives"][finding] + prev["validation"]["positives"][finding]
        assert train_val == counts["train_val", finding], finding
        assert prev["all"]["positives"][finding] == counts[:, finding].sum(), finding
    assert prev["test"]["no_finding"] == counts["test", "No Finding"]
    assert prev["test"]["images"] == len(test) == 25596
    assert prev["train"]["images"] + prev["validation"]["images"] == 86524
    assert prev["test"]["patients"] == raw["patient"][raw["split"] == "test"].nunique()
    assert prev["all"]["patients"] == 30805
    hernia = prev["all"]["pos_neg_ratio"]["Hernia"]
    assert hernia == pytest.approx(227 / (112120 - 227))

    co = summary["cooccurrence"]
    counts_matrix, conditional = np.array(co["counts"]), np.array(co["conditional"])
    assert np.diag(counts_matrix).tolist() == [prev["all"]["positives"][f] for f in FINDINGS]
    np.testing.assert_array_equal(counts_matrix, counts_matrix.T)
    np.testing.assert_allclose(np.diag(conditional), 1.0)
    assert conditional[2, 0] == pytest.approx(counts_matrix[2, 0] / counts_matrix[2, 2], abs=1e-4)

    patients = summary["patients"]["all"]
    assert sum(patients["histogram"].values()) == 30805 == patients["patients"]
    assert sum(int(k) * v for k, v in patients["histogram"].items()) == 112120
    assert summary["demographics"]["all"]["sex"] == {"F": 48780, "M": 63340}


@pytest.mark.slow
def test_real_overlap_samples_and_files(real):
    summary, out = real
    assert summary["overlap"]["status"] == "PASS" and summary["overlap"]["patients"] == []
    assert "**PASS**" in (out / "report.md").read_text()
    samples = summary["samples"]
    assert samples["found"] == 96 and samples["absent"] == 112120 - 96
    assert samples["decoded"] == samples["requested"] > 0 and samples["unreadable"] == 0
    assert samples["modes"].get("RGBA", 0) >= 1  # RGBA images are drawn, not skipped
    assert len(summary["samples"]["shown"]["Cardiomegaly"]) == 4
    assert summary["boxes"]["boxes"] == 984
    assert summary["files"]["plots"] == [f"{p}.png" for p in exploration.PLOTS]
    _check_outputs(out, summary)


@pytest.mark.slow
def test_converted_dataset_matches_its_manifest(small_dataset, synth_small, tmp_path):
    summary = exploration.explore(
        ExploreConfig(dataset=str(small_dataset), out=str(tmp_path), samples_per_finding=2), False
    )
    manifest = Manifest.load(small_dataset)
    for split, entry in manifest.splits.items():
        for key in ("images", "patients", "no_finding"):
            assert summary["prevalence"][split][key] == getattr(entry, key), (split, key)
        # exploration reports NIH's 14 findings; the manifest counts the whole vocabulary
        positives = {f: entry.positives[f] for f in FINDINGS}
        assert summary["prevalence"][split]["positives"] == positives, split
    assert summary["manifest_check"] == {"consistent": True, "mismatches": []}
    assert summary["overlap"]["status"] == "PASS"
    assert summary["boxes"]["boxes"] == len(nih.read_boxes(synth_small / "BBox_List_2017.csv"))
    assert summary["samples"]["found"] == summary["prevalence"]["all"]["images"] == 60
    assert summary["samples"]["unreadable"] == 0
    _check_outputs(tmp_path, summary)


def _overlapping_copy(synth_small: Path, root: Path) -> int:
    """A copy of `synth_small` with one train_val image of a patient moved to the test list."""
    shutil.copytree(synth_small, root)
    train_val = (root / "train_val_list.txt").read_text().split()
    df = nih.read_data_entry(root / "Data_Entry_2017.csv")
    per_patient = df[df["image_index"].isin(train_val)].groupby("patient_id")["image_index"]
    patient, images = next((p, list(i)) for p, i in per_patient if len(i) >= 2)
    moved = images[-1]
    (root / "train_val_list.txt").write_text("\n".join(i for i in train_val if i != moved) + "\n")
    with open(root / "test_list.txt", "a") as f:
        f.write(moved + "\n")
    return int(patient)


def test_patient_overlap_is_reported_not_raised(synth_small, tmp_path, capsys):
    patient = _overlapping_copy(synth_small, tmp_path / "nih")
    out = tmp_path / "out"
    argv = ["--nih_root", str(tmp_path / "nih"), "--out", str(out), "--quiet"]
    assert explore.main([*argv, "--samples_per_finding", "0"]) == 0
    assert "patient overlap: FAIL" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overlap"]["status"] == "FAIL"
    assert summary["overlap"]["patients"] == [patient]
    assert summary["overlap"]["splits_by_patient"] == {str(patient): ["train_val", "test"]}
    assert set(summary["prevalence"]) == {"train_val", "test", "all"}
    report = (out / "report.md").read_text()
    assert "**FAIL**" in report and f"| {patient} | train_val / test |" in report
    assert summary["samples"] is None and "samples.png" not in summary["files"]["plots"]
    _check_outputs(out, summary)


def test_random_split_of_an_nih_folder(synth_small, tmp_path):
    config = ExploreConfig(
        nih_root=str(synth_small),
        out=str(tmp_path),
        samples_per_finding=0,
        split=SplitConfig(strategy="random", seed=3),
    )
    summary = exploration.explore(config, False)
    prev = summary["prevalence"]
    assert sum(prev[s]["images"] for s in ("train", "validation", "test")) == 60
    assert summary["overlap"]["status"] == "PASS"
    assert summary["samples"] is None


def test_cli_help_and_bad_config(capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        explore.main(["--help"])
    assert err.value.code == 0
    assert "--nih_root" in capsys.readouterr().out
    bad = (
        ([], "nih_root"),
        (["--nih_root", "a", "--dataset", "b"], "dataset"),
        (["--dataset", "b", "--samples_per_finding", "-1"], "samples_per_finding"),
        (["--nih_root", "a", "--split.strategy", "nope"], "split.strategy"),
    )
    for argv, field in bad:
        with pytest.raises(SystemExit) as err:
            explore.main(argv)
        assert err.value.code == 2, argv
        assert field in capsys.readouterr().err, argv
    # A readable config but a missing folder: an error message, exit 2, nothing written.
    assert explore.main(["--nih_root", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "none is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="^nih_root"):
        ExploreConfig()
    with pytest.raises(ConfigError, match="^dataset"):
        ExploreConfig(nih_root="a", dataset="b")
    config = ExploreConfig(dataset="some/dir/nih_64_png")
    assert config.out_dir == Path("explore") / "nih_64_png"
    assert config.samples_per_finding == 4 and config.split.strategy == "official"
