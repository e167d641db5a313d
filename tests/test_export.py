"""SavedModel export: layout, metadata, parity with the Keras model in a fresh TensorFlow-only
process (synthetic and real NIH PNGs), warm-up records, REST bodies, bad input, other heads."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    NIH_DIR,
    bad_inputs,
    convert_folder,
    damaged_run,
    encoded_variants,
    make_synth,
    nih_path,
    tiny_run_config,
    write_thresholds,
)
from PIL import Image

from cxr_tf import config as config_lib
from cxr_tf import export
from cxr_tf.config import ExportConfig, ModelConfig
from cxr_tf.data import preprocessing
from cxr_tf.evaluation.thresholds import THRESHOLDS_FILE, ThresholdsError, read_thresholds
from cxr_tf.modeling import models
from cxr_tf.runs import folder as runs
from cxr_tf.serving import client, exporter

TOLERANCE = 1e-5
NIH_RGBA = ("00000100_000.png", "00001369_000.png", "00004934_000.png")


def reference_probabilities(
    run_dir: Path,
    images: list[bytes],
    size: int,
    resize: str = "squash",
    task: str = "multilabel",
    jpeg: str = "reduced",
) -> np.ndarray:
    """The in-process Keras model on the project's preprocessing (`resize`, `jpeg`: the
    dataset's `--resize` and `--jpeg_decode`)."""
    model = keras.models.load_model(run_dir / runs.BEST_MODEL, compile=False)
    stored = np.stack(
        [preprocessing.bytes_to_stored(b, size, resize, jpeg).numpy() for b in images]
    )
    logits = model(stored.astype(np.float32), training=False)
    return np.asarray(models.probabilities(logits, task))


