"""A user's own images: class folders and labels CSV sources (`cxr_tf.sources.folders`,
`cxr_tf.sources.csv_labels`), DICOM decoding and headers (`cxr_tf.sources.dicom`), their
synthetic imitations (`cxr_tf.synthetic.folders`, `csv_labels`, `dicom`), conversion of all
of them, DICOM files in `predict`, and the real NIH sample images arranged as class
folders."""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import edit_dicom, nih_path, read_records
from PIL import Image

from cxr_tf.config import ConvertConfig, SynthConfig
from cxr_tf.data.manifest import Manifest
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN, UNLABELLED, VOCABULARY
from cxr_tf.sources import catalog, dicom, registry
from cxr_tf.sources.catalog import CatalogError
from cxr_tf.synthetic import dicom as dicom_imitation
from cxr_tf.synthetic.drawing import draw
from cxr_tf.synthetic.layouts import generate_layout

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _states(cat: catalog.Catalog, name: str) -> dict[str, int]:
    row = cat.frame.set_index("image_index").loc[name]
    return {f: int(row[f]) for f in VOCABULARY}


def _only(states: dict[str, int], **expected: int) -> None:
    """`expected` findings have those states; every other finding is not labelled."""
    for finding in VOCABULARY:
        assert states[finding] == expected.get(finding, UNLABELLED), finding


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# --- class folders -------------------------------------------------------------------------


