"""`python -m cxr_tf.predict`: local Keras and SavedModel sources, per-file errors, Grad-CAM
overlays, and the REST client against a local stand-in for TF Serving."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    LIBRARY_HOMES,
    PROJECT,
    bad_inputs,
    damaged_run,
    encoded_variants,
    write_thresholds,
)

from cxr_tf import labels, predict
from cxr_tf.config import ExportConfig
from cxr_tf.data import preprocessing
from cxr_tf.serving import client, exporter, predictor


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """The shared run exported (export only reads the run directory)."""
    out = tmp_path_factory.mktemp("predict_export")
    return exporter.export(ExportConfig(run_dir=str(trained_run), out=str(out)), verbose=False)


@pytest.fixture(scope="module")
def image_files(synth_small, tmp_path_factory) -> dict[str, Path]:
    """Good files (synthetic PNGs, a JPEG, a 1x1 PNG) and bad ones, by name."""
    folder = tmp_path_factory.mktemp("predict_images")
    files = {p.name: p for p in sorted((synth_small / "images").glob("*.png"))[:2]}
    for name, data in encoded_variants().items():
        if name in ("rgb.jpg", "one_pixel.png"):
            files[name] = folder / name
            files[name].write_bytes(data)
    good = list(files)
    for name, data in bad_inputs(files[good[0]].read_bytes()).items():
        files[name] = folder / name
        files[name].write_bytes(data)
    return files


GOOD = 4  # the first four entries of `image_files`


@pytest.mark.slow
def test_cli_run_dir_json_gradcam_and_per_file_errors(trained_run, image_files, tmp_path, capsys):
    files = [str(p) for p in image_files.values()] + [str(tmp_path / "missing.png")]
    argv = [*files, "--model", str(trained_run), "--json", "--gradcam", str(tmp_path / "cams")]
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["model"]["kind"] == "keras" and report["model"]["task"] == "multilabel"
    assert [r["file"] for r in report["images"]] == files  # order kept, nothing dropped
    assert [r["ok"] for r in report["images"]] == [True] * GOOD + [False] * (len(files) - GOOD)
    reasons = {Path(r["file"]).name: r["error"] for r in report["images"] if not r["ok"]}
    assert reasons["not_an_image"] == predictor.UNKNOWN_FORMAT
    assert "PNG" in reasons["truncated_png"]
    assert "over 8192 pixels" in reasons["huge_header"]
    assert "empty" in reasons["empty_bytes"].lower()
    assert "cannot read" in reasons["missing.png"]
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in captured.err
    assert set(report["model"]["thresholds"].values()) == {0.5}  # no thresholds.json
    for result in report["images"][:GOOD]:
        assert len(result["findings"]) == 14
        assert all(0.0 <= f["probability"] <= 1.0 for f in result["findings"])
        assert all(f["threshold"] == 0.5 for f in result["findings"])
        assert all(f["decision"] == (f["probability"] >= 0.5) for f in result["findings"])
        assert Path(result["gradcam"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(result["gradcam"]).parent == tmp_path / "cams"
    assert f"wrote {GOOD} Grad-CAM overlay(s) to {tmp_path / 'cams'}" in captured.err


@pytest.mark.slow
def test_saved_model_matches_keras_and_prints_a_table(
    trained_run, exported_run, image_files, tmp_path, capsys
):
    good = [p.read_bytes() for p in list(image_files.values())[:GOOD]]
    keras_results = predictor.load_predictor(trained_run / "best.keras").predict_bytes(good)
    saved = predictor.load_predictor(exported_run.parent)  # the export base: highest version
    assert saved.kind == "saved_model" and saved.source == str(exported_run)
    saved_results = saved.predict_bytes(good)
    for a, b in zip(keras_results, saved_results, strict=True):
        assert [f["name"] for f in a["findings"]] == [f["name"] for f in b["findings"]]
        np.testing.assert_allclose(
            [f["probability"] for f in a["findings"]],
            [f["probability"] for f in b["findings"]],
            atol=1e-5,
        )
    # Without assets.extra the metadata comes from the `metadata` signature.
    bare = tmp_path / "bare"
    shutil.copytree(exported_run, bare, ignore=shutil.ignore_patterns("assets.extra"))
    assert predictor.load_predictor(bare).meta == saved.meta
    files = [str(p) for p in list(image_files.values())[:2]]
    assert predict.main([*files, "--model", str(exported_run)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == files[0]
    assert table.splitlines()[1].split() == ["finding", "probability", "threshold", "decision"]
    assert "Pneumothorax" in table and ("positive" in table or "negative" in table)
    gradcam = tmp_path / "x"
    assert predict.main([files[0], "--model", str(exported_run), "--gradcam", str(gradcam)]) == 2
    assert "needs a Keras model" in capsys.readouterr().err
    assert not gradcam.exists()


def _table_rows(table: str) -> dict[str, list[str]]:
    """The finding rows of a one-image table, by finding name."""
    lines = table.splitlines()
    assert lines[1].split() == ["finding", "probability", "threshold", "decision"]
    return {line.split()[0]: line.split()[1:] for line in lines[2:16]}


@pytest.mark.slow
def test_table_and_json_show_the_threshold_beside_each_decision(
    trained_run, image_files, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    names = list(labels.FINDINGS)
    chosen = {name: round(0.05 + 0.065 * i, 3) for i, name in enumerate(names)}
    write_thresholds(run_dir, chosen)
    image = str(next(iter(image_files.values())))
    assert predict.main([image, "--model", str(run_dir)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert list(rows) == names
    decisions = set()
    for name, (probability, threshold, decision) in rows.items():
        assert float(threshold) == chosen[name]
        expected = "positive" if float(probability) >= chosen[name] else "negative"
        assert decision == expected
        decisions.add(decision)
    assert decisions == {"positive", "negative"}  # thresholds spread across the probabilities
    assert predict.main([image, "--model", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["thresholds"] == chosen
    assert report["model"]["threshold_source"]["method"] == "youden"
    for finding in report["images"][0]["findings"]:
        assert finding["threshold"] == chosen[finding["name"]]
        assert finding["decision"] == (finding["probability"] >= finding["threshold"])


def test_table_layout_for_unknown_thresholds_and_multiclass():
    findings = [{"name": "A", "probability": 0.25, "decision": False, "threshold": None}]
    table = predict.format_table([{"file": "a.png", "ok": True, "findings": findings,
                                   "class": None}])  # fmt: skip
    assert table.splitlines()[2].split() == ["A", "0.2500", "-", "negative"]
    findings = [
        {"name": "cat", "probability": 0.3, "decision": None},
        {"name": "dog", "probability": 0.7, "decision": None},
    ]
    result = {"file": "b.png", "ok": True, "findings": findings, "class": {"index": 1,
              "name": "dog"}}  # fmt: skip
    lines = predict.format_table([result]).splitlines()
    assert lines[1].split() == ["finding", "probability", "decision"]
    assert lines[2].split() == ["cat", "0.3000"] and lines[3].split() == ["dog", "0.7000", "<-",
                                                                          "class"]  # fmt: skip


def test_accepted_formats_decode_and_are_named_in_help_and_errors(capsys):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    for name in predictor.IMAGE_FORMATS:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=name.upper())
        stored = preprocessing.bytes_to_stored(buffer.getvalue(), 16)
        assert stored.shape == (16, 16, 1), name
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        preprocessing.bytes_to_stored(buffer.getvalue(), 16)
    assert predictor._reason(error.value) == predictor.UNKNOWN_FORMAT
    assert predictor.ACCEPTED == "PNG, JPEG, BMP, GIF, WebP, DICOM"
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"image files: {predictor.ACCEPTED}" in text
    assert f"Accepted image formats: {predictor.ACCEPTED}" in text
    assert f"(accepted: {predictor.ACCEPTED})" in predictor.UNKNOWN_FORMAT


@pytest.mark.slow
def test_gradcam_folder_is_the_one_named(trained_run, image_files, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    image = str(next(iter(image_files.values())))
    assert predict.main([image, "--model", str(trained_run), "--gradcam", "cams/a"]) == 0
    captured = capsys.readouterr()
    assert f"wrote 1 Grad-CAM overlay(s) to {work / 'cams' / 'a'}" in captured.err
    assert [p.relative_to(work).as_posix() for p in sorted(work.rglob("*"))] == [
        "cams",
        "cams/a",
        f"cams/a/{Path(image).stem}_gradcam.png",
    ]
    assert f"Grad-CAM: {work / 'cams' / 'a'}" in captured.out
    (work / "taken").write_text("a file, not a folder")
    assert predict.main([image, "--model", str(trained_run), "--gradcam", "taken"]) == 2
    assert "--gradcam taken: cannot create the folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        predict.main([image, "--model", str(trained_run), "--gradcam"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_damaged_keras_file_is_a_usage_error(trained_run, image_files, tmp_path, capsys):
    run_dir = damaged_run(trained_run, tmp_path / "run", "truncated")
    image = str(next(iter(image_files.values())))
    for model in (run_dir, run_dir / "best.keras"):
        assert predict.main([image, "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert f"predict: error: cannot read {run_dir / 'best.keras'}: not a .keras" in err
        assert "Traceback" not in err


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["a.png"])
    assert exit_info.value.code == 2
    assert predict.main(["a.png", "--model", str(tmp_path)]) == 2
    assert "expected a run directory" in capsys.readouterr().err
    assert predict.main(["a.png", "--server", "http://localhost:8501/predict"]) == 2
    assert "/v1/models/NAME" in capsys.readouterr().err


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _files_under_top(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_a_command_writes_nothing_under_home_or_the_repository(trained_run, image_files, tmp_path):
    """predict (Keras, TensorFlow, matplotlib) from the repository root with an empty HOME:
    outputs only where named, nothing under HOME, no new entry in the repository root."""
    home, cams = tmp_path / "home", tmp_path / "cams"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(PROJECT))
    assert all(variable in env for variable in LIBRARY_HOMES)  # set by conftest.py
    before = _files_under_top(PROJECT)
    image = str(next(iter(image_files.values())))
    cmd = [sys.executable, "-m", "cxr_tf.predict", image, "--model", str(trained_run)]
    proc = subprocess.run(
        [*cmd, "--json", "--gradcam", str(cams)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"][0]["ok"]
    assert _files_under(home) == []
    assert _files_under_top(PROJECT) == before
    assert _files_under(cams) == [f"{Path(image).stem}_gradcam.png"]
    # Without the variables Keras alone would write ~/.keras/keras.json on import.
    bare = {k: v for k, v in env.items() if k not in LIBRARY_HOMES}
    subprocess.run([sys.executable, "-c", "import keras"], env=bare, check=True, timeout=120)
    assert ".keras/keras.json" in _files_under(home)


# ------------------------------------------------------------------------------ REST


def _json_value(value: np.ndarray):
    if value.dtype.kind in "OS":  # string tensors: object arrays, or bytes when scalar
        return np.vectorize(lambda b: b.decode())(value).tolist()
    return value.tolist()


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """A stand-in for TF Serving's REST predict API, running the exported SavedModel."""

    signatures = None
    requests: list = []

    def do_POST(self) -> None:  # http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body))
        try:
            name, inputs = client.body_to_inputs(body)
            outputs = self.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
            arrays = {k: np.asarray(v.numpy()) for k, v in outputs.items()}
            if name == client.METADATA_SIGNATURE:  # columnar request, columnar reply
                status, reply = 200, {"outputs": {k: _json_value(v) for k, v in arrays.items()}}
            else:
                batch = len(arrays["probabilities"])
                rows = [{k: _json_value(v[i]) for k, v in arrays.items()} for i in range(batch)]
                status, reply = 200, {"predictions": rows}
        except tf.errors.InvalidArgumentError as err:
            status, reply = 400, {"error": err.message}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_server_mode_against_a_local_rest_server(exported_run, image_files, capsys):
    loaded = tf.saved_model.load(str(exported_run))
    _FakeServing.signatures = loaded.signatures
    _FakeServing.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/cxr_multilabel"
        files = [str(p) for p in image_files.values()]
        argv = [*files, "--server", url, "--json", "--timeout_s", "20"]
        assert predict.main(argv) == 1
        report = json.loads(capsys.readouterr().out)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    path, body = _FakeServing.requests[0]
    assert path == "/v1/models/cxr_multilabel:predict"
    assert body == client.metadata_request_body()  # thresholds and labels first
    loaded = predictor.load_predictor(exported_run)
    assert report["model"]["thresholds"] == loaded.meta["thresholds"]
    path, body = _FakeServing.requests[1]
    assert body["signature_name"] == "serving_default"
    assert (
        set(body["instances"][0]) == {"image_bytes"}
        and "b64" in body["instances"][0]["image_bytes"]
    )
    assert len(body["instances"]) == len(files)  # one batch first, then file by file
    results = report["images"]
    assert [r["ok"] for r in results] == [True] * GOOD + [False] * (len(files) - GOOD)
    assert results[GOOD]["error"] == predictor.UNKNOWN_FORMAT
    local = predictor.load_predictor(exported_run).predict_bytes(
        [Path(f).read_bytes() for f in files[:GOOD]]
    )
    for remote, here in zip(results[:GOOD], local, strict=True):
        pairs = list(zip(remote["findings"], here["findings"], strict=True))
        assert all(a["name"] == b["name"] and a["decision"] == b["decision"] for a, b in pairs)
        assert all(a["threshold"] == 0.5 for a, _ in pairs)  # no thresholds.json in the run
        np.testing.assert_allclose(
            [a["probability"] for a, _ in pairs], [b["probability"] for _, b in pairs], atol=1e-6
        )


