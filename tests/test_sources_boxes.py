"""The two sources with radiologists' boxes, VinDr-CXR and RSNA Pneumonia
(`cxr_tf.sources.vindr`, `rsna`), on their imitations (`cxr_tf.synthetic.vindr`, `rsna`):
label maps and own findings, readers combined, boxes kept per reader, patients, splits,
detection, error messages, conversion (twice: one fingerprint; `--verify`), boxes read back
by `localize`, and `localize` on a tiny model trained on each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_synth, tiny_run_config

from cxr_tf.config import ConvertConfig, SynthConfig
from cxr_tf.data import conversion
from cxr_tf.evaluation import localization, localizer
from cxr_tf.labels import NEGATIVE, POSITIVE, UNLABELLED, VOCABULARY, label_names
from cxr_tf.sources import catalog, registry, rsna, vindr
from cxr_tf.synthetic.layouts import generate_layout

N = 48
SIZE = 64


def _generate(root: Path, layout: str, n: int = N, seed: int = 4, **kwargs) -> dict:
    config = SynthConfig(
        out=str(root), n=n, seed=seed, image_size=SIZE, layout=layout, prevalence="0.15", **kwargs
    )
    return generate_layout(config, progress=False)


@pytest.fixture(scope="module")
def imitations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One imitation per layout (read-only: tests that change files copy them first)."""
    return {
        layout: _generate(tmp_path_factory.mktemp(layout), layout) for layout in ("vindr", "rsna")
    }


@pytest.fixture(scope="module")
def catalogs(imitations) -> dict[str, catalog.Catalog]:
    return {layout: registry.read_catalog(layout, s["out"]) for layout, s in imitations.items()}


def _copy(summary: dict, dest: Path) -> Path:
    shutil.copytree(summary["out"], dest)
    return dest


# --- VinDr-CXR -----------------------------------------------------------------------------


def test_vindr_labels_map_and_own_findings(imitations, catalogs) -> None:
    summary, cat = imitations["vindr"], catalogs["vindr"]
    assert cat.own_findings == vindr.OWN
    assert "Aortic enlargement" in cat.own_findings and "Nodule/Mass" in cat.own_findings
    assert "Other diseases" in cat.own_findings and "Other disease" not in cat.own_findings
    assert "No finding" not in cat.own_findings and len(cat.own_findings) == 13
    names = label_names(vindr.OWN)
    frame = cat.frame.set_index("image_index")
    states = frame[list(names)].to_numpy()
    index = {n: i for i, n in enumerate(frame.index)}
    named = set(vindr.VINDR_LABELS.values()) | set(vindr.OWN)
    for finding in names:
        column = states[:, names.index(finding)]
        if finding not in named:  # Mass, Nodule, Hernia, ...: VinDr does not say
            assert (column == UNLABELLED).all(), finding
            continue
        for image, positive in summary["positive"].items():
            mapped = {vindr.VINDR_LABELS.get(p, p) for p in positive}
            want = POSITIVE if finding in mapped else NEGATIVE
            assert column[index[image]] == want, (image, finding)
    # several names, one finding: Rib fracture is Fracture; global labels are labelled
    assert any("Rib fracture" in p for p in summary["positive"].values())
    assert (states[:, names.index("Fracture")] == POSITIVE).sum() == sum(
        "Rib fracture" in p for p in summary["positive"].values()
    )
    lung_tumor = states[:, names.index("Lung tumor")]
    assert (lung_tumor == POSITIVE).sum() > 0


def test_vindr_any_reader_makes_a_positive(imitations, catalogs) -> None:
    summary, cat = imitations["vindr"], catalogs["vindr"]
    frame = cat.frame.set_index("image_index")
    single = 0
    for image, boxes in summary["boxes"].items():
        if not image.startswith("train/"):
            continue
        readers: dict[str, set[str]] = {}
        for finding, *_, reader in boxes:
            readers.setdefault(finding, set()).add(reader)
        for finding, who in readers.items():
            column = vindr.VINDR_LABELS.get(finding, finding)
            assert frame.loc[image, column] == POSITIVE
            single += len(who) == 1
    assert single > 0, "the imitation should have findings only one reader marked"