def test_folders_splits_classes_and_patients_file(tmp_path):
    root = tmp_path / "own"
    names = [
        "train/No Finding/a.png",
        "train/effusion/b.png",
        "train/Pleural Thickening/2019/c.jpg",
        "valid/normal/d.png",
        "valid/EFFUSION/e.bmp",
        "test/pleural_thickening/f.png",
        "test/No Finding/g.png",
    ]
    for name in names:
        _png(root / name)
    _png(root / "train" / "loose.png")  # outside any class folder
    _png(root / "train" / "No Finding" / ".hidden.png")
    (root / "train" / "No Finding" / "notes.txt").write_text("not an image")
    patients = [["image", "patient"], *([n, str(10 + i // 2)] for i, n in enumerate(names))]
    _write_csv(root / "patients.csv", patients)

    assert registry.detect_source(root) == "folders"
    cat = registry.read_catalog("folders", root)
    assert sorted(cat.frame["image_index"]) == sorted(names)
    assert {k: sorted(v) for k, v in cat.official.items()} == {
        "train": sorted(names[:3]),
        "validation": sorted(names[3:5]),
        "test": sorted(names[5:]),
    }
    _only(_states(cat, "train/No Finding/a.png"), Effusion=NEGATIVE, Pleural_Thickening=NEGATIVE)
    _only(_states(cat, "valid/EFFUSION/e.bmp"), Effusion=POSITIVE, Pleural_Thickening=NEGATIVE)
    _only(
        _states(cat, "train/Pleural Thickening/2019/c.jpg"),
        Effusion=NEGATIVE,
        Pleural_Thickening=POSITIVE,
    )
    ids = dict(zip(cat.frame["image_index"], cat.frame["patient_id"], strict=True))
    assert [ids[n] for n in names] == [10, 10, 11, 11, 12, 12, 13]
    assert cat.patient_ids.startswith("patients.csv") and cat.input_files["patients"].is_file()
    assert set(cat.frame["view_position"]) == {"?"} and set(cat.frame["age"]) == {-1}
    assert any("train/loose.png" in note for note in cat.notes)
    assert set(cat.images.names) == set(names)


def test_folders_train_test_and_flat_layouts_one_patient_per_image(tmp_path):
    split = tmp_path / "split"
    for name in ("train/Mass/a.png", "train/No Finding/b.png", "test/Mass/c.png"):
        _png(split / name)
    cat = registry.read_catalog("folders", split)
    assert cat.official == {"train_val": ["train/Mass/a.png", "train/No Finding/b.png"],
                            "test": ["test/Mass/c.png"]}  # fmt: skip
    assert cat.frame["patient_id"].nunique() == 3
    assert any("one patient each" in note for note in cat.notes)

    flat = tmp_path / "flat"
    _png(flat / "Cardiomegaly" / "x.png")
    _png(flat / "Enlarged Cardiomediastinum" / "y.png")
    cat = registry.read_catalog("folders", flat)
    assert cat.official is None
    _only(_states(cat, "Cardiomegaly/x.png"), Cardiomegaly=POSITIVE,
          Enlarged_Cardiomediastinum=NEGATIVE)  # fmt: skip

    only_train = tmp_path / "only_train"
    _png(only_train / "train" / "Mass" / "a.png")
    cat = registry.read_catalog("folders", only_train)
    assert cat.official is None and any("no official split" in n for n in cat.notes)


def test_folders_refusals_name_the_problem(tmp_path):
    root = tmp_path / "classes"
    _png(root / "No Finding" / "a.png")
    _png(root / "cats" / "b.png")
    _png(root / "Efusion" / "c.png")
    # names outside the vocabulary are the dataset's own findings, a near miss is pointed out
    cat = registry.read_catalog("folders", root)
    assert cat.own_findings == ("cats", "Efusion")
    assert any(
        n.startswith("own findings: cats, Efusion") and "'Efusion' -> 'Effusion'" in n
        for n in cat.notes
    ), cat.notes

    mixed = tmp_path / "mixed"
    _png(mixed / "train" / "Mass" / "a.png")
    _png(mixed / "Mass" / "b.png")
    with pytest.raises(CatalogError, match="split folders .* beside other folders"):
        registry.read_catalog("folders", mixed)

    no_test = tmp_path / "no_test"
    _png(no_test / "train" / "Mass" / "a.png")
    _png(no_test / "valid" / "Mass" / "b.png")
    with pytest.raises(CatalogError, match="needs train and test"):
        registry.read_catalog("folders", no_test)

    missing = tmp_path / "missing_patient"
    _png(missing / "Mass" / "a.png")
    _png(missing / "Mass" / "b.png")
    _write_csv(missing / "patients.csv", [["image", "patient"], ["Mass/a.png", "7"]])
    with pytest.raises(CatalogError, match=r"no row for 1 image\(s\), e.g. \['Mass/b.png'\]"):
        registry.read_catalog("folders", missing)

    empty = tmp_path / "empty"
    (empty / "Mass").mkdir(parents=True)
    with pytest.raises(CatalogError, match="no image"):
        registry.read_catalog("folders", empty)


# --- labels CSV -----------------------------------------------------------------------------


def test_csv_finding_columns_states_metadata_and_missing_files(tmp_path):
    root = tmp_path / "csv"
    for name in ("img/a.png", "img/b.png", "img/c.png", "img/d.png"):
        _png(root / name)
    _write_csv(root / "labels.csv", [
        ["path", "Patient_ID", "view", "sex", "age", "split", "Effusion", "pleural thickening",
         "No Finding", "_notes"],
        ["img/a.png", "p1", "PA", "F", "45", "test", "1", "0", "", "x"],
        ["img\\b.png", "p1", "ap", "female", "045Y", "test", "-1.0", "", "", ""],
        ["img/c.png", "p2", "LL", "M", "", "", "0", "", "1", ""],
        ["img/d.png", "p3", "", "", "3", "train", "", "1.0", "", ""],
        ["img/gone.png", "p4", "PA", "M", "70", "train", "0", "0", "", ""],
    ])  # fmt: skip
    assert registry.detect_source(root) == "csv"
    cat = registry.read_catalog("csv", root)
    _only(_states(cat, "img/a.png"), Effusion=POSITIVE, Pleural_Thickening=NEGATIVE)
    _only(_states(cat, "img/b.png"), Effusion=UNCERTAIN)
    _only(_states(cat, "img/c.png"), Effusion=NEGATIVE, Pleural_Thickening=NEGATIVE)
    _only(_states(cat, "img/d.png"), Pleural_Thickening=POSITIVE)
    frame = cat.frame.set_index("image_index")
    assert frame["view_position"].tolist() == ["PA", "AP", "LATERAL", "?", "PA"]
    assert frame["sex"].tolist() == ["F", "F", "M", "?", "M"]
    assert frame["age"].tolist() == [45, 45, -1, 3, 70]
    assert frame["patient_id"].tolist() == [1, 1, 2, 3, 4]
    assert cat.official == {
        "train_val": ["img/c.png", "img/d.png", "img/gone.png"],  # blank split: train
        "test": ["img/a.png", "img/b.png"],
    }
    assert "img/gone.png" not in cat.images.names and len(cat.images) == 4
    assert any("not on disk" in note for note in cat.notes)
    assert cat.input_files == {"labels": root / "labels.csv"}


def test_csv_label_column(tmp_path):
    root = tmp_path / "csv"
    root.mkdir()
    _write_csv(root / "mine.csv", [
        ["image", "label"],
        ["a.png", "Effusion|mass"],
        ["b.png", "No Finding"],
        ["c.png", "pleural thickening"],
        ["d.png", "normal"],
    ])  # fmt: skip
    assert registry.detect_source(root) == "csv"  # the one CSV, every column understood
    cat = registry.read_catalog("csv", root)
    labelled = {"Effusion": NEGATIVE, "Mass": NEGATIVE, "Pleural_Thickening": NEGATIVE}
    _only(_states(cat, "a.png"), **{**labelled, "Effusion": POSITIVE, "Mass": POSITIVE})
    _only(_states(cat, "b.png"), **labelled)
    _only(_states(cat, "c.png"), **{**labelled, "Pleural_Thickening": POSITIVE})
    assert cat.official is None and len(cat.images) == 0  # no file exists


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["path", "Effusion"], ["a.png", "1"], ["b.png", "2"]],
         r"labels.csv, data row 2 \(line 3\), column 'Effusion': label '2' is not 1, 0, -1"),
        # a column of no label cells is refused (one of 1/0/-1 cells: an own finding)
        ([["path", "Effusion", "Efusion", "study date"], ["a.png", "1", "yes", "x"]],
         r"column\(s\) \['Efusion', 'study date'\] not understood \(did you mean 'Efusion' "
         r"-> 'Effusion'\?\). Accepted: path"),
        ([["path", "label"], ["a.png", "Effusion"], ["b.png", "Cat|"]],
         r"data row 2 \(line 3\), column 'label': 'Cat\|' has an empty name"),
        ([["path", "label"], ["a.png", "normal|Cat"]],
         r"data row 1 \(line 2\), column 'label': 'normal\|Cat' names 'No Finding' together"),
        ([["path", "COVID-19"], ["a.png", "1"], ["b.png", "yes"]],
         r"data row 2 \(line 3\), column 'COVID-19': 'yes' in a column of finding labels"),
        ([["path", "label", "Mass"], ["a.png", "Mass", "1"]], "use one form"),
        ([["path", "view"], ["a.png", "PA"]], "no labels"),
        ([["path", "image", "Mass"], ["a.png", "a.png", "1"]], "several columns mean the same"),
        ([["path", "Mass"], ["a.png", "1"], ["./a.png", "0"]],
         r"data row 2 \(line 3\), column 'path': image 'a.png' is listed already"),
        ([["path", "Mass"], ["../a.png", "1"]], r"column 'path': '../a.png' is not a path"),
        ([["path", "Mass", "split"], ["a.png", "1", "holdout"]],
         r"column 'split': 'holdout' is not train"),
        ([["path", "Mass", "split"], ["a.png", "1", "valid"], ["b.png", "1", "train"]],
         "needs train and test"),
        ([["path", "Mass", "No Finding"], ["a.png", "1", "1"]],
         "1 \\(no finding\\) but Mass is positive"),
    ],
)
def test_csv_errors_name_file_row_and_column(tmp_path, rows, message):
    root = tmp_path / "csv"
    root.mkdir()
    _write_csv(root / "labels.csv", rows)
    with pytest.raises(CatalogError, match=message):
        registry.read_catalog("csv", root)


