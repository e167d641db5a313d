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
from helpers import PROJECT, convert_folder, nih_path, read_records

from cxr_tf import convert
from cxr_tf.config import ConvertConfig, SplitConfig
from cxr_tf.data import conversion, schema, verification
from cxr_tf.data import preprocessing as pp
from cxr_tf.data.manifest import MANIFEST, Manifest
from cxr_tf.labels import EXTRA_FINDINGS, FINDINGS, VOCABULARY
from cxr_tf.sources import nih, registry
from cxr_tf.sources.base import MetadataError

_records = read_records


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
        # NIH's 14 findings 0/1, the vocabulary's other findings not labelled (3)
        np.testing.assert_array_equal(
            record["labels"],
            np.array([row_dict[f] for f in FINDINGS] + [3] * len(EXTRA_FINDINGS), np.uint8),
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
    assert manifest["labels"] == list(VOCABULARY)
    assert manifest["labelled_findings"] == list(FINDINGS)
    assert manifest["source"]["kind"] == "nih"
    assert manifest["source"]["views_kept"] and not manifest["source"]["views_dropped"]
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["image"] == {
        "size": 64,
        "channels": 1,
        "dtype": "uint8",
        "encoding": "png",
        "preprocessing": "cxr_tf.data.preprocessing.bytes_to_stored",
    }
    records = _records(small_dataset)
    for split, entry in manifest["splits"].items():
        mine = [r for r in records.values() if r["split"] == split]
        assert entry["images"] == len(mine) == sum(s["records"] for s in entry["shards"])
        assert entry["patients"] == len({r["patient_id"] for r in mine})
        for i, finding in enumerate(FINDINGS):
            assert entry["positives"][finding] == sum(int(r["labels"][i] == 1) for r in mine)
            assert entry["labelled"][finding] == len(mine)
        for finding in EXTRA_FINDINGS:
            assert entry["positives"][finding] == entry["labelled"][finding] == 0
    assert verification.verify(small_dataset, progress=False) == []


def test_raw_encoding_equals_png_encoding(synth_small, small_dataset, tmp_path):
    raw = convert_folder(synth_small, tmp_path, stored_size=64, encoding="raw", name="raw")
    a, b = _records(small_dataset), _records(raw)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name]["image"], b[name]["image"])
        assert a[name]["split"] == b[name]["split"]


@pytest.mark.slow
def test_real_sample_images_with_full_label_file(tmp_path):
    root = nih_path()
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path), stored_size=64, present_only=True)
    manifest = conversion.convert(config, progress=False)
    assert manifest.images == 96
    assert manifest.source.absent_images == 112_120 - 96
    records = _records(tmp_path / config.dataset_name("nih"))
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
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path), stored_size=64)
    with pytest.raises(conversion.ConversionError, match=r"112024 of 112120 images .*present_only"):
        conversion.convert(config, progress=False)
    dataset = tmp_path / config.dataset_name("nih")
    assert len((dataset / conversion.ABSENT_REPORT).read_text().split()) == 112_024
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
    dataset = convert_folder(root, tmp_path / "out", stored_size=64, encoding="png", name="small")
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
        folders, tmp_path / "out2", stored_size=64, encoding="png", name="small"
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


def _wait_for_parts(proc: subprocess.Popen, parts: Path, count: int) -> None:
    """Waits until a running conversion has finished `count` shards (it must still run)."""
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.json"))) < count:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)


