"""The exploration report's plots and markdown, from the statistics `exploration` computes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from cxr_tf.labels import FINDINGS, NO_FINDING

AGE_MAX = 100  # older ages are data errors in the 2017 label file; counted, not plotted

# --- plots ---------------------------------------------------------------------------


def figure(width: float, height: float, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _save(fig: Figure, axes: Any, path: Path) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _bars(ax: Any, categories: Sequence[str], series: dict[str, Sequence[float]]) -> None:
    """Grouped bars: one group per category, one bar per series."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, categories, rotation=35 if len(categories) > 8 else 0, ha="right")


def _split_names(prevalence: dict) -> list[str]:
    return [s for s in prevalence if s != "all"]


def plot_prevalence(prevalence: dict, path: Path) -> None:
    fig, (ax,) = figure(14, 5)
    series = {
        f"{s} ({prevalence[s]['images']})": [
            *(100 * prevalence[s]["prevalence"][f] for f in FINDINGS),
            100 * prevalence[s]["no_finding_share"],
        ]
        for s in _split_names(prevalence)
    }
    _bars(ax, [*FINDINGS, NO_FINDING], series)
    ax.set_yscale("log")
    ax.set_ylabel("% of the split's images (log)")
    ax.set_title("Finding prevalence per split")
    _save(fig, [ax], path)


def plot_cooccurrence(co: dict, path: Path) -> None:
    counts = np.asarray(co["counts"], np.float64)
    conditional = np.asarray(co["conditional"])
    off_diagonal = conditional[~np.eye(len(FINDINGS), dtype=bool)]
    fig, axes = figure(18, 8, cols=2)
    panels = [
        (counts, LogNorm(vmin=1, vmax=max(2.0, counts.max())), "{:.0f}"),
        # The diagonal (always 1) is left out so that the colours show the pairs.
        (
            np.where(np.eye(len(FINDINGS), dtype=bool), np.nan, conditional),
            Normalize(vmin=0, vmax=max(0.01, off_diagonal.max(initial=0))),
            "{:.2f}",
        ),
    ]
    titles = ["Images with both findings (log colour)", "P(column finding | row finding)"]
    for ax, (values, norm, fmt), title in zip(axes, panels, titles, strict=True):
        shown = ax.imshow(np.ma.masked_invalid(np.where(values > 0, values, np.nan)), norm=norm)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_xticks(range(len(FINDINGS)), FINDINGS, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(FINDINGS)), FINDINGS, fontsize=8)
        ax.set_title(title)
        bright = np.asarray(norm(np.nan_to_num(np.maximum(values, 1e-9)))) > 0.6
        for (i, j), v in np.ndenumerate(values):
            if np.isnan(v):
                continue
            # in_layout=False: tight_layout would otherwise measure all 392 labels.
            color = "black" if bright[i, j] else "white"
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=5.5,
                color=color,
                in_layout=False,
            )
    fig.tight_layout()
    fig.savefig(path)


_PATIENT_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 10**9))


def plot_patients(patients: dict, path: Path) -> None:
    fig, axes = figure(14, 4.5, cols=2)
    labels = [
        f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}"
        for lo, hi in _PATIENT_BINS
    ]
    series = {}
    for name, entry in patients.items():
        hist = {int(k): v for k, v in entry["histogram"].items()}
        if not hist:
            continue
        total = max(1, entry["patients"])
        series[f"{name} ({entry['patients']} patients)"] = [
            100 * sum(v for k, v in hist.items() if lo <= k <= hi) / total
            for lo, hi in _PATIENT_BINS
        ]
        sizes = np.arange(1, max(hist) + 1)
        counts = np.array([hist.get(int(k), 0) for k in sizes])
        axes[1].plot(sizes, np.cumsum(counts * sizes) / max(1, entry["images"]), label=name)
    _bars(axes[0], labels, series)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("images per patient")
    axes[0].set_ylabel("% of the split's patients (log)")
    axes[0].set_title("Images per patient")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("images per patient (log)")
    axes[1].set_ylabel("share of the split's images")
    axes[1].set_title("Images held by patients with at most N images")
    _save(fig, axes, path)


