"""HTML reports: the gallery's choice of cases and its overlays, the page's escaping, and
each report (evaluation, internal vs external, localization) of the shared tiny run
rendered by headless Chromium: the page is not blank, every image loaded, and the numbers
in its tables equal those of the JSON file beside it."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tf import evaluate, localize
from cxr_tf import report as report_cli
from cxr_tf.evaluation import evaluator, gallery, html, localizer
from cxr_tf.evaluation.thresholds import load_thresholds
from cxr_tf.labels import MASKED
from cxr_tf.runs import folder as runs

CHROMIUM = html.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on PATH here (Debian: apt-get install chromium, as .ci/run does): "
    "the browser checks of the HTML reports run in CI",
)
N_BOOT = 100
# Injected into a copy of a page: after every image has loaded (or failed), writes each
# <img>'s state into the DOM, which Chromium's --dump-dom then prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const probe = document.createElement("pre");
  probe.id = "image-probe";
  probe.textContent = JSON.stringify(Array.from(document.images).map(
    (img) => [img.complete, img.naturalWidth, img.naturalHeight]));
  document.body.appendChild(probe);
});
</script>"""


class Tables(HTMLParser):
    """Every table with an id: {table id: {data-row: {data-key: cell text}}}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self._table = self._row = self._key = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], {})
        elif tag == "tr" and self._table is not None and "data-row" in a:
            self._row = self._table.setdefault(a["data-row"], {})
        elif tag == "td" and self._row is not None and a.get("data-key"):
            self._key, self._text = a["data-key"], []

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._key is not None:
            self._row[self._key] = "".join(self._text)
            self._key = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None


def tables_of(text: str) -> dict[str, dict[str, dict[str, str]]]:
    parser = Tables()
    parser.feed(text)
    return parser.tables


def rendered(page: Path, tmp_path: Path) -> tuple[str, list[list]]:
    """(the DOM Chromium built from `page` after load, [complete, naturalWidth,
    naturalHeight] of every image)."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    dom = html.run_chromium(probed, "--dump-dom")
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
    assert found, f"{page}: the probe did not run (no load event?)"
    return dom, json.loads(found.group(1).replace("&quot;", '"'))


def assert_not_blank(page: Path, png: Path) -> None:
    """Renders the page with the documented command and checks the pixels vary."""
    assert report_cli.main(["--screenshot", str(page), str(png), "--height", "1200"]) == 0
    with Image.open(png) as image:
        assert image.size == (1280, 1200)
        gray = np.asarray(image.convert("L"), np.float64)
    assert gray.std() > 20, f"{page}: rendered page looks blank (std {gray.std():.1f})"
    assert (gray < 128).mean() > 0.005, f"{page}: almost no dark pixels (text, plots)"


def assert_images_loaded(images: list[list], expected: int) -> None:
    assert len(images) == expected
    broken = [i for i, (complete, width, height) in enumerate(images)
              if not complete or width == 0 or height == 0]  # fmt: skip
    assert not broken, f"images that did not load: {broken}"


def number(text: str) -> float | None:
    return None if text == "-" else float(text)


def assert_shown(text: str, value: float | None, digits: int = 3) -> None:
    """A cell shows the JSON number rounded to `digits` ('-' for None)."""
    if value is None:
        assert text == "-"
    else:
        assert number(text) == pytest.approx(value, abs=0.5 * 10**-digits + 1e-12)


# ------------------------------------------------------------------------- no browser


def test_select_cases_takes_the_most_confident_of_each_kind():
    probs = np.array([[0.9], [0.8], [0.7], [0.6], [0.2], [0.1], [0.95], [0.3]])
    targets = np.array([[1], [0], [1], [0], [1], [1], [MASKED], [0]])
    images = [f"i{k}" for k in range(8)]
    cases = gallery.select_cases(["Mass"], images, np.arange(8), probs, targets,
                                 {"Mass": 0.5}, per_kind=2)  # fmt: skip
    by_kind = {k: [c.image for c in cases if c.kind == k] for k in gallery.KINDS}
    # i6 has the highest probability but an unknown label: never shown
    assert by_kind == {"tp": ["i0", "i2"], "fp": ["i1", "i3"], "fn": ["i5", "i4"]}
    assert all(c.threshold == 0.5 and c.output == "Mass" for c in cases)
    # no threshold: no cases; multi-class: predicted = argmax
    assert gallery.select_cases(["Mass"], images, np.arange(8), probs, targets,
                                {"Mass": None}, 2) == []  # fmt: skip
    mc = gallery.select_cases(
        ["a", "b"], ["x", "y", "z"], np.arange(3), np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]),
        np.array([[1, 0], [1, 0], [0, 1]]), None, per_kind=3,
    )  # fmt: skip
    assert [(c.output, c.kind, c.image) for c in mc] == [
        ("a", "tp", "x"), ("a", "fn", "y"), ("b", "tp", "z"), ("b", "fp", "y"),
    ]  # fmt: skip