def wide_image() -> bytes:
    """A 120 x 48 PNG, bright in its left third: squash, crop and pad store it differently."""
    pixels = np.full((48, 120, 1), 30, np.uint8)
    pixels[:, :40] = 220
    return tf.io.encode_png(pixels).numpy()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A copy of the shared run with evaluation thresholds, exported once."""
    root = tmp_path_factory.mktemp("export")
    run_dir = root / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("backup", "logs"))
    names = list(runs.load_run_config(run_dir).model.output_names)
    thresholds = {n: round(0.05 + 0.9 * i / (len(names) - 1), 3) for i, n in enumerate(names)}
    thresholds[names[-1]] = None  # undefined on validation: falls back to 0.5
    write_thresholds(run_dir, thresholds)
    folder = exporter.export(ExportConfig(run_dir=str(run_dir), out=str(root / "export")), False)
    return run_dir, folder


# ------------------------------------------------------------------------------ layout


@pytest.mark.slow
def test_versioned_layout_models_config_and_metadata(exported):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    run_dir, folder = exported
    assert folder.name == "1" and folder.parent.name == "cxr_multilabel"
    assert (folder / "saved_model.pb").exists() and (folder / "variables").is_dir()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".partial")]
    config = text_format.Parse(
        (folder.parent / exporter.MODELS_CONFIG).read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )
    (entry,) = config.model_config_list.config
    assert entry.name == "cxr_multilabel" and entry.model_platform == "tensorflow"
    assert Path(entry.base_path) == folder.parent.resolve()

    meta = json.loads((folder / "assets.extra" / exporter.METADATA_FILE).read_text())
    summary = json.loads((run_dir / runs.SUMMARY_FILE).read_text())
    assert meta["labels"] == summary["outputs"] and meta["task"] == "multilabel"
    assert meta["stored_size"] == summary["stored_size"] == 64
    assert meta["dataset"]["fingerprint"] == summary["dataset_fingerprint"]
    assert meta["config"] == json.loads((run_dir / runs.CONFIG_FILE).read_text())
    source = meta["threshold_source"]
    assert source["file"] == "thresholds.json" and source["method"] == "youden"
    assert source["defaulted"] == [meta["labels"][-1]]
    assert meta["thresholds"][meta["labels"][-1]] == 0.5
    assert meta["thresholds"][meta["labels"][0]] == 0.05
    assert (meta["model_name"], meta["version"]) == ("cxr_multilabel", 1)
    assert source["checkpoint"] == runs.file_identity(run_dir / runs.BEST_MODEL)
    assert meta["run"]["checkpoint_sha256"] == source["checkpoint"]["sha256"]
    assert source["tta"] == "none" and "ignored" not in source


@pytest.mark.slow
def test_versions_increment_and_existing_version_is_refused(exported, tmp_path, capsys):
    base = tmp_path / "m"
    assert exporter.next_version(base) == 1
    for name in ("1", "3", ".partial-7-1", "notes"):
        (base / name).mkdir(parents=True)
    assert exporter.next_version(base) == 4
    run_dir, folder = exported
    argv = ["--run_dir", str(run_dir), "--out", str(folder.parent.parent), "--version", "1"]
    assert export.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert export.main(["--run_dir", str(tmp_path)]) == 2
    assert "not a training run" in capsys.readouterr().err


def test_thresholds_default_to_half_without_evaluation(tmp_path):
    values, source = read_thresholds(tmp_path, ["Effusion", "Mass"])
    assert values == [0.5, 0.5]
    assert source["file"] is None and source["defaulted"] == ["Effusion", "Mass"]
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({"thresholds": {"Mass": 2.0}}))
    with pytest.raises(ThresholdsError, match="Mass"):
        read_thresholds(tmp_path, ["Mass"])


@pytest.mark.slow
def test_thresholds_apply_only_to_their_checkpoint_without_tta(exported, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (runs.BEST_MODEL, runs.LAST_MODEL):
        shutil.copy(exported[0] / name, run_dir)
    names = ["Effusion", "Mass"]
    table = {"Effusion": 0.2, "Mass": 0.7}
    write_thresholds(run_dir, table)
    values, source = read_thresholds(run_dir, names, runs.BEST_MODEL)
    assert values == [0.2, 0.7] and source["file"] == "thresholds.json"
    reasons = {}
    reasons["other checkpoint"] = read_thresholds(run_dir, names, runs.LAST_MODEL)
    write_thresholds(run_dir, table, tta="flip")
    reasons["tta"] = read_thresholds(run_dir, names)
    write_thresholds(run_dir, table)
    with (run_dir / runs.BEST_MODEL).open("ab") as handle:  # retrained since evaluation
        handle.write(b"\0")
    reasons["changed file"] = read_thresholds(run_dir, names)
    (run_dir / THRESHOLDS_FILE).write_text(json.dumps({"thresholds": table}))
    reasons["older file"] = read_thresholds(run_dir, names)
    expected = {
        "other checkpoint": "chosen for best.keras, this is last.keras",
        "tta": "test-time augmentation 'flip'",
        "changed file": "the file has changed since",
        "older file": "records no checkpoint",
    }
    for case, (values, source) in reasons.items():
        assert values == [0.5, 0.5], case
        assert source["method"] == "default" and source["file"] is None, case
        assert expected[case] in source["ignored"]["reason"], (case, source)
        assert "WARNING" in exporter.threshold_warning(source)


@pytest.mark.slow
def test_mismatched_thresholds_fall_back_loudly_and_stale_partials_go(exported, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(exported[0], run_dir)
    names = list(runs.load_run_config(run_dir).model.output_names)
    write_thresholds(run_dir, dict.fromkeys(names, 0.3), tta="tencrop")
    base = tmp_path / "out" / "cxr_multilabel"
    dead = base / f"{exporter.PARTIAL_PREFIX}1-{2**40}"  # a killed export (no such pid)
    alive = base / f"{exporter.PARTIAL_PREFIX}1-{os.getppid()}"  # one still running
    for folder in (dead, alive):
        (folder / "variables").mkdir(parents=True)
    argv = ["--run_dir", str(run_dir), "--out", str(tmp_path / "out"), "--no-warmup"]
    assert export.main(argv) == 0
    captured = capsys.readouterr()
    assert "export: WARNING: decision thresholds are the default 0.5" in captured.err
    assert "test-time augmentation 'tencrop'" in captured.err
    assert f"removed {dead}" in captured.out and "thresholds.json ignored" in captured.out
    assert not dead.exists() and alive.exists()
    assert sorted(p.name for p in base.iterdir()) == sorted([alive.name, "1", "models.config"])
    meta = json.loads((base / "1" / "assets.extra" / exporter.METADATA_FILE).read_text())
    assert set(meta["thresholds"].values()) == {0.5}
    assert meta["threshold_source"]["method"] == "default"
    assert "tencrop" in meta["threshold_source"]["ignored"]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_model_file_is_a_clear_error(trained_run, tmp_path, capsys, damage):
    run_dir = damaged_run(trained_run, tmp_path / "run", damage)
    assert export.main(["--run_dir", str(run_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"export: error: cannot read {run_dir / runs.BEST_MODEL}: not a .keras" in err
    assert "Traceback" not in err and "File not found" not in err
    assert not list((tmp_path / "out").rglob("saved_model.pb"))
    # A readable archive with a damaged member names the member's error.
    good = tmp_path / "good.keras"
    shutil.copy(trained_run / runs.BEST_MODEL, good)
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(tmp_path / "bad.keras", "w") as out:
        for item in source.namelist():
            out.writestr(item, b"{oops" if item == "config.json" else source.read(item))
    with pytest.raises(runs.ModelFileError, match=r"cannot read .*bad.keras: JSONDecodeError"):
        runs.load_model_file(tmp_path / "bad.keras")


def test_default_names_tell_models_of_different_outputs_apart():
    cases = [
        ("multilabel", (), "cxr_multilabel"),
        ("multilabel", ("Mass", "Effusion"), "cxr_multilabel-mass-effusion"),
        ("binary", ("Pneumothorax",), "cxr_binary-pneumothorax"),
        ("binary", ("Pleural_Thickening",), "cxr_binary-pleural_thickening"),
        ("binary", ("any",), "cxr_binary-any"),
        ("multiclass", ("No Finding", "Mass"), "cxr_multiclass-no_finding-mass"),
    ]
    for task, findings, name in cases:
        assert exporter.default_model_name(ModelConfig(task=task, findings=findings)) == name
        assert ExportConfig(name=name).name == name  # a valid --name


# ------------------------------------------------------------------------------ parity

# Runs in a fresh interpreter: TensorFlow (and the serving protos) only, never cxr_tf.
_TF_ONLY_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

folder, plan_file, out_file = sys.argv[1:4]
plan = json.loads(open(plan_file).read())
loaded = tf.saved_model.load(folder)
serve = loaded.signatures["serving_default"]
images = loaded.signatures["predict_images"]
read = lambda path: open(path, "rb").read()
result = {"signatures": sorted(loaded.signatures)}
spec = serve.structured_input_signature[1]
result["input"] = {k: [v.dtype.name, v.shape.as_list()] for k, v in spec.items()}

out = serve(image_bytes=tf.constant([read(p) for p in plan["good"]]))
result["probabilities"] = out["probabilities"].numpy().tolist()
result["decisions"] = out["decisions"].numpy().tolist()
result["labels"] = [s.decode() for s in out["labels"].numpy()[0]]
result["named"] = {k: v.numpy().tolist() for k, v in out.items() if k in result["labels"]}

errors = {}
def attempt(name, fn):
    try:
        fn()
        errors[name] = {"type": None}
    except Exception as err:  # the test checks the type
        errors[name] = {"type": type(err).__name__, "message": getattr(err, "message", str(err))}
for name, path in plan["bad"].items():
    attempt(name, lambda p=path: serve(image_bytes=tf.constant([read(p)])))
    # One bad image in a batch fails the whole request, with the same error.
    attempt(name + "_in_batch", lambda p=path: serve(
        image_bytes=tf.constant([read(plan["good"][0]), read(p)])))
attempt("empty_batch", lambda: serve(image_bytes=tf.constant([], tf.string)))
size = plan["size"]
attempt("images_out_of_range", lambda: images(images=tf.fill([1, size, size, 1], 300.0)))
attempt("images_empty_batch", lambda: images(images=tf.zeros([0, size, size, 1])))
result["errors"] = errors
again = serve(image_bytes=tf.constant([read(plan["good"][0])]))
result["alive_after_errors"] = again["probabilities"].numpy()[0].tolist()

warmup = []
for record in tf.data.TFRecordDataset(folder + "/assets.extra/tf_serving_warmup_requests"):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    entry = {
        "signature_name": request.model_spec.signature_name,
        "inputs": {k: [tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]]
                   for k, v in request.inputs.items()},
    }
    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    entry["outputs"] = loaded.signatures[entry["signature_name"]](**feed)["probabilities"].shape[0]
    warmup.append(entry)
result["warmup"] = warmup
meta = loaded.signatures["metadata"](unused=tf.constant(0))
result["metadata"] = json.loads(meta["metadata_json"].numpy().decode())
result["cxr_tf_imported"] = any(m.split(".")[0] == "cxr_tf" for m in sys.modules)
open(out_file, "w").write(json.dumps(result))
"""


