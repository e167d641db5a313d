"""Report figures: ROC / PR panels carry their scores in titles that fit the panels."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_tf.evaluation import report


def _outputs() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    names = ["Pleural_Thickening", "Hernia", "Mass"]  # the longest finding name first
    y_true = (rng.random((200, 3)) < [0.3, 0.2, 0.5]).astype(int)
    y_true[:, 1] = 0  # Hernia: no positives, its areas are undefined
    y_prob = np.clip(0.35 * y_true + rng.random((200, 3)) * 0.8, 0, 1)
    return y_true, y_prob, names


def test_roc_pr_titles_carry_auroc_and_ap(tmp_path):
    y_true, y_prob, names = _outputs()
    figure = report.roc_pr_figure(y_true, y_prob, names)
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 2 * len(names)
    for j, name in enumerate(names):
        roc, pr = titles[2 * j], titles[2 * j + 1]
        assert roc.startswith(f"{name}\nROC") and pr.startswith(f"{name}\nPR")
        if name == "Hernia":
            assert roc.endswith("AUROC n/a") and pr.endswith("AP n/a")
            continue
        auroc = float(re.search(r"AUROC (0\.\d{3})$", roc).group(1))
        assert auroc == round(roc_auc_score(y_true[:, j], y_prob[:, j]), 3)
        ap = float(re.search(r"AP (0\.\d{3})$", pr).group(1))
        assert ap == round(average_precision_score(y_true[:, j], y_prob[:, j]), 3)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        width = ax.title.get_window_extent(renderer).width
        assert width <= ax.get_window_extent(renderer).width, ax.get_title()
    path = report.roc_pr_png(y_true, y_prob, names, tmp_path / "roc_pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_pr_panels_leave_unknown_labels_out():
    y_true, y_prob, names = _outputs()
    masked = y_true.copy()
    masked[::4, 0] = -1  # unknown for a quarter of the images
    figure = report.roc_pr_figure(masked, y_prob, names)
    known = masked[:, 0] >= 0
    auroc = float(re.search(r"AUROC (0\.\d{3})$", figure.axes[0].get_title()).group(1))
    assert auroc == round(roc_auc_score(y_true[known, 0], y_prob[known, 0]), 3)


def _side(auroc, ci, n, n_pos, undefined=None):
    return {"auroc": auroc, "auroc_ci": ci, "n": n, "n_pos": n_pos, "undefined": undefined}


def test_internal_vs_external_table_markdown_and_png(tmp_path):
    per = {
        "Mass": _side(0.9, [0.85, 0.95], 100, 12),
        "Nodule": _side(None, [None, None], 0, 0, "no known label"),
    }
    internal = {"dataset": "own", "split": "test", "per_output": per}
    external = {
        "run_dir": "RUN", "model_file": "best.keras", "split": "test", "dataset": "other",
        "bootstrap": {"n": 100}, "outputs": ["Mass", "Nodule"], "not_labelled": ["Hernia"],
        "per_output": {"Mass": _side(0.8, [0.7, 0.88], 40, 5),
                       "Nodule": _side(0.7, [0.6, 0.8], 30, 4)},
    }  # fmt: skip
    table = report.internal_vs_external(internal, external)
    mass, nodule = table["rows"]
    assert mass["difference"] == pytest.approx(-0.1) and nodule["difference"] is None
    assert table["mean"] == {"outputs": ["Mass"], "internal": 0.9, "external": 0.8,
                             "difference": pytest.approx(-0.1)}  # fmt: skip
    md = report.comparison_markdown(table)
    assert "| Mass | 0.900 [0.850, 0.950] (n=100, 12 pos) | 0.800 [0.700, 0.880] (n=40, 5 pos) |" \
        " -0.100 |" in md
    assert "n/a (no known label; n=0, 0 pos)" in md and "Hernia" in md
    assert "Internal: the test split of the run's own dataset `own`; external: the test" in md
    path = report.comparison_png(table, tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
