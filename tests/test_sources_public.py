"""Tests for the CheXpert, MIMIC-CXR-JPG and PadChest readers (`cxr_tf.sources.chexpert`,
`mimic`, `padchest`) on their synthetic imitations (`cxr_tf.synthetic.chexpert`, `mimic`,
`padchest`): file layouts, label values -> states, views, patients, official splits, error
messages and detection."""

from __future__ import annotations

import csv
import gzip
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import PROJECT, make_synth
from PIL import Image

from cxr_tf.config import ConvertConfig, SynthConfig
from cxr_tf.data.manifest import Manifest
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.sources import catalog, chexpert, mimic, padchest, registry
from cxr_tf.sources.base import LABELLER_LABELS as CHEXPERT_LABELS
from cxr_tf.sources.padchest import PADCHEST_LABELS
from cxr_tf.sources.registry import labelled_by
from cxr_tf.synth import main as synth_main
from cxr_tf.synthetic import chexpert as chexpert_imitation
from cxr_tf.synthetic import common as synthetic_common
from cxr_tf.synthetic import mimic as mimic_imitation
from cxr_tf.synthetic import padchest as padchest_imitation
from cxr_tf.synthetic.drawing import draw
from cxr_tf.synthetic.layouts import generate_layout

N = 160
SIZE = 64
NIH_SAMPLE = PROJECT.parent / "shared" / "data" / "nih"
RELEASE = chexpert_imitation.RELEASE_FOLDER
IMITATIONS = {"chexpert": chexpert_imitation, "mimic": mimic_imitation,
              "padchest": padchest_imitation}  # fmt: skip
LAYOUTS = tuple(IMITATIONS)
DEFAULT_VIEWS = ConvertConfig().views  # what conversion keeps without --views


def _generate(root: Path, layout: str, n: int = N, seed: int = 5) -> dict:
    config = SynthConfig(
        out=str(root), n=n, seed=seed, image_size=SIZE, layout=layout, prevalence="0.1"
    )
    return generate_layout(config, progress=False)


