"""`python -m cxr_tf.export`: a training run -> a SavedModel for TF Serving.

Examples:
  python -m cxr_tf.export --run_dir runs/densenet121-multilabel-3f9c2a1b
  python -m cxr_tf.export --run_dir RUN --model last --name cxr14 --version 3 --out export

The default --name is cxr_<task>, followed by the outputs of a binary or multi-class run (or
of a multi-label subset): cxr_multilabel, cxr_binary-pneumothorax, cxr_binary-any,
cxr_multiclass-no_finding-effusion-mass; so models of different outputs never become
versions of one another (TF Serving serves the highest version of a name).

Writes, in TF Serving's versioned layout (the version is one above the highest present unless
`--version` is given; a version is written under a temporary name and renamed when complete,
so a polling server never loads half an export; the hidden partial folder of an export that
was killed is removed by the next export):

  <out>/<name>/models.config                         tensorflow_model_server --model_config_file
  <out>/<name>/<version>/saved_model.pb, variables/  the SavedModel (Keras 3 ExportArchive)
  <out>/<name>/<version>/assets.extra/cxr_tf_metadata.json
  <out>/<name>/<version>/assets.extra/tf_serving_warmup_requests

Signatures (B = batch, K = outputs, S = the dataset's stored image size):
  serving_default  image_bytes: string (B,) encoded PNG/JPEG (any size, 1/3/4 channels, 8/16
                   bit) -> cxr_tf.preprocessing.bytes_to_stored -> model -> outputs below
  predict_images   images: float32 (B, S, S, 1) gray, 0..255 (cast uint8 images to float32)
  metadata         unused: int32 scalar (any value; TF Serving's REST API needs an input) ->
                   metadata_json (the JSON of assets.extra), labels, thresholds, stored_size, task
Outputs of both prediction signatures: labels (B, K) string, probabilities (B, K) float32,
one (B,) float32 per output name (e.g. "Effusion"); multi-label and binary: decisions (B, K)
bool, probability >= the run's threshold (thresholds.json from evaluation when it was chosen
for this very checkpoint file without test-time augmentation; else 0.5, with a warning on
stderr and the reason under threshold_source.ignored in the metadata);
multi-class: class_index (B,) int32 and class_name (B,) string (the argmax).
Bad input raises InvalidArgumentError: an empty batch, undecodable or truncated bytes, an image
side over preprocessing.MAX_SIDE, images outside 0..255. A 1x1 image is accepted and resized
like any other (the converter would store it the same way).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf import __version__
from cxr_tf.cli import build_parser, lazy_import, parse_config
from cxr_tf.config import ConfigError, ExportConfig, ModelConfig, to_dict
from cxr_tf.labels import FINDINGS

# TensorFlow starts when an export does, not for --help.
keras = lazy_import("keras")
tf = lazy_import("tensorflow")
models = lazy_import("cxr_tf.models")
preprocessing = lazy_import("cxr_tf.preprocessing")
serving = lazy_import("cxr_tf.serving")
train = lazy_import("cxr_tf.train")

METADATA_FILE = "cxr_tf_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
MODELS_CONFIG = "models.config"
THRESHOLDS_FILE = "thresholds.json"
FORMAT_VERSION = 1
PARTIAL_PREFIX = ".partial-"
DEFAULT_THRESHOLD = 0.5


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says why."""


# ------------------------------------------------------------------------------ metadata


def checkpoint_name(which: str) -> str:
    """`best` -> best.keras, `last` -> last.keras."""
    return train.BEST_MODEL if which == "best" else train.LAST_MODEL


