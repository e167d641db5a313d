"""`python -m cxr_tf.bench`: typed configs for every benchmark, and `bench model` on a
non-TensorFlow Keras backend in a process where TensorFlow cannot be imported."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
from helpers import PROJECT

from cxr_tf import bench, cli
from cxr_tf.benchmarks.model import step_figures
from cxr_tf.benchmarks.training import bench_fit
from cxr_tf.config import (
    BenchConvertConfig,
    BenchFitConfig,
    BenchModelConfig,
    BenchReadConfig,
    BenchServeConfig,
)


def test_each_benchmark_parses_its_old_flags_into_its_config():
    what, config, args = bench.parse(
        ["convert", "--n", "5", "--encodings", "raw", "--workers", "1"]
    )
    assert what == "convert"
    assert config == BenchConvertConfig(n=5, encodings=("raw",), workers=1)
    assert args.json is None
    _, config, _ = bench.parse(["read", "data/x", "--batch", "8"])
    assert config == BenchReadConfig(dataset="data/x", batch=8)
    _, config, args = bench.parse(["fit", "--dataset", "d", "--steps", "3", "--json", "f.json"])
    assert (config.dataset, config.steps, args.json) == ("d", 3, "f.json")
    assert config.backbones == ("tiny", "densenet121")
    assert isinstance(config, BenchFitConfig)
    _, config, _ = bench.parse(
        ["serve", "--run_dir", "r", "--batches", "1", "4", "--model", "last"]
    )
    assert config == BenchServeConfig(run_dir="r", batches=(1, 4), model="last")
    _, config, _ = bench.parse(["pipeline", "--cache"])
    assert config.cache is True and config.encodings == ("png", "raw")
    _, config, _ = bench.parse(["shards", "--shard_mb", "2.5"])
    assert config.shard_mb == 2.5
    _, config, _ = bench.parse(
        ["model", "--batch_sizes", "64", "128", "--precision", "mixed_bfloat16", "--peer", "timm"]
    )
    assert config == BenchModelConfig(
        batch_sizes=(64, 128), precision=("mixed_bfloat16",), peer="timm"
    )


def test_every_benchmark_flag_comes_from_a_documented_config_field():
    for what, (cls, _, _) in bench.COMMANDS.items():
        docs = cli.field_docs(cls)
        help_text = bench.parser_for(what).format_help()
        for field in dataclasses.fields(cls):
            assert field.name in docs, f"{what}: {field.name} has no comment"
            assert f"--{field.name}" in help_text, f"{what}: no --{field.name}"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["read"], "dataset: required"),
        (["convert", "--encodings", "jpg"], "encodings: one or more of png, raw"),
        (["model", "--precision", "float64"], "precision: one or more of float32"),
        (["model", "--jit", "maybe"], "jit: one or more of on, off"),
        (["model", "--batch_sizes", "0"], "batch_sizes: sizes >= 1"),
    ],
)
def test_bad_values_exit_with_one_line_naming_the_field(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" not in err


def test_step_figures_take_the_median_window():
    figures = step_figures([2.0, 1.0, 4.0], steps=4, batch=8)  # 0.5, 0.25, 1.0 s/step
    assert figures["ms_step"] == pytest.approx(500.0)
    assert figures["img_s"] == pytest.approx(16.0)
    assert figures["ms_step_windows"] == pytest.approx([500.0, 250.0, 1000.0])
    assert step_figures([1.0, 3.0], steps=1, batch=2)["ms_step"] == pytest.approx(2000.0)


# Run in a fresh interpreter: a finder that fails every `tensorflow*` (and `timm`) import
# and records the attempt goes first on sys.meta_path.
_NO_TF = """
import json, sys

attempts = []

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "timm"):
            attempts.append(name)
            raise ImportError(f"blocked: {name}", name=name)
        return None

sys.meta_path.insert(0, Block())
from cxr_tf import bench
code = bench.main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")
print(json.dumps({"code": code, "loaded": loaded, "tf_attempts": [
    a for a in attempts if a.startswith("tensorflow")]}))