def test_detection_claims_only_what_is_ours(tmp_path):
    from helpers import make_synth

    nih_root = make_synth(tmp_path / "nih", n=4, seed=0, image_size=64)
    assert registry.detect_source(nih_root) == "nih"
    assert not registry.get("folders").detect(nih_root) and not registry.get("csv").detect(nih_root)

    chexpert = tmp_path / "chexpert"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Edema"]
    for split in ("train", "valid"):
        image = f"{split}/patient00001/study1/view1_frontal.jpg"
        _png(chexpert / image)
        row = [image, "Male", "60", "Frontal", "PA", "", "1.0"]
        _write_csv(chexpert / f"{split}.csv", [header, row])
    assert not registry.get("folders").detect(chexpert) and not registry.get("csv").detect(chexpert)
    (chexpert / "valid.csv").unlink()  # one CSV left, with columns this reader refuses
    assert not registry.get("csv").detect(chexpert)

    unknown_classes = tmp_path / "pets"
    _png(unknown_classes / "cats" / "a.png")
    # one folder of any name is not enough to claim a folder; --source folders reads it
    assert not registry.get("folders").detect(unknown_classes)
    assert registry.read_catalog("folders", unknown_classes).own_findings == ("cats",)
    _png(unknown_classes / "dogs" / "b.png")
    assert registry.detect_source(unknown_classes) == "folders"

    own = tmp_path / "own"
    _png(own / "Mass" / "a.png")
    _write_csv(own / "patients.csv", [["image", "patient"], ["Mass/a.png", "1"]])
    assert registry.detect_source(own) == "folders" and not registry.get("csv").detect(own)
    _write_csv(own / "labels.csv", [["path", "Mass"], ["Mass/a.png", "1"]])
    assert registry.detect_source(own) == "csv" and not registry.get("folders").detect(own)


