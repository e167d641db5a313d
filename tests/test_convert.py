"""Conversion: round trip, layouts (flat, folders, .tar.gz), resume after a kill, verify,
and every bad input named in the foundation issue."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import PROJECT, convert_folder, nih_path

from cxr_tf import convert, nih, schema
from cxr_tf import preprocessing as pp
from cxr_tf.config import ConvertConfig, SplitConfig
from cxr_tf.labels import FINDINGS


def _records(dataset: Path) -> dict[str, dict]:
    """Every record of a converted dataset, decoded the TFDS way, keyed by image name."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    features = schema.build_features(manifest["image"]["size"], manifest["image"]["encoding"])
    out = {}
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            for raw in tf.data.TFRecordDataset(str(dataset / shard["file"])):
                record = features.deserialize_example(raw)
                name = record["image_index"].numpy().decode()
                assert name not in out, f"{name} stored twice"
                out[name] = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in record.items()}
                out[name]["split"] = split
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_round_trip_pixels_labels_ids_boxes(synth_small, small_dataset):
    records = _records(small_dataset)
    df = nih.read_data_entry(synth_small / "Data_Entry_2017.csv")
    assert set(records) == set(df["image_index"])
    boxes = nih.read_boxes(synth_small / "BBox_List_2017.csv")
    for row in df.sample(12, random_state=0).itertuples(index=False):
        record = records[row.image_index]
        expected = pp.bytes_to_stored((synth_small / "images" / row.image_index).read_bytes(), 64)
        np.testing.assert_array_equal(record["image"], expected.numpy())  # lossless, exact
        row_dict = row._asdict()
        np.testing.assert_array_equal(
            record["labels"], np.array([row_dict[f] for f in FINDINGS], np.uint8)
        )
        assert record["patient_id"] == row.patient_id
        assert record["follow_up"] == row.follow_up
        assert record["age"] == row.age
        np.testing.assert_array_equal(
            record["original_size"], [row.original_width, row.original_height]
        )
    boxed = boxes.groupby("image_index")
    assert len(boxed) > 0
    for name, group in boxed:
        record = records[name]
        assert record["split"] == "test"
        got = schema.boxes_xywh(record["boxes"]["bbox"], 64)
        want = group[["x", "y", "w", "h"]].to_numpy() * 64 / 1024  # NIH 1024 frame
        order = np.lexsort(got.T[::-1])
        np.testing.assert_allclose(got[order], want[np.lexsort(want.T[::-1])], atol=1e-3)
        names = sorted(FINDINGS[i] for i in record["boxes"]["finding"])
        assert names == sorted(group["finding"])


def test_manifest_facts(small_dataset):
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert manifest["labels"] == list(FINDINGS)
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["image"] == {
        "size": 64,
        "channels": 1,
        "dtype": "uint8",
        "encoding": "png",
        "preprocessing": "cxr_tf.preprocessing.bytes_to_stored",
    }
    records = _records(small_dataset)
    for split, entry in manifest["splits"].items():
        mine = [r for r in records.values() if r["split"] == split]
        assert entry["images"] == len(mine) == sum(s["records"] for s in entry["shards"])
        assert entry["patients"] == len({r["patient_id"] for r in mine})
        for i, finding in enumerate(FINDINGS):
            assert entry["positives"][finding] == sum(int(r["labels"][i]) for r in mine)
    assert convert.verify(small_dataset, progress=False) == []


def test_raw_encoding_equals_png_encoding(synth_small, small_dataset, tmp_path):
    raw = convert_folder(synth_small, tmp_path, image_size=64, encoding="raw", name="raw")
    a, b = _records(small_dataset), _records(raw)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name]["image"], b[name]["image"])
        assert a[name]["split"] == b[name]["split"]


def test_real_sample_images_with_full_label_file(tmp_path):
    root = nih_path()
    config = ConvertConfig(
        nih_root=str(root), out_dir=str(tmp_path), image_size=64, present_only=True
    )
    manifest = convert.convert(config, progress=False)
    assert sum(e["images"] for e in manifest["splits"].values()) == 96
    assert manifest["source"]["absent_images"] == 112_120 - 96
    records = _records(tmp_path / config.dataset_name)
    sample = pd.read_csv(root / "sample_labels.csv")
    official = dict(zip(sample["Image Index"], sample["official_split"], strict=True))
    for name, record in records.items():
        assert (official[name] == "test") == (record["split"] == "test")
    # the three RGBA images are converted like the rest
    from PIL import Image

    for path in sorted((root / "images").glob("*.png")):
        with Image.open(path) as image:
            if image.mode == "RGBA":
                expected = pp.bytes_to_stored(path.read_bytes(), 64).numpy()
                np.testing.assert_array_equal(records[path.name]["image"], expected)
    boxed = [r for r in records.values() if len(r["boxes"]["finding"])]
    assert len(boxed) == 6