def load_model_file(path: str | Path) -> keras.Model:
    """A saved `.keras` model (the cxr_tf layers are registered by importing `models`).

    Raises:
        ExportError: the file is missing, or "cannot read FILE: <reason>" when it exists
            but is not a readable Keras archive (truncated, overwritten, another format).
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} not found: is {path.parent} a finished training run?")
    if path.is_dir() or not zipfile.is_zipfile(path):
        size = "a folder" if path.is_dir() else f"{path.stat().st_size} bytes"
        raise ExportError(
            f"cannot read {path}: not a .keras (zip) archive, truncated or overwritten ({size})"
        )
    try:
        return keras.models.load_model(path, compile=False, custom_objects=models.custom_objects())
    # Keras reports a damaged archive member as ValueError, KeyError, OSError (h5py),
    # zipfile.BadZipFile or TypeError, depending on the part that is damaged.
    except Exception as err:  # noqa: BLE001
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__
        raise ExportError(f"cannot read {path}: {type(err).__name__}: {reason}") from err


def file_identity(path: str | Path) -> dict[str, Any]:
    """`{"file": name, "size": bytes, "sha256": hex}` of a checkpoint file."""
    path = Path(path)
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"file": path.name, "size": path.stat().st_size, "sha256": digest}


def thresholds_mismatch(stored: dict, checkpoint: str | Path) -> str | None:
    """Why stored thresholds do not apply to `checkpoint` served without TTA; None if they do.

    Args:
        stored: the content of `thresholds.json`.
        checkpoint: the checkpoint file being exported.
    """
    chosen_for = stored.get("checkpoint")
    if not isinstance(chosen_for, dict) or "sha256" not in chosen_for:
        return "it records no checkpoint (written by an older cxr_tf)"
    name = Path(checkpoint).name
    if chosen_for.get("file") != name:
        return f"it was chosen for {chosen_for.get('file')}, this is {name}"
    sha256 = file_identity(checkpoint)["sha256"]
    if chosen_for["sha256"] != sha256:
        return (
            f"it was chosen for an earlier {name} (sha256 {str(chosen_for['sha256'])[:12]}...); "
            f"the file has changed since (sha256 {sha256[:12]}...)"
        )
    if stored.get("tta", "none") != "none":
        return (
            f"it was chosen with test-time augmentation {stored['tta']!r}; the export serves "
            "single views"
        )
    if stored.get("split") != "validation":
        return f"it was chosen on split {stored.get('split')!r}, not validation"
    return None


def read_thresholds(
    run_dir: str | Path, names: Sequence[str], checkpoint: str | None = None
) -> tuple[list[float], dict]:
    """The decision threshold per output and where it came from.

    `RUN/thresholds.json` (written by evaluation) when it was chosen for this very
    checkpoint file without test-time augmentation; else 0.5 for every output, and the
    source says why (`ignored`: the file and the reason). An output the file leaves out
    (or sets to null) also gets 0.5, listed in `defaulted`.

    Args:
        run_dir: the training run.
        names: the output names, in model order.
        checkpoint: the checkpoint file name in `run_dir` the thresholds must belong to
            (default best.keras).

    Raises:
        ExportError: the file is not a thresholds file or holds a value outside [0, 1].
    """
    checkpoint = checkpoint or train.BEST_MODEL
    path = Path(run_dir) / THRESHOLDS_FILE
    default = {"file": None, "method": "default", "defaulted": list(names)}
    if not path.exists():
        return [DEFAULT_THRESHOLD] * len(names), default
    try:
        stored = json.loads(path.read_text())
        table = stored["thresholds"]
        values, defaulted = [], []
        for name in names:
            value = table.get(name)
            if value is None:
                defaulted.append(name)
                value = DEFAULT_THRESHOLD
            if not 0.0 <= float(value) <= 1.0:
                raise ExportError(f"{path}: threshold of {name} is {value}, not in [0, 1]")
            values.append(float(value))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ExportError(f"{path}: not a thresholds file ({err})") from err
    mismatch = thresholds_mismatch(stored, Path(run_dir) / checkpoint)
    if mismatch is not None:
        ignored = {"file": THRESHOLDS_FILE, "reason": f"{THRESHOLDS_FILE}: {mismatch}"}
        return [DEFAULT_THRESHOLD] * len(names), {**default, "ignored": ignored}
    source = {
        "file": THRESHOLDS_FILE,
        "method": stored.get("method"),
        "split": stored.get("split"),
        "target_sensitivity": stored.get("target_sensitivity"),
        "tta": stored.get("tta", "none"),
        "checkpoint": stored.get("checkpoint"),
        "defaulted": defaulted,
    }
    return values, source


def threshold_warning(source: dict) -> str | None:
    """The loud line to print when thresholds.json was ignored; None otherwise."""
    ignored = source.get("ignored")
    if not ignored:
        return None
    return (
        f"WARNING: decision thresholds are the default 0.5, not the evaluated ones: "
        f"{ignored['reason']}. Rerun `python -m cxr_tf.evaluate` on this checkpoint "
        "without --tta to choose them."
    )


def _dataset_identity(run_dir: Path, dataset: str, summary: dict) -> dict:
    identity: dict[str, Any] = {
        "path": dataset,
        "fingerprint": summary.get("dataset_fingerprint"),
        "source": "summary.json" if summary.get("dataset_fingerprint") else None,
    }
    from cxr_tf import pipeline  # only for the manifest; optional when the folder is gone

    try:
        manifest = pipeline.load_manifest(dataset)
    except (pipeline.DatasetError, OSError, json.JSONDecodeError):
        return identity
    identity.update(
        name=manifest.get("dataset"),
        schema_version=manifest.get("schema_version"),
        image=manifest.get("image"),
    )
    if identity["fingerprint"] is None:
        identity.update(fingerprint=manifest.get("fingerprint"), source="manifest.json")
    elif manifest.get("fingerprint") != identity["fingerprint"]:
        identity["warning"] = (
            f"the dataset at {dataset} now has fingerprint {manifest.get('fingerprint')}; "
            "the run was trained on the one recorded here"
        )
    return identity


def run_metadata(run_dir: str | Path, model: keras.Model, checkpoint: str | None = None) -> dict:
    """Everything the artifact says about itself: labels, sizes, thresholds, config, dataset.

    Args:
        run_dir: the training run.
        model: its model, loaded from `checkpoint` (a file name in `run_dir`, default
            best.keras).
        checkpoint: recorded in the metadata.
    """
    run_dir = Path(run_dir)
    checkpoint = checkpoint or train.BEST_MODEL
    run = train.load_run_config(run_dir)
    summary_path = run_dir / train.SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    names = list(models.output_names(run.model))
    stored = int(model.inputs[0].shape[1])
    if int(model.outputs[0].shape[-1]) != len(names):
        raise ExportError(
            f"{run_dir}: the model has {model.outputs[0].shape[-1]} outputs, "
            f"the config names {len(names)} ({names})"
        )
    if summary.get("stored_size") not in (None, stored):
        raise ExportError(
            f"{run_dir}: summary.json says stored size {summary['stored_size']}, "
            f"the model takes {stored}"
        )
    thresholds, source = read_thresholds(run_dir, names, checkpoint)
    if run.model.task == "multiclass":
        source = {**source, "note": "multi-class: the decision is the argmax class"}
    return {
        "format": "cxr_tf.export",
        "format_version": FORMAT_VERSION,
        "task": run.model.task,
        "labels": names,
        "finding_vocabulary": list(FINDINGS),
        "stored_size": stored,
        "model_input_size": run.model.image_size,
        "backbone": run.model.backbone,
        "thresholds": dict(zip(names, thresholds, strict=True)),
        "threshold_source": source,
        "preprocessing": {
            "serving_default": "cxr_tf.preprocessing.bytes_to_stored(image_bytes, stored_size)",
            "max_side": preprocessing.MAX_SIDE,
            "convention": "gray (ITU-R 601 luma for RGB/RGBA), 16-bit -> 8-bit, bilinear "
            "antialiased resize to stored_size, uint8; the model resizes to model_input_size",
        },
        "signatures": {
            serving.SERVING_SIGNATURE: {serving.BYTES_INPUT: "string (B,) encoded PNG/JPEG"},
            serving.IMAGES_SIGNATURE: {
                serving.IMAGES_INPUT: f"float32 (B, {stored}, {stored}, 1), 0..255"
            },
            serving.METADATA_SIGNATURE: {serving.METADATA_INPUT: "int32 scalar, ignored"},
        },
        "dataset": _dataset_identity(run_dir, run.data.dataset, summary),
        "run": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": checkpoint,
            "checkpoint_sha256": file_identity(run_dir / checkpoint)["sha256"],
            "best_val_mean_auroc": summary.get("best_val_mean_auroc"),
            "best_epoch": summary.get("best_epoch"),
        },
        "config": to_dict(run),
        "versions": {
            "cxr_tf": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------ signatures


def build_serving_functions(model: keras.Model, meta: dict) -> dict[str, Any]:
    """The functions behind the three signatures, as plain Python callables of tensors.

    The export wraps them as `tf.function`s; `cxr_tf.predict` runs the same ones on Keras
    models, so local and served predictions come from one definition.

    Returns:
        `{"serving_default": f(image_bytes), "predict_images": f(images),
        "metadata": f(unused)}`.
    """
    size = int(meta["stored_size"])
    task = meta["task"]
    labels = list(meta["labels"])
    label_tensor = tf.constant(labels)
    thresholds = tf.constant([meta["thresholds"][n] for n in labels], tf.float32)
    metadata_json = json.dumps(meta, sort_keys=True)

    def _check_batch(batch: tf.Tensor, what: str) -> None:
        tf.debugging.assert_positive(
            tf.size(batch), message=f"empty batch: {what} holds no images; send at least one"
        )

    def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)
        probs = tf.cast(models.probabilities(logits, task), tf.float32)
        out = {
            "labels": tf.tile(label_tensor[None], [tf.shape(probs)[0], 1]),
            "probabilities": probs,
        }
        out.update({name: probs[:, i] for i, name in enumerate(labels)})
        if task == "multiclass":
            index = tf.argmax(probs, axis=-1, output_type=tf.int32)
            out.update(class_index=index, class_name=tf.gather(label_tensor, index))
        else:
            out["decisions"] = probs >= thresholds
        return out

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        _check_batch(image_bytes, serving.BYTES_INPUT)
        stored = tf.map_fn(
            lambda data: preprocessing.bytes_to_stored(data, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec((size, size, 1), tf.uint8),
        )
        return outputs(tf.cast(stored, tf.float32))

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        _check_batch(images, serving.IMAGES_INPUT)
        tf.debugging.assert_greater_equal(
            tf.reduce_min(images), 0.0, message="images must be in 0..255 (gray levels)"
        )
        tf.debugging.assert_less_equal(
            tf.reduce_max(images), 255.0, message="images must be in 0..255 (gray levels)"
        )
        return outputs(images)

    def metadata(unused: tf.Tensor) -> dict[str, tf.Tensor]:
        del unused  # TF Serving's REST API rejects a signature without inputs
        return {
            "metadata_json": tf.constant(metadata_json),
            "labels": label_tensor,
            "thresholds": thresholds,
            "stored_size": tf.constant(size, tf.int32),
            "task": tf.constant(task),
        }

    return {
        serving.SERVING_SIGNATURE: serve_bytes,
        serving.IMAGES_SIGNATURE: serve_images,
        serving.METADATA_SIGNATURE: metadata,
    }


def input_signatures(size: int) -> dict[str, list[tf.TensorSpec]]:
    """The input signature of each endpoint."""
    return {
        serving.SERVING_SIGNATURE: [tf.TensorSpec([None], tf.string, name=serving.BYTES_INPUT)],
        serving.IMAGES_SIGNATURE: [
            tf.TensorSpec([None, size, size, 1], tf.float32, name=serving.IMAGES_INPUT)
        ],
        serving.METADATA_SIGNATURE: [tf.TensorSpec([], tf.int32, name=serving.METADATA_INPUT)],
    }


# ------------------------------------------------------------------------------ files


def default_model_name(model: ModelConfig) -> str:
    """The TF Serving name of a run's export when `--name` is not given.

    `cxr_<task>`, followed by the outputs when they are a choice (binary, multi-class, a
    multi-label subset), so that models of different outputs never become versions of one
    another: `cxr_binary-pneumothorax`, `cxr_binary-any`, `cxr_multilabel`.
    """
    names = models.output_names(model)
    name = f"cxr_{model.task}"
    if model.task == "multilabel" and tuple(names) == tuple(FINDINGS):
        return name
    slugs = ["".join(c if c.isalnum() else "_" for c in n.lower()) for n in names]
    return "-".join([name, *slugs])


def remove_stale_partials(base: str | Path) -> list[Path]:
    """Removes the hidden partial folders of exports that died; returns those removed.

    A partial folder is named `.partial-<version>-<pid>`; one whose process still runs on
    this machine (another export in progress) is kept.
    """
    removed = []
    base = Path(base)
    for folder in sorted(base.glob(f"{PARTIAL_PREFIX}*")) if base.is_dir() else []:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a pid out of range
        return False
    except PermissionError:  # another user's process
        return True
    return True


def next_version(base: str | Path) -> int:
    """One above the highest numeric version folder under `base` (1 when none)."""
    base = Path(base)
    versions = (
        [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
        if base.exists()
        else []
    )
    return max(versions, default=0) + 1


def warmup_image(size: int) -> bytes:
    """A small gray PNG (a smooth gradient) for the warm-up request."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = ((ramp[:, None] + ramp[None, :]) / 2).astype(np.uint8)[..., None]
    return preprocessing.encode_png(tf.constant(image)).numpy()


