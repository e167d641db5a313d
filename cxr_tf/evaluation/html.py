"""Self-contained HTML pages of the evaluation outputs, one file each, every image inlined
as a data URI so that the page can be mailed or attached on its own:

- `report.html` of an evaluation (`evaluation_page`): the per-output table (n, AUROC with
  its patient-bootstrap interval, AUPRC, the operating point at the validation threshold,
  calibration), per output its ROC / PR / reliability panels and the gallery of its most
  confident true positives, false positives and false negatives with Grad-CAM overlays
  (`cxr_tf.evaluation.gallery`), and the internal-vs-external table of an external one;
- `internal_vs_external.html` (`comparison_page`);
- `localization.html` of `localize` (`localization_page`): the IoBB table, the pointing game
  and its cases, the overlays.

Plain strings with `html.escape`, no template engine; simple CSS that reads on a laptop and
prints (`@media print`). Numbers are shown as in `report.md` (3 decimals, thresholds 4).

`python -m cxr_tf.report --screenshot REPORT.html OUT.png` renders a page with
headless Chromium (how docs/report.png is made).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tf.evaluation import gallery, report
from cxr_tf.evaluation.report import fmt

REPORT_HTML = "report.html"
COMPARISON_HTML = "internal_vs_external.html"
LOCALIZATION_HTML = "localization.html"
# Localization cases listed per kind (pointing-game misses, hits), most confident first.
LOCALIZATION_CASES = 30
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1b1b1b; max-width: 1180px; margin: 0 auto; padding: 16px 24px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 1px solid #ccc; } h3 { font-size: 15px; margin: 14px 0 6px; }
code { font-size: 12px; background: #f3f3f3; padding: 0 3px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0 10px; }
th, td { border: 1px solid #d6d6d6; padding: 2px 6px; text-align: right; }
th { background: #f0f3f7; } td:first-child, th:first-child { text-align: left; }
tr.mean td { font-weight: 600; background: #fafafa; }
.note { color: #555; font-size: 12px; max-width: 900px; }
.meta { margin: 0; padding-left: 18px; }
.big { font-size: 16px; font-weight: 600; }
img.plot { max-width: 100%; height: auto; }
.gallery { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; }
.kind h4 { font-size: 13px; margin: 4px 0; }
.cases { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 118px; } figure img { width: 118px; height: auto; display: block; }
figcaption { font-size: 11px; color: #333; word-break: break-all; }
.empty { color: #888; font-size: 12px; }
.overlays { display: flex; flex-wrap: wrap; gap: 8px; }
.overlays img { width: 260px; height: auto; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  section.output, figure, tr { break-inside: avoid; }
  h2 { break-after: avoid; }
  figure, figure img { width: 110px; }
}
"""


# ----------------------------------------------------------------------------- building


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """`data:` URI of a file's bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_tag(data: bytes, alt: str, mime: str = "image/png", css: str = "plot") -> str:
    """An `<img>` with the image inlined."""
    return f'<img class="{css}" alt="{escape(alt)}" src="{data_uri(data, mime)}">'


def page(title: str, parts: Iterable[str]) -> str:
    """A whole HTML document around body parts that are HTML already."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )


def cell(text: str, key: str = "", header: bool = False) -> str:
    """A table cell of plain text; `key` names the number it shows (`data-key`)."""
    tag = "th" if header else "td"
    attribute = f' data-key="{escape(key)}"' if key else ""
    return f"<{tag}{attribute}>{escape(text)}</{tag}>"