def test_each_imitation_is_detected_as_its_own_source_only(tmp_path):
    from cxr_tf.sources import chexpert, mimic, padchest

    roots = {}
    for layout in ("chexpert", "mimic", "padchest", "folders", "csv", "dicom"):
        config = SynthConfig(out=str(tmp_path / layout), n=24, seed=1, image_size=64,
                             prevalence="0.2", layout=layout, workers=2)  # fmt: skip
        generate_layout(config, progress=False)
        roots[layout] = tmp_path / layout
    detectors = {"chexpert": chexpert._detect, "mimic": mimic._detect,
                 "padchest": padchest._detect, "folders": registry.get("folders").detect,
                 "csv": registry.get("csv").detect}  # fmt: skip
    for layout, root in roots.items():
        source = "folders" if layout == "dicom" else layout
        found = [name for name, detect in detectors.items() if detect(root)]
        assert found == [source], layout
        assert registry.detect_source(root) == source
    # the folder holding them all: a class-folder look-alike whose names are no classes
    assert not registry.get("folders").detect(tmp_path) and not registry.get("csv").detect(tmp_path)


def test_the_real_nih_folder_is_neither_folders_nor_csv():
    root = nih_path()
    assert not registry.get("folders").detect(root) and not registry.get("csv").detect(root)
    assert registry.detect_source(root) == "nih"


def test_each_source_says_why_a_folder_is_not_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    reasons = registry.why_not(empty)
    assert list(reasons) == list(registry.SOURCES)
    assert all(reasons.values()), reasons
    assert "Data_Entry_2017" in reasons["nih"] and "train.csv" in reasons["chexpert"]
    assert "mimic-cxr-2.0.0-metadata.csv" in reasons["mimic"] and "ImageID" in reasons["padchest"]
    assert "labels.csv" in reasons["csv"] and "class subfolders" in reasons["folders"]

    own = tmp_path / "own"
    _png(own / "Mass" / "a.png")
    reasons = registry.why_not(own)
    assert reasons["folders"] == "" and all(v for k, v in reasons.items() if k != "folders")
    _write_csv(own / "notes.csv", [["path", "remark"], ["Mass/a.png", "x"]])
    reasons = registry.why_not(own)
    assert "notes.csv" in reasons["folders"] and "'remark'" in reasons["csv"]
    for name, reason in registry.why_not(nih_path()).items():
        assert (reason == "") == (name == "nih"), (name, reason)


# --- DICOM ----------------------------------------------------------------------------------


def _gray(seed: int = 0, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _dicom(gray: np.ndarray, kind: str = "mono2_16bit", rle: bool = False, **tags) -> bytes:
    return dicom_imitation.dicom_bytes(gray, kind, rle, tags, ["1.2.3.1", "1.2.3.2", "1.2.3.3"])


@pytest.mark.parametrize("kind", list(dicom_imitation.KINDS))
@pytest.mark.parametrize("rle", [False, True])
def test_dicom_decode_gives_the_written_pixels_back(kind, rle):
    gray = _gray(1)
    data = _dicom(gray, kind, rle)
    assert dicom.is_dicom(data)
    info = dicom.header(data)
    assert info["photometric"] == dicom_imitation.KINDS[kind][0]
    assert info["transfer_syntax"] == ("1.2.840.10008.1.2.5" if rle else "1.2.840.10008.1.2.1")
    decoded = dicom.decode(data)
    assert decoded.dtype == np.float32 and decoded.shape == gray.shape
    np.testing.assert_allclose(decoded, gray, atol=1e-6)


def test_dicom_window_rescale_monochrome1_voi_lut_and_no_voi():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    gray = _gray(2)
    base = _dicom(gray, "mono2_16bit_rescaled")  # stored 16 * v, slope 0.5, intercept -1024
    modality = gray.astype(np.float64) * 8 - 1024
    # A narrower LINEAR window: DICOM's formula, 0 below and 255 above.
    narrow = dicom.decode(edit_dicom(base, WindowCenter="-600", WindowWidth="400"))
    want = np.clip((modality - (-600 - 0.5)) / (400 - 1) + 0.5, 0, 1) * 255
    np.testing.assert_allclose(narrow, want, atol=1e-4)
    assert narrow.min() == 0 and narrow.max() == 255
    # MONOCHROME1: the same window, inverted.
    inverted = dicom.decode(edit_dicom(base, WindowCenter="-600", WindowWidth="400",
                                  PhotometricInterpretation="MONOCHROME1"))  # fmt: skip
    np.testing.assert_allclose(inverted, 255 - want, atol=1e-4)
    # No window, no LUT: the image's own range (after rescale) maps onto 0..255.
    bare = dicom.decode(edit_dicom(base, WindowCenter=None, WindowWidth=None))
    np.testing.assert_allclose(bare, (modality - modality.min()) * 255 / np.ptp(modality),
                               atol=1e-4)  # fmt: skip
    # A VOI LUT (preferred over the window): output range = smallest..largest LUT entry.
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])  # 4096 entries from stored value 0
    curve = [1000 + round(255 * (i / 4095) ** 2) for i in range(4096)]  # 1000..1255
    item.add_new("LUTData", "US", curve)
    lut = edit_dicom(_dicom(gray, "mono2_16bit"), VOILUTSequence=Sequence([item]))
    want = np.round(255 * (gray.astype(np.float64) * 16 / 4095) ** 2)
    np.testing.assert_allclose(dicom.decode(lut), want, atol=1e-4)
    # 8-bit, windowed to identity, and the constant image.
    np.testing.assert_array_equal(dicom.decode(_dicom(gray, "mono2_8bit")), gray)
    flat = np.full((8, 8), 77, np.uint8)
    assert dicom.decode(edit_dicom(_dicom(flat), WindowCenter=None, WindowWidth=None)).max() == 0


