"""Tests for cxr_tf.sources.nih: the real NIH metadata files and small hand-written ones."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tf.labels import FINDINGS, NO_FINDING, UnknownFindingError
from cxr_tf.sources import nih
from cxr_tf.sources.base import MetadataError

HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def labels_matrix(df: pd.DataFrame) -> np.ndarray:
    """The (N, 14) uint8 multi-hot matrix of a `read_data_entry` frame, in `FINDINGS` order."""
    return df[list(FINDINGS)].to_numpy(dtype=np.uint8)


def write(path: Path, text: str) -> Path:
    """Writes `text` plainly, or gzipped when the name ends in .gz."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def entry_csv(rows: list[str], header: str = HEADER_2020) -> str:
    return "\n".join([header, *rows]) + "\n"


def row(image: str, labels: str, patient: int = 1, age: str = "58", extra: str = "") -> str:
    follow_up = int(image[9:12])
    return f"{image},{labels},{follow_up},{patient},{age},M,PA,2500,2048,0.171,0.171{extra}"


@pytest.fixture(scope="module")
def full_entry(nih_dir: Path) -> pd.DataFrame:
    # Parsed once: the full file is 112,120 rows.
    return nih.read_data_entry(nih_dir / "Data_Entry_2017_v2020.csv.gz")


# --- the real files ---------------------------------------------------------------------


def test_find_metadata_real_folder(nih_dir: Path) -> None:
    files = nih.find_metadata(nih_dir)
    assert files.data_entry.name == "Data_Entry_2017_v2020.csv.gz"
    assert files.bbox.name == "BBox_List_2017.csv"
    assert files.train_val_list.name == "train_val_list.txt.gz"
    assert files.test_list.name == "test_list.txt.gz"


def test_full_data_entry(full_entry: pd.DataFrame, nih_dir: Path) -> None:
    df = full_entry
    assert len(df) == 112_120
    assert df["patient_id"].nunique() == 30_805
    assert df["image_index"].is_unique
    assert set(df["sex"]) == {"M", "F"}
    assert df["age"].between(0, 120).all()
    assert list(df.columns[:11]) == [
        "image_index", "finding_labels", "follow_up", "patient_id", "age", "sex",
        "view_position", "original_width", "original_height", "pixel_spacing_x",
        "pixel_spacing_y",
    ]  # fmt: skip
    matrix = labels_matrix(df)
    assert matrix.shape == (112_120, 14) and matrix.dtype == np.uint8

    # Independent count straight from the raw file with str.split.
    raw = pd.read_csv(nih_dir / "Data_Entry_2017_v2020.csv.gz")
    counts = raw["Finding Labels"].str.split("|").explode().value_counts()
    for i, finding in enumerate(FINDINGS):
        assert matrix[:, i].sum() == counts[finding], finding
    no_finding = (df["finding_labels"] == NO_FINDING).to_numpy()
    assert no_finding.sum() == counts[NO_FINDING] == 60_361
    assert (matrix[no_finding] == 0).all()
    assert (matrix[~no_finding].sum(axis=1) >= 1).all()
    assert matrix[:, FINDINGS.index("Hernia")].sum() == 227


def test_real_boxes(nih_dir: Path) -> None:
    boxes = nih.read_boxes(nih_dir / "BBox_List_2017.csv")
    assert list(boxes.columns) == ["image_index", "finding", "x", "y", "w", "h"]
    assert len(boxes) == 984
    assert boxes["image_index"].nunique() == 880
    assert "Infiltrate" not in set(boxes["finding"])
    assert (boxes["finding"] == "Infiltration").sum() == 123
    assert set(boxes["finding"]) <= set(FINDINGS) and boxes["finding"].nunique() == 8
    assert ((boxes["x"] + boxes["w"]) <= 1024).all() and ((boxes["y"] + boxes["h"]) <= 1024).all()
    test_list = set(nih.read_split_list(nih_dir / "test_list.txt.gz"))
    assert set(boxes["image_index"]) <= test_list


def test_real_sample_labels(nih_dir: Path, full_entry: pd.DataFrame) -> None:
    # sample_labels.csv adds an `official_split` column, which is ignored.
    sample = nih.read_data_entry(nih_dir / "sample_labels.csv")
    assert len(sample) == 96 and "official_split" not in sample.columns
    same = full_entry.set_index("image_index").loc[sample["image_index"]].reset_index()
    pd.testing.assert_frame_equal(sample, same)


