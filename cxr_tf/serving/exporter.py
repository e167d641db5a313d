"""A training run as a TF Serving SavedModel (`python -m cxr_tf.export`): the serving
signatures and what they return, the metadata, the warm-up requests, the version folders
written atomically. The command's help describes the signatures."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cxr_tf import __version__
from cxr_tf.config import ExportConfig, ModelConfig, to_dict
from cxr_tf.data import preprocessing
from cxr_tf.evaluation.thresholds import read_thresholds, threshold_warning
from cxr_tf.labels import FINDINGS
from cxr_tf.modeling import models
from cxr_tf.runs import folder as runs
from cxr_tf.serving import client

METADATA_FILE = "cxr_tf_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"
MODELS_CONFIG = "models.config"
FORMAT_VERSION = 1
PARTIAL_PREFIX = ".partial-"


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says why."""


# ------------------------------------------------------------------------------ metadata


def _dataset_identity(run_dir: Path, dataset: str, summary: dict) -> dict:
    identity: dict[str, Any] = {
        "path": dataset,
        "fingerprint": summary.get("dataset_fingerprint"),
        "source": "summary.json" if summary.get("dataset_fingerprint") else None,
    }
    # only for the manifest; optional when the folder is gone
    from cxr_tf.data.manifest import MANIFEST, DatasetError, Manifest

    try:
        manifest = Manifest.load(dataset)
    except (DatasetError, OSError):
        return identity
    identity.update(
        name=manifest.dataset,
        schema_version=manifest.schema_version,
        image=manifest.image.to_dict(),
    )
    if identity["fingerprint"] is None:
        identity.update(fingerprint=manifest.fingerprint, source=MANIFEST)
    elif manifest.fingerprint != identity["fingerprint"]:
        identity["warning"] = (
            f"the dataset at {dataset} now has fingerprint {manifest.fingerprint}; "
            "the run was trained on the one recorded here"
        )
    return identity


def _all_square(sizes: dict[str, int]) -> bool:
    """Whether a manifest's `source.image_sizes` ("WxH" -> images) are all square."""
    sides = [key.split("x") for key in sizes]
    return bool(sides) and all(len(s) == 2 and s[0] == s[1] for s in sides)


def _readable_manifests(datasets: tuple[str, ...]) -> dict[str, Any]:
    """Each dataset's Manifest, those that can be read (a dataset folder may be gone)."""
    from cxr_tf.data.manifest import DatasetError, Manifest

    found: dict[str, Any] = {}
    for dataset in datasets:
        try:
            found[dataset] = Manifest.load(dataset)
        except (DatasetError, OSError):
            continue
    return found


def dataset_resize(run_dir: Path, datasets: tuple[str, ...]) -> dict[str, str]:
    """How the run's datasets made their images square (`--resize` of the conversion), for
    serving to repeat: `{"resize": mode, "resize_source": where it was read}`.

    A dataset whose images were all square was the same under every mode and does not
    decide. Without any readable manifest the mode is `squash` (every conversion before
    the choice), and `resize_source` says so.

    Raises:
        ExportError: datasets converted with different modes (serving can apply only one).
    """
    from cxr_tf.data.manifest import MANIFEST

    found = _readable_manifests(datasets)
    if not found:
        return {
            "resize": "squash",
            "resize_source": f"default: no {MANIFEST} found for {', '.join(datasets)}",
        }
    deciding = {d: m.resize for d, m in found.items() if not _all_square(m.source.image_sizes)}
    modes = sorted(set(deciding.values()))
    if len(modes) > 1:
        listed = "; ".join(f"{d}: --resize {mode}" for d, mode in deciding.items())
        raise ExportError(
            f"{run_dir}: its datasets made non-square images square in different ways "
            f"({listed}); a served model applies one: convert them with one --resize and "
            "train again"
        )
    where = next(iter(deciding or found))
    return {"resize": found[where].resize, "resize_source": f"{where}/{MANIFEST}"}


def _decides_jpeg(manifest: Any) -> bool:
    """Whether a dataset's JPEG decoding is one serving must repeat: it counted JPEG
    images, or it cannot tell (pixel mappings from before they were recorded) and its
    source is not NIH (PNGs only)."""
    from cxr_tf.data.conversion import UNRECORDED

    mappings = manifest.source.pixel_mappings
    unknown = not mappings or UNRECORDED in mappings
    return manifest.has_jpeg or (unknown and manifest.source.kind != "nih")