def test_dicom_compressed_color_and_multiframe_files():
    import pydicom
    from pydicom.pixels import pixel_array

    reference = dicom.decode((PYDICOM_FILES / "MR_small.dcm").read_bytes())
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):  # fmt: skip
        np.testing.assert_allclose(
            dicom.decode((PYDICOM_FILES / name).read_bytes()), reference, atol=1e-4, err_msg=name
        )
    # RGB (JPEG lossless through GDCM): ITU-R 601 luma, like RGB PNGs.
    path = PYDICOM_FILES / "SC_rgb_jpeg_gdcm.dcm"
    rgb = pixel_array(pydicom.dcmread(path)).astype(np.float64)
    want = rgb @ np.array(dicom.LUMA)
    np.testing.assert_allclose(dicom.decode(path.read_bytes()), want, atol=1e-3)
    # Multi-frame: the first frame only.
    path = PYDICOM_FILES / "rtdose.dcm"
    assert dicom.header(path)["frames"] == 15
    first = dicom.decode(path.read_bytes())
    frame = pixel_array(pydicom.dcmread(path), index=0).astype(np.float64)
    assert first.shape == frame.shape[:2]
    np.testing.assert_allclose(first, (frame - frame.min()) * 255 / np.ptp(frame), atol=1e-3)


def test_dicom_errors_say_why():
    from pydicom.uid import UID

    with pytest.raises(ValueError, match="no 'DICM' marker"):
        dicom.decode(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert not dicom.is_dicom(b"short")
    data = _dicom(_gray())
    with pytest.raises(ValueError, match="without pixel data"):
        dicom.decode(edit_dicom(data, PixelData=None))
    with pytest.raises(ValueError, match="no decoder for it"):
        dicom.decode(_edit_meta(data, UID("1.2.3.4.5.6")))
    with pytest.raises(ValueError, match="JPEG Extended .*: cannot decode the pixel data"):
        dicom.decode((PYDICOM_FILES / "JPGExtended.dcm").read_bytes())  # 12-bit JPEG
    with pytest.raises(ValueError, match="side over 8192"):
        dicom.decode(edit_dicom(data, Rows=9000))
    with pytest.raises(ValueError, match="pixel data is less than expected"):
        dicom.decode(data[:-10])  # truncated
    for garbage in (b"\0" * 128 + b"DICM" + b"\xff" * 50, data[:140]):
        with warnings.catch_warnings():  # pydicom warns about the missing end of a sequence
            warnings.simplefilter("ignore", UserWarning)
            with pytest.raises(ValueError, match="not a readable DICOM file"):
                dicom.decode(garbage)
            with pytest.raises(ValueError, match="not a readable DICOM file"):
                dicom.header(garbage)


def _edit_meta(data: bytes, syntax: object) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)  # keep the made-up transfer syntax
    return buffer.getvalue()


def test_dicom_header_fields(tmp_path):
    data = _dicom(_gray(), PatientID=" PAT-7 ", ViewPosition="AP", PatientSex="F",
                  PatientAge="045Y", ImagerPixelSpacing=["0.2", "0.1"])  # fmt: skip
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        info = dicom.header(source)
        assert info["patient_id"] == "PAT-7" and info["view"] == "AP" and info["sex"] == "F"
        assert info["age"] == 45 and (info["rows"], info["columns"]) == (48, 40)
        assert (info["pixel_spacing_x"], info["pixel_spacing_y"]) == (0.1, 0.2)
    info = dicom.header(edit_dicom(data, PixelSpacing=["0.3", "0.3"], PatientAge="018M",
                              ViewPosition="LL", PatientSex=None))  # fmt: skip
    assert (info["pixel_spacing_x"], info["age"], info["view"], info["sex"]) == (
        0.3, 1, "LATERAL", "?")  # fmt: skip
    assert [dicom.parse_age(v) for v in ("45", "003W", "010D", "", "abc", "999Y")] == [
        45, 0, 0, -1, -1, -1]  # fmt: skip