def test_vindr_boxes_kept_per_reader_in_image_pixels(imitations, catalogs) -> None:
    summary, cat = imitations["vindr"], catalogs["vindr"]
    boxes = cat.boxes
    assert cat.box_frame is None and list(boxes.columns) == [
        "image_index", "finding", "x", "y", "w", "h", "reader"
    ]  # fmt: skip
    assert len(boxes) == sum(len(b) for b in summary["boxes"].values())
    for image, written in summary["boxes"].items():
        mine = boxes[boxes["image_index"] == image].sort_values(["reader", "finding"])
        want = sorted(
            (r or vindr.CONSENSUS, vindr.VINDR_LABELS.get(f, f), x, y, w, h)
            for f, x, y, w, h, r in written
        )
        got = sorted(mine[["reader", "finding", "x", "y", "w", "h"]].itertuples(index=False))
        assert [g[:2] for g in got] == [w_[:2] for w_ in want]
        np.testing.assert_allclose([g[2:] for g in got], [w_[2:] for w_ in want], atol=0.011)
        width, height = summary["sizes"][image]
        assert (mine["x"] + mine["w"] <= width + 0.01).all()
        assert (mine["y"] + mine["h"] <= height + 0.01).all()
    train = boxes[boxes["image_index"].str.startswith("train/")]
    test = boxes[boxes["image_index"].str.startswith("test/")]
    assert set(train["reader"]) <= set(f"R{i}" for i in range(1, 18)) and len(train)
    assert set(test["reader"]) == {vindr.CONSENSUS}
    # up to three readers' boxes of one finding on one training image
    per = train.groupby(["image_index", "finding"])["reader"].nunique()
    assert per.max() >= 2 and per.max() <= 3


def test_vindr_split_patients_and_headers(imitations, catalogs) -> None:
    summary, cat = imitations["vindr"], catalogs["vindr"]
    names = set(cat.frame["image_index"])
    assert set(cat.official) == {"train_val", "test"}
    assert set(cat.official["test"]) == {n for n in names if n.startswith("test/")}
    assert set(cat.official["train_val"]) | set(cat.official["test"]) == names
    assert len(cat.official["test"]) == round(0.2 * N)
    assert cat.frame["patient_id"].is_unique  # one patient per image
    assert any("own patient" in note for note in cat.notes)
    frame = cat.frame.set_index("image_index")
    for image, (width, height) in summary["sizes"].items():
        assert (frame.loc[image, "original_width"], frame.loc[image, "original_height"]) == (
            width,
            height,
        )
    assert set(frame["view_position"]) == {"PA"}
    assert {k[0] for k in summary["kinds"].values()} == {"MONOCHROME1", "MONOCHROME2"}


def _rewrite(path: Path, edit) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("annotations_train.csv", lambda f: f.loc.__setitem__((0, "class_name"), "Nodule"),
         r"annotations_train.csv, data row 1 \(line 2\), column 'class_name': unknown label"),
        ("image_labels_train.csv", lambda f: f.loc.__setitem__((2, "ILD"), "yes"),
         r"image_labels_train.csv, data row 3 \(line 4\), column 'ILD': not 0 or 1: 'yes'"),
        ("image_labels_test.csv", lambda f: f.rename(columns={"ILD": "IDL"}, inplace=True),
         r"image_labels_test.csv: unknown label column\(s\) \['IDL'\]"),
    ],
)  # fmt: skip
def test_vindr_errors_name_file_row_and_column(imitations, tmp_path, name, edit, message):
    root = _copy(imitations["vindr"], tmp_path / "v")
    _rewrite(root / "annotations" / name, edit)
    with pytest.raises(catalog.CatalogError, match=message):
        registry.read_catalog("vindr", root)