@pytest.fixture(scope="module")
def fresh_process(exported, synth_small, tmp_path_factory):
    """One TensorFlow-only subprocess: predictions, bad inputs, warm-up and metadata."""
    run_dir, folder = exported
    work = tmp_path_factory.mktemp("fresh")
    synthetic = sorted((synth_small / "images").glob("*.png"))[:6]
    synthetic += [p for p in (synth_small / "images").glob("*.png") if _is_rgba(p)]
    for name, data in {**encoded_variants(), "wide.png": wide_image()}.items():
        (work / name).write_bytes(data)
        synthetic.append(work / name)
    nih = []
    if NIH_DIR.joinpath("images").is_dir():
        nih = sorted((NIH_DIR / "images").glob("*.png"))[:5]
        nih += [NIH_DIR / "images" / n for n in NIH_RGBA if n not in {p.name for p in nih}]
    bad = {}
    for name, data in bad_inputs(synthetic[0].read_bytes()).items():
        (work / name).write_bytes(data)
        bad[name] = str(work / name)
    plan = {"good": [str(p) for p in synthetic + nih], "bad": bad, "size": 64}
    (work / "plan.json").write_text(json.dumps(plan))
    (work / "script.py").write_text(_TF_ONLY_SCRIPT)
    out = work / "result.json"
    proc = subprocess.run(
        [sys.executable, str(work / "script.py"), str(folder), str(work / "plan.json"), str(out)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), plan, synthetic, nih


def _is_rgba(path: Path) -> bool:
    return path.read_bytes()[25] == 6  # PNG IHDR colour type 6: RGBA


@pytest.mark.slow
def test_fresh_process_never_imports_cxr_tf(fresh_process):
    result, *_ = fresh_process
    assert result["cxr_tf_imported"] is False
    assert result["signatures"] == ["metadata", "predict_images", "serving_default"]
    assert result["input"] == {"image_bytes": ["string", [None]]}


@pytest.mark.slow
def test_parity_synthetic_and_client_formats(fresh_process, exported):
    result, plan, synthetic, nih = fresh_process
    assert any(_is_rgba(p) for p in synthetic if p.suffix == ".png")
    meta = result["metadata"]
    assert meta["preprocessing"]["resize"] == "squash"  # the shared dataset's default
    assert any(Image.open(p).width != Image.open(p).height for p in synthetic)
    expected = reference_probabilities(exported[0], [p.read_bytes() for p in synthetic], 64)
    got = np.array(result["probabilities"])[: len(synthetic)]
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    thresholds = np.array([meta["thresholds"][n] for n in result["labels"]])
    np.testing.assert_array_equal(
        np.array(result["decisions"]), np.array(result["probabilities"]) >= thresholds
    )
    for index, name in enumerate(result["labels"]):
        np.testing.assert_allclose(
            result["named"][name], np.array(result["probabilities"])[:, index]
        )


@pytest.mark.slow
def test_parity_real_nih_pngs_including_rgba(fresh_process, exported):
    nih_path()
    result, plan, synthetic, nih = fresh_process
    assert {p.name for p in nih} >= set(NIH_RGBA) and all(
        _is_rgba(NIH_DIR / "images" / n) for n in NIH_RGBA
    )
    expected = reference_probabilities(exported[0], [p.read_bytes() for p in nih], 64)
    got = np.array(result["probabilities"])[len(synthetic) :]
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_bad_input_is_invalid_argument_and_process_survives(fresh_process):
    result, *_ = fresh_process
    errors = result["errors"]
    expected = {
        "not_an_image": "Unknown image file format",
        "truncated_png": "PNG",
        "huge_header": "side over 8192 pixels",
        "empty_bytes": "empty",
        "empty_batch": "empty batch",
        "images_out_of_range": "0..255",
        "images_empty_batch": "empty batch",
    }
    for name, phrase in expected.items():
        for key in (name, name + "_in_batch"):
            if key not in errors:
                continue
            assert errors[key]["type"] == "InvalidArgumentError", (key, errors[key])
            reason = client.error_reason(errors[key]["message"])
            assert phrase.lower() in reason.lower(), (key, reason)
            assert "node" not in reason and "File " not in reason, reason
    assert len(result["alive_after_errors"]) == len(result["labels"])


@pytest.mark.slow
def test_one_pixel_image_is_accepted_and_resized(fresh_process):
    result, plan, *_ = fresh_process
    index = [Path(p).name for p in plan["good"]].index("one_pixel.png")
    assert np.isfinite(result["probabilities"][index]).all()


@pytest.mark.slow
def test_warmup_records_match_the_signature(fresh_process):
    result, *_ = fresh_process
    assert [w["signature_name"] for w in result["warmup"]] == ["serving_default"] * 2
    for entry, batch in zip(result["warmup"], (1, 2), strict=True):
        assert entry["inputs"] == {"image_bytes": ["string", [batch]]}
        assert entry["outputs"] == batch


# ------------------------------------------------------------------------------ REST and signatures


@pytest.mark.slow
def test_rest_body_becomes_the_signature_input(exported, synth_small):
    _, folder = exported
    loaded = tf.saved_model.load(str(folder))
    files = [p.read_bytes() for p in sorted((synth_small / "images").glob("*.png"))[:3]]
    direct = loaded.signatures["serving_default"](image_bytes=tf.constant(files))
    bodies = [
        client.request_body(files),  # {"instances": [{"image_bytes": {"b64": ...}}]}
        {"instances": [{"b64": base64.b64encode(f).decode()} for f in files]},
        {"inputs": {"image_bytes": [{"b64": base64.b64encode(f).decode()} for f in files]}},
    ]
    for body in bodies:
        signature, inputs = client.body_to_inputs(json.loads(json.dumps(body)))
        assert signature == "serving_default" and list(inputs) == ["image_bytes"]
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        np.testing.assert_array_equal(out["probabilities"], direct["probabilities"])
    # predict_images on the project's preprocessing gives the same answer as image bytes.
    stored = np.stack([preprocessing.bytes_to_stored(f, 64).numpy() for f in files])
    signature, inputs = client.body_to_inputs(client.images_request_body(stored))
    out = loaded.signatures[signature](images=tf.constant(inputs["images"]))
    np.testing.assert_allclose(out["probabilities"], direct["probabilities"], atol=TOLERANCE)
    # The metadata signature, as TF Serving's REST API would be asked for it.
    signature, inputs = client.body_to_inputs(client.metadata_request_body())
    meta = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    assert json.loads(meta["metadata_json"].numpy())["labels"] == [
        s.decode() for s in meta["labels"].numpy()
    ]
    with pytest.raises(ValueError, match="image_bytes"):
        client.body_to_inputs({"instances": [{"image": {"b64": ""}}]})
    with pytest.raises(ValueError, match="exactly one"):
        client.body_to_inputs({"instances": [], "inputs": []})


def _head_run(root: Path, dataset: Path, task: str, findings: tuple[str, ...]) -> Path:
    """A run directory of an untrained binary or multi-class head (export needs no training)."""
    run_dir = root / task
    run = tiny_run_config(dataset, run_dir)
    run = dataclasses.replace(
        run,
        model=ModelConfig(backbone="tiny", weights="", input_size=64, task=task, findings=findings),
    )
    run_dir.mkdir(parents=True)
    config_lib.save(run, run_dir / runs.CONFIG_FILE)
    models.build_model(run.model, stored_size=64).save(run_dir / runs.BEST_MODEL)
    return run_dir


@pytest.mark.slow
def test_binary_and_multiclass_heads(train_dataset, tmp_path):
    image = encoded_variants()["rgb.png"]
    binary = _head_run(tmp_path, train_dataset, "binary", ("Effusion",))
    folder = exporter.export(ExportConfig(run_dir=str(binary), out=str(tmp_path / "out")), False)
    # Another binary model lands under its own name, not as version 2 of the first.
    anything = _head_run(tmp_path / "any", train_dataset, "binary", ("any",))
    other = exporter.export(ExportConfig(run_dir=str(anything), out=str(tmp_path / "out")), False)
    assert (folder.parent.name, folder.name) == ("cxr_binary-effusion", "1")
    assert (other.parent.name, other.name) == ("cxr_binary-any", "1")
    out = tf.saved_model.load(str(folder)).signatures["serving_default"](
        image_bytes=tf.constant([image, image])
    )
    assert out["probabilities"].shape == (2, 1) and out["Effusion"].shape == (2,)
    np.testing.assert_array_equal(out["decisions"][:, 0], out["Effusion"] >= 0.5)
    meta = json.loads((folder / "assets.extra" / exporter.METADATA_FILE).read_text())
    assert meta["threshold_source"]["method"] == "default" and meta["thresholds"] == {
        "Effusion": 0.5
    }
    # No summary.json in this run: the fingerprint comes from the dataset's manifest.
    assert meta["dataset"]["source"] == "manifest.json" and meta["dataset"]["fingerprint"]

    classes = ("No Finding", "Effusion", "Mass")
    multi = _head_run(tmp_path, train_dataset, "multiclass", classes)
    folder = exporter.export(ExportConfig(run_dir=str(multi), out=str(tmp_path / "out")), False)
    assert folder.parent.name == "cxr_multiclass-no_finding-effusion-mass"
    out = tf.saved_model.load(str(folder)).signatures["serving_default"](
        image_bytes=tf.constant([image])
    )
    probs = out["probabilities"].numpy()
    assert probs.shape == (1, 3) and abs(probs.sum() - 1) < 1e-5 and "decisions" not in out
    assert int(out["class_index"][0]) == int(probs.argmax())
    assert out["class_name"][0].numpy().decode() == classes[int(probs.argmax())]
    assert float(out["No Finding"][0]) == pytest.approx(float(probs[0, 0]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_parity_non_square_images_follow_the_datasets_resize(mode, tmp_path):
    """A run on a dataset converted with --resize crop or pad: the SavedModel and `predict`
    make incoming non-square images square the same way, not by the squash default."""
    root = make_synth(tmp_path / "source", n=16, seed=2, image_size=64)
    for path in sorted((root / "images").glob("*.png"))[:2]:
        Image.open(path).convert("L").resize((96, 48)).save(path)
    dataset = convert_folder(root, tmp_path / "data", stored_size=64, resize=mode, workers=1)
    keras.utils.set_random_seed(0)  # the same untrained weights each time
    run_dir = _head_run(tmp_path, dataset, "binary", ("Effusion",))
    folder = exporter.export(ExportConfig(run_dir=str(run_dir), out=str(tmp_path / "out")), False)
    meta = json.loads((folder / "assets.extra" / exporter.METADATA_FILE).read_text())
    assert meta["preprocessing"]["resize"] == mode
    assert meta["preprocessing"]["resize_source"] == f"{dataset}/manifest.json"
    variants = encoded_variants()
    images = [wide_image(), variants["gray16.png"], variants["rgb.jpg"]]  # 120x48 300x260 ...
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    served = serve(image_bytes=tf.constant(images))["probabilities"].numpy()
    expected = reference_probabilities(run_dir, images, 64, mode, "binary")
    np.testing.assert_allclose(served, expected, atol=TOLERANCE, rtol=0)
    squashed = reference_probabilities(run_dir, images, 64, "squash", "binary")
    assert np.abs(served - squashed)[0].max() > 10 * TOLERANCE  # the mode made a difference
    from cxr_tf.serving import predictor

    local = predictor.load_predictor(run_dir)  # predict on the run directory
    assert local.kind == "keras" and exporter.serving_resize(local.meta) == mode
    answers = local.predict_bytes(images)
    probabilities = [[f["probability"] for f in a["findings"]] for a in answers]
    np.testing.assert_allclose(probabilities, served, atol=TOLERANCE, rtol=0)