def test_folders_of_dicom_files_take_patient_view_and_sizes_from_headers(tmp_path):
    root = tmp_path / "dicom"
    gray = _gray(3)
    files = {
        "Effusion/IM0001": _dicom(gray, PatientID="A7", ViewPosition="PA", PatientSex="M",
                                  PatientAge="061Y"),
        "Effusion/x.dcm": _dicom(gray, "mono1_16bit", True, PatientID="A7", ViewPosition="LL"),
        "No Finding/y.dicom": _dicom(gray, "mono2_8bit", PatientID="B2"),
        "No Finding/z.dcm": b"not a DICOM file after all",
    }  # fmt: skip
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "No Finding" / "README").write_text("an extension-less file that is no image")
    cat = registry.read_catalog(registry.detect_source(root), root)
    frame = cat.frame.set_index("image_index")
    assert sorted(frame.index) == sorted(files)
    assert frame.loc["Effusion/IM0001", ["view_position", "sex", "age"]].tolist() == [
        "PA", "M", 61]  # fmt: skip
    assert frame.loc["Effusion/x.dcm", "view_position"] == "LATERAL"
    assert frame.loc["No Finding/y.dicom", "original_width"] == 40
    ids = frame["patient_id"]
    assert ids["Effusion/IM0001"] == ids["Effusion/x.dcm"] != ids["No Finding/y.dicom"]
    assert any("unreadable header" in n and "No Finding/z.dcm" in n for n in cat.notes)


def test_max_side_is_the_preprocessing_limit():
    from cxr_tf.data import preprocessing

    assert dicom.MAX_SIDE == preprocessing.MAX_SIDE


# --- synthetic imitations and conversion -------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if
            p.is_file()}  # fmt: skip


@pytest.mark.parametrize("layout", ["folders", "csv", "dicom"])
def test_imitations_are_reproducible_and_read_back(layout, tmp_path):
    settings = dict(n=40, seed=5, image_size=64, prevalence="0.2", layout=layout, workers=2)
    configs = [SynthConfig(out=str(tmp_path / name), **settings) for name in "ab"]
    summary = generate_layout(configs[0], progress=False)
    generate_layout(configs[1], progress=False)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")  # byte-identical
    assert summary["layout"] == layout and summary["n_images"] == 40
    expected = {"folders": "folders", "csv": "csv", "dicom": "folders"}[layout]
    assert registry.detect_source(tmp_path / "a") == expected
    cat = registry.read_catalog(expected, tmp_path / "a")
    assert len(cat.frame) == len(cat.images) == 40
    assert cat.frame["patient_id"].nunique() == summary["n_patients"]
    frame = cat.frame.set_index("image_index")
    if layout != "csv":  # single-label: the drawn finding is the positive one
        for name, findings in summary["findings"].items():
            positive = [f for f in VOCABULARY if frame.loc[name, f] == POSITIVE]
            assert positive == findings, name
    if layout == "dicom":
        assert {k["rle"] for k in summary["dicom"].values()} == {False, True}
        assert set(frame["view_position"]) <= {"PA", "AP", "?"} and "?" not in set(frame["sex"])
        assert cat.patient_ids.startswith("DICOM PatientID")


_records = read_records


def _convert(root: Path, out: Path, source: str, **kwargs) -> tuple[Manifest, dict[str, dict]]:
    from cxr_tf.data import conversion

    config = ConvertConfig(root=str(root), source=source, out_dir=str(out), stored_size=64,
                           encoding="png", workers=2, **kwargs)  # fmt: skip
    manifest = conversion.convert(config, progress=False)
    return manifest, _records(out / manifest.dataset)


