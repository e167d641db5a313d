"""The labels-CSV source (`cxr_tf.sources.csv_labels`) on files as users really have them:
label names of their own (`COVID-19`), blank label and patient cells (patients then from the
DICOM PatientID), a cp1252 file, ages such as `50+`, views such as `AP erect`; and its
imitation (`cxr_tf.synthetic.csv_labels`), which writes those quirks. Each file is written
the way the real one is: pandas `to_csv` (with `encoding="cp1252"` where Excel would), DICOM
files by pydicom."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_tf.config import SynthConfig
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.sources import catalog, csv_labels, registry
from cxr_tf.sources.catalog import CatalogError
from cxr_tf.synthetic import csv_labels as csv_imitation
from cxr_tf.synthetic import dicom as dicom_imitation
from cxr_tf.synthetic.layouts import generate_layout


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path)


def _dicom(path: Path, **tags: str) -> None:
    """A DX DICOM file written by pydicom, with the given header tags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = np.arange(48 * 40, dtype=np.int64).reshape(48, 40) % 256
    uids = [f"1.2.3.{zlib.crc32(path.name.encode())}.{i}" for i in range(3)]
    path.write_bytes(dicom_imitation.dicom_bytes(gray, "mono2_16bit", False, tags, uids))


def _read(root: Path, columns: dict[str, list[str]], **to_csv) -> catalog.Catalog:
    """Writes `columns` as root/labels.csv with pandas and reads it with the csv source."""
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns).to_csv(root / "labels.csv", index=False, **to_csv)
    return registry.read_catalog("csv", root)


def _row(cat: catalog.Catalog, name: str) -> dict[str, int]:
    """Label states of one image, by label name (the vocabulary, then own findings)."""
    row = cat.frame.set_index("image_index").loc[name]
    return {f: int(row[f]) for f in cat.label_names}


def _note(cat: catalog.Catalog, start: str) -> str:
    found = [n for n in cat.notes if n.startswith(start)]
    assert len(found) == 1, cat.notes
    return found[0]


def test_label_names_outside_the_vocabulary_are_the_datasets_own(tmp_path):
    cat = _read(tmp_path / "covid", {
        "path": ["a.png", "b.png", "c.png", "d.png", "e.png"],
        "label": ["COVID-19", "No Finding", "Pneumonia|covid-19", "normal", "Efusion"],
    })  # fmt: skip
    # sorted by name, one per spelling ignoring case; No Finding / normal stay no finding
    assert cat.own_findings == ("COVID-19", "Efusion")
    assert cat.label_names == (*VOCABULARY, "COVID-19", "Efusion")
    labelled = {"Pneumonia": NEGATIVE, "COVID-19": NEGATIVE, "Efusion": NEGATIVE}
    positives = {"a.png": ["COVID-19"], "b.png": [], "c.png": ["Pneumonia", "COVID-19"],
                 "d.png": [], "e.png": ["Efusion"]}  # fmt: skip
    for name, positive in positives.items():
        expected = {**labelled, **dict.fromkeys(positive, POSITIVE)}
        assert _row(cat, name) == {f: expected.get(f, UNLABELLED) for f in cat.label_names}
    note = _note(cat, "own findings: COVID-19, Efusion")
    assert "did you mean 'Efusion' -> 'Effusion'?" in note  # a near miss is said, and kept
    assert "COVID-19" in cat.described


def test_finding_columns_outside_the_vocabulary_are_the_datasets_own(tmp_path):
    cat = _read(tmp_path / "covid", {
        "path": ["a.png", "b.png", "c.png"],
        "Pneumonia": ["1", "0", ""],
        "COVID-19": ["1.0", "", "-1"],
        "No Finding": ["", "1", ""],
        "_remark": ["x", "y", "z"],
    })  # fmt: skip
    assert cat.own_findings == ("COVID-19",) and _note(cat, "own findings: COVID-19")
    assert _row(cat, "a.png")["COVID-19"] == POSITIVE
    assert _row(cat, "b.png")["COVID-19"] == NEGATIVE  # the No Finding column reaches it
    assert (
        _row(cat, "c.png")["COVID-19"] == UNCERTAIN
        and _row(cat, "c.png")["Pneumonia"] == UNLABELLED
    )
    # a column of free text is still refused, naming what to do
    with pytest.raises(CatalogError, match=r"\['remark'\] not understood.*start their names"):
        _read(tmp_path / "notes", {"path": ["a.png"], "COVID-19": ["1"], "remark": ["x"]})
    with pytest.raises(CatalogError, match="several columns mean the same thing"):
        _read(tmp_path / "twice", {"path": ["a.png"], "COVID-19": ["1"], "covid-19": ["0"]})
    with pytest.raises(CatalogError, match=r"clash with catalog columns"):
        _read(tmp_path / "clash", {"path": ["a.png"], "follow_up": ["1"]})