@pytest.mark.slow
def test_resume_after_kill_skips_finished_shards_and_never_duplicates(synth_small, tmp_path):
    out = tmp_path / "out"
    args = ["--nih_root", str(synth_small), "--out_dir", str(out), "--name", "resume",
            "--stored_size", "64", "--shard_mb", "0.01", "--workers", "1"]  # fmt: skip
    proc = _run_convert(args)
    parts = out / "resume" / conversion.PARTS
    _wait_for_parts(proc, parts, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.tfrecord.json")}
    plan = json.loads((out / "resume" / conversion.PLAN).read_text())
    total_shards = sum(len(s) for s in plan["shards"].values())
    assert 2 <= len(finished) < total_shards, "the kill must land mid-conversion"
    assert not (out / "resume" / MANIFEST).exists()
    proc = _run_convert(args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    for name, mtime in finished.items():
        assert (parts / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    records = _records(out / "resume")  # asserts no image is stored twice
    assert len(records) == 60
    # the same bytes as a conversion that was never interrupted
    fresh = ConvertConfig(root=str(synth_small), out_dir=str(tmp_path / "fresh"),
                          name="resume", stored_size=64, shard_mb=0.01, workers=1)  # fmt: skip
    want = conversion.convert(fresh, progress=False).to_dict()
    got = json.loads((out / "resume" / MANIFEST).read_text())
    assert got["fingerprint"] == want["fingerprint"] and got["splits"] == want["splits"]
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
    problems = verification.verify(dataset, progress=False)
    assert any("sha256 differs" in p and shard.name in p for p in problems)
    shard.unlink()
    assert any(p.endswith("missing") for p in verification.verify(dataset, progress=False))


def test_undecodable_image_stops_with_list_then_skip_bad_lists_it(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    victim = sorted((root / "images").glob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "out"), stored_size=64)
    with pytest.raises(conversion.ConversionError, match=victim.name):
        conversion.convert(config, progress=False)
    dataset = tmp_path / "out" / config.dataset_name("nih")
    report = pd.read_csv(dataset / conversion.BAD_REPORT)
    assert report["image"].tolist() == [victim.name]
    assert not (dataset / MANIFEST).exists()
    assert not list(dataset.glob("*.tmp"))
    config.skip_bad = True
    manifest = conversion.convert(config, progress=False)
    assert [b["image"] for b in manifest.skipped_images] == [victim.name]
    assert manifest.images == 59
    assert victim.name not in _records(dataset)


def test_changed_settings_on_an_existing_conversion_are_refused(synth_small, tmp_path):
    convert_folder(synth_small, tmp_path, stored_size=64, name="same")
    with pytest.raises(conversion.ConversionError, match="split"):
        convert_folder(
            synth_small,
            tmp_path,
            stored_size=64,
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
    with pytest.raises(MetadataError, match="View Position"):
        conversion.convert(ConvertConfig(root=str(root), out_dir=str(tmp_path / "o")))
    lines = original.splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Mass|Pneumonitis", 1)
    entry.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Pneumonitis") as info:
        conversion.convert(ConvertConfig(root=str(root), out_dir=str(tmp_path / "o")))
    assert "Data_Entry_2017.csv" in str(info.value)


def test_split_list_naming_unknown_images_and_patient_overlap(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    test_list = root / "test_list.txt"
    test_list.write_text(test_list.read_text() + "99999999_000.png\n")
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "o"), stored_size=64)
    with pytest.raises(conversion.ConversionError, match=r"test_list.txt.*99999999_000.png"):
        conversion.convert(config, progress=False)
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
        root=str(root),
        out_dir=str(tmp_path / "o"),
        stored_size=64,
        name="user",
        split=SplitConfig(strategy="file", split_file=str(split_file)),
    )
    from cxr_tf.data.splits import PatientOverlapError

    with pytest.raises(PatientOverlapError, match=str(patient)) as info:
        conversion.convert(config, progress=False)
    assert info.value.patients == [patient]
    assert not list((tmp_path / "o" / "user").glob("*.tfrecord"))


def test_cli_help_and_verify(small_dataset, capsys):
    with pytest.raises(SystemExit) as info:
        convert.main(["--help"])
    assert info.value.code == 0
    assert "--present_only" in capsys.readouterr().out
    assert convert.main(["--verify", str(small_dataset), "--quiet"]) == 0


# --- datasets you can trust: change detection, stable bytes, box frame, order, errors -------


def _edit_csv_field(path: Path, image: str, column: int, value: str) -> None:
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(image + ","):
            fields = line.split(",")
            fields[column] = value
            lines[i] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def _part_times(dataset: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (dataset / conversion.PARTS).glob("*.json")}


def _shard_of(dataset: Path, image: str) -> str:
    plan = json.loads((dataset / conversion.PLAN).read_text())
    return next(
        s["file"] + ".json" for shards in plan["shards"].values() for s in shards
        if image in s["images"]
    )  # fmt: skip


def test_rerun_reconverts_shards_whose_labels_boxes_or_images_changed(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    config = ConvertConfig(
        root=str(root), out_dir=str(tmp_path / "out"), stored_size=64, shard_mb=0.02
    )
    conversion.convert(config, progress=False)
    dataset = tmp_path / "out" / config.dataset_name("nih")
    before = _part_times(dataset)
    # Test-list images: relabelling them moves no patient between train and validation.
    test_images = (root / "test_list.txt").read_text().split()
    relabelled = test_images[0]
    _edit_csv_field(root / "Data_Entry_2017.csv", relabelled, 1, "Hernia")
    boxed = pd.read_csv(root / "BBox_List_2017.csv")["Image Index"].iloc[0]
    box_lines = (root / "BBox_List_2017.csv").read_text().splitlines()
    first = box_lines[1].split(",")
    first[2] = str(float(first[2]) + 10.0)  # move the first box 10 px right (1024 frame)
    box_lines[1] = ",".join(first)
    (root / "BBox_List_2017.csv").write_text("\n".join(box_lines) + "\n")
    repainted = test_images[-1]
    image = root / "images" / repainted
    pixels = np.array(__import__("PIL.Image", fromlist=["Image"]).open(image))
    __import__("PIL.Image", fromlist=["Image"]).fromarray(255 - pixels).save(image)

    manifest = conversion.convert(config, progress=False)
    after = _part_times(dataset)
    changed = {_shard_of(dataset, n) for n in (relabelled, boxed, repainted)}
    assert {k for k in before if after[k] != before[k]} == changed
    records = _records(dataset)
    assert records[relabelled]["labels"].tolist() == [int(f == "Hernia") for f in FINDINGS] + [
        3
    ] * len(EXTRA_FINDINGS)
    xs = schema.boxes_xywh(records[boxed]["boxes"]["bbox"], 64)[:, 0]
    assert np.isclose(xs, (float(first[2])) * 64 / 1024, atol=1e-3).any()
    np.testing.assert_array_equal(
        records[repainted]["image"], pp.bytes_to_stored(image.read_bytes(), 64).numpy()
    )
    assert manifest.splits["test"].positives["Hernia"] == sum(
        int(r["labels"][FINDINGS.index("Hernia")]) for r in records.values() if r["split"] == "test"
    )
    assert verification.verify(dataset, progress=False) == []


def test_a_split_list_change_is_refused_naming_the_file_and_the_moved_images(
    synth_small, tmp_path, capsys
):
    root = _copy(synth_small, tmp_path / "nih")
    args = ["--nih_root", str(root), "--out_dir", str(tmp_path / "out"), "--stored_size", "64",
            "--quiet"]  # fmt: skip
    assert convert.main(args) == 0
    dataset = tmp_path / "out" / "nih_64_raw"
    listing = sorted(p.name for p in dataset.rglob("*"))
    df = nih.read_data_entry(root / "Data_Entry_2017.csv")
    test = (root / "test_list.txt").read_text().split()
    patient = int(df.set_index("image_index").loc[test[0], "patient_id"])
    moving = sorted(df["image_index"][df["patient_id"] == patient])  # a whole patient
    (root / "test_list.txt").write_text("\n".join(n for n in test if n not in moving) + "\n")
    with open(root / "train_val_list.txt", "a") as handle:
        handle.write("\n".join(moving) + "\n")
    capsys.readouterr()
    assert convert.main(args) == 2
    err = capsys.readouterr().err
    assert "test_list.txt" in err and "train_val_list.txt" in err
    assert f"{moving[0]}: test/" in err and "Choose another --name" in err
    assert sorted(p.name for p in dataset.rglob("*")) == listing  # nothing written


def test_verify_catches_a_manifest_that_disagrees_with_its_records(small_dataset, tmp_path):
    dataset = _copy(small_dataset, tmp_path / "copy")
    path = dataset / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["positives"]["Mass"] += 1
    manifest["splits"]["test"]["patients"] -= 1
    path.write_text(json.dumps(manifest))
    problems = verification.verify(dataset, progress=False)
    assert any("split train positives.Mass" in p for p in problems)
    assert any("split test patients" in p for p in problems)
    manifest = json.loads((small_dataset / MANIFEST).read_text())
    manifest["fingerprint"] = "0" * 16
    path.write_text(json.dumps(manifest))
    assert [p for p in verification.verify(dataset, progress=False) if "fingerprint" in p]


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_and_fingerprint(synth_small, tmp_path):
    outs = []
    for run in ("a", "b"):
        proc = _run_convert(["--nih_root", str(synth_small), "--out_dir", str(tmp_path / run),
                             "--stored_size", "64", "--shard_mb", "0.05"])  # fmt: skip
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        outs.append(stdout)
    prints = [line.split("fingerprint ")[-1] for out in outs for line in out.splitlines()
              if "fingerprint" in line]  # fmt: skip
    assert len(prints) == 2 and prints[0] == prints[1]
    a, b = tmp_path / "a" / "nih_64_raw", tmp_path / "b" / "nih_64_raw"
    shards = sorted(p.name for p in a.glob("*.tfrecord"))
    assert len(shards) > 3 and shards == sorted(p.name for p in b.glob("*.tfrecord"))
    for name in shards:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _downsampled_nih(root: Path, nih: Path, names: list[str], size: int) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    for name in ("Data_Entry_2017_v2020.csv.gz", "BBox_List_2017.csv", "train_val_list.txt.gz",
                 "test_list.txt.gz"):  # fmt: skip
        shutil.copy(nih / name, root / name)
    for name in names:
        image = Image.open(nih / "images" / name)
        if size != image.size[0]:
            image = image.resize((size, size), Image.Resampling.BOX)
        image.save(root / "images" / name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("size", [256, 300])
def test_boxes_stay_in_the_nih_frame_for_downsampled_real_images(tmp_path, size):
    real = nih_path()
    boxes = nih.read_boxes(real / "BBox_List_2017.csv")
    samples = sorted(p.name for p in (real / "images").glob("*.png"))
    boxed = sorted(set(samples) & set(boxes["image_index"]))
    assert len(boxed) == 6
    datasets = {}
    for side in (1024, size):
        root = _downsampled_nih(tmp_path / f"nih{side}", real, boxed, side)
        config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "out"),
                               name=f"d{side}", stored_size=64, present_only=True)  # fmt: skip
        manifest = conversion.convert(config, progress=False)
        assert manifest.source.not_1024_images == (0 if side == 1024 else 6)
        assert manifest.source.image_sizes == {f"{side}x{side}": 6}
        assert manifest.source.boxes == len(boxes[boxes["image_index"].isin(boxed)])
        datasets[side] = _records(tmp_path / "out" / f"d{side}")
    for name in boxed:
        want = boxes[boxes["image_index"] == name][["x", "y", "w", "h"]].to_numpy() / 1024
        for side, records in datasets.items():
            got = schema.boxes_xywh(records[name]["boxes"]["bbox"], 1)
            order = np.lexsort(got.T[::-1])
            np.testing.assert_allclose(
                got[order], want[np.lexsort(want.T[::-1])], atol=1e-6, err_msg=f"{name} {side}"
            )
            assert (got[:, 2] > 0.01).all()  # never collapsed to a point


def test_a_box_outside_the_1024_frame_names_its_row(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Mass,10,10,50,50\n"
        "00000002_000.png,Mass,1000,10,50,50\n"
    )
    with pytest.raises(MetadataError, match=r"line 3.*outside NIH's 1024x1024"):
        nih.read_boxes(path)


def test_shards_are_seeded_random_samples_of_each_split():
    names = [f"{p:08d}_{f:03d}.png" for p in range(400) for f in range(5)]  # sorted = patients
    config = ConvertConfig(root="x", stored_size=64, encoding="raw", shard_mb=0.2)
    plan = conversion.plan_shards({"train": names, "test": names[:100]}, config)
    shards = plan["train"]
    assert len(shards) >= 4
    flat = [n for s in shards for n in s["images"]]
    assert sorted(flat) == names  # every image once
    for shard in shards:
        patients = {n[:8] for n in shard["images"]}
        # a random sample of 400 patients, not a run of a few neighbours
        assert len(patients) > 0.6 * len(shard["images"])
        positions = sorted(names.index(n) for n in shard["images"])
        assert positions[-1] - positions[0] > 0.8 * len(names)
    assert conversion.plan_shards({"train": names}, config)["train"] == shards
    config.shard_seed = 1
    assert conversion.plan_shards({"train": names}, config)["train"] != shards


def test_manifest_records_the_shard_order_seed(small_dataset):
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert manifest["shard_order"]["seed"] == 0
    assert manifest["conversion"]["shard_seed"] == 0


def _bad_input_case(case: str, root: Path, tmp_path: Path) -> tuple[list[str], str]:
    """(extra CLI args, text the error must contain) for one bad input."""
    out = tmp_path / "out"
    base = ["--nih_root", str(root), "--out_dir", str(out), "--stored_size", "64", "--quiet"]
    test = (root / "test_list.txt").read_text().split()
    if case == "empty_csv":
        (root / "Data_Entry_2017.csv").write_bytes(b"")
        return base, "Data_Entry_2017.csv: empty file"
    if case == "on_both_lists":
        with open(root / "train_val_list.txt", "a") as handle:
            handle.write(test[0] + "\n")
        return base, test[0]
    if case == "on_neither_list":
        (root / "test_list.txt").write_text("\n".join(test[1:]) + "\n")
        return base, f"not assigned by the official lists: {test[0]}"
    if case == "no_nih_root":
        return ["--out_dir", str(out), "--quiet"], "root: give the dataset folder"
    if case == "nih_root_missing":
        return ["--nih_root", str(tmp_path / "nope"), "--quiet"], "nope is not a folder"
    if case == "split_file_missing":
        return [*base, "--split.strategy", "file", "--split.split_file", "no.csv"], "no.csv"
    if case == "out_dir_is_a_file":
        out.write_text("x")
        return base, f"out_dir: {out} exists and is not a folder"
    if case == "age_over_120":
        _edit_csv_field(root / "Data_Entry_2017.csv", test[0], 4, "150Y")
        return base, "age outside 0-120 years"
    if case == "name_leaves_out_dir":
        return [*base, "--name", "../../x"], "name: '../../x' must be a plain folder name"
    if case == "corrupt_manifest":
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "manifest.json").write_text('{"splits": [')
        return ["--verify", str(tmp_path / "ds"), "--quiet"], "not a cxr_tf manifest"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["empty_csv", "on_both_lists", "on_neither_list", "no_nih_root", "nih_root_missing",
     "split_file_missing", "out_dir_is_a_file", "age_over_120", "name_leaves_out_dir",
     "corrupt_manifest"],
)  # fmt: skip
def test_bad_inputs_are_one_clear_message_and_exit_2(synth_small, tmp_path, capsys, case):
    root = _copy(synth_small, tmp_path / "nih")
    args, expected = _bad_input_case(case, root, tmp_path)
    try:
        code = convert.main(args)
    except SystemExit as exit_:  # a bad value in the config itself, refused by the parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err and err.count("\n") <= 2
    assert not (tmp_path / "x").exists()