@pytest.mark.slow
def test_conversion_of_the_three_imitations(tmp_path):
    from cxr_tf.data import preprocessing

    made = {}
    for layout in ("folders", "csv", "dicom"):
        made[layout] = generate_layout(SynthConfig(
            out=str(tmp_path / layout), n=60, seed=2, image_size=128, prevalence="0.2",
            layout=layout, workers=2), progress=False)  # fmt: skip

    # dicom: class folders of .dcm; pixels as decode() gives them, headers in the records.
    manifest, records = _convert(tmp_path / "dicom", tmp_path / "out", "folders", name="d")
    cat = registry.read_catalog("folders", tmp_path / "dicom")
    assert manifest.source.kind == "folders" and set(records) == set(cat.frame.image_index)
    frame = cat.frame.set_index("image_index")
    for name in list(records)[:12]:
        record, row = records[name], frame.loc[name]
        np.testing.assert_array_equal(record["labels"], row[list(VOCABULARY)].to_numpy(np.uint8))
        assert record["view_position"] in (0, 1, 2)  # PA, AP, ?
        assert record["patient_id"] == row["patient_id"] and record["age"] == row["age"]
        np.testing.assert_array_equal(record["original_size"], [128, 128])
        gray = dicom.decode((tmp_path / "dicom" / name).read_bytes())
        stored = preprocessing.resize_to_stored(gray[..., None], 64).numpy()
        np.testing.assert_array_equal(record["image"], stored)
    assert list(manifest.labelled_findings) == ["Cardiomegaly", "Effusion", "Pneumothorax"]

    # csv: official three-way split from the split column, laterals dropped by default.
    manifest, records = _convert(tmp_path / "csv", tmp_path / "out", "csv", name="c")
    labels = pd.read_csv(tmp_path / "csv" / "labels.csv", dtype=str, keep_default_na=False,
                         encoding="cp1252")  # fmt: skip
    lateral = set(labels.loc[labels["view"] == "LL", "path"])
    assert manifest.source.views_dropped == {"LATERAL": len(lateral)}
    assert set(records) == set(labels["path"]) - lateral
    split_of = {"test": "test", "valid": "validation", "train": "train", "": "train"}
    covid = labels.columns.get_loc("COVID-19")  # a finding of the dataset's own
    for row in labels.itertuples(index=False):
        if row.path in lateral:
            continue
        record = records[row.path]
        assert record["split"] == split_of[row.split], row.path
        cell = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE,
                "-1": UNCERTAIN, "-1.0": UNCERTAIN, "": UNLABELLED}  # fmt: skip
        assert record["labels"][VOCABULARY.index("Effusion")] == cell[row.Effusion]
        assert record["labels"][VOCABULARY.index("Mass")] == cell[row.Mass]
        assert record["labels"][VOCABULARY.index("Edema")] == UNLABELLED
        assert record["labels"][manifest.labels.index("COVID-19")] == cell[row[covid]]
    assert manifest.labels == (*VOCABULARY, "COVID-19")
    assert manifest.source.splits.startswith("official")

    # folders: train/ and test/ -> the official test split, validation carved from train.
    manifest, records = _convert(tmp_path / "folders", tmp_path / "out", "auto", name="f")
    for name, record in records.items():
        assert (record["split"] == "test") == name.startswith("test/"), name
    assert set(records) == set(made["folders"]["image_paths"])


# --- predict ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_dicom_matches_the_png_of_the_same_pixels(trained_run, tmp_path, capsys):
    from cxr_tf import predict

    pixels, _ = draw(["Cardiomegaly", "Effusion"], 128, (9, 9))
    gray = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    png = tmp_path / "same.png"
    Image.fromarray(gray).save(png)
    files = [str(png)]
    for kind, rle in (("mono1_16bit", True), ("mono2_16bit_rescaled", False),
                      ("mono2_8bit", False)):  # fmt: skip
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(_dicom(gray, kind, rle))
        files.append(str(path))
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(edit_dicom(_dicom(gray), PixelData=None))
    files.append(str(broken))
    cams = tmp_path / "cams"
    code = predict.main([*files, "--model", str(trained_run), "--json", "--gradcam", str(cams)])
    assert code == 1  # the broken file fails alone
    results = json.loads(capsys.readouterr().out)["images"]
    assert [r["ok"] for r in results] == [True, True, True, True, False]
    assert results[-1]["error"].startswith("DICOM: DICOM file without pixel data")
    reference = [f["probability"] for f in results[0]["findings"]]
    for result in results[1:4]:
        got = [f["probability"] for f in result["findings"]]
        np.testing.assert_allclose(got, reference, atol=1e-5, err_msg=result["file"])
        assert Path(result["gradcam"]).is_file()


# --- the real NIH sample images as class folders -------------------------------------------------


