"""Progress in log files: plain lines, not a redrawn bar (`cxr_tf.progress`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from helpers import make_synth

from cxr_tf.progress import LogLines, progress_bar


def test_log_lines_count_rate_and_end():
    out = io.StringIO()
    with LogLines(total=5, desc="convert x", unit="img", file=out, interval=0.0) as bar:
        for _ in range(5):
            bar.update(1)
        bar.write("a note")
    lines = out.getvalue().splitlines()
    # start, one line per update but the last (interval 0), the note, the end line
    assert lines[0] == "convert x: 5 img"
    assert lines[1].startswith("convert x: 1/5 img, ") and "img/s" in lines[1]
    assert len(lines) == 1 + 4 + 1 + 1 and lines[5] == "a note"
    assert lines[-1].startswith("convert x: done, 5/5 img")
    assert "\r" not in out.getvalue()
    # iterating counts the items; a disabled one says nothing
    quiet = io.StringIO()
    assert list(LogLines(range(3), file=quiet, disable=True)) == [0, 1, 2] and not quiet.getvalue()
    # not a terminal: plain lines, never a tqdm bar
    assert isinstance(progress_bar(range(2), file=io.StringIO()), LogLines)


def test_a_command_writing_to_a_file_logs_a_few_lines_not_a_bar(tmp_path):
    root = make_synth(tmp_path / "src", n=60, seed=1, image_size=64)
    log = tmp_path / "convert.log"
    env = {**os.environ, "CXR_TF_LOG_SECONDS": "30"}
    with open(log, "w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "cxr_tf.convert", "--root", str(root), "--out_dir",
             str(tmp_path / "out"), "--stored_size", "64"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=300,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    progress = [line for line in text.splitlines() if line.startswith("convert nih_64_raw")]
    # the start line and the end line (the job takes less than the 30 s period)
    assert len(progress) == 2, text
    assert progress[-1].startswith("convert nih_64_raw: done, 60/60 img"), text
