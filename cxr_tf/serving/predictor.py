"""Predictions on image files (`python -m cxr_tf.predict`) from a run directory, a `.keras`
file, a SavedModel or a TF Serving server, and the Grad-CAM overlays.

DICOM files are decoded here, in Python, by `cxr_tf.sources.dicom` (the same decode conversion
uses) and sent to the model as a 16-bit grayscale PNG of the decoded pixels
(`dicom.to_png`), which the model's in-graph decoder reads back within 1/514 of a gray
level: every model kind (Keras, SavedModel, TF Serving) then takes the file unchanged, and
no DICOM library is needed inside the exported graph or the server."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxr_tf.serving import client

# What `preprocessing.decode_to_gray` decodes through tf.io.decode_image (a GIF's first
# frame), each checked by the tests.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WebP")
# ... and DICOM, decoded in Python before the model sees it (`image_bytes`).
ACCEPTED = ", ".join((*IMAGE_FORMATS, "DICOM"))
UNKNOWN_FORMAT = f"not an image file this command reads (accepted: {ACCEPTED})"


class SourceError(ValueError):
    """--model does not name something this command can load."""


def image_bytes(data: bytes) -> bytes:
    """The bytes the model is sent for an image file's bytes: a DICOM file becomes the
    16-bit PNG of its decoded pixels (see the module doc); other formats are unchanged.

    Raises:
        ValueError: a DICOM file that does not decode (the reason says why).
    """
    from cxr_tf.sources import dicom

    return dicom.as_png(data) if dicom.is_dicom(data) else data


@dataclasses.dataclass
class Predictor:
    """A loaded model: encoded image files in, one `client.image_result` per image out."""

    kind: str  # "keras", "saved_model" or "server"
    source: str
    meta: dict | None
    predict_bytes: Callable[[list[bytes]], list[dict]]
    model: Any = None  # the Keras model (Grad-CAM), for kind "keras"


def _keras_predictor(model_file: Path) -> Predictor:
    import tensorflow as tf

    from cxr_tf.runs import folder as runs
    from cxr_tf.serving import exporter

    run_dir = model_file.parent
    if not (run_dir / runs.CONFIG_FILE).exists():
        raise SourceError(
            f"{model_file}: no {runs.CONFIG_FILE} beside it; a .keras file is read from its "
            "run directory, which says what the outputs are"
        )
    model = runs.load_model_file(model_file)
    meta = exporter.run_metadata(run_dir, model, model_file.name)
    size = meta["stored_size"]
    serve = tf.function(
        exporter.build_serving_functions(model, meta)[client.SERVING_SIGNATURE],
        input_signature=exporter.input_signatures(size)[client.SERVING_SIGNATURE],
    )

    def predict_bytes(images: list[bytes]) -> list[dict]:
        outputs = serve(tf.constant(images, dtype=tf.string))
        return client.outputs_to_results({k: v.numpy() for k, v in outputs.items()})

    return Predictor("keras", str(model_file), meta, predict_bytes, model)


def _saved_model_predictor(folder: Path) -> Predictor:
    import tensorflow as tf

    from cxr_tf.serving import exporter

    loaded = tf.saved_model.load(str(folder))
    if client.SERVING_SIGNATURE not in loaded.signatures:
        raise SourceError(f"{folder}: a SavedModel without a {client.SERVING_SIGNATURE} signature")
    signature = loaded.signatures[client.SERVING_SIGNATURE]
    meta_file = folder / "assets.extra" / exporter.METADATA_FILE
    meta = None
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
    elif client.METADATA_SIGNATURE in loaded.signatures:
        call = loaded.signatures[client.METADATA_SIGNATURE]
        raw = call(**{client.METADATA_INPUT: tf.constant(0)})["metadata_json"].numpy()
        meta = json.loads(raw.decode())

    def predict_bytes(images: list[bytes]) -> list[dict]:
        outputs = signature(**{client.BYTES_INPUT: tf.constant(images, dtype=tf.string)})
        return client.outputs_to_results({k: v.numpy() for k, v in outputs.items()})

    # `loaded` must outlive the signature function, which holds only weak references.
    predictor = Predictor("saved_model", str(folder), meta, predict_bytes)
    predictor.model = loaded
    return predictor


def load_predictor(path: str | Path) -> Predictor:
    """A run directory, a `.keras` file, a SavedModel folder or an export base folder.

    Raises:
        SourceError: `path` is none of these.
    """
    from cxr_tf.runs import folder as runs

    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        return _keras_predictor(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return _saved_model_predictor(path)
        versions = [
            p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").exists()
        ]
        if versions:
            return _saved_model_predictor(max(versions, key=lambda p: int(p.name)))

        if runs.model_path(path).exists():
            return _keras_predictor(runs.model_path(path))
    raise SourceError(
        f"{path}: expected a run directory (with best.keras), a .keras file, a SavedModel "
        "folder (with saved_model.pb) or an export folder of numbered versions"
    )


def server_metadata(url: str, timeout: float) -> dict | None:
    """The model's metadata from the server's `metadata` signature; None if it has none.

    Raises:
        client.ServerUnreachable: the server did not answer.
    """
    try:
        reply = client.post_json(client.predict_url(url), client.metadata_request_body(), timeout)
        raw = reply["outputs"]["metadata_json"]
        return json.loads(raw if isinstance(raw, str) else raw[0])
    except client.ServerUnreachable:
        raise
    except (client.ServingError, KeyError, IndexError, TypeError, json.JSONDecodeError):
        return None


def server_predictor(url: str, timeout: float) -> Predictor:
    """Predictions from a running TF Serving (REST) at `url`, with its metadata when given."""
    client.predict_url(url)  # fail early on a malformed URL

    def predict_bytes(images: list[bytes]) -> list[dict]:
        return client.query(url, images, timeout)

    return Predictor("server", url, server_metadata(url, timeout), predict_bytes)


# ------------------------------------------------------------------------------ running


def _reason(err: Exception) -> str:
    reason = client.error_reason(getattr(err, "message", None) or str(err))
    # TensorFlow's "Unknown image file format. One of JPEG, JPEG XL, PNG, ... required."
    return UNKNOWN_FORMAT if "Unknown image file format" in reason else reason


def _answer(file: str, answer: dict, thresholds: dict[str, float] | None) -> dict[str, Any]:
    """A successful result; each finding with a yes/no decision gets the threshold it used."""
    for finding in answer["findings"]:
        if finding["decision"] is not None:
            finding["threshold"] = (thresholds or {}).get(finding["name"])
    return {"file": file, "ok": True, **answer}


def predict_files(
    predictor: Predictor, files: Sequence[str], batch_size: int = 16
) -> list[dict[str, Any]]:
    """One result per file, in order: `{"file", "ok", ...}`; a file that fails has `error`.

    Findings with a decision carry `threshold` (None when the model's metadata is unknown).
    A batch that fails is retried one file at a time, so one bad file costs only itself.

    Raises:
        client.ServerUnreachable: the server did not answer.
    """
    import tensorflow as tf

    results: dict[str, dict] = {}
    data: dict[str, bytes] = {}
    for file in files:
        try:
            data[file] = image_bytes(Path(file).read_bytes())
        except OSError as err:
            results[file] = {
                "file": file,
                "ok": False,
                "error": f"cannot read: {err.strerror or err}",
            }
        except ValueError as err:  # a DICOM file that does not decode
            results[file] = {"file": file, "ok": False, "error": f"DICOM: {err}"}
    readable = [f for f in files if f in data]
    thresholds = (predictor.meta or {}).get("thresholds")
    failures = (tf.errors.InvalidArgumentError, client.ServingError)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        try:
            answers = predictor.predict_bytes([data[f] for f in chunk])
            for file, answer in zip(chunk, answers, strict=True):
                results[file] = _answer(file, answer, thresholds)
            continue
        except client.ServerUnreachable:
            raise
        except failures:
            pass
        for file in chunk:
            try:
                (answer,) = predictor.predict_bytes([data[file]])
                results[file] = _answer(file, answer, thresholds)
            except client.ServerUnreachable:
                raise
            except failures as err:
                results[file] = {"file": file, "ok": False, "error": _reason(err)}
    return [results[f] for f in files]


def write_gradcam(predictor: Predictor, results: list[dict], folder: str | Path) -> None:
    """Adds `gradcam` (the overlay's path) to each successful result, for its top finding."""
    import numpy as np

    from cxr_tf.data import preprocessing
    from cxr_tf.evaluation import localization
    from cxr_tf.modeling import models
    from cxr_tf.serving import exporter

    folder = Path(folder)
    model = predictor.model
    layer = models.feature_layer_name(model)
    size = predictor.meta["stored_size"]
    resize = exporter.serving_resize(predictor.meta)  # the geometry the model was fed
    jpeg = exporter.serving_jpeg_decode(predictor.meta)
    used: set[str] = set()
    for result in results:
        if not result["ok"]:
            continue
        data = image_bytes(Path(result["file"]).read_bytes())
        stored = preprocessing.bytes_to_stored(data, size, resize, jpeg).numpy()
        probs = [f["probability"] for f in result["findings"]]
        index = result["class"]["index"] if result["class"] else int(np.argmax(probs))
        heatmap = localization.gradcam(model, stored[None], index, layer)[0]
        stem = Path(result["file"]).stem
        name, count = f"{stem}_gradcam.png", 1
        while name in used:
            count += 1
            name = f"{stem}_{count}_gradcam.png"
        used.add(name)
        finding = result["findings"][index]
        title = f"{finding['name']} p={finding['probability']:.3f}"
        result["gradcam"] = str(
            localization.overlay_png(stored, heatmap, folder / name, title=title)
        )