def table(
    header: Sequence[str],
    rows: Iterable[tuple[str, Sequence[str]]],
    table_id: str = "",
    row_class: Mapping[str, str] | None = None,
) -> str:
    """A table; each row is (its name, cells already built with `cell`), the name going
    into `data-row` so a reader (or a test) finds a row by it."""
    attribute = f' id="{escape(table_id)}"' if table_id else ""
    lines = [
        f"<table{attribute}>",
        "<tr>" + "".join(cell(h, header=True) for h in header) + "</tr>",
    ]
    for name, cells in rows:
        css = (row_class or {}).get(name, "")
        css_attribute = f' class="{css}"' if css else ""
        lines.append(f'<tr data-row="{escape(name)}"{css_attribute}>' + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _meta(items: Iterable[str]) -> str:
    return '<ul class="meta">' + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _code(text: Any) -> str:
    return f"<code>{escape(str(text))}</code>"


# --------------------------------------------------------------------------- evaluation


def _header(result: Mapping[str, Any]) -> list[str]:
    external = bool(result.get("external"))
    title = f"{'External evaluation' if external else 'Evaluation'}: {result['run_dir']}"
    sha256 = (result.get("checkpoint") or {}).get("sha256")
    items = [
        f"split <b>{escape(result['split'])}</b> of {'external ' if external else ''}dataset "
        f"{_code(result['dataset'])} (split strategy: "
        f"{escape(str(result.get('split_strategy', '?')))}), {result['n_images']} images, "
        f"{result['n_patients']} patients",
        f"model {_code(result['model_file'])}"
        + (f" (sha256 {escape(sha256[:12])}...)" if sha256 else "")
        + f", task {escape(result['task'])}, test-time augmentation: {escape(result['tta'])}",
    ]
    if external:
        items.append(f"trained on {_code(result.get('run_dataset'))}")
        if result.get("not_labelled"):
            items.append("outputs not labelled there, skipped: "
                         + escape(", ".join(result["not_labelled"])))  # fmt: skip
    threshold = result.get("threshold")
    if threshold:
        text = (
            f"operating thresholds chosen on the <b>validation</b> split by "
            f"{_code(threshold['method'])}"
        )
        if threshold["method"] == "sensitivity":
            text += f" (target sensitivity {threshold['target_sensitivity']:g})"
        if threshold.get("file"):
            text += f" of {_code(threshold.get('dataset'))}"
        items.append(text + "; a case is positive when its probability &ge; the threshold")
    return [f"<h1>{escape(title)}</h1>", _meta(items)]


def _mean_line(result: Mapping[str, Any]) -> str:
    mean = result["mean_auroc"]
    return (
        f'<p class="big" id="mean-auroc" data-value="{fmt(mean["value"], 6)}">Mean AUROC '
        f"{fmt(mean['value'])} over {mean['n_outputs']} of {len(result['outputs'])} outputs</p>"
    )


METRIC_COLUMNS = ("output", "n", "n_pos", "prevalence", "AUROC", "95% CI low", "95% CI high",
                  "AUPRC", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1",
                  "ECE", "Brier")  # fmt: skip


def metric_cells(entry: Mapping[str, Any]) -> list[str]:
    """The cells of one output's row of the per-output table, keys as in report.json."""
    low, high = entry.get("auroc_ci") or [None, None]
    op = entry.get("operating_point") or {}
    calibration = entry.get("calibration") or {}
    count = [cell("-" if entry.get(k) is None else str(entry[k]), k) for k in ("n", "n_pos")]
    cells = [
        *count,
        cell(fmt(entry.get("prevalence")), "prevalence"),
        cell(fmt(entry.get("auroc")), "auroc"),
        cell(fmt(low), "auroc_ci_low"),
        cell(fmt(high), "auroc_ci_high"),
        cell(fmt(entry.get("auprc")), "auprc"),
        cell(fmt(op.get("threshold"), 4), "threshold"),
    ]
    cells += [cell(fmt(op.get(k)), k) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")]
    cells += [cell(fmt(calibration.get(k)), k) for k in ("ece", "brier")]
    return cells


def _metrics_table(result: Mapping[str, Any]) -> str:
    rows = [(name, [cell(name), *metric_cells(e)]) for name, e in result["per_output"].items()]
    notes = [
        f"{escape(n)}: AUROC n/a ({escape(e['undefined'])})"
        for n, e in result["per_output"].items()
        if e.get("undefined")
    ]
    return "\n".join(
        [
            "<h2>Per output</h2>",
            table(METRIC_COLUMNS, rows, table_id="per-output"),
            f'<p class="note">{escape(report.KNOWN_NOTE)} AUROC intervals: 95% percentile '
            f"intervals over {result['bootstrap']['n']} patient-level bootstrap resamples. "
            "Threshold to F1: the operating point at the validation-chosen threshold. ECE: "
            "expected calibration error over 10 bins; Brier: mean squared error of the "
            "probability.</p>",
            *(f'<p class="note">{note}</p>' for note in notes),
        ]
    )


def _multiclass_section(result: Mapping[str, Any]) -> str:
    mc = result["multiclass"]
    names = mc["class_names"]
    rows = [
        (name, [cell(name), *(cell(str(v), f"predicted:{p}") for v, p in zip(r, names,
                                                                              strict=True))])
        for name, r in zip(names, mc["confusion_matrix"], strict=True)
    ]  # fmt: skip
    return "\n".join(
        [
            f'<p class="big" id="accuracy">Accuracy {fmt(mc["accuracy"])} (argmax over '
            f"{len(names)} classes, {mc['n']} single-class images); macro one-vs-rest AUROC "
            f"{fmt(mc['macro_auroc'])} over {mc['n_auroc']} classes</p>",
            "<h3>Confusion matrix (rows: true class, columns: predicted)</h3>",
            table(["true \\ predicted", *names], rows, table_id="confusion"),
        ]
    )


def _case_figure(case: gallery.Case) -> str:
    caption = f"{case.image} (patient {case.patient}) p={case.probability:.3f}"
    if case.boxes:
        caption += f", {len(case.boxes)} box{'es' if len(case.boxes) > 1 else ''}"
    picture = (
        image_tag(case.overlay, f"Grad-CAM of {case.output} on {case.image}", "image/jpeg", "case")
        if case.overlay
        else '<span class="empty">(image not found)</span>'
    )
    return f"<figure>{picture}<figcaption>{escape(caption)}</figcaption></figure>"


def _gallery(name: str, cases: Sequence[gallery.Case]) -> str:
    mine = [c for c in cases if c.output == name]
    columns = []
    for kind, title in gallery.KINDS.items():
        shown = [c for c in mine if c.kind == kind]
        body = "".join(_case_figure(c) for c in shown) or '<span class="empty">none</span>'
        columns.append(
            f'<div class="kind" data-kind="{kind}"><h4>{escape(title)}</h4>'
            f'<div class="cases">{body}</div></div>'
        )
    return '<div class="gallery">' + "".join(columns) + "</div>"


def _output_sections(
    result: Mapping[str, Any],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    cases: Sequence[gallery.Case] | None,
) -> list[str]:
    parts = ["<h2>Per output: curves, calibration and cases</h2>"]
    if cases is not None:
        parts.append(
            '<p class="note">Cases: the images whose label is known, ranked by the model\'s '
            "confidence at the operating threshold; overlays: Grad-CAM of that output on the "
            "stored image (red: most evidence), ground-truth boxes of the finding in green "
            "where the dataset has them. Black dot on the curves: the operating point.</p>"
        )
    for j, name in enumerate(result["outputs"]):
        entry = result["per_output"][name]
        figure = report.finding_figure(y_true[:, j], y_prob[:, j], entry, name)
        parts.append(
            f'<section class="output" data-output="{escape(name)}"><h3>{escape(name)}</h3>'
            + image_tag(report.png_bytes(figure), f"ROC, PR and calibration of {name}")
            + (_gallery(name, cases) if cases is not None else "")
            + "</section>"
        )
    return parts


def evaluation_page(
    result: Mapping[str, Any],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    cases: Sequence[gallery.Case] | None = None,
) -> str:
    """`report.html` of an evaluation.

    Args:
        result: the report dict (`report.json`).
        y_true: (N, K) labels of the outputs in `result["outputs"]` order, -1 unknown.
        y_prob: (N, K) their probabilities.
        cases: the gallery; None leaves it out.
    """
    parts = _header(result)
    if result["task"] == "multiclass":
        parts.append(_multiclass_section(result))
    else:
        parts.append(_mean_line(result))
    parts.append(_metrics_table(result))
    parts += _output_sections(result, np.asarray(y_true), np.asarray(y_prob), cases)
    comparison = result.get("internal_vs_external")
    if comparison and comparison.get("rows"):
        parts += ["<h2>Internal vs external</h2>", *_comparison_parts(comparison)]
    parts.append(
        '<p class="note">Beside this page: predictions.csv, report.json, report.md, '
        "roc_pr.png, calibration.png"
        + (", thresholds.json" if result["task"] != "multiclass" else "")
        + ".</p>"
    )
    title = f"{'External evaluation' if result.get('external') else 'Evaluation'} {result['split']}"
    return page(f"{title}: {result['run_dir']}", parts)


# ----------------------------------------------------------------- internal vs external


def _side_cells(side: Mapping[str, Any], prefix: str) -> list[str]:
    low, high = side.get("auroc_ci") or [None, None]
    return [
        cell(fmt(side.get("auroc")), f"{prefix}_auroc"),
        cell(fmt(low), f"{prefix}_auroc_ci_low"),
        cell(fmt(high), f"{prefix}_auroc_ci_high"),
        cell("-" if side.get("n") is None else str(side["n"]), f"{prefix}_n"),
    ]


def _comparison_parts(comparison: Mapping[str, Any]) -> list[str]:
    header = ["output", "internal AUROC", "low", "high", "n", "external AUROC", "low", "high",
              "n", "difference (ext - int)"]  # fmt: skip
    rows = [
        (r["output"], [cell(r["output"]), *_side_cells(r["internal"], "internal"),
                       *_side_cells(r["external"], "external"),
                       cell("-" if r["difference"] is None else f"{r['difference']:+.3f}",
                            "difference")])
        for r in comparison["rows"]
    ]  # fmt: skip
    mean = comparison["mean"]
    blank = [cell(""), cell(""), cell("")]
    rows.append(
        ("mean", [cell(f"mean ({len(mean['outputs'])} outputs)"),
                  cell(fmt(mean["internal"]), "internal_auroc"), *blank,
                  cell(fmt(mean["external"]), "external_auroc"), *blank,
                  cell("-" if mean["difference"] is None else f"{mean['difference']:+.3f}",
                       "difference")])
    )  # fmt: skip
    parts = [
        f'<p class="note">Internal: the {escape(comparison["internal_split"])} split of '
        f"{_code(comparison['internal_dataset'])}; external: the "
        f"{escape(comparison['external_split'])} split of "
        f"{_code(comparison['external_dataset'])}; same model "
        f"{_code(comparison['model_file'])}. 95% intervals over "
        f"{comparison['bootstrap']['n']} patient-level bootstrap resamples; n: images with a "
        "known label. The mean is over the outputs defined on both sides.</p>",
        table(header, rows, table_id="comparison", row_class={"mean": "mean"}),
        image_tag(report.png_bytes(report.comparison_figure(comparison)),
                  "internal and external AUROC per output"),
    ]  # fmt: skip
    if comparison.get("not_labelled"):
        parts.append(
            f'<p class="note">Not labelled by the external dataset (skipped): '
            f"{escape(', '.join(comparison['not_labelled']))}.</p>"
        )
    return parts


def comparison_page(comparison: Mapping[str, Any]) -> str:
    """`internal_vs_external.html`: the internal-vs-external AUROC table and its plot."""
    title = f"Internal vs external AUROC: {comparison['run_dir']}"
    return page(title, [f"<h1>{escape(title)}</h1>", *_comparison_parts(comparison)])


# -------------------------------------------------------------------------- localization


def _localization_table(result: Mapping[str, Any]) -> str:
    from cxr_tf.evaluation.localization import WANG2017_IOBB_ACCURACY

    scores = result["table"]
    columns = list(scores)
    thresholds = list(next(iter(scores.values()))["accuracy"])
    rows = [
        (f"T={t}", [cell(f"{float(t):g}"),
                    *(cell(fmt(scores[c]["accuracy"][t], 4), f"{c}:accuracy:{t}")
                      for c in columns)])
        for t in thresholds
    ]  # fmt: skip
    for key, label in (("mean_best_iou", "mean best IoU"), ("pointing", "pointing game")):
        rows.append((key, [cell(label), *(cell(fmt(scores[c][key], 4), f"{c}:{key}")
                                          for c in columns)]))  # fmt: skip
    rows.append(("n", [cell("n"), *(cell(str(scores[c]["n"]), f"{c}:n") for c in columns)]))
    for t in thresholds:
        published = WANG2017_IOBB_ACCURACY.get(float(t), {})
        rows.append(
            (f"Wang T={t}", [cell(f"{float(t):g} (Wang et al. 2017)"),
                             *(cell(fmt(published.get(c), 4)) for c in columns)])
        )  # fmt: skip
    return table(["T(IoBB)", *columns], rows, table_id="iobb", row_class={"pointing": "mean"})


def _localization_cases(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    parts = []
    header = ["image", "finding", "probability", "best IoBB", "best IoU"]
    for hit, title in ((False, "Pointing-game misses"), (True, "Pointing-game hits")):
        chosen = sorted(
            (c for c in cases if bool(c["pointing_hit"]) == hit),
            key=lambda c: -(c.get("probability") or 0.0),
        )[:LOCALIZATION_CASES]
        rows = [
            (f"{c['image']}:{c['finding']}",
             [cell(c["image"]), cell(c["finding"]), cell(fmt(c.get("probability"))),
              cell(fmt(c["best_iobb"])), cell(fmt(c["best_iou"]))])
            for c in chosen
        ]  # fmt: skip
        total = sum(bool(c["pointing_hit"]) == hit for c in cases)
        parts += [
            f"<h3>{title}: {total} case(s), the {len(chosen)} with the highest probability</h3>",
            table(header, rows) if rows else '<p class="empty">none</p>',
        ]
    return parts


def localization_page(result: Mapping[str, Any], out: str | Path) -> str:
    """`localization.html` of `localize`: its result dict (`localization.json`) with the
    overlay PNGs it wrote under `out` inlined."""
    overall = result["table"]["all"]
    title = f"Localization: {result['run_dir']}"
    items = [
        f"split <b>{escape(result['split'])}</b>, {result['n_images']} images with boxes, "
        f"{result['n_cases']} ground-truth boxes (cases)",
        f"heatmaps: {escape(result['method'])} on layer {_code(result['layer'])}, upsampled "
        f"to the {result['stored_size']} px stored image; boxes: connected regions with heat "
        f"&ge; {result['threshold']:g} &times; the map's maximum, at most "
        f"{result['max_boxes']} per map",
    ]
    if result.get("skipped"):
        items.append(f"boxed findings the model does not predict (skipped): "
                     f"{escape(str(result['skipped']))}")  # fmt: skip
    parts = [
        f"<h1>{escape(title)}</h1>",
        _meta(items),
        f'<p class="big" id="pointing-game">Pointing game {fmt(overall["pointing"])} (the '
        f"heatmap's peak inside the box, tolerance {result['tolerance']:g} px)</p>",
        "<h2>Accuracy at T(IoBB)</h2>",
        _localization_table(result),
        '<p class="note">Share of ground-truth boxes for which some predicted box has IoBB '
        "(intersection over the predicted box's area) &gt; T; all pools every case. Reference "
        "rows: Wang et al. 2017 (arXiv 1705.02315 v5, Table 19), official split; '-' where "
        "not published.</p>",
        "<h2>Cases</h2>",
        *_localization_cases(result.get("cases") or []),
    ]
    overlays = [Path(out) / name for name in result.get("overlays") or []]
    if overlays:
        parts += [
            "<h2>Overlays</h2>",
            '<p class="note">Ground truth green, predicted boxes red (dashed).</p>',
            '<div class="overlays">'
            + "".join(image_tag(p.read_bytes(), p.stem, css="overlay") for p in overlays if
                      p.is_file())
            + "</div>",
        ]  # fmt: skip
    return page(title, parts)


# --------------------------------------------------------------------------------- files


def write_evaluation_html(
    out: str | Path,
    result: Mapping[str, Any],
    y_true: np.ndarray,
    y_prob: np.ndarray,
    cases: Sequence[gallery.Case] | None = None,
) -> Path:
    """Writes `report.html` (and, for an external evaluation, `internal_vs_external.html`)
    into `out`; returns the report's path."""
    out = Path(out)
    path = out / REPORT_HTML
    path.write_text(evaluation_page(result, y_true, y_prob, cases), encoding="utf-8")
    comparison = result.get("internal_vs_external")
    if comparison and comparison.get("rows"):
        (out / COMPARISON_HTML).write_text(comparison_page(comparison), encoding="utf-8")
    return path


def write_localization_html(result: Mapping[str, Any], out: str | Path) -> Path:
    """Writes `localization.html` into `out` (where the overlays are); returns its path."""
    path = Path(out) / LOCALIZATION_HTML
    path.write_text(localization_page(result, out), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ browser


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: the first on PATH."""
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def run_chromium(
    page_path: str | Path,
    *options: str,
    width: int = 1280,
    height: int = 2000,
    chromium: str | None = None,
    timeout: float = 120,
) -> str:
    """Runs headless Chromium on a local page with `options`; returns its stdout.

    It runs without its sandbox (which refuses root, as in CI containers) and with a
    throw-away profile; the virtual time budget lets every inlined image decode first.

    Raises:
        FileNotFoundError: no Chromium found (install Debian's `chromium`, or pass its path).
        RuntimeError: Chromium failed; its stderr is quoted.
    """
    chromium = chromium or find_chromium()
    if not chromium:
        raise FileNotFoundError(
            "no Chromium found: install it (Debian: apt-get install chromium) or pass "
            "--chromium PATH"
        )
    page_path = Path(page_path).resolve()
    if not page_path.is_file():
        raise FileNotFoundError(f"{page_path}: no such page")
    with tempfile.TemporaryDirectory(prefix="cxr_tf-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", "--virtual-time-budget=5000",
            *options, page_path.as_uri(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(
    page_path: str | Path, png: str | Path, width: int = 1280, height: int = 2000,
    chromium: str | None = None,
) -> Path:  # fmt: skip
    """Renders the top `width` x `height` pixels of a page to a PNG with headless Chromium."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(page_path, f"--screenshot={png}", width=width, height=height,
                 chromium=chromium)  # fmt: skip
    if not png.is_file():
        raise RuntimeError(f"{page_path}: Chromium wrote no screenshot to {png}")
    return png