"""


@pytest.mark.slow
def test_bench_model_runs_on_jax_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "model.json"
    argv = [
        "model", "--backbone", "tiny", "--batch_sizes", "4", "--input_size", "32",
        "--stored_size", "48", "--precision", "float32", "--jit", "on", "--warmup", "1",
        "--steps", "1", "--windows", "2", "--peer", "timm", "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TF, *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"code": 0, "loaded": [], "tf_attempts": []}
    assert "cxr_tf tiny" in proc.stdout and "peer timm skipped: timm" in proc.stdout

    figures = json.loads(out.read_text())
    assert figures["environment"]["keras_backend"] == "jax"
    assert figures["config"]["batch_sizes"] == [4]
    (row,) = figures["rows"]
    assert (row["model"], row["batch"], row["precision"], row["jit"]) == (
        "cxr_tf tiny", 4, "float32", "on",
    )  # fmt: skip
    # As fit builds it (augmentation on, the default), the step is jit-compiled.
    assert row["jit_effective"] is True and "jit_blocked_by" not in row
    for phase in ("train", "inference"):
        figures_of = row[phase]
        assert set(figures_of) == {"ms_step", "img_s", "ms_step_windows"}
        assert len(figures_of["ms_step_windows"]) == 2
        assert figures_of["ms_step"] > 0 and all(t > 0 for t in figures_of["ms_step_windows"])
        assert figures_of["img_s"] == pytest.approx(4 / (figures_of["ms_step"] / 1000))
    assert row["peak_memory_bytes"] is None  # JAX reports no memory statistics for CPUs
    assert figures["peer"] == {
        "skipped": "peer timm skipped: timm is not installed (it needs torch, timm)"
    }


@pytest.mark.slow
def test_bench_fit_times_cxr_tf_fit_against_a_plain_keras_loop(train_dataset, tmp_path):
    config = BenchFitConfig(
        dataset=str(train_dataset), backbones=("tiny",), steps=2, epochs=1, workdir=str(tmp_path)
    )
    result = bench_fit(config)["tiny"]
    for loop in ("cxr_tf", "plain"):
        short, long = result[loop]["seconds"]
        assert 0 < short and 0 < long
        assert result[loop]["per_epoch_s"] == pytest.approx((long - short) / 2)
    assert result["ratio"] == pytest.approx(
        result["cxr_tf"]["per_epoch_s"] / result["plain"]["per_epoch_s"]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fit-")]  # cleaned up


@pytest.mark.slow
def test_bench_convert_times_every_image_kind_against_its_bare_decoding(tmp_path, capsys):
    """`bench convert` on small NIH-like PNGs and three real-size imitations: every rate and
    ratio is a positive number, each kind converts to one fingerprint whatever the thread
    or process count, a JPEG kind is also timed decoded at full size (and was reduced to
    1/4 by default), two processes are timed inside the workers, and the printed lines say
    what was timed."""
    from cxr_tf.benchmarks.data import bench_convert

    kinds = ("png_1024", "jpeg_2800", "dicom_12bit")
    config = BenchConvertConfig(n=6, encodings=("raw",), workers=2, workdir=str(tmp_path),
                                real_size=kinds, real_n=8, processes=(1,))  # fmt: skip
    results = bench_convert(config)
    assert results["raw"]["convert_img_s"] > 0 and results["raw"]["ratio_to_bare_decode"] > 0
    for kind in kinds:
        figures = results[kind]
        assert figures["files"] == 8 and figures["same_fingerprint"], kind
        for key in ("bare_decode_img_s_1_thread", "convert_img_s_t1", "convert_img_s_t2",
                    "ratio_to_bare_decode_t1", "ratio_to_bare_decode_t2"):  # fmt: skip
            assert 0 < figures[key] < math.inf, (kind, key)
    jpeg = results["jpeg_2800"]
    assert jpeg["pixel_mappings"] == {"jpeg, decoded at 1/4": 8}
    assert 0 < jpeg["convert_img_s_t1_full_decode"] < math.inf
    assert "convert_img_s_t1_full_decode" not in results["png_1024"]
    printed = capsys.readouterr().out
    assert "dicom_12bit (8 x 2500x3000) -> 256px raw: 1 core" in printed
    assert "decoded at full size 1 core" in printed and "reduced: 8 jpeg, decoded at 1/4" in printed
    two = bench_convert(dataclasses.replace(config, real_size=("png_1024",), processes=(2,)))
    figures = two["png_1024"]
    assert figures["same_fingerprint"]
    for key in ("convert_img_s_p2", "in_workers_img_s_p2", "scaling_p2", "startup_s_p2"):
        assert 0 < figures[key] < math.inf, key
    # the workers' own span leaves out their start-up: the rate inside them is the higher
    assert figures["in_workers_img_s_p2"] > figures["convert_img_s_p2"]
    assert "inside the workers" in capsys.readouterr().out
    rounds = bench_convert(dataclasses.replace(config, real_size=("png_1024",), repeats=3))
    rounds = rounds["png_1024"]
    assert rounds["repeats"] == 3 and rounds["same_fingerprint"]
    for key in ("convert_img_s_t1", "ratio_to_bare_decode_t1", "bare_decode_img_s"):
        assert sorted(rounds[f"{key}_rounds"])[1] == rounds[key], key  # the median
    assert "median of 3 rounds" in capsys.readouterr().out


def test_one_core_holds_every_thread_to_one_cpu_and_lets_go():
    import os
    import threading
    from pathlib import Path

    from cxr_tf.benchmarks.data import one_core

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    before = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    with one_core() as pinned:
        assert pinned
        tasks = {int(t.name) for t in Path("/proc/self/task").iterdir()}
        assert all(os.sched_getaffinity(t) == {max(before)} for t in tasks)
        started = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        started.start()
        started.join()
    assert seen == [{max(before)}]  # threads started inside are held too
    assert os.sched_getaffinity(0) == before