@pytest.fixture(scope="module")
def imitations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One imitation per layout (read-only: tests that change files copy them first)."""
    return {
        layout: _generate(tmp_path_factory.mktemp(layout), layout)
        for layout in LAYOUTS
    }


@pytest.fixture(scope="module")
def catalogs(imitations: dict[str, dict]) -> dict[str, catalog.Catalog]:
    return {layout: registry.read_catalog(layout, s["out"]) for layout, s in imitations.items()}


def _text(path: Path) -> str:
    data = path.read_bytes()
    return gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_text(path))))


def _write_rows(path: Path, rows: list[dict[str, str]], fields: list[str] | None = None) -> None:
    """Writes rows as a plain CSV at `path` (the gzipped original, if any, removed)."""
    fields = fields or list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def _copy(summary: dict, dest: Path) -> Path:
    shutil.copytree(summary["out"], dest)
    return dest


def _expected_states(summary: dict, frame: pd.DataFrame) -> np.ndarray:
    return np.array([summary["labels"][name] for name in frame["image_index"]], dtype=np.uint8)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- every layout ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_catalog_matches_what_was_written(layout, imitations, catalogs) -> None:
    summary, cat = imitations[layout], catalogs[layout]
    frame = cat.frame
    assert cat.source == layout and len(frame) == summary["n_images"]
    assert sorted(frame["image_index"]) == sorted(summary["image_paths"])
    assert len(cat.images) == summary["n_images"]  # every image found on disk
    for name in frame["image_index"][:20]:
        assert cat.images.files[name] == Path(summary["image_paths"][name])
    states = catalog.state_matrix(frame)
    assert (states == _expected_states(summary, frame)).all()
    assert frame["patient_id"].nunique() == summary["n_patients"]
    # findings the dataset has no label for are never labelled
    unlabelled = [VOCABULARY.index(f) for f in VOCABULARY if f not in labelled_by(layout)]
    assert (states[:, unlabelled] == UNLABELLED).all()
    assert set(cat.input_files.values()) <= {Path(p) for p in summary["paths"].values()}
    assert all(p.is_file() for p in cat.input_files.values())
    assert cat.described and cat.boxes is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positive_labels_are_drawn(layout, imitations) -> None:
    summary = imitations[layout]
    for name, states in summary["labels"].items():
        drawn = set(summary["drawn"][name])
        withheld = all(s == UNLABELLED for s in states)  # labels withheld, pixels drawn
        for finding, state in zip(VOCABULARY, states, strict=True):
            if state == POSITIVE:
                assert finding in drawn
            elif state == NEGATIVE or (state == UNLABELLED and not withheld):
                assert finding not in drawn
    # uncertain labels are drawn with probability 0.5 (decided per study): both occur
    uncertain_drawn = [
        f in summary["drawn"][name]
        for name, states in summary["labels"].items()
        for f, s in zip(VOCABULARY, states, strict=True)
        if s == UNCERTAIN
    ]
    if layout != "padchest":
        assert set(uncertain_drawn) == {True, False}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synth_command_gives_identical_bytes(layout, tmp_path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        argv = ["--out", str(out), "--n", "24", "--seed", "9", "--image_size", "64"]
        assert synth_main([*argv, "--layout", layout, "--prevalence", "0.2"]) == 0
    first, second = _files(outs[0]), _files(outs[1])
    assert len(first) > 24 and first == second
    other = tmp_path / "c"
    _generate(other, layout, n=24, seed=10)
    assert _files(other) != first


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("floor", [0.0, 0.15])
def test_prevalence_floor_sets_exact_counts(layout, floor) -> None:
    release = IMITATIONS[layout].RELEASE
    states = synthetic_common.label_states(np.random.default_rng(0), release, 200, floor)
    for finding in VOCABULARY:
        column = states[:, VOCABULARY.index(finding)]
        if finding not in labelled_by(layout):
            assert (column == UNLABELLED).all()
            continue
        rate = max(release.rates.get(finding, 0.0), floor)
        assert (column == POSITIVE).sum() == max(round(rate * 200), 1), finding
        uncertain = release.uncertain.get(finding, 0.0)
        assert (column == UNCERTAIN).sum() == (max(round(uncertain * 200), 1) if uncertain else 0)
        if layout == "padchest":  # labelled images: every mapped finding known
            assert set(column) <= {POSITIVE, NEGATIVE}


def test_only_labelled_findings_are_drawn(imitations) -> None:
    for layout, summary in imitations.items():
        drawn = {f for findings in summary["drawn"].values() for f in findings}
        assert drawn == set(labelled_by(layout)), layout  # floor 0.1: every one occurs


# --- detection ---------------------------------------------------------------------------


def test_detection_of_each_layout(imitations, tmp_path) -> None:
    for layout, summary in imitations.items():
        assert registry.detect_source(summary["out"]) == layout
    assert registry.detect_source(Path(imitations["chexpert"]["out"]) / RELEASE) == "chexpert"
    nih_root = make_synth(tmp_path / "nih", n=8, seed=0, image_size=64)
    roots = {**{k: Path(s["out"]) for k, s in imitations.items()}, "nih": nih_root}
    detectors = {"chexpert": chexpert._detect, "mimic": mimic._detect, "padchest": padchest._detect}
    for name, detect in detectors.items():
        for layout, root in roots.items():
            assert detect(root) == (name == layout), (name, layout)
    assert registry.detect_source(nih_root) == "nih"


def test_nih_sample_is_still_nih() -> None:
    if not (NIH_SAMPLE / "Data_Entry_2017_v2020.csv.gz").exists():
        pytest.skip(f"NIH sample folder not found at {NIH_SAMPLE}")
    assert registry.detect_source(NIH_SAMPLE) == "nih"
    assert not chexpert._detect(NIH_SAMPLE)
    assert not mimic._detect(NIH_SAMPLE)
    assert not padchest._detect(NIH_SAMPLE)


# --- CheXpert ----------------------------------------------------------------------------


def test_chexpert_files(imitations) -> None:
    summary = imitations["chexpert"]
    release = Path(summary["out"]) / RELEASE
    assert sorted(p.name for p in release.iterdir()) == ["train", "train.csv", "valid", "valid.csv"]
    header = _text(release / "train.csv").splitlines()[0].split(",")
    assert header == [*chexpert.COLUMNS, "No Finding", *CHEXPERT_LABELS]
    train, valid = _rows(release / "train.csv"), _rows(release / "valid.csv")
    assert len(train) + len(valid) == summary["n_images"]
    pattern = re.compile(
        rf"^{RELEASE}/(train|valid)/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.jpg$"
    )
    for row in train + valid:
        assert pattern.match(row["Path"]), row["Path"]
        assert row["Frontal/Lateral"].lower() == pattern.match(row["Path"])[2]
    cells = {row[c] for row in train for c in CHEXPERT_LABELS}
    assert cells == {"1.0", "0.0", "-1.0", ""}
    assert {row[c] for row in valid for c in [*CHEXPERT_LABELS, "No Finding"]} == {"1.0", "0.0"}
    image = Image.open(release.parent / train[0]["Path"])
    assert image.format == "JPEG" and image.mode == "L" and image.size == (SIZE, SIZE)


def test_chexpert_catalog(imitations, catalogs) -> None:
    summary, cat = imitations["chexpert"], catalogs["chexpert"]
    frame = cat.frame
    release = Path(summary["out"]) / RELEASE
    train, valid = _rows(release / "train.csv"), _rows(release / "valid.csv")
    rows = {r["Path"]: r for r in train + valid}
    states = catalog.state_matrix(frame)
    codes = {"1.0": POSITIVE, "0.0": NEGATIVE, "-1.0": UNCERTAIN, "": UNLABELLED}
    for i, name in enumerate(frame["image_index"]):
        row = rows[name]
        for column, finding in CHEXPERT_LABELS.items():
            assert states[i, VOCABULARY.index(finding)] == codes[row[column]]
        patient, study = re.search(r"patient(\d+)/study(\d+)/", name).groups()
        assert frame["patient_id"][i] == int(patient)
        assert frame["follow_up"][i] == int(study) - 1
        expected_view = {"Lateral": "LATERAL"}.get(row["Frontal/Lateral"]) or (
            row["AP/PA"] or "?"
        )
        assert frame["view_position"][i] == expected_view
        assert frame["age"][i] == int(row["Age"])
        assert frame["sex"][i] == {"Male": "M", "Female": "F"}.get(row["Sex"], "?")
    assert (states == UNCERTAIN).any() and (states == UNLABELLED).any()
    views = summary["views"]
    assert frame["view_position"].value_counts().to_dict() == {
        k: v
        for k, v in {
            "AP": views["AP"], "PA": views["PA"], "LATERAL": views["Lateral"],
            "?": views.get("", 0),
        }.items()
        if v
    }  # fmt: skip
    assert cat.official == {
        "train_val": [r["Path"] for r in train],
        "test": [r["Path"] for r in valid],
    }
    test_patients = set(frame["patient_id"][frame["image_index"].isin(cat.official["test"])])
    train_patients = set(frame["patient_id"][frame["image_index"].isin(cat.official["train_val"])])
    assert test_patients and not test_patients & train_patients
    assert any("holding the CheXpert release" in n for n in cat.notes)


def test_chexpert_root_may_be_the_release_folder(imitations, catalogs) -> None:
    release = Path(imitations["chexpert"]["out"]) / RELEASE
    cat = registry.read_catalog("chexpert", release)
    pd.testing.assert_frame_equal(cat.frame, catalogs["chexpert"].frame)
    assert cat.images.files == catalogs["chexpert"].images.files
    assert cat.official == catalogs["chexpert"].official
    assert any("is the CheXpert release folder" in n for n in cat.notes)


def test_chexpert_renamed_release_and_missing_images(imitations, tmp_path) -> None:
    root = _copy(imitations["chexpert"], tmp_path / "copy")
    (root / RELEASE).rename(root / "chexpert_small")
    first = _rows(root / "chexpert_small" / "train.csv")[0]["Path"]
    (root / "chexpert_small" / first.split("/", 1)[1]).unlink()
    cat = registry.read_catalog("chexpert", root)
    assert len(cat.frame) == imitations["chexpert"]["n_images"]
    assert first in set(cat.frame["image_index"]) and first not in cat.images.names
    assert len(cat.images) == len(cat.frame) - 1


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("Atelectasis", "2.0", "label '2.0' is not 1, 0, -1 or blank"),
        ("Age", "old", "not a whole number: 'old'"),
        ("Frontal/Lateral", "Oblique", "not Frontal or Lateral: 'Oblique'"),
        ("Path", "CheXpert-v1.0-small/train/x/view1_frontal.jpg", "no patientNNNNN/studyN/"),
        ("Path", "../../etc/patient00001/study1/view1_frontal.jpg", "unsafe image path"),
    ],
)
def test_chexpert_errors_name_file_row_and_column(imitations, tmp_path, column, value, message):
    root = tmp_path / "release"
    root.mkdir()
    rows = _rows(Path(imitations["chexpert"]["out"]) / RELEASE / "train.csv")
    rows[3][column] = value
    _write_rows(root / "train.csv", rows)
    with pytest.raises(catalog.CatalogError) as error:
        registry.read_catalog("chexpert", root)
    text = str(error.value)
    assert str(root / "train.csv") in text and "data row 4 (line 5)" in text
    assert repr(column) in text and message in text


def test_chexpert_missing_columns(imitations, tmp_path) -> None:
    rows = _rows(Path(imitations["chexpert"]["out"]) / RELEASE / "train.csv")
    _write_rows(tmp_path / "train.csv", rows, [c for c in rows[0] if c != "AP/PA"])
    assert not chexpert._detect(tmp_path)
    with pytest.raises(catalog.CatalogError, match=r"no CheXpert train.csv with columns"):
        registry.read_catalog("chexpert", tmp_path)
    # a missing observation column leaves its finding not labelled
    _write_rows(tmp_path / "train.csv", rows, [c for c in rows[0] if c != "Fracture"])
    frame = registry.read_catalog("chexpert", tmp_path).frame
    assert (frame["Fracture"] == UNLABELLED).all()
    assert any("no valid.csv" in n for n in registry.read_catalog("chexpert", tmp_path).notes)


# --- MIMIC-CXR-JPG -----------------------------------------------------------------------


def test_mimic_files(imitations) -> None:
    summary = imitations["mimic"]
    root = Path(summary["out"])
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(["files", *mimic_imitation.FILES.values()])
    for path in root.glob("*.csv.gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    meta = _rows(root / mimic_imitation.FILES["metadata"])
    assert len(meta) == summary["n_images"]
    for row in meta:
        subject, study, dicom = row["subject_id"], row["study_id"], row["dicom_id"]
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        assert path.is_file()
    labels = _rows(root / mimic_imitation.FILES["chexpert"])
    assert list(labels[0]) == ["subject_id", "study_id", *sorted([*CHEXPERT_LABELS, "No Finding"])]
    assert {r[c] for r in labels for c in CHEXPERT_LABELS} == {"1.0", "0.0", "-1.0", ""}
    studies = {r["study_id"] for r in meta}
    assert len(studies - {r["study_id"] for r in labels}) >= 2  # studies without labels
    splits = {r["split"] for r in _rows(root / mimic_imitation.FILES["split"])}
    assert splits == {"train", "validate", "test"}


def test_mimic_catalog(imitations, catalogs) -> None:
    summary, cat = imitations["mimic"], catalogs["mimic"]
    frame = cat.frame
    root = Path(summary["out"])
    meta = pd.DataFrame(_rows(root / mimic_imitation.FILES["metadata"]))
    meta["name"] = [
        f"files/p{r.subject_id[:2]}/p{r.subject_id}/s{r.study_id}/{r.dicom_id}.jpg"
        for r in meta.itertuples()
    ]
    meta = meta.set_index("name").loc[frame["image_index"]]
    assert (frame["patient_id"].to_numpy() == meta["subject_id"].astype(int).to_numpy()).all()
    assert (frame["original_width"].to_numpy() == meta["Columns"].astype(int).to_numpy()).all()
    assert (frame["original_height"].to_numpy() == meta["Rows"].astype(int).to_numpy()).all()
    assert (frame["age"] == -1).all() and (frame["sex"] == "?").all()
    views = {"PA": "PA", "AP": "AP", "AP AXIAL": "AP", "LATERAL": "LATERAL", "LL": "LATERAL",
             "": "?"}  # fmt: skip
    assert frame["view_position"].tolist() == [views[v] for v in meta["ViewPosition"]]
    assert set(frame["view_position"]) == {"PA", "AP", "LATERAL", "?"}

    # follow-up: the study's rank by date and time, whatever the study ids' order
    meta["date"] = meta["StudyDate"] + meta["StudyTime"].str.zfill(10)
    meta["follow_up"] = frame["follow_up"].to_numpy()
    out_of_id_order = 0
    for _, group in meta.groupby("subject_id"):
        studies = group.drop_duplicates("study_id").sort_values("date")
        assert studies["follow_up"].tolist() == list(range(len(studies)))
        out_of_id_order += studies["study_id"].tolist() != sorted(studies["study_id"])
    assert out_of_id_order > 0

    # studies without a label row: every finding not labelled, counted in a note
    states = catalog.state_matrix(frame)
    none = (states == UNLABELLED).all(axis=1)
    assert none.sum() == summary["not_labelled_images"] >= 2
    assert any(f"{none.sum()} image(s) of" in n and "without a row" in n for n in cat.notes)
    assert (states == UNCERTAIN).any()

    assert {k: len(v) for k, v in cat.official.items()} == summary["splits"]
    patients = {
        k: set(frame["patient_id"][frame["image_index"].isin(v)]) for k, v in cat.official.items()
    }
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & (patients["train"] | patients["test"])


def test_mimic_plain_csvs_and_no_split_file(imitations, catalogs, tmp_path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    out = Path(imitations["mimic"]["out"])
    for key, name in mimic_imitation.FILES.items():
        if key != "split":
            (root / name.removesuffix(".gz")).write_text(_text(out / name))
    cat = registry.read_catalog("mimic", root)
    assert registry.detect_source(root) == "mimic"
    pd.testing.assert_frame_equal(cat.frame, catalogs["mimic"].frame)
    assert cat.official is None and any("makes its own splits" in n for n in cat.notes)
    assert len(cat.images) == 0  # no image files here: all left out, reported by the converter


def _mimic_copy(imitations, tmp_path: Path, key: str) -> tuple[Path, list[dict[str, str]]]:
    """The MIMIC CSVs (no images) in tmp_path, file `key` plain for editing."""
    out = Path(imitations["mimic"]["out"])
    for name in mimic_imitation.FILES.values():
        shutil.copy(out / name, tmp_path / name)
    gz = tmp_path / mimic_imitation.FILES[key]
    rows = _rows(gz)
    gz.unlink()
    return tmp_path / gz.name.removesuffix(".gz"), rows


@pytest.mark.parametrize(
    "key, column, value, message",
    [
        ("chexpert", "Edema", "yes", "label 'yes' is not 1, 0, -1 or blank"),
        ("split", "split", "dev", "not one of train, validate, test: 'dev'"),
        ("metadata", "Rows", "tall", "not a whole number: 'tall'"),
        ("metadata", "study_id", "s123", "not a whole number: 's123'"),
    ],
)
def test_mimic_errors_name_file_row_and_column(imitations, tmp_path, key, column, value, message):
    path, rows = _mimic_copy(imitations, tmp_path, key)
    rows[5][column] = value
    _write_rows(path, rows)
    with pytest.raises(catalog.CatalogError) as error:
        registry.read_catalog("mimic", tmp_path)
    text = str(error.value)
    assert str(path) in text and "data row 6 (line 7)" in text
    assert repr(column) in text and message in text


def test_mimic_missing_column_and_repeated_study(imitations, tmp_path) -> None:
    path, rows = _mimic_copy(imitations, tmp_path, "metadata")
    _write_rows(path, rows, [c for c in rows[0] if c != "ViewPosition"])
    with pytest.raises(catalog.CatalogError, match=r"missing column\(s\) \['ViewPosition'\]"):
        registry.read_catalog("mimic", tmp_path)
    _write_rows(path, rows)
    labels_path, labels = _mimic_copy(imitations, tmp_path, "chexpert")
    _write_rows(labels_path, [*labels, labels[0]])
    with pytest.raises(catalog.CatalogError, match=r"data row \d+ .*study labelled twice"):
        registry.read_catalog("mimic", tmp_path)


def test_mimic_missing_images_are_left_out(imitations, tmp_path) -> None:
    root = _copy(imitations["mimic"], tmp_path / "copy")
    gone = sorted(imitations["mimic"]["image_paths"])[:3]
    for name in gone:
        (root / name).unlink()
    cat = registry.read_catalog("mimic", root)
    assert len(cat.frame) == imitations["mimic"]["n_images"]
    assert cat.images.names == set(cat.frame["image_index"]) - set(gone)


# --- PadChest ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, terms",
    [
        ("['pleural effusion', ' cardiomegaly']", ["pleural effusion", "cardiomegaly"]),
        ("['normal']", ["normal"]),
        ('["crohn\'s disease", \'Nodule \']', ["crohn's disease", "nodule"]),
        ("['pacemaker',]", ["pacemaker"]),
        ("[]", None),
        ("['']", None),
        ("", None),
        ("nan", None),
    ],
)
def test_padchest_parse_labels(cell, terms) -> None:
    assert padchest.parse_labels(cell) == terms


@pytest.mark.parametrize("cell", ["pleural effusion", "['a' 'b']", "[a, b]", "['a', b]", "['a"])
def test_padchest_parse_labels_refuses_what_is_not_a_list(cell) -> None:
    with pytest.raises(ValueError):
        padchest.parse_labels(cell)


def test_padchest_files(imitations) -> None:
    summary = imitations["padchest"]
    root = Path(summary["out"])
    assert sorted(p.name for p in root.glob("*.csv*")) == [padchest_imitation.LABELS_CSV]
    rows = _rows(root / padchest_imitation.LABELS_CSV)
    assert len(rows) == summary["n_images"]
    assert all(c in rows[0] for c in (*padchest.COLUMNS, "PatientSex_DICOM", "PatientBirth"))
    assert {r["ImageDir"] for r in rows} == {p.name for p in root.iterdir() if p.is_dir()}
    labels = [r["Labels"] for r in rows]
    assert "[]" in labels and "" in labels and "['normal']" in labels
    assert any("' " in cell for cell in labels)  # stray spaces
    assert {r["Projection"] for r in rows} == {"PA", "AP", "AP_horizontal", "L", "COSTAL",
                                               "EXCLUDE", "UNK"}  # fmt: skip
    assert not set(padchest_imitation.OTHER_TERMS) & set(PADCHEST_LABELS)
    image = Image.open(root / rows[0]["ImageDir"] / rows[0]["ImageID"])
    pixels = np.asarray(image)
    assert image.format == "PNG" and image.mode == "I;16" and pixels.dtype == np.uint16
    assert pixels.max() <= 4095 and pixels.max() > 2500  # 12-bit values as they are
    data = (root / rows[0]["ImageDir"] / rows[0]["ImageID"]).read_bytes()
    assert data[data.index(b"sBIT") + 4] == 12  # the chunk that says so


def test_padchest_catalog(imitations, catalogs) -> None:
    summary, cat = imitations["padchest"], catalogs["padchest"]
    frame = cat.frame
    rows = _rows(Path(summary["out"]) / padchest_imitation.LABELS_CSV)
    assert frame["image_index"].tolist() == [f"{r['ImageDir']}/{r['ImageID']}" for r in rows]
    states = catalog.state_matrix(frame)
    mapped = [VOCABULARY.index(f) for f in labelled_by("padchest")]
    for i, row in enumerate(rows):
        terms = padchest.parse_labels(row["Labels"])
        if terms is None:
            assert (states[i] == UNLABELLED).all()
            continue
        positive = {VOCABULARY.index(PADCHEST_LABELS[t]) for t in terms if t in PADCHEST_LABELS}
        for column in mapped:
            assert states[i, column] == (POSITIVE if column in positive else NEGATIVE)
        if terms == ["normal"]:
            assert (states[i, mapped] == NEGATIVE).all()
        birth, year = row["PatientBirth"], int(row["StudyDate_DICOM"][:4])
        assert frame["age"][i] == (year - int(float(birth)) if birth else -1)
        assert frame["sex"][i] == row["PatientSex_DICOM"]
    unlabelled = (states == UNLABELLED).all(axis=1).sum()
    assert unlabelled == summary["not_labelled_images"] >= 2
    assert any(f"{unlabelled} image(s) with an empty or blank Labels" in n for n in cat.notes)
    assert not (states == UNCERTAIN).any()

    # patients: one number per PatientID, numbered in sorted order of the IDs
    ids = [r["PatientID"] for r in rows]
    assert cat.patient_ids.startswith("numbered")
    numbers = dict(zip(ids, frame["patient_id"], strict=True))
    assert len(set(numbers.values())) == len(numbers) == summary["n_patients"]
    assert [numbers[i] for i in sorted(numbers)] == list(range(1, len(numbers) + 1))
    assert cat.official is None

    views = summary["views"]
    expected = {"PA": views["PA"], "AP": views["AP"] + views["AP_horizontal"],
                "LATERAL": views["L"], "OTHER": views["COSTAL"] + views["EXCLUDE"],
                "?": views["UNK"]}  # fmt: skip
    assert frame["view_position"].value_counts().to_dict() == expected
    kept = catalog.filter_views(registry.read_catalog("padchest", summary["out"]),
                                DEFAULT_VIEWS)  # fmt: skip
    assert kept.views_dropped == {"LATERAL": expected["LATERAL"], "OTHER": expected["OTHER"]}
    assert set(kept.frame["view_position"]) == {"PA", "AP", "?"}


def test_padchest_images_directly_in_root(imitations, tmp_path) -> None:
    root = _copy(imitations["padchest"], tmp_path / "flat")
    for folder in [p for p in root.iterdir() if p.is_dir()]:
        for image in folder.iterdir():
            image.rename(root / image.name)
        folder.rmdir()
    cat = registry.read_catalog("padchest", root)
    assert len(cat.images) == len(cat.frame) == imitations["padchest"]["n_images"]
    name = cat.frame["image_index"][0]
    assert cat.images.files[name] == root / name.split("/")[1]
    assert any("directly in" in n for n in cat.notes)


def _padchest_csv(imitations, tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    rows = _rows(Path(imitations["padchest"]["out"]) / padchest_imitation.LABELS_CSV)
    return tmp_path / padchest_imitation.LABELS_CSV.removesuffix(".gz"), rows


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("Labels", "pleural effusion", "not a list like ['term', 'term']"),
        ("Labels", "['cardiomegaly' 'nodule']", "cannot read the terms"),
        ("ImageID", "../escape.png", "bad name '../escape.png'"),
        ("ImageDir", "a/b", "bad name 'a/b'"),
        ("PatientID", "", "empty: ''"),
        ("Rows_DICOM", "big", "not a whole number: 'big'"),
    ],
)
def test_padchest_errors_name_file_row_and_column(imitations, tmp_path, column, value, message):
    path, rows = _padchest_csv(imitations, tmp_path)
    rows[7][column] = value
    _write_rows(path, rows)
    with pytest.raises(catalog.CatalogError) as error:
        registry.read_catalog("padchest", tmp_path)
    text = str(error.value)
    assert str(path) in text and "data row 8 (line 9)" in text
    assert repr(column) in text and message in text


def test_padchest_is_found_by_its_columns(imitations, tmp_path) -> None:
    path, rows = _padchest_csv(imitations, tmp_path)
    _write_rows(tmp_path / "my_labels.csv", rows)
    assert registry.detect_source(tmp_path) == "padchest"
    assert len(registry.read_catalog("padchest", tmp_path).frame) == len(rows)
    (tmp_path / "my_labels.csv").unlink()
    _write_rows(tmp_path / "my_labels.csv", rows, [c for c in rows[0] if c != "Projection"])
    assert not padchest._detect(tmp_path)
    with pytest.raises(catalog.CatalogError, match="no PadChest labels CSV"):
        registry.read_catalog("padchest", tmp_path)


# --- end to end: the converter on each imitation -----------------------------------------


@pytest.fixture(scope="module")
def converted(imitations, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each imitation converted at 64 px (its own size: no resize), default views."""
    from cxr_tf.config import ConvertConfig
    from cxr_tf.data import conversion

    out = tmp_path_factory.mktemp("converted")
    result = {}
    for layout, summary in imitations.items():
        config = ConvertConfig(root=summary["out"], out_dir=str(out), stored_size=64, workers=2)
        manifest = conversion.convert(config, progress=False)
        result[layout] = (out / manifest.dataset, manifest)
    return result


