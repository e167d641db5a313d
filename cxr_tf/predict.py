"""`python -m cxr_tf.predict IMAGE [IMAGE ...]`: findings per image file.

Examples:
  python -m cxr_tf.predict chest.png --model runs/20261127-101500-densenet121-multilabel
  python -m cxr_tf.predict a.png b.jpg --model runs/RUN/last.keras --gradcam overlays/
  python -m cxr_tf.predict a.png --model export/cxr_multilabel --json
  python -m cxr_tf.predict a.png --server http://localhost:8501/v1/models/cxr_multilabel

--model takes a run directory (its best.keras), a .keras file inside a run directory, an
exported SavedModel version folder, or an export base folder (its highest version). Local
Keras models run the very functions the export puts behind `serving_default`; --server sends
the files to TF Serving's REST API instead. --gradcam writes one overlay per image for the
top finding (Keras models only: a SavedModel holds no gradients to explain with).

Exit status: 0 when every image was predicted; 1 when some were not (each named on stderr,
or in the JSON, with the reason; the others are still predicted); 2 for usage errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxr_tf import serving
from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import ConfigError, PredictConfig


class SourceError(ValueError):
    """--model does not name something this command can load."""


@dataclasses.dataclass
class Predictor:
    """A loaded model: encoded image files in, one `serving.image_result` per image out."""

    kind: str  # "keras", "saved_model" or "server"
    source: str
    meta: dict | None
    predict_bytes: Callable[[list[bytes]], list[dict]]
    model: Any = None  # the Keras model (Grad-CAM), for kind "keras"


def _keras_predictor(model_file: Path) -> Predictor:
    import tensorflow as tf

    from cxr_tf import export, train

    run_dir = model_file.parent
    if not (run_dir / train.CONFIG_FILE).exists():
        raise SourceError(
            f"{model_file}: no {train.CONFIG_FILE} beside it; a .keras file is read from its "
            "run directory, which says what the outputs are"
        )
    model = export.load_model_file(model_file)
    meta = export.run_metadata(run_dir, model, model_file.name)
    size = meta["stored_size"]
    serve = tf.function(
        export.build_serving_functions(model, meta)[serving.SERVING_SIGNATURE],
        input_signature=export.input_signatures(size)[serving.SERVING_SIGNATURE],
    )

    def predict_bytes(images: list[bytes]) -> list[dict]:
        outputs = serve(tf.constant(images, dtype=tf.string))
        return serving.outputs_to_results({k: v.numpy() for k, v in outputs.items()})

    return Predictor("keras", str(model_file), meta, predict_bytes, model)


def _saved_model_predictor(folder: Path) -> Predictor:
    import tensorflow as tf

    from cxr_tf import export

    loaded = tf.saved_model.load(str(folder))
    if serving.SERVING_SIGNATURE not in loaded.signatures:
        raise SourceError(f"{folder}: a SavedModel without a {serving.SERVING_SIGNATURE} signature")
    signature = loaded.signatures[serving.SERVING_SIGNATURE]
    meta_file = folder / "assets.extra" / export.METADATA_FILE
    meta = None
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
    elif serving.METADATA_SIGNATURE in loaded.signatures:
        call = loaded.signatures[serving.METADATA_SIGNATURE]
        raw = call(**{serving.METADATA_INPUT: tf.constant(0)})["metadata_json"].numpy()
        meta = json.loads(raw.decode())

    def predict_bytes(images: list[bytes]) -> list[dict]:
        outputs = signature(**{serving.BYTES_INPUT: tf.constant(images, dtype=tf.string)})
        return serving.outputs_to_results({k: v.numpy() for k, v in outputs.items()})

    # `loaded` must outlive the signature function, which holds only weak references.
    predictor = Predictor("saved_model", str(folder), meta, predict_bytes)
    predictor.model = loaded
    return predictor


def load_predictor(path: str | Path) -> Predictor:
    """A run directory, a `.keras` file, a SavedModel folder or an export base folder.

    Raises:
        SourceError: `path` is none of these.
    """
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
        from cxr_tf import train

        if (path / train.BEST_MODEL).exists():
            return _keras_predictor(path / train.BEST_MODEL)
    raise SourceError(
        f"{path}: expected a run directory (with best.keras), a .keras file, a SavedModel "
        "folder (with saved_model.pb) or an export folder of numbered versions"
    )


def server_predictor(url: str, timeout: float) -> Predictor:
    """Predictions from a running TF Serving (REST) at `url`."""
    serving.predict_url(url)  # fail early on a malformed URL

    def predict_bytes(images: list[bytes]) -> list[dict]:
        return serving.query(url, images, timeout)

    return Predictor("server", url, None, predict_bytes)


# ------------------------------------------------------------------------------ running


def _reason(err: Exception) -> str:
    return serving.error_reason(getattr(err, "message", None) or str(err))


def predict_files(
    predictor: Predictor, files: Sequence[str], batch_size: int = 16
) -> list[dict[str, Any]]:
    """One result per file, in order: `{"file", "ok", ...}`; a file that fails has `error`.

    A batch that fails is retried one file at a time, so one bad file costs only itself.

    Raises:
        serving.ServerUnreachable: the server did not answer.
    """
    import tensorflow as tf

    results: dict[str, dict] = {}
    data: dict[str, bytes] = {}
    for file in files:
        try:
            data[file] = Path(file).read_bytes()
        except OSError as err:
            results[file] = {
                "file": file,
                "ok": False,
                "error": f"cannot read: {err.strerror or err}",
            }
    readable = [f for f in files if f in data]
    failures = (tf.errors.InvalidArgumentError, serving.ServingError)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        try:
            answers = predictor.predict_bytes([data[f] for f in chunk])
            for file, answer in zip(chunk, answers, strict=True):
                results[file] = {"file": file, "ok": True, **answer}
            continue
        except serving.ServerUnreachable:
            raise
        except failures:
            pass
        for file in chunk:
            try:
                (answer,) = predictor.predict_bytes([data[file]])
                results[file] = {"file": file, "ok": True, **answer}
            except serving.ServerUnreachable:
                raise
            except failures as err:
                results[file] = {"file": file, "ok": False, "error": _reason(err)}
    return [results[f] for f in files]


def write_gradcam(predictor: Predictor, results: list[dict], folder: str | Path) -> None:
    """Adds `gradcam` (the overlay's path) to each successful result, for its top finding."""
    import numpy as np

    from cxr_tf import localization, models, preprocessing

    folder = Path(folder)
    model = predictor.model
    layer = models.feature_layer_name(model)
    size = predictor.meta["stored_size"]
    used: set[str] = set()
    for result in results:
        if not result["ok"]:
            continue
        stored = preprocessing.bytes_to_stored(Path(result["file"]).read_bytes(), size).numpy()
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


def format_table(results: list[dict]) -> str:
    """A plain-text table per image: finding, probability, decision."""
    lines = []
    for result in results:
        lines.append(result["file"])
        if not result["ok"]:
            lines.append(f"  error: {result['error']}")
            continue
        width = max(len(f["name"]) for f in result["findings"])
        chosen = result["class"]["name"] if result["class"] else None
        for finding in result["findings"]:
            if chosen is not None:
                decision = "<- class" if finding["name"] == chosen else ""
            else:
                decision = "positive" if finding["decision"] else "negative"
            lines.append(f"  {finding['name']:<{width}}  {finding['probability']:7.4f}  {decision}")
        if "gradcam" in result:
            lines.append(f"  Grad-CAM: {result['gradcam']}")
    return "\n".join(lines)


def _model_summary(predictor: Predictor) -> dict:
    meta = predictor.meta or {}
    return {
        "kind": predictor.kind,
        "source": predictor.source,
        "task": meta.get("task"),
        "labels": meta.get("labels"),
        "thresholds": meta.get("thresholds"),
        "threshold_source": meta.get("threshold_source"),
        "dataset_fingerprint": (meta.get("dataset") or {}).get("fingerprint"),
    }


def _extra(parser: Any) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")


def main(argv: Sequence[str] | None = None) -> int:
    # Per-file errors are reported below; TensorFlow's own log lines would repeat them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser(PredictConfig, __doc__, "python -m cxr_tf.predict", extra=_extra)
    config, args = parse_config(PredictConfig, parser, argv)
    if bool(config.model) == bool(config.server):
        parser.error("give --model PATH (run, .keras or SavedModel) or --server URL, one of them")
    try:
        if config.server:
            predictor = server_predictor(config.server, config.timeout_s)
        else:
            predictor = load_predictor(config.model)
        if config.gradcam and predictor.kind != "keras":
            raise SourceError(
                "--gradcam needs a Keras model (a run directory or a .keras file); a SavedModel "
                "or TF Serving returns predictions only, not the gradients Grad-CAM needs"
            )
        ignored = ((predictor.meta or {}).get("threshold_source") or {}).get("ignored")
        if ignored:
            print(
                f"predict: WARNING: decisions use the default threshold 0.5: {ignored['reason']}",
                file=sys.stderr,
            )
        results = predict_files(predictor, args.images, config.batch_size)
    # A damaged .keras file is an export.ExportError (a ValueError): "cannot read FILE: ...".
    except (SourceError, ConfigError, ValueError, serving.ServerUnreachable) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    if config.gradcam:
        write_gradcam(predictor, results, config.gradcam)
    for result in results:
        if not result["ok"]:
            print(f"predict: error: {result['file']}: {result['error']}", file=sys.stderr)
    if config.json:
        print(json.dumps({"model": _model_summary(predictor), "images": results}, indent=2))
    else:
        print(format_table(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
