"""Tests for the synthetic NIH-like dataset generator (`cxr_tf.synth`)."""

from __future__ import annotations

import csv
import gzip
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_tf.config import ConfigError, SynthConfig
from cxr_tf.labels import FINDING_INDEX, FINDINGS, NO_FINDING, parse_finding_labels
from cxr_tf.synth import main
from cxr_tf.synthetic.layouts import generate_layout
from cxr_tf.synthetic.nih import BBOX_HEADER, DATA_ENTRY_COLUMNS, generate

NIH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih"
SIZE = 192
N = 200


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _gray(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


@pytest.fixture(scope="module")
def nih_like(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synth_nih")
    return generate(SynthConfig(out=str(out), n=N, seed=3, image_size=SIZE), progress=False)


@pytest.mark.skipif(not NIH_DIR.is_dir(), reason=f"real NIH metadata not found at {NIH_DIR}")
def test_headers_match_real_nih_files(tmp_path: Path) -> None:
    with gzip.open(NIH_DIR / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        real_entry = handle.readline().rstrip("\n")
    real_bbox = (NIH_DIR / "BBox_List_2017.csv").read_text().splitlines()[0]
    assert ",".join(DATA_ENTRY_COLUMNS) == real_entry
    assert BBOX_HEADER == real_bbox

    generate(SynthConfig(out=str(tmp_path), n=10, image_size=64, age_format="2020"), False)
    assert (tmp_path / "Data_Entry_2017.csv").read_text().splitlines()[0] == real_entry
    assert (tmp_path / "BBox_List_2017.csv").read_text().splitlines()[0] == real_bbox


def test_data_entry_rows_look_like_nih_2017(nih_like: dict) -> None:
    rows = _read_csv(Path(nih_like["paths"]["data_entry"]))
    assert rows[0] == [*DATA_ENTRY_COLUMNS, ""]  # the 2017 file's empty trailing column
    assert len(rows) == N + 1
    follow_ups = defaultdict(list)
    for row in rows[1:]:
        assert len(row) == len(DATA_ENTRY_COLUMNS) + 1 and row[-1] == ""
        name, labels, follow_up, patient, age, sex, view, width, height, sx, sy, _ = row
        assert re.fullmatch(r"\d{8}_\d{3}\.png", name)
        assert name == f"{int(patient):08d}_{int(follow_up):03d}.png"
        follow_ups[int(patient)].append(int(follow_up))
        vector = parse_finding_labels(labels)
        if labels != NO_FINDING:
            assert labels == "|".join(f for f, v in zip(FINDINGS, vector, strict=True) if v)
        assert re.fullmatch(r"0\d\dY", age) and 1 <= int(age[:3]) <= 95
        assert sex in ("M", "F") and view in ("PA", "AP")
        assert 2000 <= int(width) <= 3100 and 2000 <= int(height) <= 3100
        assert sx == sy and 0.1 < float(sx) < 0.2
    assert [r[0] for r in rows[1:]] == sorted(r[0] for r in rows[1:])
    for patient_follow_ups in follow_ups.values():
        assert patient_follow_ups == list(range(len(patient_follow_ups)))
        assert 1 <= len(patient_follow_ups) <= 6
    assert len(follow_ups) == nih_like["n_patients"] < N  # several images per patient


def test_nih_prevalence_is_mostly_no_finding(nih_like: dict) -> None:
    assert 0.5 <= nih_like["no_finding"] / N <= 0.6
    counts = nih_like["finding_counts"]
    assert set(counts) == set(FINDINGS)
    assert counts["Infiltration"] == max(counts.values())
    assert all(c >= 1 for c in counts.values())


def test_age_format_2020_writes_integers_without_trailing_column(tmp_path: Path) -> None:
    generate(SynthConfig(out=str(tmp_path), n=20, image_size=64, age_format="2020"), False)
    rows = _read_csv(tmp_path / "Data_Entry_2017.csv")
    assert rows[0] == list(DATA_ENTRY_COLUMNS)
    assert all(len(r) == len(DATA_ENTRY_COLUMNS) and r[4].isdigit() for r in rows[1:])


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def make(name: str, seed: int, workers: int) -> dict[str, bytes]:
        config = SynthConfig(
            out=str(tmp_path / name), n=60, seed=seed, image_size=128, workers=workers
        )
        generate(config, progress=False)
        return _files(tmp_path / name)

    # The writer threads must not matter: one thread and two give the same bytes.
    first, again, other = make("a", 7, 2), make("b", 7, 1), make("c", 8, 2)
    assert first == again
    assert first["Data_Entry_2017.csv"] != other["Data_Entry_2017.csv"]
    shared_png = sorted(set(first) & set(other) - {"Data_Entry_2017.csv"})
    assert any(k.endswith(".png") and first[k] != other[k] for k in shared_png)


def test_split_lists_are_patient_disjoint_and_cover_all(nih_like: dict) -> None:
    paths = nih_like["paths"]
    train_val = Path(paths["train_val_list"]).read_text().split()
    test = Path(paths["test_list"]).read_text().split()
    assert train_val == sorted(train_val) and test == sorted(test)
    assert sorted(train_val + test) == sorted(nih_like["image_paths"])
    assert len(set(train_val + test)) == N
    patients = {
        split: {n.split("_")[0] for n in names}
        for split, names in (("train_val", train_val), ("test", test))
    }
    assert not patients["train_val"] & patients["test"]
    share = len(patients["test"]) / nih_like["n_patients"]
    assert 0.15 <= share <= 0.25


def test_box_file_has_one_box_per_test_finding_inside_the_image(nih_like: dict) -> None:
    rows = _read_csv(Path(nih_like["paths"]["bbox_list"]))
    assert rows[0] == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""]
    test = set(Path(nih_like["paths"]["test_list"]).read_text().split())
    entry = {r[0]: r[1] for r in _read_csv(Path(nih_like["paths"]["data_entry"]))[1:]}
    boxed: dict[str, list[str]] = defaultdict(list)
    for name, label, *xywh in rows[1:]:
        assert name in test
        assert label != "Infiltration"  # the box file spells it Infiltrate
        boxed[name].append("Infiltration" if label == "Infiltrate" else label)
        x, y, w, h = map(float, xywh)
        # NIH's frame: 1024 px whatever the PNG size; the summary keeps PNG pixels.
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1024 and y + h <= 1024
        in_png = [np.array(b[1:], float) * 1024 / SIZE for b in nih_like["boxes"][name]]
        assert any(np.allclose(b, [x, y, w, h], atol=1e-3) for b in in_png)
    expected = {n: entry[n].split("|") for n in test if entry[n] != NO_FINDING}
    assert {n: sorted(v) for n, v in boxed.items()} == {n: sorted(v) for n, v in expected.items()}
    assert len(rows) - 1 == nih_like["n_boxes"] > 0
    assert any(r[1] == "Infiltrate" for r in rows[1:])


def _edge_energy(image: np.ndarray, x: int, y: int, w: int, h: int) -> float:
    """Mean absolute neighbour difference over a box (plus a 1 px border)."""
    region = image[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1]
    return float(np.abs(np.diff(region, axis=0)).mean() + np.abs(np.diff(region, axis=1)).mean())


def test_patterns_are_drawn_at_the_recorded_boxes(nih_like: dict) -> None:
    images = nih_like["image_paths"]
    boxes = nih_like["boxes"]
    clean = [_gray(images[n]) for n, b in boxes.items() if not b][:40]
    seen = set()
    for name, image_boxes in boxes.items():
        if not image_boxes:
            continue
        image = _gray(images[name])
        assert image.shape == (SIZE, SIZE)
        for finding, x, y, w, h in image_boxes:
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
            # The same region of No Finding images is smooth background plus grain; the
            # hard-edged pattern must carry clearly more local contrast than any of them.
            background = max(_edge_energy(c, x, y, w, h) for c in clean)
            assert _edge_energy(image, x, y, w, h) > 1.5 * background, (name, finding)
            seen.add(finding)
    assert seen == set(FINDINGS)


def test_no_finding_images_have_no_boxes(nih_like: dict) -> None:
    entry = {r[0]: r[1] for r in _read_csv(Path(nih_like["paths"]["data_entry"]))[1:]}
    for name, image_boxes in nih_like["boxes"].items():
        found = sorted(b[0] for b in image_boxes)
        assert found == sorted([] if entry[name] == NO_FINDING else entry[name].split("|"))


def test_rgba_images_are_gray_with_opaque_alpha(nih_like: dict) -> None:
    rgba = nih_like["rgba_images"]
    assert len(rgba) >= 1
    for name, path in nih_like["image_paths"].items():
        with Image.open(path) as image:
            assert image.mode == ("RGBA" if name in rgba else "L")
            if name in rgba:
                pixels = np.asarray(image)
                assert (pixels[..., 3] == 255).all()
                assert (pixels[..., 0] == pixels[..., 1]).all()
                assert (pixels[..., 0] == pixels[..., 2]).all()


def test_prevalence_floor_gives_every_finding_enough_positives(tmp_path: Path) -> None:
    n, floor = 100, 0.1
    generate(
        SynthConfig(out=str(tmp_path), n=n, seed=5, image_size=128, prevalence=str(floor)),
        progress=False,
    )
    counts = np.zeros(len(FINDINGS), dtype=int)
    for row in _read_csv(tmp_path / "Data_Entry_2017.csv")[1:]:
        counts += parse_finding_labels(row[1])
    assert (counts >= floor * n * 0.8).all(), dict(zip(FINDINGS, counts, strict=True))
    assert counts[FINDING_INDEX["Infiltration"]] >= 0.17 * n  # above the floor stays NIH


def test_folders_layout_mimics_nih_archives(tmp_path: Path) -> None:
    summary = generate(
        SynthConfig(out=str(tmp_path), n=48, image_size=128, layout="nih_folders"), progress=False
    )
    folders = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("images_*/images"))
    assert folders == [f"images_{i:03d}/images" for i in range(1, 13)]
    assert not (tmp_path / "images").exists()
    pngs = sorted(p.name for p in tmp_path.glob("images_*/images/*.png"))
    assert pngs == sorted(summary["image_paths"])
    assert all(len(list((tmp_path / f).glob("*.png"))) == 4 for f in folders)


def test_cli_main_writes_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--n", "12", "--seed", "2", "--image_size", "64"]
    assert main([*argv, "--prevalence", "0.2", "--layout", "nih"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 12
    for name in (
        "Data_Entry_2017.csv",
        "BBox_List_2017.csv",
        "train_val_list.txt",
        "test_list.txt",
    ):
        assert (out / name).is_file()
    assert "wrote 12 images" in capsys.readouterr().err


def test_cli_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--prevalence" in capsys.readouterr().out


def test_cli_bad_value_exits_with_field_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", "x", "--n", "0"])
    assert exit_info.value.code == 2
    assert "n: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("out", ""),
        ("n", 0),
        ("seed", -1),
        ("image_size", 32),
        ("prevalence", "common"),
        ("prevalence", "0.9"),
        ("prevalence", "0"),
        ("rgba_fraction", 1.5),
        ("test_fraction", 1.0),
        ("age_format", "2019"),
        ("workers", -1),
    ],
)
def test_bad_config_raises_config_error_naming_field(field: str, value: object) -> None:
    kwargs = {"out": "somewhere", field: value}
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        SynthConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_layout_raises_config_error_naming_field(tmp_path: Path) -> None:
    # The layouts are the imitations' registry's (above the config): generation checks them.
    with pytest.raises(ConfigError, match=r"^layout:"):
        generate_layout(SynthConfig(out=str(tmp_path / "x"), layout="nested"))
    assert not (tmp_path / "x").exists()


def test_cli_bad_layout_in_config_file_exits_with_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "synth.json"
    config.write_text('{"out": "%s", "layout": "nested"}' % (tmp_path / "x"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert "layout: must be one of nih, nih_folders" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
