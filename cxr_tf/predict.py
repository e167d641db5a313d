"""`python -m cxr_tf.predict IMAGE [IMAGE ...]`: findings per image file.

Examples:
  python -m cxr_tf.predict chest.png --model runs/densenet121-multilabel-3f9c2a1b
  python -m cxr_tf.predict a.png b.jpg --model runs/RUN/last.keras --gradcam runs/RUN/gradcam
  python -m cxr_tf.predict a.png --model export/cxr_multilabel --json
  python -m cxr_tf.predict a.png --server http://localhost:8501/v1/models/cxr_multilabel

--model takes a run directory (its best.keras), a .keras file inside a run directory, an
exported SavedModel version folder, or an export base folder (its highest version). Local
Keras models run the very functions the export puts behind `serving_default`; --server sends
the files to TF Serving's REST API instead. --gradcam DIR writes one overlay per image for
its top finding into DIR, created if missing, and says where on stderr (Keras models only:
a SavedModel holds no gradients to explain with).

The table shows, per finding, the probability, the threshold the decision used (chosen per
finding by `python -m cxr_tf.evaluate`, or the default 0.5) and the decision; --json holds
the same numbers (`threshold` in each finding, `thresholds` under `model`).

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

# What `preprocessing.decode_to_gray` decodes through tf.io.decode_image (a GIF's first
# frame), each checked by the tests.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WebP")
ACCEPTED = ", ".join(IMAGE_FORMATS)
UNKNOWN_FORMAT = f"not an image file this command reads (accepted: {ACCEPTED})"


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


def server_metadata(url: str, timeout: float) -> dict | None:
    """The model's metadata from the server's `metadata` signature; None if it has none.

    Raises:
        serving.ServerUnreachable: the server did not answer.
    """
    try:
        reply = serving.post_json(
            serving.predict_url(url), serving.metadata_request_body(), timeout
        )
        raw = reply["outputs"]["metadata_json"]
        return json.loads(raw if isinstance(raw, str) else raw[0])
    except serving.ServerUnreachable:
        raise
    except (serving.ServingError, KeyError, IndexError, TypeError, json.JSONDecodeError):
        return None


def server_predictor(url: str, timeout: float) -> Predictor:
    """Predictions from a running TF Serving (REST) at `url`, with its metadata when given."""
    serving.predict_url(url)  # fail early on a malformed URL

    def predict_bytes(images: list[bytes]) -> list[dict]:
        return serving.query(url, images, timeout)

    return Predictor("server", url, server_metadata(url, timeout), predict_bytes)


# ------------------------------------------------------------------------------ running


def _reason(err: Exception) -> str:
    reason = serving.error_reason(getattr(err, "message", None) or str(err))
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
    thresholds = (predictor.meta or {}).get("thresholds")
    failures = (tf.errors.InvalidArgumentError, serving.ServingError)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        try:
            answers = predictor.predict_bytes([data[f] for f in chunk])
            for file, answer in zip(chunk, answers, strict=True):
                results[file] = _answer(file, answer, thresholds)
            continue
        except serving.ServerUnreachable:
            raise
        except failures:
            pass
        for file in chunk:
            try:
                (answer,) = predictor.predict_bytes([data[file]])
                results[file] = _answer(file, answer, thresholds)
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


def _cell(value: float | None, width: int) -> str:
    return f"{value:{width}.4f}" if value is not None else f"{'-':>{width}}"


def format_table(results: list[dict]) -> str:
    """A plain-text table per image: finding, probability, threshold, decision.

    Multi-class results have no threshold column: the most probable class is the decision.
    """
    lines = []
    for result in results:
        lines.append(result["file"])
        if not result["ok"]:
            lines.append(f"  error: {result['error']}")
            continue
        width = max(len("finding"), *(len(f["name"]) for f in result["findings"]))
        chosen = result["class"]["name"] if result["class"] else None
        if chosen is not None:
            lines.append(f"  {'finding':<{width}}  probability  decision")
        else:
            lines.append(f"  {'finding':<{width}}  probability  threshold  decision")
        for finding in result["findings"]:
            row = f"  {finding['name']:<{width}}  {_cell(finding['probability'], 11)}"
            if chosen is not None:
                row += "  <- class" if finding["name"] == chosen else ""
            else:
                decision = "positive" if finding["decision"] else "negative"
                row += f"  {_cell(finding.get('threshold'), 9)}  {decision}"
            lines.append(row.rstrip())
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
    parser.add_argument("images", nargs="+", metavar="IMAGE", help=f"image files: {ACCEPTED}")


def gradcam_folder(value: str) -> Path:
    """The absolute --gradcam folder, created if missing.

    Raises:
        SourceError: it cannot be a folder (a file has that name, or no permission).
    """
    folder = Path(value).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise SourceError(f"--gradcam {value}: cannot create the folder ({reason})") from err
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    # Per-file errors are reported below; TensorFlow's own log lines would repeat them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser(PredictConfig, __doc__, "python -m cxr_tf.predict", extra=_extra)
    parser.epilog = (
        f"Accepted image formats: {ACCEPTED} (8 or 16 bit; gray, RGB or RGBA, read as gray)."
    )
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
        folder = gradcam_folder(config.gradcam) if config.gradcam else None
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
    if folder is not None:
        write_gradcam(predictor, results, folder)
        count = sum("gradcam" in r for r in results)
        print(f"predict: wrote {count} Grad-CAM overlay(s) to {folder}", file=sys.stderr)
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