def dataset_jpeg_decode(run_dir: Path, datasets: tuple[str, ...]) -> dict[str, str]:
    """How the run's datasets decoded their JPEG files (`--jpeg_decode` of the conversion),
    for serving to repeat: `{"jpeg_decode": mode, "jpeg_decode_source": where it was read}`.

    Datasets that hold no JPEG do not decide (`_decides_jpeg`). Without a deciding manifest
    the mode is the conversion's default, and `jpeg_decode_source` says why: no JPEG
    counted, or no manifest found (then `jpeg_decode_warning` has something to say).

    Raises:
        ExportError: datasets whose JPEGs were decoded in different ways.
    """
    from cxr_tf.config.data import DEFAULT_JPEG_DECODE
    from cxr_tf.data.manifest import MANIFEST

    found = _readable_manifests(datasets)
    deciding = {d: m.jpeg_decode for d, m in found.items() if _decides_jpeg(m)}
    if not deciding:
        why = f"no {MANIFEST} found for" if not found else f"no JPEG counted in the {MANIFEST} of"
        return {
            "jpeg_decode": DEFAULT_JPEG_DECODE,
            "jpeg_decode_source": f"default: {why} {', '.join(datasets)}",
        }
    if len(set(deciding.values())) > 1:
        listed = "; ".join(f"{d}: --jpeg_decode {mode}" for d, mode in deciding.items())
        raise ExportError(
            f"{run_dir}: its datasets decoded JPEG files in different ways ({listed}); a "
            "served model applies one: convert them with one --jpeg_decode and train again"
        )
    where = next(iter(deciding))
    return {"jpeg_decode": deciding[where], "jpeg_decode_source": f"{where}/{MANIFEST}"}


def resize_warning(meta: dict) -> str:
    """What to say when the resize mode was not read from the dataset; "" when it was."""
    source = str((meta.get("preprocessing") or {}).get("resize_source", ""))
    if not source.startswith("default"):
        return ""
    return (
        f"incoming images are made square by squash ({source}); if the dataset was "
        "converted with --resize crop or pad, served predictions differ from evaluation"
    )


def jpeg_decode_warning(meta: dict) -> str:
    """What to say when the JPEG decoding could not be read from any dataset manifest; ""
    when it was, or when the datasets hold no JPEG."""
    source = str((meta.get("preprocessing") or {}).get("jpeg_decode_source", ""))
    if not source.startswith("default: no manifest.json found"):
        return ""
    mode = serving_jpeg_decode(meta)
    return (
        f"incoming JPEGs are decoded by --jpeg_decode {mode} ({source}); if the dataset was "
        "converted with another mode, served pixels differ slightly from evaluation's"
    )


def preprocessing_warnings(meta: dict) -> list[str]:
    """`resize_warning` and `jpeg_decode_warning`, those that have something to say."""
    return [w for w in (resize_warning(meta), jpeg_decode_warning(meta)) if w]


def serving_resize(meta: dict) -> str:
    """The resize mode a model's metadata names (`squash` for exports before the choice)."""
    return str((meta.get("preprocessing") or {}).get("resize", "squash"))


def serving_jpeg_decode(meta: dict) -> str:
    """The JPEG decoding a model's metadata names (`fast` for exports before the choice:
    they decoded JPEGs with TensorFlow's default IDCT)."""
    return str((meta.get("preprocessing") or {}).get("jpeg_decode", "fast"))


