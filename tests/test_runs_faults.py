"""Faults around runs: the folder lock, config values checked before anything is written,
Ctrl-C, damaged or vanished state and data, and continuing a run to more epochs.

Processes that must really run side by side (two `fit`s, Ctrl-C) are real subprocesses on
the small synthetic dataset with the tiny backbone; the rest runs in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PROJECT

from cxr_tf import export as export_cli
from cxr_tf import fit as fit_cli
from cxr_tf import testing
from cxr_tf import tune as tune_cli
from cxr_tf.config import ConfigError, ConvertConfig, RunConfig, from_dict
from cxr_tf.data import lock
from cxr_tf.runs import folder as runs

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _fit_args(dataset: Path, run_dir: Path, epochs: int, *extra: str) -> list[str]:
    """A tiny, fast run on `small_dataset`: 2 steps of 8 images per epoch."""
    return [
        "--data.dataset", str(dataset), "--data.batch_size", "8",
        "--model.backbone", "tiny", "--model.weights", "", "--model.input_size", "32",
        "--train.epochs", str(epochs), "--train.steps_per_epoch", "2",
        "--train.validation_steps", "1", "--train.run_dir", str(run_dir), "--quiet", *extra,
    ]  # fmt: skip


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / runs.STATE_FILE).read_text())


@contextlib.contextmanager
def _held_elsewhere(folder: Path, command: str = "fit") -> Iterator[int]:
    """`folder` held by another live process for the block; yields its PID."""
    code = (
        "import sys, time\n"
        "from cxr_tf.data import lock\n"
        f"with lock.hold(sys.argv[1], {command!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(300)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], cwd=PROJECT, env=ENV,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# --- config values: checked before anything is written ---------------------------------------


@pytest.mark.parametrize(
    "section, values, field",
    [
        ("data", {"dataset": "a,b", "weights": [float("inf"), 1]}, "data.weights"),
        ("data", {"dataset": "a,b", "weights": [float("nan"), 1]}, "data.weights"),
        ("data", {"dataset": "a,b", "weights": [1, 2, 3]}, "data.weights"),
        ("data", {"dataset": "a,a"}, "data.dataset"),
        ("data", {"dataset": "x/a,x/../x/a"}, "data.dataset"),
        ("train", {"warmup_epochs": -3}, "train.warmup_epochs"),
        ("train", {"warmup_epochs": float("inf")}, "train.warmup_epochs"),
        ("train", {"weight_decay": -5}, "train.weight_decay"),
        ("train", {"early_stopping_patience": -1}, "train.early_stopping_patience"),
        ("train", {"seed": -1}, "train.seed"),
        ("train", {"seed": 2**40}, "train.seed"),
        ("train", {"focal_gamma": -1}, "train.focal_gamma"),
        ("train", {"focal_alpha": 2}, "train.focal_alpha"),
        ("train", {"lr": float("inf")}, "train.lr"),
        ("train", {"finetune_lr": float("nan")}, "train.finetune_lr"),
        ("model", {"input_size": 100_000}, "model.input_size"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(section, values, field):
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {section: values})
    assert str(info.value).startswith(f"{field}:"), info.value


def test_values_in_range_still_pass():
    run = from_dict(
        RunConfig,
        {
            "data": {"dataset": "a,b", "weights": [0, 2]},
            "train": {"warmup_epochs": 0.5, "weight_decay": 0, "early_stopping_patience": 0,
                      "seed": 2**31 - 1, "focal_gamma": 0, "focal_alpha": 1},
        },
    )  # fmt: skip
    assert run.data.weights == (0.0, 2.0) and run.train.seed == 2**31 - 1


def test_infinite_weight_is_refused_at_once_not_trained_forever(tmp_path):
    """`--data.weights inf 1` used to pass the check and then train without end."""
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "cxr_tf.fit", "--data.dataset", f"{tmp_path}/a,{tmp_path}/b",
        "--data.weights", "inf", "1", "--model.backbone", "tiny", "--model.weights", "",
        "--train.run_dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=PROJECT, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m cxr_tf.fit: error: data.weights: finite, non-negative, not all zero, "
        "got [inf, 1.0]"
    ]
    assert not run_dir.exists()


def test_negative_focal_gamma_writes_no_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        fit_cli.main(_fit_args(tmp_path, run_dir, 1, "--train.loss", "focal",
                               "--train.focal_gamma", "-1"))  # fmt: skip
    assert info.value.code == 2
    assert "train.focal_gamma: must be >= 0, not -1.0" in capsys.readouterr().err
    assert not run_dir.exists()


# --- the lock ------------------------------------------------------------------------------


def test_lock_file_names_the_holder_and_goes_when_the_block_ends(tmp_path):
    folder = tmp_path / "run"
    with lock.hold(folder, "fit"):
        record = json.loads((folder / lock.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "fit"
        assert record["host"] == socket.gethostname() and record["started"]
        with lock.hold(folder, "fit"):  # the same process may hold it again (nested)
            pass
        assert (folder / lock.LOCK_FILE).exists()
        (folder / "work").write_text("x")
    assert not (folder / lock.LOCK_FILE).exists()
    assert (folder / "work").exists()  # a folder holding work stays
    with pytest.raises(RuntimeError), lock.hold(tmp_path / "failed", "fit"):
        raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()  # created, left empty: removed again


def test_a_live_holder_is_named_and_a_dead_one_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    with _held_elsewhere(folder) as pid:
        with pytest.raises(lock.FolderInUse) as info, lock.hold(folder, "fit"):
            pass
        assert f"{folder} is in use by fit (PID {pid} on {socket.gethostname()}" in str(info.value)
        assert lock.holder(folder)["pid"] == pid
    # killed without cleanup: its lock file stays, naming a PID that no longer runs
    assert json.loads((folder / lock.LOCK_FILE).read_text())["pid"] == pid
    assert lock.holder(folder) is None
    with lock.hold(folder, "fit"):
        assert json.loads((folder / lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"PID {pid} no longer runs); taking it over" in capsys.readouterr().err


def test_a_lock_from_another_host_says_which_file_to_delete(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"host": "elsewhere", "pid": 1, "command": "fit", "started": "then", "token": "t"}
    (folder / lock.LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(lock.FolderInUse) as info, lock.hold(folder, "fit"):
        pass
    assert str(info.value).endswith(f"if that process has ended, delete {folder / lock.LOCK_FILE}")


def test_a_file_as_the_folder_is_one_clear_line(tmp_path, small_dataset, capsys):
    """`--train.run_dir FILE` used to end in a bare `[Errno 17] File exists`."""
    path = tmp_path / "afile"
    path.write_text("not a folder")
    assert fit_cli.main(_fit_args(small_dataset, path, 1)) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"fit: error: train.run_dir: {path} is a file, not a folder"
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        with lock.hold(path, "fit"):
            pass


def test_tune_and_export_refuse_a_folder_another_process_holds(tmp_path, small_dataset, capsys):
    search = tmp_path / "tuning" / "s"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"train.lr": {"type": "choice", "values": [0.001]}}))
    args = [
        "--space", str(space), "--max_trials", "1", "--epochs", "1", "--name", "s",
        "--out_dir", str(tmp_path / "tuning"), *_fit_args(small_dataset, tmp_path / "r", 1),
    ]  # fmt: skip
    args.remove("--train.run_dir")
    args.remove(str(tmp_path / "r"))
    with _held_elsewhere(search, "tune") as pid:
        assert tune_cli.main(args) == 3
        assert f"{search} is in use by tune (PID {pid}" in capsys.readouterr().err
    run_dir = tmp_path / "run"  # a run in its first epochs: config.json and best.keras
    run_dir.mkdir()
    (run_dir / runs.CONFIG_FILE).write_text("{}")
    (run_dir / runs.BEST_MODEL).write_bytes(b"")
    with _held_elsewhere(run_dir) as pid:
        assert export_cli.main(["--run_dir", str(run_dir), "--out", str(tmp_path / "x")]) == 3
        err = capsys.readouterr().err
        assert f"export: error: {run_dir} is in use by fit (PID {pid}" in err
        assert err.strip().endswith("export the run once it has finished")
    assert not (tmp_path / "x").exists()


def test_convert_refuses_a_dataset_folder_being_converted(synth_small, tmp_path):
    from cxr_tf.data import conversion

    config = ConvertConfig(root=str(synth_small), out_dir=str(tmp_path), stored_size=64,
                           name="busy")  # fmt: skip
    with _held_elsewhere(tmp_path / "busy", "convert") as pid:
        with pytest.raises(lock.FolderInUse, match=f"in use by convert \\(PID {pid}"):
            conversion.convert(config, progress=False)
    assert not (tmp_path / "busy" / "manifest.json").exists()


# --- damaged state, more epochs, vanished data ----------------------------------------------


@pytest.mark.slow
def test_damaged_state_falls_back_to_the_last_intact_epoch(small_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert fit_cli.main(_fit_args(small_dataset, run_dir, 2)) == 0
    assert sorted(p.name for p in (run_dir / runs.CHECKPOINT_DIR).iterdir()) == ["epoch-0002.npz"]
    assert sorted(p.name for p in (run_dir / runs.FALLBACK_DIR).iterdir()) == ["epoch-0001.npz"]
    capsys.readouterr()
    good = (run_dir / runs.STATE_FILE).read_text()
    # a corrupted state.json: the last checkpoint carries the same committed state
    (run_dir / runs.STATE_FILE).write_text(good[: len(good) // 2])
    assert fit_cli.main(_fit_args(small_dataset, run_dir, 3)) == 0
    err = capsys.readouterr().err
    assert "state.json is damaged" in err and "resuming from epoch 2, the last intact" in err
    assert [r["epoch"] for r in _state(run_dir)["history"]] == [0, 1, 2]
    # a truncated last checkpoint: back to the epoch before it, kept in fallback/
    last = run_dir / runs.CHECKPOINT_DIR / "epoch-0003.npz"
    last.write_bytes(last.read_bytes()[:1000])
    assert fit_cli.main(_fit_args(small_dataset, run_dir, 4)) == 0
    err = capsys.readouterr().err
    assert f"{last} is damaged" in err and "resuming from epoch 2, the last intact" in err
    state = _state(run_dir)
    assert state["epochs_done"] == 4 and [r["epoch"] for r in state["history"]] == [0, 1, 2, 3]
    # nothing intact left: one line, exit 4
    (run_dir / runs.STATE_FILE).write_text("{")
    for path in [*(run_dir / runs.CHECKPOINT_DIR).iterdir(), *(run_dir / "fallback").iterdir()]:
        path.write_bytes(b"junk")
    assert fit_cli.main(_fit_args(small_dataset, run_dir, 5)) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no intact earlier epoch is kept to fall back to" in lines[0]


@pytest.mark.slow
def test_resume_continues_a_finished_run_to_more_epochs(small_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert fit_cli.main(_fit_args(small_dataset, run_dir, 1)) == 0
    capsys.readouterr()
    assert fit_cli.main(["--resume", str(run_dir), "--train.epochs", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {run_dir} at epoch 2\n")
    state = _state(run_dir)
    assert state["epochs_done"] == 3 and [r["epoch"] for r in state["history"]] == [0, 1, 2]
    assert runs.load_run_config(run_dir).train.epochs == 3
    # fewer epochs than done is refused, naming both; other changes name the key
    assert fit_cli.main(["--resume", str(run_dir), "--train.epochs", "2", "--quiet"]) == 2
    assert "train.epochs: 2 is below the 3 epochs" in capsys.readouterr().err
    assert fit_cli.main(["--resume", str(run_dir), "--train.lr", "0.5", "--quiet"]) == 2
    assert "different config (train.lr)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dataset_deleted_while_training_is_one_line_exit_4(
    small_dataset, tmp_path, monkeypatch, capsys
):
    dataset = tmp_path / "data"
    shutil.copytree(small_dataset, dataset)

    def delete_shards(epoch: int, step: str) -> None:
        if (epoch, step) == (1, "cleanup"):
            for shard in dataset.glob("*tfrecord*"):
                shard.unlink()

    monkeypatch.setattr(testing, "FAULT_HOOK", delete_shards)
    run_dir = tmp_path / "run"
    assert fit_cli.main(_fit_args(dataset, run_dir, 3)) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fit: error: a file of {dataset} vanished")
    assert f"resume with `--resume {run_dir}`" in lines[0]
    assert _state(run_dir)["epochs_done"] == 1
    assert not (run_dir / lock.LOCK_FILE).exists()


# --- two real processes, Ctrl-C --------------------------------------------------------------


LONG = ("--train.early_stopping_patience", "1000")  # never stops early


@pytest.mark.slow
def test_second_fit_and_export_are_refused_and_ctrl_c_exits_130(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "cxr_tf.fit", *_fit_args(small_dataset, run_dir, 500, *LONG)],
        cwd=PROJECT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while not (run_dir / runs.STATE_FILE).exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first fit finished no epoch"
            time.sleep(0.2)
        config = (run_dir / runs.CONFIG_FILE).read_text()
        second = subprocess.run(
            [sys.executable, "-m", "cxr_tf.fit",
             *_fit_args(small_dataset, run_dir, 500, *LONG, "--train.lr", "0.01")],
            cwd=PROJECT, env=ENV, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert second.returncode == 3, second.stderr
        assert f"fit: error: {run_dir} is in use by fit (PID {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        assert (run_dir / runs.CONFIG_FILE).read_text() == config  # the first's, untouched
        export = subprocess.run(
            [sys.executable, "-m", "cxr_tf.export", "--run_dir", str(run_dir),
             "--out", str(tmp_path / "export")],
            cwd=PROJECT, env=ENV, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert export.returncode == 3, export.stderr
        assert f"in use by fit (PID {first.pid}" in export.stderr
        assert not (tmp_path / "export").exists()
        assert first.poll() is None
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "Traceback" not in err
    assert "fit: Ctrl-C: stopping after this step (Ctrl-C again to stop at once)" in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(
        f"fit: interrupted; its finished epochs are kept in {run_dir}; resume with `"
    )
    assert lines[-1].endswith(f" -m cxr_tf.fit --resume {run_dir}`")
    assert not (run_dir / lock.LOCK_FILE).exists()
    assert json.loads((run_dir / runs.CONFIG_FILE).read_text())["train"]["lr"] == 0.001



def test_ctrl_c_waits_for_the_step_boundary_and_a_second_one_stops_at_once(capfd):
    """`SafeInterrupt`: the first SIGINT only sets a flag and says so (the step goes on),
    the callback raises at the next boundary; a second SIGINT raises at once; one that
    comes after the last boundary raises on leaving; the default handler is back
    afterwards. Real signals sent to this process."""
    from cxr_tf.training.callbacks import SafeInterrupt

    interrupt = SafeInterrupt("fit")
    with interrupt.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between this thread's bytecodes
        assert interrupt.pending
        interrupt.on_train_batch_end(2)  # the step's end: its other callbacks go on
        with pytest.raises(KeyboardInterrupt):
            interrupt.on_train_batch_begin(3)
        assert not interrupt.pending
        interrupt.on_epoch_end(0)  # nothing pending: nothing raised
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupt.pending
    with pytest.raises(KeyboardInterrupt), interrupt.installed():  # after the last step
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    err = capfd.readouterr().err
    assert err.count("fit: Ctrl-C: stopping after this step (Ctrl-C again to stop at once)") == 3
    with pytest.raises(KeyboardInterrupt):  # outside: Python's own handler
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
