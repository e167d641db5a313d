"""Rendering of an evaluation report: the Markdown tables and the PNG figures (the HTML
page that holds them all: `cxr_tf.evaluation.html`).

Input is the JSON-ready report dict `cxr_tf.evaluation.evaluator.evaluate` builds (numbers only, no
model), so a report can be re-rendered from `report.json` alone. Figures use matplotlib's
object API (no pyplot state) and the Agg canvas.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxr_tf.config.data import split_datasets
from cxr_tf.labels import MASKED

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Published per-finding test AUROC on NIH ChestX-ray14, typed in from the papers cited
# below. Each column says the split it was measured
# on: numbers from a random patient split are not comparable with the official split.
PUBLISHED_AUROC: dict[str, dict[str, float]] = {
    # Rajpurkar et al. 2017, CheXNet (arXiv 1711.05225), DenseNet-121, test part of their
    # own random 70/10/20 patient split.
    "CheXNet (own random split)": {
        "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638,
        "Infiltration": 0.7345, "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680,
        "Pneumothorax": 0.8887, "Consolidation": 0.7901, "Edema": 0.8878,
        "Emphysema": 0.9371, "Fibrosis": 0.8047, "Pleural_Thickening": 0.8062,
        "Hernia": 0.9164, "mean": 0.841,
    },
    # Wang et al. 2017, ChestX-ray8 (arXiv 1705.02315 v5, Table 17), ResNet-50, official
    # test split.
    "Wang et al. (official split)": {
        "Atelectasis": 0.7003, "Cardiomegaly": 0.8100, "Effusion": 0.7585,
        "Infiltration": 0.6614, "Mass": 0.6933, "Nodule": 0.6687, "Pneumonia": 0.6580,
        "Pneumothorax": 0.7993, "Consolidation": 0.7032, "Edema": 0.8052,
        "Emphysema": 0.8330, "Fibrosis": 0.7859, "Pleural_Thickening": 0.6835,
        "Hernia": 0.8717, "mean": 0.745,
    },
}  # fmt: skip


def json_safe(value: Any) -> Any:
    """Arrays -> lists, NaN -> None, numpy scalars -> Python numbers, keys -> str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell; '-' for undefined (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _auroc_cell(entry: Mapping[str, Any]) -> str:
    ci = entry.get("auroc_ci") or [None, None]
    if entry.get("auroc") is None:
        return f"n/a ({entry['undefined']})" if entry.get("undefined") else "n/a"
    return f"{fmt(entry['auroc'])} ({fmt(ci[0])}-{fmt(ci[1])})"


def _count(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    return "-" if value is None else str(value)


def _mean_line(report: Mapping[str, Any]) -> str:
    mean = report["mean_auroc"]
    undefined = [
        f"{n}: {e.get('undefined') or 'undefined'}"
        for n, e in report["per_output"].items()
        if e["auroc"] is None
    ]
    text = (
        f"**Mean AUROC: {fmt(mean['value'])}** over {mean['n_outputs']} of "
        f"{len(report['outputs'])} outputs"
    )
    if undefined:
        text += f" (n/a: {'; '.join(undefined)})"
    return text + "."


KNOWN_NOTE = (
    "n: images whose label for that output is known (labelled by the image's dataset and "
    "not uncertain); every number of a row (prevalence, AUROC and its interval, AUPRC, the "
    "operating point, calibration) is computed over those images only."
)


def _binary_tables(report: Mapping[str, Any]) -> list[str]:
    th = report["threshold"]
    lines = [
        _mean_line(report),
        "",
        f"Operating thresholds chosen on the **validation** split by `{th['method']}`"
        + (
            f" (target sensitivity {th['target_sensitivity']:g})"
            if th["method"] == "sensitivity"
            else ""
        )
        + (
            f", on test-time augmented ({th['tta']}) predictions"
            if th.get("tta", "none") != "none"
            else ""
        )
        + "; a case is positive when its probability >= the threshold.",
        "",
    ]
    refs = list(PUBLISHED_AUROC)
    header = ["output", "n", "n_pos", "prevalence", "AUROC (95% CI)", "AUPRC", *refs]
    rows = []
    for name, e in report["per_output"].items():
        published = [fmt(PUBLISHED_AUROC[r].get(name), 4) for r in refs]
        rows.append(
            [name, _count(e, "n"), _count(e, "n_pos"), fmt(e["prevalence"]), _auroc_cell(e),
             fmt(e["auprc"])]
            + published
        )  # fmt: skip
    mean = report["mean_auroc"]
    rows.append(
        ["mean", "", "", "", fmt(mean["value"]), ""]
        + [fmt(PUBLISHED_AUROC[r]["mean"]) for r in refs]
    )
    lines += _table(header, rows)
    lines += [
        "",
        KNOWN_NOTE,
        "",
        f"AUROC intervals: 95% percentile intervals over {report['bootstrap']['n']} "
        "patient-level bootstrap resamples (patients drawn with replacement, with all their "
        "images). Reference columns are published test-set AUROCs on other splits and "
        "models: CheXNet on its authors' own random patient split, Wang et al. on the "
        "official split; compare only with a run evaluated on the same split.",
        "",
        "### At the operating threshold",
        "",
    ]
    header = ["output", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"]
    header += ["accuracy", "TP", "FP", "TN", "FN"]
    rows = []
    for name, e in report["per_output"].items():
        op = e.get("operating_point")
        if op is None:
            why = e.get("operating_point_undefined")
            rows.append([name, f"n/a ({why})" if why else "n/a"] + ["-"] * (len(header) - 2))
            continue
        rows.append(
            [name, fmt(op["threshold"], 4)]
            + [fmt(op[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")]
            + [str(op[k]) for k in ("tp", "fp", "tn", "fn")]
        )
    lines += _table(header, rows)
    return lines


def _calibration_table(report: Mapping[str, Any]) -> list[str]:
    rows = [
        [name, fmt(e["calibration"]["ece"]), fmt(e["calibration"]["brier"])]
        if e.get("calibration")
        else [name, "n/a", "n/a"]
        for name, e in report["per_output"].items()
    ]
    return [
        "### Calibration",
        "",
        "ECE: expected calibration error over 10 equal-width probability bins; Brier: mean "
        "squared error of the probability (lower is better for both). `calibration.png`: "
        "observed frequency against mean predicted probability per bin (on the diagonal = "
        "calibrated); gray bars: share of cases per bin.",
        "",
        *_table(["output", "ECE", "Brier"], rows),
    ]


def _multiclass_tables(report: Mapping[str, Any]) -> list[str]:
    mc = report["multiclass"]
    names = mc["class_names"]
    lines = [
        f"**Accuracy: {fmt(mc['accuracy'])}** (argmax over {len(names)} classes, "
        f"{mc['n']} single-class images). "
        f"Macro one-vs-rest AUROC: {fmt(mc['macro_auroc'])} over {mc['n_auroc']} classes.",
        "",
        "### Confusion matrix (rows: true class, columns: predicted)",
        "",
        *_table(["true \\ predicted", *names], [[n, *map(str, r)] for n, r in
                                               zip(names, mc["confusion_matrix"], strict=True)]),
        "",
        "### One-vs-rest per class",
        "",
    ]  # fmt: skip
    rows = [
        [n, fmt(e["prevalence"]), _count(e, "n_pos"), _auroc_cell(e), fmt(e["auprc"])]
        for n, e in report["per_output"].items()
    ]
    lines += _table(["class", "prevalence", "n", "AUROC (95% CI)", "AUPRC"], rows)
    return lines


def _sha_note(report: Mapping[str, Any]) -> str:
    sha256 = (report.get("checkpoint") or {}).get("sha256")
    return f" (sha256 {sha256[:12]}...)" if sha256 else ""


def markdown(report: Mapping[str, Any]) -> str:
    """The `report.md` text of an evaluation report."""
    external = bool(report.get("external"))
    lines = [
        f"# {'External evaluation' if external else 'Evaluation'}: `{report['run_dir']}`",
        "",
        f"- split: **{report['split']}** of {'external ' if external else ''}dataset "
        f"`{report['dataset']}` (split strategy: {report.get('split_strategy', '?')}), "
        f"{report['n_images']} images, {report['n_patients']} patients",
        f"- model: `{report['model_file']}`{_sha_note(report)}, task {report['task']}, "
        f"test-time augmentation: {report['tta']}",
    ]
    if external:
        lines.append(f"- trained on: `{report.get('run_dataset')}`")
        not_labelled = report.get("not_labelled") or []
        if not_labelled:
            lines.append(
                f"- outputs not labelled by `{report['dataset']}`, skipped: "
                + ", ".join(not_labelled)
            )
        threshold = report.get("threshold") or {}
        if threshold.get("file"):
            lines.append(
                f"- operating thresholds: the run's own, chosen on the validation split of "
                f"`{threshold.get('dataset')}` (`{threshold['file']}`)"
            )
    lines.append("")
    if report["task"] == "multiclass":
        lines += _multiclass_tables(report)
    else:
        lines += _binary_tables(report)
    lines += ["", *_calibration_table(report), ""]
    comparison = report.get("internal_vs_external")
    if comparison and comparison.get("rows"):
        lines += ["## Internal vs external", "", *_comparison_lines(comparison), ""]
    files = ["`predictions.csv` (one row per image; label -1: unknown)", "`report.json`",
             "`roc_pr.png`", "`calibration.png`"]  # fmt: skip
    if report["task"] != "multiclass":
        files.append("`thresholds.json`")
    if comparison:
        files += [f"`{name}`" for name in comparison.get("files", [])]
    lines += ["Files: " + ", ".join(files) + ".", ""]
    return "\n".join(lines)


# -------------------------------------------------------------- internal vs external


def _side(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    return {
        "auroc": entry.get("auroc"),
        "auroc_ci": list(entry.get("auroc_ci") or [None, None]),
        "n": entry.get("n"),
        "n_pos": entry.get("n_pos"),
        "undefined": entry.get("undefined"),
    }


def internal_vs_external(internal: Mapping[str, Any], external: Mapping[str, Any]) -> dict:
    """Per output of the external report: the internal and the external AUROC with their
    intervals and counts, and the difference external - internal (None unless both are
    defined); the means over the outputs defined in both."""
    rows = []
    for name in external["outputs"]:
        own, other = _side(internal["per_output"].get(name)), _side(external["per_output"][name])
        both = own["auroc"] is not None and other["auroc"] is not None
        rows.append({"output": name, "internal": own, "external": other,
                     "difference": other["auroc"] - own["auroc"] if both else None})  # fmt: skip
    defined = [r for r in rows if r["difference"] is not None]
    mean = {"outputs": [r["output"] for r in defined], "internal": None, "external": None,
            "difference": None}  # fmt: skip
    if defined:
        mean["internal"] = float(np.mean([r["internal"]["auroc"] for r in defined]))
        mean["external"] = float(np.mean([r["external"]["auroc"] for r in defined]))
        mean["difference"] = mean["external"] - mean["internal"]
    return {
        "run_dir": external["run_dir"],
        "model_file": external["model_file"],
        "internal_split": internal["split"],
        "internal_dataset": internal["dataset"],
        "external_split": external["split"],
        "external_dataset": external["dataset"],
        "bootstrap": external["bootstrap"],
        "not_labelled": list(external.get("not_labelled") or []),
        "rows": rows,
        "mean": mean,
    }


def _side_cell(side: Mapping[str, Any]) -> str:
    n = f"n={_count(side, 'n')}, {_count(side, 'n_pos')} pos"
    if side["auroc"] is None:
        return f"n/a ({side.get('undefined') or 'undefined'}; {n})"
    low, high = side["auroc_ci"]
    return f"{fmt(side['auroc'])} [{fmt(low)}, {fmt(high)}] ({n})"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _comparison_lines(table: Mapping[str, Any]) -> list[str]:
    header = ["output", "internal AUROC [95% CI] (n)", "external AUROC [95% CI] (n)",
              "difference (ext - int)"]  # fmt: skip
    rows = [
        [r["output"], _side_cell(r["internal"]), _side_cell(r["external"]),
         _signed(r["difference"])]
        for r in table["rows"]
    ]  # fmt: skip
    mean = table["mean"]
    rows.append(
        [f"mean ({len(mean['outputs'])} outputs)", fmt(mean["internal"]), fmt(mean["external"]),
         _signed(mean["difference"])]
    )  # fmt: skip
    lines = [
        f"Internal: the {table['internal_split']} split of the run's own dataset "
        f"`{table['internal_dataset']}`; external: the {table['external_split']} split of "
        f"`{table['external_dataset']}`; same model `{table['model_file']}`. Intervals: 95% "
        "percentile intervals over "
        f"{table['bootstrap']['n']} patient-level bootstrap resamples. n: images with a "
        "known label for the output. The mean is over the outputs defined on both sides.",
        "",
        *_table(header, rows),
    ]
    if table.get("not_labelled"):
        lines += ["", f"Not labelled by `{table['external_dataset']}` (skipped): "
                  + ", ".join(table["not_labelled"]) + "."]  # fmt: skip
    return lines


def comparison_markdown(table: Mapping[str, Any]) -> str:
    """`internal_vs_external.md`: the internal-vs-external AUROC table."""
    return "\n".join(
        [f"# Internal vs external AUROC: `{table['run_dir']}`", "", *_comparison_lines(table), ""]
    )


def comparison_png(table: Mapping[str, Any], path: str | Path) -> Path:
    """Saves `comparison_figure` as a PNG at `path`."""
    path = Path(path)
    comparison_figure(table).savefig(path, format="png")
    return path


def comparison_figure(table: Mapping[str, Any]) -> Figure:
    """Dot plot: internal and external AUROC per output with their 95% intervals."""
    rows = table["rows"]
    figure = _figure(1, 1, cell=1.0)
    figure.set_size_inches(7.0, 1.2 + 0.45 * len(rows))
    ax = figure.add_subplot(1, 1, 1)
    sides = (("internal", "tab:blue", 0.15), ("external", "tab:orange", -0.15))
    lowest = 0.5
    for side, color, shift in sides:
        ys, xs, lows, highs = [], [], [], []
        for i, r in enumerate(rows):
            entry = r[side]
            if entry["auroc"] is None:
                continue
            low, high = entry["auroc_ci"]
            ys.append(len(rows) - 1 - i + shift)
            xs.append(entry["auroc"])
            lows.append(entry["auroc"] - (entry["auroc"] if low is None else low))
            highs.append((entry["auroc"] if high is None else high) - entry["auroc"])
            lowest = min(lowest, entry["auroc"] if low is None else low)
        names = ", ".join(Path(d).name for d in split_datasets(table[f"{side}_dataset"]))
        label = f"{side}: {table[f'{side}_split']} split of {names}"
        ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", ms=4, lw=1, capsize=2, color=color,
                    label=label, clip_on=False)  # fmt: skip
    ax.axvline(0.5, ls=":", lw=0.8, color="gray")  # chance
    ax.set_yticks(range(len(rows)), [r["output"] for r in rows][::-1], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(math.floor(lowest * 10 - 0.2) / 10, 1.0)
    ax.set_xlabel("AUROC (95% patient-bootstrap interval)", fontsize=8)
    ax.set_title(
        f"Internal ({table['internal_split']}) vs external ({table['external_split']}) AUROC",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower left")
    return figure


# --------------------------------------------------------------------------------- figures


def _figure(rows: int, cols: int, cell: float = 2.6) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(cols * cell, rows * cell), dpi=90, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def roc_pr_figure(y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str]) -> Figure:
    """ROC and precision-recall curves per output, side by side, two outputs per row, over
    the images whose label is known (negative `y_true`: unknown, left out).

    Titles carry the area under each curve (AUROC, average precision), "n/a" when an
    output has only one class.
    """
    k = len(names)
    per_row = 2 if k > 1 else 1
    rows = math.ceil(k / per_row)
    figure = _figure(rows, 2 * per_row)
    for j, name in enumerate(names):
        known = np.asarray(y_true)[:, j] != MASKED  # unknown label: left out
        t, p = np.asarray(y_true)[known, j] == 1, np.asarray(y_prob)[known, j]
        roc_ax = figure.add_subplot(rows, 2 * per_row, 2 * j + 1)
        pr_ax = figure.add_subplot(rows, 2 * per_row, 2 * j + 2)
        auroc = ap = "n/a"
        if _roc_pr_curves(roc_ax, pr_ax, t, p):
            auroc, ap = fmt(roc_auc_score(t, p)), fmt(average_precision_score(t, p))
        roc_ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="gray")
        # Two lines: the longest finding name plus its score does not fit one panel's width.
        roc_ax.set(
            title=f"{name}\nROC, AUROC {auroc}", xlabel="1 - specificity", ylabel="sensitivity"
        )
        pr_ax.set(title=f"{name}\nPR, AP {ap}", xlabel="recall", ylabel="precision")
        for ax in (roc_ax, pr_ax):
            ax.set(xlim=(0, 1), ylim=(0, 1.02))
            ax.title.set_fontsize(8)
            ax.tick_params(labelsize=6)
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
    return figure


def _roc_pr_curves(roc_ax: Any, pr_ax: Any, t: np.ndarray, p: np.ndarray,
                   fontsize: float | None = None) -> bool:  # fmt: skip
    """Draws the ROC and PR curves of labels `t` (bool) and scores `p` with the PR chance
    line (the prevalence); "undefined" in both panels, and False, without both classes."""
    if not (t.any() and (~t).any()):
        for ax in (roc_ax, pr_ax):
            ax.text(0.5, 0.5, "undefined", ha="center", va="center", fontsize=fontsize)
        return False
    fpr, tpr, _ = roc_curve(t, p)
    roc_ax.plot(fpr, tpr, lw=1.2)
    precision, recall, _ = precision_recall_curve(t, p)
    pr_ax.plot(recall, precision, lw=1.2, color="tab:orange")
    pr_ax.axhline(t.mean(), ls=":", lw=0.8, color="gray")  # chance = prevalence
    return True


def roc_pr_png(
    y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str], path: str | Path
) -> Path:
    """Saves `roc_pr_figure` as a PNG at `path`."""
    path = Path(path)
    roc_pr_figure(y_true, y_prob, names).savefig(path, format="png")
    return path


def calibration_png(report: Mapping[str, Any], path: str | Path) -> Path:
    """Reliability diagrams (observed frequency vs mean predicted probability) per output."""
    entries = report["per_output"]
    cols = min(4, len(entries))
    rows = math.ceil(len(entries) / cols)
    figure = _figure(rows, cols)
    for j, (name, e) in enumerate(entries.items()):
        ax = figure.add_subplot(rows, cols, j + 1)
        if not e.get("calibration"):
            ax.text(0.5, 0.5, "n/a: no known label", ha="center", va="center", fontsize=8)
            ax.set(xlim=(0, 1), ylim=(0, 1))
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=6)
            continue
        bins = e["calibration"]["bins"]
        pred = np.array([np.nan if v is None else v for v in bins["mean_predicted"]], float)
        obs = np.array([np.nan if v is None else v for v in bins["observed_frequency"]], float)
        ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="gray")
        full = np.isfinite(pred)
        ax.plot(pred[full], obs[full], marker="o", ms=3, lw=1.2)
        edges = np.asarray(bins["edges"])
        ax.bar(
            edges[:-1],
            np.asarray(bins["counts"]) / max(1, sum(bins["counts"])),
            width=np.diff(edges),
            align="edge",
            alpha=0.2,
            color="gray",
        )
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted", ylabel="observed")
        ax.set_title(f"{name} (ECE {fmt(e['calibration']['ece'])})", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
    path = Path(path)
    figure.savefig(path, format="png")
    return path


def png_bytes(figure: Figure) -> bytes:
    """The PNG file of a figure, in memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def finding_figure(
    y_true: np.ndarray, y_prob: np.ndarray, entry: Mapping[str, Any], name: str
) -> Figure:
    """One output's ROC, precision-recall and reliability panels in a row, over the images
    whose label is known, with the operating point (when there is one) marked on the curves.

    Args:
        y_true: (N,) labels of that output, negative where unknown.
        y_prob: (N,) its probabilities.
        entry: its `per_output` entry of the report (AUROC, operating point, calibration).
        name: the output's name, for the titles.
    """
    figure = _figure(1, 3, cell=2.5)
    roc_ax, pr_ax, cal_ax = (figure.add_subplot(1, 3, k) for k in (1, 2, 3))
    known = np.asarray(y_true) != MASKED
    t, p = np.asarray(y_true)[known] == 1, np.asarray(y_prob)[known]
    if _roc_pr_curves(roc_ax, pr_ax, t, p, fontsize=8):
        op = entry.get("operating_point")
        if op and op.get("sensitivity") is not None and op.get("specificity") is not None:
            label = f"threshold {fmt(op['threshold'], 3)}"
            roc_ax.plot(1 - op["specificity"], op["sensitivity"], "ko", ms=4, label=label)
            roc_ax.legend(fontsize=6, loc="lower right")
            if op.get("ppv") is not None:
                pr_ax.plot(op["sensitivity"], op["ppv"], "ko", ms=4)
    roc_ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="gray")
    auroc = entry.get("auroc")
    roc_ax.set(
        title=f"{name}: ROC, AUROC {fmt(auroc)}", xlabel="1 - specificity", ylabel="sensitivity"
    )
    pr_ax.set(title=f"PR, AUPRC {fmt(entry.get('auprc'))}", xlabel="recall", ylabel="precision")
    calibration = entry.get("calibration")
    cal_ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="gray")
    if calibration:
        bins = calibration["bins"]
        pred = np.array([np.nan if v is None else v for v in bins["mean_predicted"]], float)
        obs = np.array([np.nan if v is None else v for v in bins["observed_frequency"]], float)
        full = np.isfinite(pred)
        cal_ax.plot(pred[full], obs[full], marker="o", ms=3, lw=1.2, color="tab:green")
        edges = np.asarray(bins["edges"])
        cal_ax.bar(edges[:-1], np.asarray(bins["counts"]) / max(1, sum(bins["counts"])),
                   width=np.diff(edges), align="edge", alpha=0.2, color="gray")  # fmt: skip
        cal_ax.set_title(f"calibration, ECE {fmt(calibration['ece'])}")
    else:
        cal_ax.text(0.5, 0.5, "n/a: no known label", ha="center", va="center", fontsize=8)
        cal_ax.set_title("calibration")
    cal_ax.set(xlabel="mean predicted", ylabel="observed")
    for ax in (roc_ax, pr_ax, cal_ax):
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=6)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
    return figure