def test_a_failed_write_names_the_file_and_keeps_finished_shards(synth_small, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--nih_root", str(synth_small), "--out_dir", str(out), "--stored_size", "64",
            "--shard_mb", "0.05", "--workers", "1", "--quiet"]  # fmt: skip
    plan = conversion.plan_shards(
        conversion._select_splits(  # the same plan the command will make
            ConvertConfig(root=str(synth_small)),
            registry.read_catalog("nih", synth_small),
            None,
        )[0],
        ConvertConfig(root=str(synth_small), stored_size=64, shard_mb=0.05),
    )
    blocked = plan["train"][1]["file"]
    (out / "nih_64_raw" / blocked).mkdir(parents=True)  # the rename onto it fails
    assert convert.main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'nih_64_raw' / blocked}" in err and "Traceback" not in err
    assert (out / "nih_64_raw" / conversion.PARTS / (plan["train"][0]["file"] + ".json")).exists()
    (out / "nih_64_raw" / blocked).rmdir()
    assert convert.main(args) == 0
    assert len(_records(out / "nih_64_raw")) == 60


@pytest.mark.slow
def test_ctrl_c_exits_130_with_a_resume_hint_and_the_rerun_finishes(synth_small, tmp_path):
    out = tmp_path / "out"
    args = ["--nih_root", str(synth_small), "--out_dir", str(out), "--stored_size", "64",
            "--shard_mb", "0.01", "--workers", "1"]  # fmt: skip
    proc = _run_convert(args)
    _wait_for_parts(proc, out / "nih_64_raw" / conversion.PARTS, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    proc = _run_convert(args)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert len(_records(out / "nih_64_raw")) == 60


def test_bad_image_reason_is_tensorflows_and_skip_bad_can_be_undone(synth_small, tmp_path):
    root = _copy(synth_small, tmp_path / "nih")
    victim = sorted((root / "images").glob("*.png"))[7]
    original = victim.read_bytes()
    victim.write_bytes(b"not a png at all")
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "out"), stored_size=64)
    with pytest.raises(conversion.ConversionError, match="Unknown image file format"):
        conversion.convert(config, progress=False)
    dataset = tmp_path / "out" / config.dataset_name("nih")
    report = pd.read_csv(dataset / conversion.BAD_REPORT)
    assert report["error"].iloc[0].startswith("Unknown image file format")
    assert "Graph execution" not in report["error"].iloc[0]
    config.skip_bad = True
    assert len(conversion.convert(config, progress=False).skipped_images) == 1
    victim.write_bytes(original)  # fixed: a rerun without the flag converts it
    config.skip_bad = False
    manifest = conversion.convert(config, progress=False)
    assert manifest.skipped_images == []
    assert victim.name in _records(dataset)
    assert not (dataset / conversion.BAD_REPORT).exists()