def write_warmup(path: str | Path, model_name: str, size: int) -> Path:
    """`assets.extra/tf_serving_warmup_requests`: TFRecord of PredictionLog records.

    One request of one image and one of two, both for `serving_default`, so the server runs
    the decoding and the model once before it reports the version as available.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = warmup_image(size)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in (1, 2):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=model_name, signature_name=serving.SERVING_SIGNATURE
                )
            )
            request.inputs[serving.BYTES_INPUT].CopyFrom(
                tf.make_tensor_proto([image] * batch, dtype=tf.string, shape=[batch])
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def write_models_config(base: str | Path, model_name: str) -> Path:
    """`<base>/models.config`: a ModelServerConfig serving the latest version of `base`."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base = Path(base)
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = model_name
    entry.base_path = str(base.resolve())
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = 1
    path = base / MODELS_CONFIG
    path.write_text(text_format.MessageToString(config))
    return path


def export(config: ExportConfig, verbose: bool = True) -> Path:
    """Exports `config.run_dir`; returns the version folder written.

    Raises:
        ExportError: no run, a version that exists, or a run inconsistent with its files.
    """
    if not config.run_dir:
        raise ExportError("run_dir: which run to export (--run_dir RUN)")
    run_dir = Path(config.run_dir)
    if not (run_dir / train.CONFIG_FILE).exists():
        raise ExportError(f"{run_dir / train.CONFIG_FILE} not found: not a training run")
    name = config.name or default_model_name(train.load_run_config(run_dir).model)
    base = Path(config.out) / name
    version = config.version or next_version(base)
    final = base / str(version)
    if final.exists():
        raise ExportError(f"{final} exists; choose another --version or leave it out")
    checkpoint = checkpoint_name(config.model)
    model = load_model_file(run_dir / checkpoint)
    meta = run_metadata(run_dir, model, checkpoint)
    meta.update(model_name=name, version=version)

    archive = keras.export.ExportArchive()
    archive.track(model)
    functions = build_serving_functions(model, meta)
    for endpoint, spec in input_signatures(meta["stored_size"]).items():
        archive.add_endpoint(endpoint, functions[endpoint], input_signature=spec)
    base.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_partials(base):
        if verbose:
            print(f"removed {stale}: left by an export that did not finish")
    # A non-numeric name: TF Serving ignores the folder until the rename below.
    partial = base / f"{PARTIAL_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        archive.write_out(str(partial), verbose=False)
        extra = partial / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if config.warmup:
            write_warmup(extra / WARMUP_FILE, name, meta["stored_size"])
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    write_models_config(base, name)
    warning = threshold_warning(meta["threshold_source"])
    if warning:
        print(f"export: {warning}", file=sys.stderr)
    if verbose:
        print(
            f"exported {run_dir / checkpoint} -> {final}\n"
            f"  task {meta['task']}, {len(meta['labels'])} output(s), stored size "
            f"{meta['stored_size']}, thresholds: {meta['threshold_source']['method']}"
            f"{' (0.5: thresholds.json ignored)' if warning else ''}\n"
            f"  serve: tensorflow_model_server --rest_api_port=8501 "
            f"--model_config_file={(base / MODELS_CONFIG).resolve()}"
        )
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(ExportConfig, __doc__, "python -m cxr_tf.export")
    config, _ = parse_config(ExportConfig, parser, argv)
    try:
        export(config)
    except (ExportError, ConfigError, FileNotFoundError) as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
