"""Bad inputs are refused or shown, never read as something else (issue 26, the inputs half).

- CSV readers (`cxr_tf.sources.base.read_csv`): a row with fewer cells than the header, or a
  file cut inside a row, is refused with the file and line, plain or gzipped.
- Class folders (`cxr_tf.sources.folders`): a file reached through symbolic links counts
  once; one file under two class folders (a link, a link loop) is refused naming both.
- Values a reader cannot understand become unknown *with a note* (catalog notes, printed by
  convert and kept in the manifest): PadChest birth years, views, sexes, dates.
- Messages: `No Finding|Effusion`; `convert --quiet` still prints notes and the dropped
  views; `explore` exits 2 on bad input.
- Wrong paths are refused before TensorFlow is imported, by every command.

The bad files are made the way real ones get bad: a CSV cut mid-row (an interrupted copy),
a row missing its trailing cells, links made with `os.symlink`.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import PROJECT, make_synth
from PIL import Image

from cxr_tf import explore
from cxr_tf.config import SynthConfig
from cxr_tf.labels import UnknownFindingError, parse_finding_labels
from cxr_tf.sources import chexpert, mimic, padchest, registry
from cxr_tf.sources.base import read_csv
from cxr_tf.sources.catalog import CatalogError
from cxr_tf.sources.nih import read_boxes
from cxr_tf.synthetic.layouts import generate_layout


def _imitation(root: Path, layout: str, n: int = 40) -> Path:
    config = SynthConfig(out=str(root), n=n, seed=3, image_size=64, layout=layout, prevalence="0.1")
    generate_layout(config, progress=False)
    return root


def _rewrite(path: Path, frame: pd.DataFrame) -> None:
    """Writes `frame` back the way the file was: gzipped when it was."""
    gz = path.name.endswith(".gz")
    frame.to_csv(path, index=False, compression="gzip" if gz else None)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


# --- CSV rows that are cut short ---------------------------------------------------------------


def test_a_row_missing_its_last_cells_is_refused_with_file_and_line(tmp_path):
    root = _imitation(tmp_path / "chex", "chexpert")
    train = chexpert.find_release(root)[0] / chexpert.TRAIN_CSV
    lines = _lines(train)
    width = len(lines[0].split(","))
    lines[3] = ",".join(lines[3].rstrip("\r\n").split(",")[: width - 4]) + "\n"
    train.write_text("".join(lines))
    with pytest.raises(CatalogError) as err:
        registry.read_catalog("chexpert", root)
    message = str(err.value)
    assert f"{train}, line 4: {width - 4} of the header's {width} cells" in message
    assert "missing its last cells" in message


def test_a_csv_cut_mid_row_is_refused(tmp_path):
    root = _imitation(tmp_path / "chex", "chexpert")
    train = chexpert.find_release(root)[0] / chexpert.TRAIN_CSV
    data = train.read_bytes()
    last_row = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    cut = data.rstrip(b"\n")[: -len(last_row) // 2]  # an interrupted copy: half a row
    train.write_bytes(cut)
    n_lines = cut.count(b"\n") + 1
    with pytest.raises(CatalogError, match="cut short") as err:
        registry.read_catalog("chexpert", root)
    assert f"{train}, line {n_lines}:" in str(err.value)


def test_a_gzipped_csv_with_a_short_row_is_refused(tmp_path):
    root = _imitation(tmp_path / "mimic", "mimic")
    meta = mimic.find_files(root)["metadata"]
    with gzip.open(meta, "rt", newline="") as handle:
        lines = handle.read().splitlines()
    lines[6] = ",".join(lines[6].split(",")[:-3])  # data row 6 (line 7) loses 3 cells
    with gzip.open(meta, "wt", newline="") as handle:
        handle.write("\n".join(lines) + "\n")
    with pytest.raises(CatalogError, match=r"metadata.csv.gz, line 7: \d+ of the header's"):
        registry.read_catalog("mimic", root)


def test_blank_cells_and_a_header_with_trailing_commas_are_not_short_rows(tmp_path):
    # NIH's BBox_List_2017.csv: `Bbox [x,y,w,h]` unquoted and three trailing commas in the
    # header only; a row ending in blank cells still has all its commas.
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Atelectasis,225.0,547.0,86.7,79.1\n"
        "00000002_000.png,Mass,100.0,120.0,40.0,30.0\n"
    )
    frame = read_boxes(boxes)
    assert len(frame) == 2 and frame["h"].tolist() == [79.1, 30.0]
    table = tmp_path / "t.csv"
    table.write_text("a,b,c\n1,2,3\n4,,\n\n5,6,\n")
    assert read_csv(table)["c"].tolist() == ["3", "", ""]


# --- class folders and symbolic links ---------------------------------------------------------


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _classes(root: Path) -> Path:
    for i in range(3):
        _png(root / "Effusion" / f"e{i}.png", 40 + i)
        _png(root / "No Finding" / f"n{i}.png", 90 + i)
    return root


def test_a_file_linked_into_a_sibling_class_is_refused_naming_both(tmp_path):
    root = _classes(tmp_path / "data")
    os.symlink(root / "Effusion" / "e0.png", root / "No Finding" / "also_e0.png")
    with pytest.raises(CatalogError) as err:
        registry.read_catalog("folders", root)
    message = str(err.value)
    assert "'Effusion/e0.png'" in message and "'No Finding/also_e0.png'" in message
    assert "one file in two folders" in message


def test_a_class_folder_linked_into_another_class_is_refused(tmp_path):
    root = _classes(tmp_path / "data")
    os.symlink(root / "No Finding", root / "Effusion" / "more")
    with pytest.raises(CatalogError, match="'Effusion/more/n0.png' and 'No Finding/n0.png'"):
        registry.read_catalog("folders", root)


def test_a_link_loop_to_the_root_is_refused_and_one_inside_a_class_ends(tmp_path):
    root = _classes(tmp_path / "data")
    os.symlink(root / "Effusion", root / "Effusion" / "again")  # loops inside its class
    os.symlink(root / "Effusion" / "e1.png", root / "Effusion" / "e1_copy.png")
    cat = registry.read_catalog("folders", root)
    assert sorted(cat.frame["image_index"]) == [
        "Effusion/e0.png", "Effusion/e1.png", "Effusion/e2.png",
        "No Finding/n0.png", "No Finding/n1.png", "No Finding/n2.png",
    ]  # fmt: skip
    os.symlink(root, root / "No Finding" / "up")  # a loop through the dataset's root
    with pytest.raises(CatalogError, match="one file in two folders"):
        registry.read_catalog("folders", root)


def test_a_file_in_two_split_folders_through_a_link_is_refused(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        _classes(root / split)
    os.symlink(root / "train" / "Effusion" / "e2.png", root / "test" / "Effusion" / "leak.png")
    with pytest.raises(CatalogError, match="'test/Effusion/leak.png' and 'train/Effusion/e2.png'"):
        registry.read_catalog("folders", root)


# --- values a reader cannot understand are counted and shown ----------------------------------


def test_a_padchest_birth_year_it_cannot_read_is_a_note_not_a_silent_unknown(tmp_path):
    root = _imitation(tmp_path / "pc", "padchest")
    labels = padchest.find_labels_csv(root)
    frame = read_csv(labels)
    frame.loc[[2, 7], "PatientBirth"] = "abc"
    frame.loc[4, "PatientBirth"] = ""  # blank: unknown, nothing to say
    _rewrite(labels, frame)
    cat = registry.read_catalog("padchest", root)
    notes = [n for n in cat.notes if "PatientBirth" in n]
    assert notes == [
        f"{labels.name}: 2 PatientBirth value(s) not understood, read as age unknown ('abc'; "
        f"first at line 4)"
    ]
    ages = cat.frame.set_index("image_index")["age"]
    names = [f"{d}/{i}" for d, i in zip(frame["ImageDir"], frame["ImageID"], strict=True)]
    assert ages[names[2]] == -1 and ages[names[7]] == -1 and ages[names[4]] == -1
    assert ages[names[3]] >= 0


def test_views_sexes_and_dates_a_reader_cannot_read_are_notes(tmp_path):
    chex_root = _imitation(tmp_path / "chex", "chexpert")
    train = chexpert.find_release(chex_root)[0] / chexpert.TRAIN_CSV
    frame = read_csv(train)
    frontal = np.flatnonzero(frame["Frontal/Lateral"].eq("Frontal").to_numpy())[0]
    frame.loc[frontal, "AP/PA"] = "QQ"
    frame.loc[1, "Sex"] = "X"
    _rewrite(train, frame)
    notes = registry.read_catalog("chexpert", chex_root).notes
    assert any(
        "1 AP/PA value(s) not understood, read as unknown view (?) ('QQ'" in n for n in notes
    )
    assert any("1 Sex value(s) not understood, read as unknown sex ('X'" in n for n in notes)

    mimic_root = _imitation(tmp_path / "mimic", "mimic")
    meta = mimic.find_files(mimic_root)["metadata"]
    frame = read_csv(meta)
    frame.loc[0, "ViewPosition"] = "SIDEWAYS"
    frame.loc[1, "StudyDate"] = "yesterday"
    _rewrite(meta, frame)
    notes = registry.read_catalog("mimic", mimic_root).notes
    assert any("1 ViewPosition value(s) not understood, read as view ? ('SIDEWAYS'" in n
               for n in notes)  # fmt: skip
    assert any("1 StudyDate value(s) not understood" in n and "'yesterday'" in n for n in notes)

    nih_root = make_synth(tmp_path / "nih", n=20, seed=2, image_size=64)
    entry = next(nih_root.glob("Data_Entry_2017*.csv*"))
    frame = read_csv(entry)
    frame.loc[3, "View Position"] = "XX"
    _rewrite(entry, frame)
    notes = registry.read_catalog("nih", nih_root).notes
    assert any("1 View Position value(s) not understood, read as view ? ('XX'" in n for n in notes)


# --- messages ---------------------------------------------------------------------------------


def test_no_finding_with_a_finding_says_they_cannot_be_combined():
    with pytest.raises(UnknownFindingError) as err:
        parse_finding_labels("No Finding|Effusion")
    message = str(err.value)
    assert "'No Finding' cannot be combined with findings" in message
    assert "unknown" not in message


@pytest.mark.slow
def test_convert_quiet_still_prints_notes_and_dropped_views(tmp_path, capsys):
    from cxr_tf import convert

    root = _imitation(tmp_path / "pc", "padchest", n=160)
    labels = padchest.find_labels_csv(root)
    frame = read_csv(labels)
    frame.loc[0, "PatientBirth"] = "abc"
    _rewrite(labels, frame)
    lateral = int(frame["Projection"].eq("L").sum())
    assert lateral > 0
    out = tmp_path / "out"
    argv = ["--root", str(root), "--out_dir", str(out), "--stored_size", "64",
            "--split.strategy", "random", "--quiet"]  # fmt: skip
    assert convert.main(argv) == 0
    err = capsys.readouterr().err
    birth = f"{labels.name}: 1 PatientBirth value(s) not understood, read as age unknown"
    assert f"note: {birth}" in err
    assert f"note: dropped {lateral} LATERAL" in err and "(--views keeps PA AP ?)" in err
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
    assert any(n.startswith(birth) for n in manifest["source"]["notes"])


def test_explore_exits_2_on_bad_input(tmp_path, capsys):
    folder = tmp_path / "nih"
    folder.mkdir()  # a folder, but no NIH label file in it
    assert explore.main(["--nih_root", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "no NIH label file" in capsys.readouterr().err


# --- wrong paths answer before TensorFlow loads -----------------------------------------------

# Each command run in one fresh interpreter with a wrong path; after each, whether
# TensorFlow (or Keras) was really imported: the lazy modules of `cxr_tf.cli.lazy_import`
# sit in sys.modules without loading, so their submodules are what tells.
_DRIVER = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    results = []
    for command, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = importlib.import_module(f"cxr_tf.{command}").main(argv)
            except SystemExit as exit_:
                code = exit_.code
            except Exception as exc:  # a traceback is a failure of its own, named
                code = f"raised {type(exc).__name__}: {exc}"
        loaded = [m for m in ("tensorflow.python", "keras.src") if m in sys.modules]
        results.append({"code": code, "err": err.getvalue(), "loaded": loaded})
    print(json.dumps(results))
    """
)