def test_vindr_box_without_coordinates_is_an_error(imitations, tmp_path) -> None:
    root = _copy(imitations["vindr"], tmp_path / "v")
    path = root / "annotations" / "annotations_train.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = int(np.flatnonzero(frame["class_name"].ne("No finding"))[0])
    frame.loc[row, "x_min"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(catalog.CatalogError, match=rf"data row {row + 1} .*column 'x_min'"):
        registry.read_catalog("vindr", root)


def test_vindr_needs_its_four_files(imitations, tmp_path) -> None:
    root = _copy(imitations["vindr"], tmp_path / "v")
    (root / "annotations" / "image_labels_test.csv").unlink()
    assert "image_labels_test.csv missing" in vindr.why_not(root)
    with pytest.raises(catalog.CatalogError, match="image_labels_test.csv not found"):
        registry.read_catalog("vindr", root)


# --- RSNA Pneumonia ------------------------------------------------------------------------


def test_rsna_classes_boxes_and_patients(imitations, catalogs) -> None:
    summary, cat = imitations["rsna"], catalogs["rsna"]
    assert cat.own_findings == (rsna.NOT_NORMAL_FINDING,)
    frame = cat.frame.set_index("image_index")
    assert set(frame.index) == set(summary["classes"])  # the unlabelled test images left out
    assert any("stage_2_test_images" in note for note in cat.notes)
    want = {
        rsna.OPACITY: (POSITIVE, UNLABELLED),
        rsna.NORMAL: (NEGATIVE, NEGATIVE),
        rsna.NOT_NORMAL: (NEGATIVE, POSITIVE),
    }
    for image, cls in summary["classes"].items():
        got = (frame.loc[image, "Lung_Opacity"], frame.loc[image, rsna.NOT_NORMAL_FINDING])
        assert got == want[cls], (image, cls)
        others = [f for f in VOCABULARY if f != "Lung_Opacity"]
        assert (frame.loc[image, others] == UNLABELLED).all()
    assert set(summary["classes"].values()) == set(rsna.CLASSES)
    boxes = cat.boxes
    assert cat.box_frame is None and set(boxes["finding"]) == {"Lung_Opacity"}
    for image, drawn in summary["boxes"].items():
        mine = boxes[boxes["image_index"] == image][["x", "y", "w", "h"]].to_numpy()
        assert sorted(map(tuple, mine)) == sorted(tuple(map(float, b)) for b in drawn)
    assert any(len(b) >= 2 for b in summary["boxes"].values())  # several boxes per image
    # patients from the DICOM PatientID, numbered; their own IDs kept for messages
    assert cat.official is None
    assert cat.patient_ids.startswith("DICOM PatientID")
    names = {cat.patient_names[p] for p in frame["patient_id"]}
    assert names == set(summary["patients"].values())
    assert set(frame["view_position"]) == {"PA", "AP"}
    assert (frame["age"] >= 0).all() and set(frame["sex"]) == {"M", "F"}


def test_rsna_without_class_file_reads_target_only(imitations, tmp_path) -> None:
    root = _copy(imitations["rsna"], tmp_path / "r")
    (root / "stage_2_detailed_class_info.csv").unlink()
    cat = registry.read_catalog("rsna", root)
    assert cat.own_findings == ()
    frame = cat.frame.set_index("image_index")
    for image, cls in imitations["rsna"]["classes"].items():
        assert frame.loc[image, "Lung_Opacity"] == (POSITIVE if cls == rsna.OPACITY else NEGATIVE)


def test_rsna_contradictions_are_errors(imitations, tmp_path) -> None:
    root = _copy(imitations["rsna"], tmp_path / "r")
    summary = imitations["rsna"]
    normal = next(i for i, c in summary["classes"].items() if c == rsna.NORMAL)
    patient = summary["patients"][normal]
    classes = root / "stage_2_detailed_class_info.csv"
    frame = pd.read_csv(classes, dtype=str)
    frame.loc[frame["patientId"] == patient, "class"] = rsna.OPACITY
    frame.to_csv(classes, index=False)
    with pytest.raises(catalog.CatalogError, match=rf"{patient}.*'Lung Opacity' but its Target"):
        registry.read_catalog("rsna", root)
    labels = root / "stage_2_train_labels.csv"
    text = labels.read_text() + f"{patient},1.0,2.0,3.0,4.0,1\n"
    labels.write_text(text)
    with pytest.raises(catalog.CatalogError, match="both Target 0 and Target 1 rows"):
        registry.read_catalog("rsna", root)
    labels.write_text(text.replace(f"{patient},1.0,2.0,3.0,4.0,1", f"{patient},1.0,,3.0,4.0,1"))
    with pytest.raises(catalog.CatalogError, match=r"column 'y': a Target 1 row needs a box"):
        registry.read_catalog("rsna", root)


# --- detection ------------------------------------------------------------------------------


def test_detection_keeps_every_source_to_its_folder(imitations, tmp_path) -> None:
    roots = {k: Path(s["out"]) for k, s in imitations.items()}
    roots["nih"] = make_synth(tmp_path / "nih", n=8, seed=0, image_size=64)
    roots["padchest"] = Path(_generate(tmp_path / "padchest", "padchest", n=12)["out"])
    roots["csv"] = Path(_generate(tmp_path / "csv", "csv", n=12)["out"])
    for layout, root in roots.items():
        assert registry.detect_source(root) == layout, layout
        why = registry.why_not(root)
        assert (why["vindr"] == "") == (layout == "vindr")
        assert (why["rsna"] == "") == (layout == "rsna")
    assert "annotations_train.csv" in registry.why_not(roots["nih"])["vindr"]
    assert "stage_2_train_labels.csv" in registry.why_not(roots["nih"])["rsna"]


# --- conversion ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(imitations, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    result = {}
    for layout, summary in imitations.items():
        config = ConvertConfig(root=summary["out"], out_dir=str(out), stored_size=64, workers=2)
        result[layout] = out / conversion.convert(config, progress=False).dataset
    return result


@pytest.mark.parametrize("layout", ["vindr", "rsna"])
def test_converts_twice_to_one_fingerprint_and_verifies(layout, imitations, converted, tmp_path):
    from cxr_tf.convert import main as convert_main
    from cxr_tf.data.manifest import Manifest

    first = Manifest.load(converted[layout])
    config = ConvertConfig(
        root=imitations[layout]["out"], out_dir=str(tmp_path), stored_size=64, workers=2
    )
    again = conversion.convert(config, progress=False)
    assert again.fingerprint == first.fingerprint
    assert convert_main(["--verify", str(converted[layout]), "--quiet"]) == 0
    assert first.source.kind == layout and first.source.boxes > 0
    assert list(first.labels) == list(
        registry.read_catalog(layout, imitations[layout]["out"]).label_names
    )
    if layout == "vindr":
        assert first.source.splits.startswith("official")
    else:
        assert first.source.splits.startswith("random")


@pytest.mark.parametrize("layout", ["vindr", "rsna"])
def test_localize_reads_boxes_of_any_finding(layout, converted, catalogs):
    """Box finding indices name the manifest's labels (own findings included), in pixels of
    the stored image: the catalog's boxes scaled from each image's own frame."""
    cat = catalogs[layout]
    frame = cat.frame.set_index("image_index")
    seen = set()
    for split in ("train", "validation", "test"):
        for item in localizer.read_boxed_images(converted[layout], split):
            mine = cat.boxes[cat.boxes["image_index"] == item.image_id]
            width, height = frame.loc[item.image_id, ["original_width", "original_height"]]
            scale = np.array([64 / width, 64 / height, 64 / width, 64 / height])
            want = sorted(
                (f, *np.round(np.array(b, float) * scale, 2))
                for f, *b in mine[["finding", "x", "y", "w", "h"]].itertuples(index=False)
            )
            got = sorted((f, *np.round(np.array(b, float), 2)) for f, b in item.boxes)
            assert [g[0] for g in got] == [w[0] for w in want]
            np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=0.02)
            seen |= {f for f, _ in item.boxes}
    if layout == "vindr":
        assert seen & set(vindr.OWN) and seen & set(VOCABULARY)
    else:
        assert seen == {"Lung_Opacity"}


