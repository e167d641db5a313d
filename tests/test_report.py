"""Report figures: ROC / PR panels carry their scores in titles that fit the panels."""

from __future__ import annotations

import re

import numpy as np
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