def test_absent_images_are_an_error_without_present_only(tmp_path):
    root = nih_path()
    config = ConvertConfig(nih_root=str(root), out_dir=str(tmp_path), image_size=64)
    with pytest.raises(convert.ConversionError, match=r"112024 of 112120 images .*present_only"):
        convert.convert(config, progress=False)
    dataset = tmp_path / config.dataset_name
    assert len((dataset / convert.ABSENT_REPORT).read_text().split()) == 112_024
    assert not list(dataset.glob("*.tfrecord"))


def _tar_layout(src: Path, dst: Path, extra_members: dict[str, bytes] | None = None) -> Path:
    """NIH's download layout: metadata files + images_001.tar.gz, images_002.tar.gz."""
    dst.mkdir()
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv"):
        shutil.copy(src / name, dst / name)
    for name in ("train_val_list.txt", "test_list.txt"):  # also exercise .txt.gz
        (dst / f"{name}.gz").write_bytes(gzip.compress((src / name).read_bytes()))
    images = sorted((src / "images").glob("*.png"))
    half = len(images) // 2
    for number, chunk in ((1, images[:half]), (2, images[half:])):
        with tarfile.open(dst / f"images_{number:03d}.tar.gz", "w:gz") as tar:
            for path in chunk:
                tar.add(path, arcname=f"images/{path.name}")
            for member, data in (extra_members or {}).items() if number == 2 else ():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return dst


def test_tar_gz_archives_and_folders_layout_give_identical_shards(
    synth_small, small_dataset, tmp_path
):
    evil = (synth_small / "images").glob("*.png").__next__().read_bytes()
    root = _tar_layout(
        synth_small,
        tmp_path / "nih_tar",
        {"../00099999_000.png": evil, "/abs/00099998_000.png": evil},
    )
    dataset = convert_folder(root, tmp_path / "out", image_size=64, encoding="png", name="small")
    want = json.loads((small_dataset / "manifest.json").read_text())
    got = json.loads((dataset / "manifest.json").read_text())
    assert got["source"]["layout"] == "archives"
    assert sorted(got["source"]["rejected_archive_members"]) == [
        f"{root / 'images_002.tar.gz'}: rejected as unsafe: ../00099999_000.png",
        f"{root / 'images_002.tar.gz'}: rejected as unsafe: /abs/00099998_000.png",
    ]
    assert not (tmp_path / "00099999_000.png").exists()
    assert got["splits"] == want["splits"]  # same shards, bytes, counts: archive order
    assert got["fingerprint"] == want["fingerprint"]  # does not leak into the records
    folders = tmp_path / "nih_folders"
    shutil.copytree(synth_small, folders, ignore=shutil.ignore_patterns("images"))
    images = sorted((synth_small / "images").glob("*.png"))
    for i, path in enumerate(images):
        target = folders / f"images_{1 + i * 3 // len(images):03d}" / "images"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    dataset = convert_folder(
        folders, tmp_path / "out2", image_size=64, encoding="png", name="small"
    )
    got = json.loads((dataset / "manifest.json").read_text())
    assert got["source"]["layout"] == "folders"
    assert got["splits"] == want["splits"]
    assert got["fingerprint"] == want["fingerprint"]


