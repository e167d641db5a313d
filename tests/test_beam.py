"""`convert --runner beam` (`cxr_tf.data.beam`): the local converter's plan on Apache Beam's
DirectRunner gives the same shards, fingerprint and TFDS metadata, verifies, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import convert_folder

from cxr_tf import convert
from cxr_tf.data import conversion
from cxr_tf.data.manifest import MANIFEST

# Beam is an optional extra (CI installs it: .ci/run).
pytest.importorskip("apache_beam", reason="pip install -e '.[beam]'")

from cxr_tf.data import beam

SETTINGS = {"stored_size": 64, "shard_mb": 0.05, "workers": 1}


def _same_dataset(a: Path, b: Path) -> list[str]:
    """The shard names, after asserting both folders hold the same bytes and metadata."""
    shards = sorted(p.name for p in a.glob("*.tfrecord"))
    assert len(shards) > 3 and shards == sorted(p.name for p in b.glob("*.tfrecord"))
    for name in shards:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ("features.json", "dataset_info.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    want, got = (json.loads((d / MANIFEST).read_text()) for d in (a, b))
    assert got["fingerprint"] == want["fingerprint"]
    assert got["splits"] == want["splits"] and got["source"] == want["source"]
    return shards


def test_direct_runner_gives_the_local_converters_bytes_and_verifies(synth_small, tmp_path):
    local = convert_folder(synth_small, tmp_path / "local", name="d", **SETTINGS)
    code = convert.main([
        "--root", str(synth_small), "--out_dir", str(tmp_path / "beam"), "--name", "d",
        "--stored_size", "64", "--shard_mb", "0.05", "--workers", "1", "--quiet",
        "--split.val_fraction", "0.2", "--runner", "beam",
        "--", "--runner=DirectRunner", "--direct_num_workers=2",
    ])  # fmt: skip
    assert code == 0
    on_beam = tmp_path / "beam" / "d"
    _same_dataset(local, on_beam)
    manifest = json.loads((on_beam / MANIFEST).read_text())
    assert manifest["conversion"]["runner"] == "beam"
    assert manifest["conversion"]["beam_options"] == "--runner=DirectRunner --direct_num_workers=2"
    assert not list((on_beam / conversion.PARTS).glob(f"*{beam.RESULT_SUFFIX}"))
    assert convert.main(["--verify", str(on_beam), "--quiet"]) == 0


def test_a_rerun_on_beam_keeps_finished_shards_and_writes_the_rest(synth_small, tmp_path):
    local = convert_folder(synth_small, tmp_path / "local", name="d", **SETTINGS)
    on_beam = convert_folder(synth_small, tmp_path / "beam", name="d", runner="beam", **SETTINGS)
    parts = on_beam / conversion.PARTS
    # a job that failed after some shards: two shards and the manifest are missing
    lost = sorted(parts.glob("*.tfrecord.json"))[:2]
    for part in lost:
        (on_beam / part.name.removesuffix(".json")).unlink()
        part.unlink()
    (on_beam / MANIFEST).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.tfrecord.json")}
    convert_folder(synth_small, tmp_path / "beam", name="d", runner="beam", **SETTINGS)
    for name, mtime in kept.items():
        assert (parts / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    assert all(p.is_file() for p in lost)
    _same_dataset(local, on_beam)
    # and the local converter resumes a Beam conversion (the same part records)
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.tfrecord.json")}
    convert_folder(synth_small, tmp_path / "beam", name="d", **SETTINGS)
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("*.tfrecord.json")} == before


def test_pipeline_options_default_to_the_direct_runner_and_bad_quoting_is_named():
    assert beam.pipeline_flags("") == ["--runner=DirectRunner"]
    assert beam.pipeline_flags("--runner=DataflowRunner --project p") == [
        "--runner=DataflowRunner", "--project", "p"
    ]  # fmt: skip
    assert beam.pipeline_flags("--runner FlinkRunner")[:2] == ["--runner", "FlinkRunner"]
    with pytest.raises(beam.BeamError, match="beam_options: No closing quotation"):
        beam.pipeline_flags("--project 'p")


def test_beam_options_without_the_beam_runner_are_refused(synth_small, tmp_path, capsys):
    args = ["--root", str(synth_small), "--out_dir", str(tmp_path), "--quiet"]
    assert convert.main([*args, "--beam_options=--runner=DirectRunner"]) == 2
    assert "need --runner beam" in capsys.readouterr().err
    assert convert.main([*args, "--", "--runner=DirectRunner"]) == 2
    assert not list(tmp_path.iterdir())