def test_unreachable_server_is_a_usage_error(image_files, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/models/m"
    first = str(next(iter(image_files.values())))
    assert predict.main([first, "--server", url, "--timeout_s", "5"]) == 2
    assert "no reply" in capsys.readouterr().err


def test_reply_parsing_and_urls():
    rows = client.parse_response(
        {"outputs": {"labels": [["A", "B"]], "probabilities": [[0.2, 0.9]], "decisions": [[0, 1]]}}
    )
    result = client.image_result(rows[0])
    assert result["findings"] == [
        {"name": "A", "probability": 0.2, "decision": False},
        {"name": "B", "probability": 0.9, "decision": True},
    ]
    multiclass = client.image_result(
        {"labels": ["x", "y"], "probabilities": [0.3, 0.7], "class_index": 1, "class_name": "y"}
    )
    assert multiclass["class"] == {"index": 1, "name": "y"}
    assert multiclass["findings"][0]["decision"] is None
    with pytest.raises(client.ServingError, match="bad image"):
        client.parse_response({"error": "bad image"})
    base = "http://h:8501/v1/models/m"
    assert client.predict_url(base) == base + ":predict"
    assert client.predict_url(base + "/versions/3/") == base + "/versions/3:predict"
    assert client.predict_url(base + ":predict") == base + ":predict"
    message = (
        "Graph execution error:\n\nDetected at node x defined at (most recent call last):\n"
        "<stack traces unavailable>\nassertion failed: [empty batch: no images] [Condition]\n"
        "\t [[{{node assert/Assert}}]] [Op:__inference_f_1]"
    )
    assert client.error_reason(message) == "empty batch: no images"