def test_real_nih_sample_as_class_folders_reads_and_converts(tmp_path):
    nih = nih_path()
    labels = pd.read_csv(nih / "sample_labels.csv", dtype=str, keep_default_na=False)
    single = labels[~labels["Finding Labels"].str.contains("|", regex=False)]
    assert len(single) > 30, "the sample has enough single-label images"
    root = tmp_path / "nih_classes"
    rows = [["image", "patient"]]
    for row in single.to_dict("records"):
        split = "train" if row["official_split"] == "train_val" else "test"
        # 'Pleural Thickening': class names as users write them
        folder = row["Finding Labels"].replace("_", " ")
        image = row["Image Index"]
        name = f"{split}/{folder}/{image}"
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(nih / "images" / image)
        except OSError:
            shutil.copy(nih / "images" / image, target)
        rows.append([name, row["Patient ID"]])
    _write_csv(root / "patients.csv", rows)

    assert registry.detect_source(root) == "folders"
    cat = registry.read_catalog("folders", root)
    assert len(cat.frame) == len(single)
    counts = single["Finding Labels"].value_counts()
    classes = [c for c in counts.index if c != "No Finding"]
    states = cat.frame[list(VOCABULARY)]
    for finding in VOCABULARY:
        if finding in classes:
            assert (states[finding] == POSITIVE).sum() == counts[finding], finding
            assert (states[finding] == NEGATIVE).sum() == len(single) - counts[finding]
        else:
            assert (states[finding] == UNLABELLED).all(), finding
    no_finding = (states[classes] == NEGATIVE).all(axis=1).sum()
    assert no_finding == counts.get("No Finding", 0)
    assert len(cat.official["test"]) == (single["official_split"] == "test").sum()
    assert len(cat.official["train_val"]) == (single["official_split"] == "train_val").sum()
    assert cat.patient_ids == "patients.csv, as given"
    assert sorted(cat.frame["patient_id"]) == sorted(single["Patient ID"].astype(int))

    manifest, records = _convert(root, tmp_path / "out", "folders")
    assert len(records) == len(single)
    assert manifest.images == len(single)
    by_name = cat.frame.set_index("image_index")
    for name, record in records.items():
        np.testing.assert_array_equal(
            record["labels"], by_name.loc[name, list(VOCABULARY)].to_numpy(np.uint8)
        )
        assert (record["split"] == "test") == name.startswith("test/")
        np.testing.assert_array_equal(record["original_size"], [1024, 1024])


def test_a_failed_detection_says_per_source_why_not(tmp_path, capsys):
    from cxr_tf import convert

    # a labels CSV under another name, saved as cp1252 (as Excel on Windows does)
    latin = tmp_path / "latin"
    _png(latin / "img" / "a.png")
    frame = pd.DataFrame({"path": ["img/a.png"], "label": ["Pneumonia"], "remarque": ["opacité"]})
    frame.to_csv(latin / "covid.csv", index=False, encoding="cp1252")
    with pytest.raises(CatalogError, match="cannot tell") as info:
        registry.detect_source(latin)
    lines = str(info.value).splitlines()
    assert [line.split(":")[0].strip() for line in lines[1:]] == list(registry.SOURCES)
    csv_line = next(line for line in lines if line.startswith("  csv: "))
    assert "'remarque'" in csv_line and "byte 0xe9 on line 2 is not UTF-8" in csv_line
    assert any(line.startswith("  nih: no Data_Entry_2017*.csv") for line in lines)

    # a single class folder of its own name: the reason names the subfolders
    own = tmp_path / "own"
    _png(own / "tb" / "a.png")
    with pytest.raises(CatalogError, match="cannot tell") as info:
        registry.detect_source(own)
    assert "  folders: no two class subfolders hold images" in str(info.value)
    assert "(subfolders: tb)" in str(info.value)

    # convert prints it as one error and exits 2
    capsys.readouterr()
    assert convert.main(["--root", str(own), "--out_dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert: error: ") and err.count("convert: error") == 1
    assert "(subfolders: tb)" in err and not (tmp_path / "out" / "folders_256_raw").exists()


def test_the_patient_overlap_error_names_the_datasets_own_patient_ids(tmp_path):
    from cxr_tf.data import splits

    root = tmp_path / "pediatric"
    rows = [["image", "patient"]]
    for split, image, patient in [
        ("train", "person1_bacteria_1.png", "person1"),
        ("train", "person10_virus_2.png", "person10"),
        ("test", "person1_bacteria_3.png", "person1"),  # the same child on both sides
        ("test", "person2_virus_4.png", "person2"),
    ]:
        _png(root / split / "Pneumonia" / image)
        rows.append([f"{split}/Pneumonia/{image}", patient])
    _png(root / "train" / "No Finding" / "person3_normal.png")
    rows.append(["train/No Finding/person3_normal.png", "person3"])
    _write_csv(root / "patients.csv", rows)

    cat = registry.read_catalog("folders", root)
    assert cat.patient_names[int(cat.frame["patient_id"].iloc[0])].startswith("person")
    with pytest.raises(splits.PatientOverlapError) as caught:
        _convert(root, tmp_path / "out", "folders")
    assert caught.value.patients == ["person1"]
    assert "person1 (" in str(caught.value)