def test_blank_label_cells_leave_their_rows_not_labelled(tmp_path):
    cat = _read(tmp_path / "blank", {
        "image": ["a.png", "b.png", "c.png", "d.png"],
        "label": ["Effusion", "", "No Finding", "  "],
    })  # fmt: skip
    assert _row(cat, "a.png")["Effusion"] == POSITIVE
    assert _row(cat, "c.png")["Effusion"] == NEGATIVE
    for name in ("b.png", "d.png"):
        assert set(_row(cat, name).values()) == {UNLABELLED}, name
    assert _note(cat, "2 row(s) with a blank 'label' cell: their findings are not labelled")


def test_blank_patient_cells_take_the_dicom_patient_id_else_one_per_image(tmp_path):
    root = tmp_path / "dicom"
    _dicom(root / "img" / "a.dcm", PatientID="PAT-7", ViewPosition="PA", PatientAge="061Y")
    _dicom(root / "img" / "b.dcm", PatientID="PAT-7", ViewPosition="LL")
    _dicom(root / "img" / "c.dcm")  # no PatientID
    _png(root / "img" / "d.png")
    _png(root / "img" / "e.png")
    cat = _read(root, {
        "path": ["img/a.dcm", "img/b.dcm", "img/c.dcm", "img/d.png", "img/e.png"],
        "patient": ["", "", "", "", "p9"],
        "view": ["", "AP", "", "PA", "PA"],
        "age": ["", "", "", "40", "50"],
        "Mass": ["1", "0", "0", "0", "1"],
    })  # fmt: skip
    frame = cat.frame.set_index("image_index")
    ids = frame["patient_id"]
    assert ids["img/a.dcm"] == ids["img/b.dcm"]  # the same DICOM PatientID
    assert len({ids["img/a.dcm"], ids["img/c.dcm"], ids["img/d.png"], ids["img/e.png"]}) == 4
    names = cat.patient_names
    assert (names[int(ids["img/a.dcm"])], names[int(ids["img/e.png"])]) == ("PAT-7", "p9")
    assert cat.patient_ids.startswith(
        "column 'patient' (1), DICOM PatientID (2), one per image (2)"
    )
    assert _note(cat, "2 blank patient cell(s) taken from the DICOM PatientID")
    assert "2 image(s) with a blank patient cell and no DICOM PatientID" in "".join(cat.notes)
    # blank view and age cells are taken from the header too; a CSV value wins
    assert frame.loc["img/a.dcm", ["view_position", "age"]].tolist() == ["PA", 61]
    assert frame.loc["img/b.dcm", "view_position"] == "AP"  # the header says LL


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_a_cp1252_file_is_read_with_a_note_naming_the_encoding(tmp_path, encoding):
    # Excel on Windows saves "CSV" as cp1252; the accent is in an ignored notes column
    remark = "opacité, contrôle" if encoding == "cp1252" else "\x8dle"  # not cp1252 either
    root = tmp_path / encoding
    _png(root / "img" / "a.png")
    cat = _read(root, {
        "path": ["img/a.png", "img/b.png"],
        "label": ["Pneumonia", "COVID-19"],
        "_remarque": ["", remark],
    }, encoding=encoding)  # fmt: skip
    assert registry.detect_source(root) == "csv"
    byte = "0xe9" if encoding == "cp1252" else "0x8d"
    note = _note(cat, f"labels.csv: byte {byte} on line 3 is not UTF-8")
    assert note.endswith(f"read it as {encoding}")
    assert cat.own_findings == ("COVID-19",) and _row(cat, "img/b.png")["COVID-19"] == POSITIVE
    # a finding column named with a non-ASCII letter keeps its name
    cat = _read(tmp_path / "accent", {"path": ["a.png"], "Pneumonie atypique é": ["1"]},
                encoding="cp1252")  # fmt: skip
    assert cat.own_findings == ("Pneumonie atypique é",)