def run_metadata(run_dir: str | Path, model: keras.Model, checkpoint: str | None = None) -> dict:
    """Everything the artifact says about itself: labels, sizes, thresholds, config, dataset.

    Args:
        run_dir: the training run.
        model: its model, loaded from `checkpoint` (a file name in `run_dir`, default
            best.keras).
        checkpoint: recorded in the metadata.
    """
    run_dir = Path(run_dir)
    checkpoint = checkpoint or runs.MODEL_FILES["best"]
    run = runs.load_run_config(run_dir)
    summary_path = run_dir / runs.SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    names = list(run.model.output_names)
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
        "model_input_size": run.model.input_size,
        "backbone": run.model.backbone,
        "thresholds": dict(zip(names, thresholds, strict=True)),
        "threshold_source": source,
        "preprocessing": {
            "serving_default": (
                "cxr_tf.data.preprocessing.bytes_to_stored(image_bytes, stored_size, resize, "
                "jpeg_decode)"
            ),
            "max_side": preprocessing.MAX_SIDE,
            "convention": "gray (ITU-R 601 luma for RGB/RGBA), 16-bit -> 8-bit, made square "
            "as the dataset was (resize: squash keeps the whole image, crop its centre square, "
            "pad adds black bars), JPEGs decoded as the dataset's were (jpeg_decode: reduced "
            "at 1/2 or 1/4 scale while the reduced image keeps twice the stored side, full, "
            "or fast), area-averaging resize to stored_size, uint8; the model resizes "
            "(bilinear, antialiased) to model_input_size",
            **dataset_resize(run_dir, run.data.datasets),
            **dataset_jpeg_decode(run_dir, run.data.datasets),
        },
        "signatures": {
            client.SERVING_SIGNATURE: {client.BYTES_INPUT: "string (B,) encoded PNG/JPEG"},
            client.IMAGES_SIGNATURE: {
                client.IMAGES_INPUT: f"float32 (B, {stored}, {stored}, 1), 0..255"
            },
            client.METADATA_SIGNATURE: {client.METADATA_INPUT: "int32 scalar, ignored"},
        },
        "dataset": _dataset_identity(run_dir, run.data.dataset, summary),
        "run": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": checkpoint,
            "checkpoint_sha256": runs.file_identity(run_dir / checkpoint)["sha256"],
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
    resize, jpeg = serving_resize(meta), serving_jpeg_decode(meta)
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
        _check_batch(image_bytes, client.BYTES_INPUT)
        stored = tf.map_fn(
            lambda data: preprocessing.bytes_to_stored(data, size, resize, jpeg),
            image_bytes,
            fn_output_signature=tf.TensorSpec((size, size, 1), tf.uint8),
        )
        return outputs(tf.cast(stored, tf.float32))

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        _check_batch(images, client.IMAGES_INPUT)
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
        client.SERVING_SIGNATURE: serve_bytes,
        client.IMAGES_SIGNATURE: serve_images,
        client.METADATA_SIGNATURE: metadata,
    }


def input_signatures(size: int) -> dict[str, list[tf.TensorSpec]]:
    """The input signature of each endpoint."""
    return {
        client.SERVING_SIGNATURE: [tf.TensorSpec([None], tf.string, name=client.BYTES_INPUT)],
        client.IMAGES_SIGNATURE: [
            tf.TensorSpec([None, size, size, 1], tf.float32, name=client.IMAGES_INPUT)
        ],
        client.METADATA_SIGNATURE: [tf.TensorSpec([], tf.int32, name=client.METADATA_INPUT)],
    }


# ------------------------------------------------------------------------------ files


def default_model_name(model: ModelConfig) -> str:
    """The TF Serving name of a run's export when `--name` is not given.

    `cxr_<task>`, followed by the outputs when they are a choice (binary, multi-class, a
    multi-label subset), so that models of different outputs never become versions of one
    another: `cxr_binary-pneumothorax`, `cxr_binary-any`, `cxr_multilabel`.
    """
    names = model.output_names
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
                    name=model_name, signature_name=client.SERVING_SIGNATURE
                )
            )
            request.inputs[client.BYTES_INPUT].CopyFrom(
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
    if not (run_dir / runs.CONFIG_FILE).exists():
        raise ExportError(f"{run_dir / runs.CONFIG_FILE} not found: not a training run")
    name = config.name or default_model_name(runs.load_run_config(run_dir).model)
    base = Path(config.out) / name
    version = config.version or next_version(base)
    final = base / str(version)
    if final.exists():
        raise ExportError(f"{final} exists; choose another --version or leave it out")
    checkpoint = runs.MODEL_FILES[config.model]
    model = runs.load_model_file(run_dir / checkpoint)
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
    for line in preprocessing_warnings(meta):
        print(f"export: WARNING: {line}", file=sys.stderr)
    if verbose:
        print(
            f"exported {run_dir / checkpoint} -> {final}\n"
            f"  task {meta['task']}, {len(meta['labels'])} output(s), stored size "
            f"{meta['stored_size']} ({serving_resize(meta)}), thresholds: "
            f"{meta['threshold_source']['method']}"
            f"{' (0.5: thresholds.json ignored)' if warning else ''}\n"
            f"  serve: tensorflow_model_server --rest_api_port=8501 "
            f"--model_config_file={(base / MODELS_CONFIG).resolve()}"
        )
    return final
