"""Decision thresholds: chosen on validation by evaluate, stored in RUN/thresholds.json,
applied by export and predict only to the model file they were chosen for.

Thresholds chosen on test-time-augmented predictions (`--tta flip|tencrop`) are kept apart
in `thresholds-tta-<mode>.json`: the exported model serves single views, so an evaluation
with TTA never replaces the thresholds export serves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_tf.runs import folder as runs
from cxr_tf.runs.folder import MODEL_FILES

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5


def thresholds_file(tta: str = "none") -> str:
    """The file thresholds chosen with test-time augmentation `tta` are saved in."""
    return THRESHOLDS_FILE if tta == "none" else f"thresholds-tta-{tta}.json"


class ThresholdsError(ValueError):
    """thresholds.json is not a thresholds file or holds a value outside [0, 1]."""


def save_thresholds(
    folder: str | Path,
    thresholds: dict[str, float | None],
    method: str,
    target: float,
    checkpoint: dict[str, Any],
    tta: str = "none",
) -> Path:
    """Writes `folder`/thresholds.json (`thresholds_file(tta)` with TTA); outputs with an
    undefined threshold are left out.

    Args:
        folder: the run directory (what export reads) or a report folder.
        thresholds: per output, None where undefined.
        method: how they were chosen (youden, max_f1, sensitivity).
        target: the target sensitivity of method "sensitivity".
        checkpoint: `runs.file_identity` of the model file they were chosen for.
        tta: the test-time augmentation of the validation predictions.
    """
    path = Path(folder) / thresholds_file(tta)
    content = {
        "method": method,
        "split": "validation",
        "target_sensitivity": target,
        "checkpoint": checkpoint,
        "tta": tta,
        "thresholds": {k: float(v) for k, v in thresholds.items() if v is not None},
    }
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def load_thresholds(run_dir: str | Path, tta: str = "none") -> dict | None:
    """RUN/thresholds.json (`thresholds_file(tta)`) as written by evaluate, or None when the
    run has none.

    Returns:
        `{"method", "split": "validation", "target_sensitivity", "checkpoint": {"file",
        "size", "sha256"}, "tta", "thresholds": {output: threshold}}`; predict positive when
        probability >= threshold.
    """
    path = Path(run_dir) / thresholds_file(tta)
    if not path.exists():
        return None
    return json.loads(path.read_text())


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
    sha256 = runs.file_identity(checkpoint)["sha256"]
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
        ThresholdsError: the file is not a thresholds file or holds a value outside [0, 1].
    """
    checkpoint = checkpoint or MODEL_FILES["best"]
    path = Path(run_dir) / THRESHOLDS_FILE
    default = {"file": None, "method": "default", "defaulted": list(names)}
    try:
        stored = load_thresholds(run_dir)
        if stored is None:
            return [DEFAULT_THRESHOLD] * len(names), default
        table = stored["thresholds"]
        values, defaulted = [], []
        for name in names:
            value = table.get(name)
            if value is None:
                defaulted.append(name)
                value = DEFAULT_THRESHOLD
            if not 0.0 <= float(value) <= 1.0:
                raise ThresholdsError(f"{path}: threshold of {name} is {value}, not in [0, 1]")
            values.append(float(value))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ThresholdsError(f"{path}: not a thresholds file ({err})") from err
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