def test_ages_as_spreadsheets_write_them(tmp_path):
    ages = ["50+", "50 Y", "050Y", "", "unknown", "45.0", "90 years", "018M", "abc", "200"]
    cat = _read(tmp_path / "ages", {
        "path": [f"{i}.png" for i in range(len(ages))], "age": ages, "Mass": ["1"] * len(ages),
    })  # fmt: skip
    assert cat.frame["age"].tolist() == [50, 50, 50, -1, -1, 45, 90, 1, -1, -1]
    note = _note(cat, "2 age(s) not understood, left unknown: e.g. 'abc'")
    assert "data row 9 (line 10), column 'age'" in note
    assert [csv_labels.parse_age(v) for v in ("NA", "?", "7", "-3", "1000")] == [
        -1, -1, 7, None, None]  # fmt: skip


def test_views_with_position_words_and_a_count_of_the_unknown(tmp_path):
    views = ["AP erect", "PA erect", "AP supine", "portable AP", "Lateral", "AP semi-erect",
             "Frontal", "frontal", "", "UNK", "axial"]  # fmt: skip
    cat = _read(tmp_path / "views", {
        "path": [f"{i}.png" for i in range(len(views))], "view": views, "Mass": ["0"] * 11,
    })  # fmt: skip
    assert cat.frame["view_position"].tolist() == [
        "AP", "PA", "AP", "AP", "LATERAL", "AP", "?", "?", "?", "?", "?"]  # fmt: skip
    note = _note(cat, "labels.csv, column 'view': 3 view(s) not understood, left unknown")
    assert "'Frontal' (1), 'frontal' (1), 'axial' (1)" in note  # blank and UNK say unknown
    # the shared mapping keeps what it mapped before
    for view, expected in {"AP_horizontal": "AP", "AP LLD": "AP", "LL": "LATERAL",
                           "COSTAL": "OTHER", "supine": "?", "PA": "PA"}.items():  # fmt: skip
        assert catalog.normalize_view(view) == expected, view


def test_the_imitation_writes_the_quirks_and_reads_back(tmp_path):
    config = SynthConfig(out=str(tmp_path / "csv"), n=80, seed=3, image_size=64,
                         prevalence="0.2", layout="csv", workers=2)  # fmt: skip
    summary = generate_layout(config, progress=False)
    raw = (tmp_path / "csv" / "labels.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    table = pd.read_csv(tmp_path / "csv" / "labels.csv", dtype=str, keep_default_na=False,
                        encoding="cp1252")  # fmt: skip
    assert "COVID-19" in table.columns and table["_notes"].str.contains("é").any()
    assert (table["patient_id"] == "").any() and table["age"].str.endswith("+").any()
    assert table["view"].isin(["AP erect", "portable AP"]).any()
    assert (table[list(csv_imitation.FINDINGS)] == "").all(axis=1).any()  # a row nobody labelled

    cat = registry.read_catalog(registry.detect_source(tmp_path / "csv"), tmp_path / "csv")
    assert cat.own_findings == ("COVID-19",)
    assert cat.frame["patient_id"].nunique() == summary["n_patients"]
    assert any(n.startswith("labels.csv: byte 0x") and "cp1252" in n for n in cat.notes)
    frame = cat.frame.set_index("image_index")
    covid_column = table.columns.get_loc("COVID-19")
    for row in table.itertuples(index=False):
        view = {"AP erect": "AP", "portable AP": "AP", "LL": "LATERAL", "": "?"}.get(
            row.view, row.view
        )
        assert frame.loc[row.path, "view_position"] == view
        covid = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE,
                 "-1": UNCERTAIN, "-1.0": UNCERTAIN, "": UNLABELLED}[row[covid_column]]  # fmt: skip
        assert frame.loc[row.path, "COVID-19"] == covid
        if covid == POSITIVE:  # drawn as a consolidation
            assert "Consolidation" in summary["findings"][row.path]