def _run_convert(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_tf.convert", "--quiet", *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_resume_after_kill_skips_finished_shards_and_never_duplicates(synth_small, tmp_path):
    out = tmp_path / "out"
    args = ["--nih_root", str(synth_small), "--out_dir", str(out), "--name", "resume",
            "--image_size", "64", "--shard_mb", "0.01", "--workers", "1"]  # fmt: skip
    proc = _run_convert(args)
    parts = out / "resume" / convert.PARTS
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.json"))) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.tfrecord.json")}
    plan = json.loads((out / "resume" / convert.PLAN).read_text())
    total_shards = sum(len(s) for s in plan["shards"].values())
    assert 2 <= len(finished) < total_shards, "the kill must land mid-conversion"
    assert not (out / "resume" / convert.MANIFEST).exists()
    proc = _run_convert(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    for name, mtime in finished.items():
        assert (parts / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    records = _records(out / "resume")  # asserts no image is stored twice
    assert len(records) == 60
    assert (
        subprocess.run(
            [sys.executable, "-m", "cxr_tf.convert", "--verify", str(out / "resume"), "--quiet"],
            cwd=PROJECT,
            capture_output=True,
        ).returncode
        == 0
    )


def test_verify_reports_corrupted_and_missing_shards(small_dataset, tmp_path):
    dataset = _copy(small_dataset, tmp_path / "copy")
    shard = sorted(dataset.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = convert.verify(dataset, progress=False)
    assert any("sha256 differs" in p and shard.name in p for p in problems)
    shard.unlink()
    assert any(p.endswith("missing") for p in convert.verify(dataset, progress=False))


def test_undecodable_image_stops_with_list_then_skip_bad_lists_it(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    victim = sorted((root / "images").glob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    config = ConvertConfig(nih_root=str(root), out_dir=str(tmp_path / "out"), image_size=64)
    with pytest.raises(convert.ConversionError, match=victim.name):
        convert.convert(config, progress=False)
    dataset = tmp_path / "out" / config.dataset_name
    report = pd.read_csv(dataset / convert.BAD_REPORT)
    assert report["image"].tolist() == [victim.name]
    assert not (dataset / convert.MANIFEST).exists()
    assert not list(dataset.glob("*.tmp"))
    config.skip_bad = True
    manifest = convert.convert(config, progress=False)
    assert [b["image"] for b in manifest["skipped_images"]] == [victim.name]
    assert sum(e["images"] for e in manifest["splits"].values()) == 59
    assert victim.name not in _records(dataset)


def test_changed_settings_on_an_existing_conversion_are_refused(synth_small, tmp_path):
    convert_folder(synth_small, tmp_path, image_size=64, name="same")
    with pytest.raises(convert.ConversionError, match="split"):
        convert_folder(
            synth_small,
            tmp_path,
            image_size=64,
            name="same",
            split=SplitConfig(strategy="official", val_fraction=0.3),
        )


def test_missing_column_and_unknown_label_name_file_row_value(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    entry = root / "Data_Entry_2017.csv"
    original = entry.read_text()
    frame = pd.read_csv(entry)
    frame.drop(columns=["View Position"]).to_csv(entry, index=False)
    code = convert.main(["--nih_root", str(root), "--out_dir", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    with pytest.raises(nih.MetadataError, match="View Position"):
        convert.convert(ConvertConfig(nih_root=str(root), out_dir=str(tmp_path / "o")))
    lines = original.splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Mass|Pneumonitis", 1)
    entry.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Pneumonitis") as info:
        convert.convert(ConvertConfig(nih_root=str(root), out_dir=str(tmp_path / "o")))
    assert "Data_Entry_2017.csv" in str(info.value)


def test_split_list_naming_unknown_images_and_patient_overlap(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    test_list = root / "test_list.txt"
    test_list.write_text(test_list.read_text() + "99999999_000.png\n")
    config = ConvertConfig(nih_root=str(root), out_dir=str(tmp_path / "o"), image_size=64)
    with pytest.raises(convert.ConversionError, match=r"test_list.txt.*99999999_000.png"):
        convert.convert(config, progress=False)
    # a user-supplied split file that puts one patient in two splits is refused
    shutil.copy(synth_small / "test_list.txt", test_list)
    df = nih.read_data_entry(root / "Data_Entry_2017.csv")
    multi = df.groupby("patient_id")["image_index"].apply(list)
    patient, images = next((p, i) for p, i in multi.items() if len(i) >= 2)
    table = pd.DataFrame({"Image Index": df["image_index"], "split": "train"})
    table.loc[table["Image Index"] == images[0], "split"] = "test"
    split_file = tmp_path / "splits.csv"
    table.to_csv(split_file, index=False)
    config = ConvertConfig(
        nih_root=str(root),
        out_dir=str(tmp_path / "o"),
        image_size=64,
        name="user",
        split=SplitConfig(strategy="file", split_file=str(split_file)),
    )
    from cxr_tf.splits import PatientOverlapError

    with pytest.raises(PatientOverlapError, match=str(patient)) as info:
        convert.convert(config, progress=False)
    assert info.value.patients == [patient]
    assert not list((tmp_path / "o" / "user").glob("*.tfrecord"))


def test_cli_help_and_verify(small_dataset, capsys):
    with pytest.raises(SystemExit) as info:
        convert.main(["--help"])
    assert info.value.code == 0
    assert "--present_only" in capsys.readouterr().out
    assert convert.main(["--verify", str(small_dataset), "--quiet"]) == 0