def test_overlay_is_a_jpeg_with_the_box_drawn_in_green():
    image = np.full((64, 64, 1), 40, np.uint8)
    data = gallery.overlay_jpeg(image, np.zeros((64, 64)), [(8.0, 16.0, 20.0, 10.0)])
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "JPEG" and picture.size == (192, 192)  # 3x, >= MIN_SIDE
        rgb = np.asarray(picture.convert("RGB"), np.int16)
    r, g, b = rgb[16 * 3 + 1, (8 + 10) * 3].tolist()  # on the box's top edge
    assert g > 180 and r < 90 and b < 90
    inside = rgb[(16 + 5) * 3, (8 + 10) * 3]
    assert abs(int(inside[1]) - int(inside[0])) < 40  # gray-blue heat, no green line


def test_page_escapes_names_and_inlines_images():
    tag = html.image_tag(b"\x89PNG", 'a "<b>"')
    assert tag.startswith('<img class="plot" alt="a &quot;&lt;b&gt;&quot;" src="data:image/png;')
    text = html.page("<x>", [html.table(["h"], [("<r>", [html.cell("<v>", "k")])], "t")])
    assert "<title>&lt;x&gt;</title>" in text and "@media print" in text
    assert tables_of(text) == {"t": {"<r>": {"k": "<v>"}}}


def test_screenshot_command_errors_clearly(tmp_path, capsys, monkeypatch):
    missing = ["--screenshot", str(tmp_path / "none.html"), str(tmp_path / "a.png")]
    assert report_cli.main(missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("report: error: ") and "none.html" in err and "Traceback" not in err
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "p.html").write_text("<p>x</p>")
    assert report_cli.main(["--screenshot", str(tmp_path / "p.html"), str(tmp_path / "a.png")]) == 2
    assert "no Chromium found" in capsys.readouterr().err


@needs_chromium
def test_the_browser_checks_catch_a_broken_image_and_a_blank_page(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (30, 20), "red").save(png, format="PNG")
    good, bad = html.image_tag(png.getvalue(), "ok"), html.image_tag(b"not a png", "broken")
    page = tmp_path / "p.html"
    page.write_text(html.page("t", ["<h1>Title</h1>", good, bad]))
    _, images = rendered(page, tmp_path)
    assert [i[1:] for i in images] == [[30, 20], [0, 0]]
    blank = tmp_path / "blank.html"
    blank.write_text(html.page("t", []))
    with pytest.raises(AssertionError, match="blank"):
        assert_not_blank(blank, tmp_path / "blank.png")


# ------------------------------------------------------------------ the shared tiny run


@pytest.fixture(scope="module")
def reports(trained_run, tmp_path_factory) -> dict[str, Path]:
    """A copy of the shared run evaluated on its own test split, then on a copy of its own
    dataset under another folder (an "external" one, so the comparison page is written),
    and localized."""
    base = tmp_path_factory.mktemp("html")
    run_dir = Path(shutil.copytree(trained_run, base / "run",
                                   ignore=shutil.ignore_patterns("logs", "backup")))  # fmt: skip
    own = ["--run_dir", str(run_dir), "--bootstrap", str(N_BOOT), "--quiet"]
    assert evaluate.main(own) == 0
    dataset = runs.load_run_config(run_dir).data.dataset
    copy = Path(shutil.copytree(dataset, base / "copy64"))
    assert evaluate.main([*own, "--dataset", str(copy)]) == 0
    out = base / "localize"
    argv = ["--run_dir", str(run_dir), "--out", str(out), "--overlays", "3", "--quiet"]
    assert localize.main(argv) == 0
    return {
        "run": run_dir,
        "eval": run_dir / "eval" / "test-best",
        "external": run_dir / "eval" / "external-copy64-test-best",
        "localize": out,
    }