def test_real_split_lists(nih_dir: Path) -> None:
    train_val = nih.read_split_list(nih_dir / "train_val_list.txt.gz")
    test = nih.read_split_list(nih_dir / "test_list.txt.gz")
    assert (len(train_val), len(test)) == (86_524, 25_596)
    assert not set(train_val) & set(test)


# --- finding the files ------------------------------------------------------------------


def test_find_metadata_missing_names_root_and_names(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        nih.find_metadata(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "Data_Entry_2017.csv" in str(info.value)


def test_find_metadata_prefers_exact_names(tmp_path: Path) -> None:
    write(tmp_path / "Data_Entry_2017_copy.csv", entry_csv([]))
    assert nih.find_metadata(tmp_path).data_entry.name == "Data_Entry_2017_copy.csv"
    write(tmp_path / "Data_Entry_2017.csv.gz", entry_csv([]))
    write(tmp_path / "test_list.txt", "a.png\n")
    files = nih.find_metadata(tmp_path)
    assert files.data_entry.name == "Data_Entry_2017.csv.gz"
    assert files.test_list.name == "test_list.txt"
    assert files.bbox is None and files.train_val_list is None


# --- hand-written label files -----------------------------------------------------------


@pytest.mark.parametrize("name", ["Data_Entry_2017.csv", "Data_Entry_2017.csv.gz"])
def test_2017_form_ages_and_trailing_column(tmp_path: Path, name: str) -> None:
    # The 2017 file writes ages with a unit and ends every line with a comma.
    rows = [
        row("00000001_000.png", "Cardiomegaly", age="058Y", extra=","),
        row("00000002_000.png", "No Finding", patient=2, age="018M", extra=","),
        row("00000003_000.png", "Mass|Nodule", patient=3, age="400D", extra=","),
    ]
    df = nih.read_data_entry(write(tmp_path / name, entry_csv(rows, HEADER_2020 + ",")))
    assert df["age"].tolist() == [58, 1, 1]
    assert not [c for c in df.columns if c.startswith("Unnamed")]
    assert labels_matrix(df).sum(axis=1).tolist() == [1, 0, 2]


def test_2017_and_2020_forms_agree(tmp_path: Path) -> None:
    new = nih.read_data_entry(
        write(tmp_path / "a.csv", entry_csv([row("00000001_000.png", "Mass")]))
    )
    old = nih.read_data_entry(
        write(tmp_path / "b.csv.gz", entry_csv([row("00000001_000.png", "Mass", age="058Y")]))
    )
    pd.testing.assert_frame_equal(new, old)


def test_labels_are_exact_members_not_substrings(tmp_path: Path) -> None:
    rows = [
        row("00000001_000.png", "Pleural_Thickening"),
        row("00000001_001.png", "Infiltration|Effusion"),
    ]
    df = nih.read_data_entry(write(tmp_path / "d.csv", entry_csv(rows)))
    matrix = labels_matrix(df)
    expected = np.zeros((2, 14), np.uint8)
    expected[0, FINDINGS.index("Pleural_Thickening")] = 1
    expected[1, [FINDINGS.index("Infiltration"), FINDINGS.index("Effusion")]] = 1
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize("labels", ["Mass2", "Effusion|Mass2", "No Finding|Mass", "", "mass"])
def test_unknown_label_names_file_row_and_value(tmp_path: Path, labels: str) -> None:
    rows = [row("00000001_000.png", "Mass"), row("00000001_001.png", "Nodule")]
    rows.append(row("00000001_002.png", labels))
    path = write(tmp_path / "bad_labels.csv", entry_csv(rows))
    with pytest.raises(MetadataError) as info:
        nih.read_data_entry(path)
    assert isinstance(info.value, UnknownFindingError)
    message = str(info.value)
    assert "bad_labels.csv" in message and "data row 3" in message and "line 4" in message
    assert repr(labels.split("|")[-1]) in message or repr(labels) in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("age", "58X"), ("age", "-3"), ("age", ""), ("patient", "12a"), ("patient", "1.5")],
)
def test_bad_age_or_patient_names_file_row_and_value(tmp_path: Path, field: str, value: str):
    bad = (
        row("00000002_000.png", "Mass", age=value)
        if field == "age"
        else row("00000002_000.png", "Mass").replace(",0,1,58,", f",0,{value},58,")
    )
    path = write(tmp_path / "bad_value.csv", entry_csv([row("00000001_000.png", "Mass"), bad]))
    with pytest.raises(MetadataError) as info:
        nih.read_data_entry(path)
    message = str(info.value)
    assert "bad_value.csv" in message and "data row 2" in message and repr(value) in message
    assert ("Patient Age" if field == "age" else "Patient ID") in message


