"""Conversion at scale: whole shards written by worker processes (`--processes`) give the
same bytes as one process, and the conversion benchmark's real-size imitations."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import convert_folder

from cxr_tf.config import ConfigError, ConvertConfig
from cxr_tf.data import conversion
from cxr_tf.data.manifest import MANIFEST


@pytest.mark.slow
def test_two_processes_write_the_bytes_of_one(synth_small, tmp_path):
    settings = {"stored_size": 64, "shard_mb": 0.05, "workers": 1, "name": "d"}
    one = convert_folder(synth_small, tmp_path / "one", processes=1, **settings)
    two = convert_folder(synth_small, tmp_path / "two", processes=2, **settings)
    shards = sorted(p.name for p in one.glob("*.tfrecord"))
    assert len(shards) > 3 and shards == sorted(p.name for p in two.glob("*.tfrecord"))
    for name in shards:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    want, got = (json.loads((d / MANIFEST).read_text()) for d in (one, two))
    assert got["fingerprint"] == want["fingerprint"] and got["splits"] == want["splits"]
    assert got["source"]["pixel_mappings"] == want["source"]["pixel_mappings"]
    # the shards' own span leaves the workers' start-up (importing TensorFlow) out
    for timing in (want["timing"], got["timing"]):
        assert 0 < timing["shards_s"] <= timing["write_s"]
    assert got["timing"]["write_s"] - got["timing"]["shards_s"] > 1.0
    spans = [json.loads(p.read_text())["written"] for p in (two / conversion.PARTS).iterdir()]
    assert all(began <= ended for began, ended in spans)
    span = max(e for _, e in spans) - min(b for b, _ in spans)
    assert got["timing"]["shards_s"] == pytest.approx(span, abs=0.002)
    # the process count may change on resume: nothing is rewritten
    parts = {p.name: p.stat().st_mtime_ns for p in (two / conversion.PARTS).iterdir()}
    again = convert_folder(synth_small, tmp_path / "two", processes=1, **settings)
    assert {p.name: p.stat().st_mtime_ns for p in (two / conversion.PARTS).iterdir()} == parts
    assert json.loads((again / MANIFEST).read_text())["timing"]["shards_s"] == 0.0


@pytest.mark.slow
def test_an_undecodable_image_in_a_worker_process_is_named_then_skipped(synth_small, tmp_path):
    import shutil

    import pandas as pd

    root = tmp_path / "nih"
    shutil.copytree(synth_small, root)
    victim = sorted((root / "images").glob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    config = ConvertConfig(root=str(root), out_dir=str(tmp_path / "two"), stored_size=64,
                           shard_mb=0.05, workers=1, processes=2)  # fmt: skip
    with pytest.raises(conversion.ConversionError, match=victim.name):
        conversion.convert(config, progress=False)
    dataset = tmp_path / "two" / config.dataset_name("nih")
    report = pd.read_csv(dataset / conversion.BAD_REPORT)
    assert report["image"].tolist() == [victim.name]
    assert "PNG" in report["error"][0]  # the decoder's own reason came back from the worker
    assert not (dataset / MANIFEST).exists() and not list(dataset.glob("*.tmp"))
    config.skip_bad = True
    two = conversion.convert(config, progress=False)
    assert [b["image"] for b in two.skipped_images] == [victim.name] and two.images == 59
    config.out_dir, config.processes = str(tmp_path / "one"), 1
    assert conversion.convert(config, progress=False).fingerprint == two.fingerprint


def test_a_negative_process_count_is_refused():
    with pytest.raises(ConfigError, match="processes"):
        ConvertConfig(root="x", processes=-1)


def _row_filters(png: bytes, width: int) -> list[int]:
    """The filter byte of each row of an 8-bit grayscale PNG."""
    import zlib

    pos, body = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        if png[pos + 4 : pos + 8] == b"IDAT":
            body += png[pos + 8 : pos + 8 + length]
        pos += length + 12
    rows = zlib.decompress(body)
    return list(rows[:: width + 1])


def test_paeth_png_decodes_to_its_pixels():
    from PIL import Image

    from cxr_tf.synthetic.common import paeth_png

    pixels = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    pixels[:, :10] = 0  # flat and noisy parts
    data = paeth_png(pixels, chunk=100)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert set(_row_filters(data, 53)) == {4} and data.count(b"IDAT") > 1


def test_real_size_imitations_have_the_releases_sizes_and_bit_depths(tmp_path):
    import pydicom
    from PIL import Image

    from cxr_tf.benchmarks.data import REAL_SIZE, _bare_decode_real, real_size_folder
    from cxr_tf.sources import dicom

    for kind, (width, height, *_) in REAL_SIZE.items():
        if kind == "png_nih":  # copies of real files: test_real_nih_kind_copies_the_sample
            continue
        root = real_size_folder(tmp_path / kind, kind, n=4 if kind == "dicom_12bit" else 2, seed=0)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        assert {p.parent.name for p in files} == {"normal", "effusion"}, kind
        for path in files:
            data = path.read_bytes()
            assert _bare_decode_real(path) == height, path
            if kind == "dicom_12bit":
                ds = pydicom.dcmread(path)
                assert (ds.Columns, ds.Rows, ds.BitsStored) == (width, height, 12)
                assert dicom.is_dicom(data)
                continue
            image = Image.open(path)
            assert image.size == (width, height), path
            eight_bit = kind.startswith("jpeg") or kind == "png_1024"
            assert image.mode == ("L" if eight_bit else "I;16"), path
            pixels = np.asarray(image, np.float64)
            assert pixels.std() > (2.0 if image.mode == "L" else 2.0 * 257), "has texture"
            # file sizes near the releases' averages (MIMIC-CXR-JPG 1.51 MB, CheXpert
            # 1.96 MB, NIH 401 KB), which set how long their decoding takes
            low, high = {"jpeg_3k": (1.3e6, 1.9e6), "jpeg_2800": (1.5e6, 2.2e6),
                         "png_1024": (3.3e5, 5e5)}.get(kind, (0, 1e9))  # fmt: skip
            assert low < len(data) < high, (kind, len(data))
            if kind == "png_1024":  # every row Paeth-filtered (NIH's: Average and Paeth)
                assert set(_row_filters(data, width)) == {4}
        if kind == "dicom_12bit":  # a quarter RLE Lossless
            syntaxes = [str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in files]
            assert syntaxes.count(pydicom.uid.RLELossless) == 1
    # reused while n and seed are the same
    stamp = (tmp_path / "png_1024" / ".bench_synth.json").stat().st_mtime_ns
    real_size_folder(tmp_path / "png_1024", "png_1024", n=2, seed=0)
    assert (tmp_path / "png_1024" / ".bench_synth.json").stat().st_mtime_ns == stamp


def test_real_nih_kind_copies_the_sample(tmp_path):
    from helpers import nih_path

    from cxr_tf.benchmarks.data import real_size_folder
    from cxr_tf.config import ConfigError

    images = nih_path() / "images"
    root = real_size_folder(tmp_path / "nih", "png_nih", n=4, seed=0, nih_images=str(images))
    copies = sorted(p for p in root.rglob("*.png"))
    firsts = sorted(images.glob("*.png"))[:4]
    assert sorted(p.read_bytes() for p in copies) == sorted(p.read_bytes() for p in firsts)
    more = real_size_folder(tmp_path / "all", "png_nih", n=100, seed=0, nih_images=str(images))
    copies = sorted(more.rglob("*.png"), key=lambda p: p.name)
    assert len(copies) == 100  # all 96, then the first 4 again
    assert len({p.read_bytes() for p in copies}) == 96
    assert copies[96].read_bytes() == copies[0].read_bytes()
    with pytest.raises(ConfigError, match="png_nih needs 2 or more real NIH PNGs.*holds 0"):
        real_size_folder(tmp_path / "empty", "png_nih", n=4, seed=0, nih_images=str(tmp_path))
    with pytest.raises(ConfigError, match="--nih_images is not set"):
        real_size_folder(tmp_path / "none", "png_nih", n=4, seed=0)


def test_records_come_in_plan_order_and_an_image_never_read_is_an_error():
    class Count:
        n = 0

        def update(self, n: int = 1) -> None:
            self.n += n

    progress = Count()
    arrived = iter([("b", 2), ("a", 1), ("d", 4)])  # an archive's own order, "c" missing
    got = list(conversion._in_plan_order(arrived, ["a", "b", "c", "d"], progress))
    assert [name for name, _ in got] == ["a", "b", "c", "d"] and progress.n == 3
    assert (got[0][1], got[1][1], got[3][1]) == (1, 2, 4)
    assert isinstance(got[2][1], FileNotFoundError) and "c: not found" in str(got[2][1])


def _spawned_workers(parent: int) -> list[int]:
    """PIDs of the multiprocessing workers `parent` started (not its resource tracker)."""
    from pathlib import Path

    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_a_killed_worker_process_ends_with_one_line_and_the_rerun_resumes(synth_small, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import PROJECT

    out = tmp_path / "out"
    args = [sys.executable, "-m", "cxr_tf.convert", "--quiet", "--root", str(synth_small),
            "--out_dir", str(out), "--name", "killed", "--stored_size", "64",
            "--shard_mb", "0.01", "--processes", "2"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    parts = out / "killed" / conversion.PARTS
    deadline = time.time() + 180
    while time.time() < deadline and not list(parts.glob("*.json")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    workers = _spawned_workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert "a conversion worker process stopped before finishing its shard" in stderr
    assert "rerun the same command to resume" in stderr
    kept = len(list(parts.glob("*.json")))
    assert kept >= 1 and not (out / "killed" / MANIFEST).exists()
    rerun = subprocess.run(args, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    fresh = ConvertConfig(root=str(synth_small), out_dir=str(tmp_path / "fresh"),
                          name="killed", stored_size=64, shard_mb=0.01)  # fmt: skip
    want = conversion.convert(fresh, progress=False).fingerprint
    assert json.loads((out / "killed" / MANIFEST).read_text())["fingerprint"] == want
