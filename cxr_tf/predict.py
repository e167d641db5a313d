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

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_tf.cli import bad_inputs, build_parser, model_problem, parse_config, run_command
from cxr_tf.config import ConfigError, PredictConfig
from cxr_tf.serving import client
from cxr_tf.serving.predictor import (
    ACCEPTED,
    Predictor,
    SourceError,
    load_predictor,
    predict_files,
    server_predictor,
    write_gradcam,
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
        # how incoming images are made square: the dataset's --resize (None: not said)
        "resize": (meta.get("preprocessing") or {}).get("resize"),
        # how incoming JPEGs are decoded: the dataset's --jpeg_decode (an export from before
        # the choice decodes with fast; None: no metadata)
        # (`exporter.serving_jpeg_decode`, not imported here: it brings TensorFlow)
        "jpeg_decode": (meta.get("preprocessing") or {}).get("jpeg_decode", "fast")
        if meta
        else None,
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
    if config.model and bad_inputs("predict", model_problem("model", config.model)):
        return 2
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
        if predictor.kind == "keras":  # metadata made now, from the run and its dataset
            from cxr_tf.serving.exporter import preprocessing_warnings

            for line in preprocessing_warnings(predictor.meta or {}):
                print(f"predict: WARNING: {line}", file=sys.stderr)
        results = predict_files(predictor, args.images, config.batch_size)
    # A damaged .keras file is a runs.ModelFileError (a ValueError): "cannot read FILE: ...".
    except (SourceError, ConfigError, ValueError, client.ServerUnreachable) as err:
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
    run_command(main, "predict")