def _wrong_paths(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(command, argv, text the one error line must hold) per wrong path."""
    nope = str(tmp / "nope")
    empty = tmp / "empty"
    empty.mkdir()
    dataset = tmp / "dataset"  # names only are checked up front: an empty manifest will do
    dataset.mkdir()
    (dataset / "manifest.json").write_text("{}")
    untrained = tmp / "untrained"  # a run that has not finished an epoch
    untrained.mkdir()
    (untrained / "config.json").write_text("{}")
    run = tmp / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best.keras").write_bytes(b"")
    junk = tmp / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    space = str(PROJECT / "tuning" / "tiny.json")
    return [
        ("fit", ["--data.dataset", nope], "data.dataset: " + nope),
        ("fit", ["--data.dataset", str(empty)], "has no manifest.json"),
        ("fit", ["--data.dataset", f"{dataset},{nope}"], "data.dataset: " + nope),
        ("fit", ["--data.dataset", str(dataset), "--model.weights", nope], "model.weights"),
        ("tune", ["--space", nope, "--data.dataset", str(dataset)], "space: " + nope),
        ("tune", ["--space", space, "--data.dataset", nope], "data.dataset: " + nope),
        ("evaluate", ["--run_dir", nope], "run_dir: " + nope),
        ("evaluate", ["--run_dir", str(empty)], "has no config.json"),
        ("evaluate", ["--run_dir", str(untrained)], "has no best.keras yet"),
        ("evaluate", ["--run_dir", str(run), "--model", "last"], "has no last.keras yet"),
        ("evaluate", ["--run_dir", str(run), "--dataset", nope], "dataset: " + nope),
        ("localize", ["--run_dir", nope], "run_dir: " + nope),
        ("export", ["--run_dir", str(empty), "--out", str(tmp / "x")], "has no config.json"),
        ("predict", ["a.png", "--model", nope], f"model: {nope} does not exist"),
        ("predict", ["a.png", "--model", str(empty)], "expected a run directory"),
        ("convert", ["--root", nope, "--out_dir", str(tmp / "x")], f"root: {nope} is not a"),
        ("convert", ["--root", str(junk), "--out_dir", str(tmp / "x")], "cannot tell which"),
        ("convert", ["--verify", nope], "verify: " + nope),
        ("explore", ["--dataset", nope, "--out", str(tmp / "x")], "dataset: " + nope),
        ("explore", ["--nih_root", nope, "--out", str(tmp / "x")], "nih_root: " + nope),
    ]


def test_wrong_paths_are_refused_before_tensorflow_is_imported(tmp_path):
    cases = _wrong_paths(tmp_path)
    calls = json.dumps([[command, argv] for command, argv, _ in cases])
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, calls],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=True,
    )  # fmt: skip
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (command, argv, expected), result in zip(cases, results, strict=True):
        where = f"{command} {' '.join(argv)}: {result}"
        assert result["code"] == 2, where
        assert result["err"].startswith(f"{command}: error: ") and expected in result["err"], where
        assert "Traceback" not in result["err"], where
        # one line, but for the source detection's reason per source, one line each
        assert result["err"].count("\n") == 1 or "cannot tell which" in result["err"], where
        assert not result["loaded"], f"TensorFlow loaded before refusing {where}"
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_a_chexpert_age_it_cannot_read_is_refused_with_its_row(tmp_path):
    # CheXpert ages are whole years or blank: anything else is refused, not made unknown.
    root = _imitation(tmp_path / "chex", "chexpert")
    train = chexpert.find_release(root)[0] / chexpert.TRAIN_CSV
    frame = read_csv(train)
    frame.loc[2, "Age"] = "abc"
    _rewrite(train, frame)
    with pytest.raises(CatalogError, match=r"train.csv, data row 3 \(line 4\), column 'Age'"):
        registry.read_catalog("chexpert", root)


def test_the_early_checks_name_the_files_the_layers_below_write():
    from cxr_tf import cli
    from cxr_tf.data.manifest import MANIFEST
    from cxr_tf.runs import folder as runs

    assert cli.MANIFEST_FILE == MANIFEST and cli.RUN_CONFIG_FILE == runs.CONFIG_FILE
    assert cli.RUN_MODEL_FILES == runs.MODEL_FILES