def _predictions(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    with (folder / evaluator.PREDICTIONS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    names = [k[len("prob_") :] for k in rows[0] if k.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    labels = np.array([[int(r[f"label_{n}"]) for n in names] for r in rows])
    return [r["image"] for r in rows], probs, labels, names


@pytest.mark.slow
def test_gallery_holds_the_most_confident_cases_with_their_boxes(reports):
    out = reports["eval"]
    result = json.loads((out / evaluator.REPORT_JSON).read_text())
    images, probs, labels, names = _predictions(out)
    thresholds = load_thresholds(out)["thresholds"]
    shown = result["gallery"]
    assert shown, "no gallery"
    for j, name in enumerate(names):
        p, t = probs[:, j], labels[:, j]
        positive = p >= thresholds[name]
        for kind, mask, order in (("tp", (t == 1) & positive, -p), ("fp", (t == 0) & positive, -p),
                                  ("fn", (t == 1) & ~positive, p)):  # fmt: skip
            rows = np.flatnonzero(mask)
            expected = [images[i] for i in rows[np.argsort(order[rows], kind="stable")][:3]]
            got = [c["image"] for c in shown if c["output"] == name and c["kind"] == kind]
            assert got == expected, (name, kind)
    # Boxes: exactly those the dataset has for that image and finding, in stored pixels.
    boxed = {b.image_id: b.boxes for b in localizer.read_boxed_images(
        runs.load_run_config(reports["run"]).data.dataset, "test")}  # fmt: skip
    with_boxes = 0
    for case in shown:
        truth = [b for f, b in boxed.get(case["image"], []) if f == case["output"]]
        np.testing.assert_allclose(np.reshape(case["boxes"], (-1, 4)), np.reshape(truth, (-1, 4)))
        with_boxes += bool(truth)
    assert with_boxes > 0
    page = (out / html.REPORT_HTML).read_text()
    assert page.count('class="case"') == len(shown)


@pytest.mark.slow
@needs_chromium
def test_evaluation_report_in_the_browser(reports, tmp_path):
    out = reports["eval"]
    result = json.loads((out / evaluator.REPORT_JSON).read_text())
    page = out / html.REPORT_HTML
    assert_not_blank(page, tmp_path / "report.png")
    dom, images = rendered(page, tmp_path)
    # one curves figure per output, one overlay per gallery case
    assert_images_loaded(images, len(result["outputs"]) + len(result["gallery"]))
    shown = tables_of(dom)["per-output"]
    assert list(shown) == result["outputs"]
    for name, entry in result["per_output"].items():
        row, op = shown[name], entry["operating_point"]
        assert (int(row["n"]), int(row["n_pos"])) == (entry["n"], entry["n_pos"])
        for key in ("prevalence", "auroc", "auprc"):
            assert_shown(row[key], entry[key])
        assert_shown(row["auroc_ci_low"], entry["auroc_ci"][0])
        assert_shown(row["auroc_ci_high"], entry["auroc_ci"][1])
        assert_shown(row["threshold"], op["threshold"], digits=4)
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1"):
            assert_shown(row[key], op[key])
        for key in ("ece", "brier"):
            assert_shown(row[key], entry["calibration"][key])
    mean = re.search(r'id="mean-auroc" data-value="([0-9.]+)">Mean AUROC ([0-9.]+)', dom)
    assert_shown(mean.group(2), result["mean_auroc"]["value"])


@pytest.mark.slow
@needs_chromium
def test_comparison_report_in_the_browser(reports, tmp_path):
    out = reports["external"]
    table = json.loads((out / evaluator.COMPARISON_JSON).read_text())
    page = out / html.COMPARISON_HTML
    assert_not_blank(page, tmp_path / "comparison.png")
    dom, images = rendered(page, tmp_path)
    assert_images_loaded(images, 1)
    shown = tables_of(dom)["comparison"]
    assert list(shown) == [r["output"] for r in table["rows"]] + ["mean"]
    for r in table["rows"]:
        row = shown[r["output"]]
        for side in ("internal", "external"):
            assert_shown(row[f"{side}_auroc"], r[side]["auroc"])
            assert_shown(row[f"{side}_auroc_ci_low"], r[side]["auroc_ci"][0])
            assert_shown(row[f"{side}_auroc_ci_high"], r[side]["auroc_ci"][1])
            assert int(row[f"{side}_n"]) == r[side]["n"]
        assert_shown(row["difference"], r["difference"])
    assert_shown(shown["mean"]["external_auroc"], table["mean"]["external"])
    # the external report.html holds the same table, below its own
    assert tables_of((out / html.REPORT_HTML).read_text())["comparison"] == shown


@pytest.mark.slow
@needs_chromium
def test_localization_report_in_the_browser(reports, tmp_path):
    out = reports["localize"]
    result = json.loads((out / localizer.LOCALIZATION_JSON).read_text())
    page = out / html.LOCALIZATION_HTML
    assert_not_blank(page, tmp_path / "localization.png")
    dom, images = rendered(page, tmp_path)
    assert_images_loaded(images, len(result["overlays"]))
    assert len(result["overlays"]) >= 3
    shown = tables_of(dom)["iobb"]
    for column, scores in result["table"].items():
        for t, accuracy in scores["accuracy"].items():
            assert_shown(shown[f"T={t}"][f"{column}:accuracy:{t}"], accuracy, digits=4)
        assert_shown(shown["pointing"][f"{column}:pointing"], scores["pointing"], digits=4)
        assert_shown(shown["mean_best_iou"][f"{column}:mean_best_iou"], scores["mean_best_iou"],
                     digits=4)  # fmt: skip
        assert int(shown["n"][f"{column}:n"]) == scores["n"]


@pytest.mark.slow
def test_gallery_can_be_turned_off(reports, tmp_path):
    # the validation split: its predictions also choose the thresholds (one pass, not two)
    argv = ["--run_dir", str(reports["run"]), "--split", "validation", "--bootstrap", "20",
            "--gallery", "0", "--out", str(tmp_path / "plain"), "--quiet"]  # fmt: skip
    assert evaluate.main(argv) == 0
    result = json.loads((tmp_path / "plain" / evaluator.REPORT_JSON).read_text())
    page = (tmp_path / "plain" / html.REPORT_HTML).read_text()
    assert "gallery" not in result and 'class="case"' not in page
    assert page.count('class="plot"') == len(result["outputs"])