def test_markdown_leaves_unpublished_findings_blank() -> None:
    case = localization.LocalizationCase("Cardiomegaly", (0, 0, 4, 4), ((0, 0, 4, 4),), True)
    own = localization.LocalizationCase("Aortic enlargement", (0, 0, 4, 4), (), False)
    table = localization.localization_table([case, own])
    assert list(table) == ["Cardiomegaly", "Aortic enlargement", "all"]
    md = localization.localization_markdown(table)
    row = next(line for line in md.splitlines() if line.startswith("| 0.1 (Wang"))
    assert row.split("|")[2:5] == [" 1.0000 ", " - ", " - "]
    only_own = localization.localization_markdown(localization.localization_table([own]))
    assert "Wang et al." not in only_own and "| pointing game |" in only_own


# --- localize on a tiny model trained on each imitation -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layout", "findings"),
    [("vindr", ("Cardiomegaly", "Aortic enlargement")), ("rsna", ("Lung_Opacity",))],
)
def test_localize_scores_the_boxes(layout, findings, tmp_path) -> None:
    from cxr_tf import localize
    from cxr_tf.config import ModelConfig
    from cxr_tf.training import trainer

    summary = _generate(tmp_path / layout, layout, n=90, seed=11)
    config = ConvertConfig(root=summary["out"], out_dir=str(tmp_path / "tf"), stored_size=64)
    dataset = tmp_path / "tf" / conversion.convert(config, progress=False).dataset
    run = tiny_run_config(dataset, tmp_path / "run", epochs=2, early_stopping_patience=2)
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, findings=findings)
    trainer.fit(run, verbose=0)
    out = tmp_path / "loc"
    argv = ["--run_dir", str(tmp_path / "run"), "--out", str(out), "--overlays", "2", "--quiet"]
    assert localize.main(argv) == 0
    result = json.loads((out / localizer.LOCALIZATION_JSON).read_text())
    boxed = localizer.read_boxed_images(dataset, "test")
    scored = [f for item in boxed for f, _ in item.boxes if f in findings]
    assert result["n_cases"] == len(scored) > 0
    assert set(result["table"]) - {"all"} == set(scored)
    skipped: dict[str, int] = {}
    for item in boxed:
        for finding in dict.fromkeys(f for f, _ in item.boxes if f not in findings):
            skipped[finding] = skipped.get(finding, 0) + 1
    assert result["skipped"] == skipped
    assert 0.0 <= result["pointing_game"] <= 1.0
    md = (out / localizer.LOCALIZATION_MD).read_text()
    assert "| T(IoBB) |" in md and "pointing game" in md
    # Wang et al. boxed Cardiomegaly, not Lung_Opacity: reference rows only for VinDr's run
    assert ("Wang et al. 2017)" in md) == (layout == "vindr")