def _stored(dataset: Path, manifest: Manifest, pixels: bool = False) -> dict[str, dict]:
    """image_index -> the record's fields (labels, patient, view...; pixels if asked) and
    its split, read with the project's parsers."""
    import tensorflow as tf

    from cxr_tf.data import schema

    features = manifest.features()
    out: dict[str, dict] = {}
    for split in manifest.splits:
        files = manifest.split_files(split, dataset)
        for batch in tf.data.TFRecordDataset(files).batch(64):
            fields = schema.parse_metadata(batch, features)
            images = schema.parse_batch(batch, features, ("image",))["image"] if pixels else None
            for i, name in enumerate(fields["image_index"].numpy()):
                out[name.decode()] = {
                    "split": split,
                    "labels": fields["labels"][i].numpy(),
                    "patient_id": int(fields["patient_id"][i]),
                    "image": None if images is None else images[i].numpy()[..., 0],
                }
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_converted_records(layout, converted, catalogs, imitations) -> None:
    dataset, manifest = converted[layout]
    cat = catalogs[layout]
    frame = cat.frame.set_index("image_index")
    kept = frame[frame["view_position"].isin(DEFAULT_VIEWS)]
    records = _stored(dataset, manifest)
    assert set(records) == set(kept.index)
    for name, record in records.items():
        assert record["labels"].tolist() == imitations[layout]["labels"][name]
        assert record["patient_id"] == kept.loc[name, "patient_id"]
    # patient-disjoint splits
    patients = {s: {r["patient_id"] for r in records.values() if r["split"] == s}
                for s in ("train", "validation", "test")}  # fmt: skip
    assert all(patients.values())
    assert not patients["train"] & patients["validation"]
    assert not patients["test"] & (patients["train"] | patients["validation"])
    # views counted in the manifest
    source = manifest.source
    assert source.kind == layout and source.notes
    assert source.views_kept == kept["view_position"].value_counts().to_dict()
    dropped = frame[~frame["view_position"].isin(DEFAULT_VIEWS)]
    assert source.views_dropped == dropped["view_position"].value_counts().to_dict()
    assert "LATERAL" in source.views_dropped
    assert list(manifest.labels) == list(VOCABULARY)
    assert set(manifest.labelled_findings) == set(labelled_by(layout))
    # official splits followed where the release has one
    official = cat.official
    if layout == "chexpert":
        test = {n for n in official["test"] if n in kept.index}
        assert {n for n, r in records.items() if r["split"] == "test"} == test
    elif layout == "mimic":
        for split, names in official.items():
            expected = {n for n in names if n in kept.index}
            assert {n for n, r in records.items() if r["split"] == split} == expected
    else:
        assert official is None and source.splits.startswith("random")


def test_converted_padchest_pixels_scale_12_bit_linearly(converted, imitations) -> None:
    dataset, manifest = converted["padchest"]
    summary = imitations["padchest"]
    records = _stored(dataset, manifest, pixels=True)
    numbers = {name: i for i, name in enumerate(summary["image_paths"])}
    for name in sorted(records)[:8]:
        sixteen = np.asarray(Image.open(summary["image_paths"][name])).astype(np.float64)
        stored = records[name]["image"].astype(np.int64)
        assert (stored == np.round(sixteen * 255 / 4095)).all()  # sBIT 12
        pixels, _ = draw(
            summary["drawn"][name], SIZE, (5, 3, numbers[name]), padchest_imitation.STYLE
        )
        drawn = np.clip(np.rint(pixels), 0, 255)
        assert np.abs(stored - drawn).max() <= 1
    assert set(manifest.source.pixel_mappings) == {"png 16-bit, sBIT 12"}