def test_duplicate_image_is_an_error(tmp_path: Path) -> None:
    rows = [row("00000001_000.png", "Mass"), row("00000001_000.png", "Nodule")]
    with pytest.raises(MetadataError, match="00000001_000.png"):
        nih.read_data_entry(write(tmp_path / "dup.csv", entry_csv(rows)))


@pytest.mark.parametrize("missing", ["Patient Age", "Height]", "y]"])
def test_missing_column_is_named(tmp_path: Path, missing: str) -> None:
    frame = pd.read_csv(io.StringIO(entry_csv([row("00000001_000.png", "Mass")])), dtype=str)
    path = tmp_path / "cols.csv"
    frame.drop(columns=missing).to_csv(path, index=False)
    with pytest.raises(MetadataError) as info:
        nih.read_data_entry(path)
    assert "cols.csv" in str(info.value) and repr(missing) in str(info.value)


# --- boxes and lists --------------------------------------------------------------------

BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@pytest.mark.parametrize("name", ["BBox_List_2017.csv", "BBox_List_2017.csv.gz"])
def test_boxes_map_infiltrate_and_ignore_empty_columns(tmp_path: Path, name: str) -> None:
    text = f"{BOX_HEADER}\na.png,Infiltrate,1.5,2,30,40\nb.png,Mass,10,20,30.25,40\n"
    boxes = nih.read_boxes(write(tmp_path / name, text))
    assert boxes["finding"].tolist() == ["Infiltration", "Mass"]
    assert boxes[["x", "y", "w", "h"]].to_numpy().tolist() == [
        [1.5, 2, 30, 40],
        [10, 20, 30.25, 40],
    ]


def test_box_errors_name_row(tmp_path: Path) -> None:
    unknown = write(tmp_path / "b1.csv", f"{BOX_HEADER}\na.png,Mass,1,2,3,4\nb.png,Lump,1,2,3,4\n")
    with pytest.raises(MetadataError, match=r"b1\.csv, data row 2 .*'Lump'"):
        nih.read_boxes(unknown)
    not_number = write(tmp_path / "b2.csv", f"{BOX_HEADER}\na.png,Mass,1,two,3,4\n")
    with pytest.raises(MetadataError, match=r"b2\.csv, data row 1 .*'two'"):
        nih.read_boxes(not_number)


@pytest.mark.parametrize("name", ["test_list.txt", "test_list.txt.gz"])
def test_read_split_list_strips_and_skips_blanks(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "a.png\n  b.png \n\n\nc.png")
    assert nih.read_split_list(path) == ["a.png", "b.png", "c.png"]


# --- a folder without the official split lists ------------------------------------------------


def test_a_folder_without_the_split_lists_is_refused_unless_a_strategy_is_given(tmp_path, capsys):
    from helpers import make_synth

    from cxr_tf import convert
    from cxr_tf.data.manifest import Manifest

    root = make_synth(tmp_path / "nih", n=30, seed=3, image_size=64)
    for name in ("train_val_list.txt", "test_list.txt"):
        (root / name).unlink()
    out = tmp_path / "out"
    args = ["--root", str(root), "--out_dir", str(out), "--stored_size", "64", "--quiet"]
    capsys.readouterr()
    assert convert.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(root) in lines[0] and "train_val_list.txt and test_list.txt" in lines[0]
    assert "--split.strategy random" in lines[0]
    assert not out.exists()  # refused before anything is written

    assert convert.main([*args, "--split.strategy", "random"]) == 0
    manifest = Manifest.load(out / "nih_64_raw")
    assert manifest.split_strategy.startswith("random")
    assert sum(entry.images for entry in manifest.splits.values()) == 30


def test_one_missing_split_list_is_named(tmp_path):
    write(tmp_path / "Data_Entry_2017.csv", entry_csv([]))
    write(tmp_path / "train_val_list.txt.gz", "a.png\n")
    message = nih.missing_split(tmp_path)
    assert str(tmp_path) in message and "test_list.txt" in message
    assert "train_val_list.txt" not in message
    write(tmp_path / "test_list.txt", "b.png\n")
    assert nih.missing_split(tmp_path) == ""