def test_a_refused_rerun_writes_nothing_into_the_existing_dataset(synth_small, tmp_path, capsys):
    root = _copy(synth_small, tmp_path / "nih")
    out = tmp_path / "out"
    base = ["--nih_root", str(root), "--out_dir", str(out), "--name", "ds", "--quiet"]
    assert convert.main([*base, "--stored_size", "64"]) == 0
    dataset = out / "ds"
    listing = {p.name: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    other = _copy(root, tmp_path / "other")
    (other / "images" / sorted(p.name for p in (other / "images").iterdir())[0]).unlink()
    moved = ["--nih_root", str(other), "--out_dir", str(out), "--name", "ds", "--quiet"]
    capsys.readouterr()
    assert convert.main([*moved, "--stored_size", "128", "--present_only"]) == 2
    err = capsys.readouterr().err
    assert "stored_size 64 -> 128" in err
    assert f"root '{root.resolve()}' -> '{other.resolve()}'" in err
    assert "name " not in err
    assert convert.main([*moved, "--stored_size", "64"]) == 2  # absent image, report elsewhere
    assert "not under" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in dataset.rglob("*")} == listing


def test_an_unsafe_archive_member_is_reported_as_such(synth_small, tmp_path, capsys):
    src = _copy(synth_small, tmp_path / "src")
    victim = sorted((src / "images").glob("*.png"))[0]
    data = victim.read_bytes()
    victim.unlink()
    root = _tar_layout(src, tmp_path / "nih_tar", {f"../{victim.name}": data})
    assert convert.main(["--nih_root", str(root), "--out_dir", str(tmp_path / "o"),
                         "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"rejected as unsafe: ../{victim.name}" in err


def test_skip_bad_keeps_the_dataset_name(synth_small, tmp_path):
    # The loop over skipped images once reused `name`: the manifest, the TFDS builder and
    # the printed path took the last skipped image's name instead of the dataset's.
    root = _copy(synth_small, tmp_path / "nih")
    victim = sorted((root / "images").glob("*.png"))[3]
    victim.write_bytes(b"not a png at all")
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "out"), stored_size=64,
                           name="named", skip_bad=True)  # fmt: skip
    manifest = conversion.convert(config, progress=False)
    assert [b["image"] for b in manifest.skipped_images] == [victim.name]
    dataset = tmp_path / "out" / "named"
    assert manifest.dataset == "named"
    assert Manifest.load(dataset).dataset == "named"
    assert json.loads((dataset / "dataset_info.json").read_text())["name"] == "named"