def plot_demographics(frame: pd.DataFrame, demographics: dict, path: Path) -> None:
    names = [s for s in demographics if s != "all"]
    fig, axes = figure(16, 4.5, cols=3)
    bins = np.arange(0, AGE_MAX + 5, 5)
    for split in names:
        ages = frame["age"][frame["split"] == split].clip(upper=AGE_MAX)
        axes[0].hist(ages, bins=bins, density=True, histtype="step", lw=1.5, label=split)
    axes[0].set_xlabel(f"age (years; over {AGE_MAX} counted as {AGE_MAX})")
    axes[0].set_ylabel("density")
    axes[0].set_title("Age")
    for ax, key, title in ((axes[1], "sex", "Sex"), (axes[2], "view_position", "View position")):
        categories = sorted({c for s in names for c in demographics[s][key]})
        series = {}
        for split in names:
            counts = demographics[split][key]
            total = max(1, sum(counts.values()))
            series[split] = [100 * counts.get(c, 0) / total for c in categories]
        _bars(ax, categories, series)
        ax.set_ylabel("% of the split's images")
        ax.set_title(title)
    _save(fig, axes, path)


# --- report --------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} (1:{1 / value:.0f})" if value else "0"


def markdown(summary: dict) -> str:
    prev = summary["prevalence"]
    names = _split_names(prev)
    cols = [*names, "all"]
    overlap = summary["overlap"]
    out = [f"# Exploring `{summary['source']['name']}`", ""]
    out.append(
        f"{'NIH folder' if summary['source']['kind'] == 'nih' else 'Converted dataset'} "
        f"`{summary['source']['path']}`: "
        f"{prev['all']['images']} images of {prev['all']['patients']} patients; "
        f"split strategy {summary['source']['split']}."
    )
    out += [f"\n> Note: {n}" for n in summary["notes"]]

    out += ["", "## Patient overlap between splits", ""]
    if overlap["status"] == "PASS":
        out.append("**PASS**: no patient has images in more than one split.")
    else:
        out.append(f"**FAIL**: {overlap['message']}")
        if overlap["patients"]:
            rows = [(p, " / ".join(s)) for p, s in overlap["splits_by_patient"].items()]
            out += ["", _table(["patient", "splits"], rows)]

    out += ["", "## Finding prevalence", "", "![prevalence](prevalence.png)", ""]
    rows = [
        [
            f,
            *(
                f"{prev[s]['positives'][f]} ({_pct(prev[s]['positives'][f], prev[s]['images'])})"
                for s in cols
            ),
        ]
        for f in FINDINGS
    ]
    rows.append(
        [
            NO_FINDING,
            *(
                f"{prev[s]['no_finding']} ({_pct(prev[s]['no_finding'], prev[s]['images'])})"
                for s in cols
            ),
        ]
    )
    rows.append(["images", *(prev[s]["images"] for s in cols)])
    rows.append(["patients", *(prev[s]["patients"] for s in cols)])
    out.append(_table(["finding", *cols], rows))

    out += [
        "",
        "## Class imbalance",
        "",
        "Positives / negatives per finding (1:N = negatives per positive).",
        "",
    ]
    rows = [[f, *(_ratio(prev[s]["pos_neg_ratio"][f]) for s in cols)] for f in FINDINGS]
    out.append(_table(["finding", *cols], rows))

    co = summary["cooccurrence"]
    counts, conditional = np.asarray(co["counts"]), np.asarray(co["conditional"])
    numbered = [f"{i + 1}. {f}" for i, f in enumerate(FINDINGS)]
    numbers = [str(i + 1) for i in range(len(FINDINGS))]
    out += ["", "## Co-occurrence", "", "![cooccurrence](cooccurrence.png)", ""]
    out += ["Images with both findings (all splits; the diagonal is the finding's count):", ""]
    out.append(
        _table(
            ["", *numbers], [[n, *row] for n, row in zip(numbered, counts.tolist(), strict=True)]
        )
    )
    out += [
        "",
        "P(column | row) in %, e.g. row Effusion, column Atelectasis = share of Effusion images "
        "that also show Atelectasis:",
        "",
    ]
    out.append(
        _table(
            ["", *numbers],
            [
                [n, *(f"{100 * v:.0f}" for v in row)]
                for n, row in zip(numbered, conditional, strict=True)
            ],
        )
    )
    pairs = sorted(
        ((counts[a, b], a, b) for a in range(len(FINDINGS)) for b in range(a + 1, len(FINDINGS))),
        reverse=True,
    )[:10]
    rows = [
        [
            FINDINGS[a],
            FINDINGS[b],
            int(n),
            f"{100 * conditional[a, b]:.1f}%",
            f"{100 * conditional[b, a]:.1f}%",
        ]
        for n, a, b in pairs
        if n
    ]
    out += [
        "",
        "Most frequent pairs:",
        "",
        _table(["A", "B", "images", "P(B\\|A)", "P(A\\|B)"], rows),
    ]

    patients = summary["patients"]
    out += [
        "",
        "## Images per patient and follow-ups",
        "",
        "![images per patient](images_per_patient.png)",
        "",
    ]
    rows = [
        [
            s,
            p["patients"],
            p["images"],
            f"{p['mean']:.2f}",
            f"{p['median']:.0f}",
            f"{p['p90']:.0f}",
            p["max"],
            _pct(p["single_image_patients"], p["patients"]),
            _pct(p["follow_up_images"], p["images"]),
            p["max_follow_up"],
        ]
        for s, p in ((s, patients[s]) for s in cols if s in patients)
    ]
    headers = [
        "split",
        "patients",
        "images",
        "mean",
        "median",
        "p90",
        "max",
        "1-image patients",
        "follow-up images (#>0)",
        "max follow-up #",
    ]
    out.append(_table(headers, rows))

    demo = summary["demographics"]
    out += ["", "## Age, sex and view position", "", "![demographics](demographics.png)", ""]
    rows = []
    for s in (s for s in cols if s in demo):
        d, n = demo[s], sum(demo[s]["sex"].values())
        views = ", ".join(f"{k} {_pct(v, n)}" for k, v in d["view_position"].items())
        sexes = ", ".join(f"{k} {_pct(v, n)}" for k, v in d["sex"].items())
        age = d["age"]
        rows.append(
            [
                s,
                n,
                f"{age['mean']:.1f} ± {age['std']:.1f}",
                f"{age['median']:.0f}",
                f"{age['min']}-{age['max']}",
                age["over_100"],
                sexes,
                views,
            ]
        )
    out.append(
        _table(
            ["split", "images", "age mean ± sd", "median", "range", "> 100", "sex", "view"], rows
        )
    )

    samples = summary["samples"]
    out += ["", "## Sample images", ""]
    if samples is None:
        out.append("Not drawn (samples_per_finding = 0).")
    else:
        out.append(
            f"{samples['found']} of {samples['listed']} images found ({samples['absent']} absent); "
            f"{samples['decoded']} of {samples['requested']} picked decoded "
            f"(modes: {', '.join(f'{k} {v}' for k, v in samples['modes'].items()) or '-'}). "
            "Boxed images come first; the red box is the row's finding, thin yellow ones "
            "are the image's other boxes."
        )
        out += ["", "![samples](samples.png)"]

    boxes = summary["boxes"]
    out += ["", "## Boxes", "", f"{boxes['boxes']} boxes on {boxes['images']} images.", ""]
    if boxes["per_finding"]:
        out.append(_table(["finding", "boxes"], list(boxes["per_finding"].items())))
    if "manifest_check" in summary:
        check = summary["manifest_check"]
        out += ["", "## Records against the manifest", ""]
        out.append(
            "**consistent**"
            if check["consistent"]
            else "**MISMATCH**: " + "; ".join(check["mismatches"])
        )
    return "\n".join(out) + "\n"