def _class_folder(root: Path, count: int) -> Path:
    from PIL import Image

    for i in range(count):  # one class, one patient per image: a single stratum
        path = root / "No Finding" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path)
    return root


def test_an_empty_test_split_is_noted_and_an_empty_train_split_refused(tmp_path, capsys):
    root = _class_folder(tmp_path / "tiny", 4)
    out = tmp_path / "out"
    base = ["--root", str(root), "--source", "folders", "--out_dir", str(out),
            "--stored_size", "64", "--split.strategy", "random"]  # fmt: skip
    # 4 patients at 0.5/0.5/0: test gets none
    assert convert.main([*base, "--name", "no_test", "--split.fractions", "0.5", "0.5", "0"]) == 0
    err = capsys.readouterr().err
    assert "note: empty split: test has no image (4 patient(s)" in err
    manifest = Manifest.load(out / "no_test")
    assert [n for n in manifest.source.notes if n.startswith("empty split: test")]
    assert "test" not in manifest.splits
    # 2 patients at the default 0.7/0.1/0.2: validation and test take one each, train none
    (root / "No Finding" / "2.png").unlink()
    (root / "No Finding" / "3.png").unlink()
    assert convert.main([*base, "--name", "no_train"]) == 2
    err = capsys.readouterr().err
    assert "leaves train empty" in err and "--split.fractions" in err
    assert "2 patient(s)" in err
    assert not (out / "no_train").exists()
