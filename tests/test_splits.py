"""Tests for cxr_tf.data.splits: patient-disjoint splits on the real lists and generated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxr_tf.config import SplitConfig
from cxr_tf.data.splits import (
    SPLITS,
    PatientOverlapError,
    check_patient_disjoint,
    make_splits,
    read_split_file,
    split_summary,
)
from cxr_tf.labels import FINDINGS, NO_FINDING
from cxr_tf.sources import nih
from cxr_tf.sources.base import MetadataError

Patients = list[list[set[str]]]  # per patient, per image, the findings


def make_frame(patients: Patients, first_id: int = 1) -> pd.DataFrame:
    """A minimal `read_data_entry`-shaped frame: image_index, patient_id, finding columns."""
    records = []
    for p, images in enumerate(patients):
        patient_id = first_id + 3 * p  # gaps, so that IDs are not positions
        for k, findings in enumerate(images):
            record = {
                "image_index": f"{patient_id:08d}_{k:03d}.png",
                "finding_labels": "|".join(sorted(findings)) or NO_FINDING,
                "patient_id": patient_id,
            }
            record.update({f: int(f in findings) for f in FINDINGS})
            records.append(record)
    frame = pd.DataFrame(records)
    frame[list(FINDINGS)] = frame[list(FINDINGS)].astype(np.uint8)
    return frame


def patients_of(df: pd.DataFrame, images: list[str]) -> set[int]:
    return set(df.set_index("image_index").loc[images, "patient_id"])


def assert_valid_partition(splits: dict[str, list[str]], df: pd.DataFrame) -> None:
    assert list(splits) == list(SPLITS)
    for images in splits.values():
        assert images == sorted(images)
    every = [i for images in splits.values() for i in images]
    assert len(every) == len(set(every)) and set(every) == set(df["image_index"])
    groups = [patients_of(df, images) for images in splits.values()]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not groups[a] & groups[b]


def rarest_findings(df: pd.DataFrame) -> set[str]:
    counts = df[list(FINDINGS)].sum()
    present = counts[counts > 0]
    return set(present[present == present.min()].index)


def has_any(df: pd.DataFrame, images: list[str], findings: set[str]) -> bool:
    rows = df.set_index("image_index").loc[images, sorted(findings)]
    return bool(rows.to_numpy().any())


# --- the real official split ------------------------------------------------------------


@pytest.fixture(scope="module")
def real(nih_dir: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    files = nih.find_metadata(nih_dir)
    return (
        nih.read_data_entry(files.data_entry),
        nih.read_split_list(files.train_val_list),
        nih.read_split_list(files.test_list),
    )


def test_official_split_on_real_lists(real) -> None:
    df, train_val, test = real
    config = SplitConfig(strategy="official", val_fraction=0.1, seed=0)
    splits = make_splits(df, config, train_val=train_val, test=test)
    assert len(splits["train"]) + len(splits["validation"]) == 86_524
    assert set(splits["train"]) | set(splits["validation"]) == set(train_val)
    assert splits["test"] == sorted(test) and len(test) == 25_596
    assert_valid_partition(splits, df)

    summary = split_summary(splits, df)
    assert summary["test"]["patients"] == 2_797
    assert summary["validation"]["positives"]["Hernia"] > 0
    assert all(n > 0 for n in summary["validation"]["positives"].values())
    train_val_patients = summary["train"]["patients"] + summary["validation"]["patients"]
    assert train_val_patients == 28_008
    assert summary["validation"]["patients"] / train_val_patients == pytest.approx(0.1, abs=0.005)
    assert sum(s["images"] for s in summary.values()) == 112_120

    assert make_splits(df, config, train_val=train_val, test=test) == splits
    other = make_splits(df, SplitConfig(seed=1), train_val=train_val, test=test)
    assert other["validation"] != splits["validation"]


# --- generated data: invariants ---------------------------------------------------------

image_findings = st.sets(st.sampled_from(FINDINGS), max_size=3)
patients_strategy = st.lists(
    st.lists(image_findings, min_size=1, max_size=4), min_size=1, max_size=30
)
quick = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(
    patients=patients_strategy,
    val=st.floats(0.0, 0.5),
    test=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**31),
)
def test_random_split_invariants(patients: Patients, val: float, test: float, seed: int):
    df = make_frame(patients)
    config = SplitConfig(strategy="random", fractions=(1 - val - test, val, test), seed=seed)
    splits = make_splits(df, config)
    assert_valid_partition(splits, df)
    assert make_splits(df, config) == splits
    if val > 0 and rarest_findings(df):
        # Stratification: the rarest finding's patients form one stratum, rounded up.
        assert has_any(df, splits["validation"], rarest_findings(df))


@quick
@given(
    patients=patients_strategy,
    in_test=st.lists(st.booleans(), min_size=30, max_size=30),
    val_fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31),
)
def test_official_split_invariants(
    patients: Patients, in_test: list[bool], val_fraction: float, seed: int
) -> None:
    df = make_frame(patients)
    test_patients = {1 + 3 * p for p in range(len(patients)) if in_test[p]}
    is_test = df["patient_id"].isin(test_patients)
    train_val = df["image_index"][~is_test].tolist()
    test = df["image_index"][is_test].tolist()
    config = SplitConfig(strategy="official", val_fraction=val_fraction, seed=seed)
    splits = make_splits(df, config, train_val=train_val, test=test)
    assert_valid_partition(splits, df)
    assert splits["test"] == sorted(test)
    assert make_splits(df, config, train_val=train_val, test=test) == splits
    if train_val:
        assert splits["validation"], "every non-empty stratum gives validation a patient"
        pool = df[~is_test]
        if rarest_findings(pool):
            assert has_any(df, splits["validation"], rarest_findings(pool))


def test_random_split_fractions_roughly_respected() -> None:
    rng = np.random.default_rng(7)
    patients = [
        [set(rng.choice(FINDINGS, size=rng.integers(0, 3), replace=False)) for _ in range(k)]
        for k in rng.integers(1, 5, size=3_000)
    ]
    df = make_frame(patients)
    config = SplitConfig(strategy="random", fractions=(0.6, 0.15, 0.25), seed=3)
    summary = split_summary(make_splits(df, config), df)
    for name, fraction in zip(SPLITS, config.fractions, strict=True):
        assert summary[name]["patients"] / 3_000 == pytest.approx(fraction, abs=0.02), name


def test_stratification_reaches_rare_findings() -> None:
    # Two Hernia patients among 40: a seeded but unstratified 10% draw would usually miss.
    patients = [[{"Hernia"}], [{"Hernia", "Mass"}]] + [[set()]] * 30 + [[{"Mass"}]] * 8
    df = make_frame(patients)
    for seed in range(5):
        splits = make_splits(df, SplitConfig(strategy="random", seed=seed))
        for name in ("validation", "test"):
            assert has_any(df, splits[name], {"Hernia"}), (seed, name)


# --- overlaps and bad input -------------------------------------------------------------


def test_official_lists_sharing_a_patient_raise() -> None:
    df = make_frame([[set(), {"Mass"}], [set()], [set()]])  # patients 1, 4, 7
    train_val = ["00000001_000.png", "00000004_000.png"]
    test = ["00000001_001.png", "00000007_000.png"]
    with pytest.raises(PatientOverlapError) as info:
        make_splits(df, SplitConfig(), train_val=train_val, test=test)
    assert info.value.patients == [1]
    assert "1 (train_val/test)" in str(info.value)


def test_official_needs_lists_and_assigns_every_image() -> None:
    df = make_frame([[set()], [set()], [set()]])
    with pytest.raises(ValueError, match="train_val and test"):
        make_splits(df, SplitConfig())
    # List entries outside df are ignored (df may be the images on disk) ...
    splits = make_splits(
        df,
        SplitConfig(),
        train_val=["00000001_000.png", "00000004_000.png", "elsewhere.png"],
        test=["00000007_000.png"],
    )
    assert splits["test"] == ["00000007_000.png"]
    # ... but an image of df on no list cannot be placed.
    with pytest.raises(ValueError, match="00000007_000.png"):
        make_splits(df, SplitConfig(), train_val=["00000001_000.png"], test=["00000004_000.png"])


def test_user_split_file_with_overlapping_patient(tmp_path: Path) -> None:
    df = make_frame([[set(), {"Mass"}], [set()], [{"Nodule"}]])  # patients 1, 4, 7
    path = tmp_path / "my_split.csv"
    path.write_text(
        "Image Index,split\n00000001_000.png,train\n00000001_001.png,test\n"
        "00000004_000.png,validation\n00000007_000.png,test\n"
    )
    config = SplitConfig(strategy="file", split_file=str(path))
    with pytest.raises(PatientOverlapError) as info:
        make_splits(df, config)
    assert info.value.patients == [1]
    assert "1 (train/test)" in str(info.value)

    path.write_text(path.read_text().replace("00000001_001.png,test", "00000001_001.png,train"))
    splits = make_splits(df, config)
    assert splits == {
        "train": ["00000001_000.png", "00000001_001.png"],
        "validation": ["00000004_000.png"],
        "test": ["00000007_000.png"],
    }
    assert make_splits(df, config, assignments=read_split_file(path)) == splits


def test_split_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,split\na.png,train\nb.png,val\n")
    with pytest.raises(MetadataError, match=r"bad\.csv, data row 2 .*'val'"):
        read_split_file(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("Image Index,fold\na.png,train\n")
    with pytest.raises(MetadataError, match="'split'"):
        read_split_file(missing)
    partial = tmp_path / "partial.csv"
    partial.write_text("Image Index,split\n00000001_000.png,train\n")
    df = make_frame([[set()], [set()]])
    with pytest.raises(ValueError, match="00000004_000.png"):
        make_splits(df, SplitConfig(strategy="file", split_file=str(partial)))


def test_check_patient_disjoint_names_bad_images() -> None:
    df = make_frame([[set()], [set()]])
    with pytest.raises(ValueError, match=r"00000001_000\.png \(train/test\)"):
        check_patient_disjoint({"train": ["00000001_000.png"], "test": ["00000001_000.png"]}, df)
    with pytest.raises(ValueError, match="ghost.png"):
        check_patient_disjoint({"train": ["ghost.png"], "test": []}, df)
    check_patient_disjoint({"train": ["00000001_000.png"], "test": ["00000004_000.png"]}, df)


def test_overlap_error_lists_first_patients_and_count() -> None:
    df = make_frame([[set(), set()]] * 25)
    ids = sorted(df["patient_id"].unique())
    train = [f"{p:08d}_000.png" for p in ids]
    test = [f"{p:08d}_001.png" for p in ids]
    with pytest.raises(PatientOverlapError) as info:
        check_patient_disjoint({"train": train, "validation": [], "test": test}, df)
    assert info.value.patients == ids
    assert "25 patient(s)" in str(info.value) and "and 5 more" in str(info.value)
    assert f"{ids[19]} (train/test)" in str(info.value)
    assert f"{ids[20]} (train/test)" not in str(info.value)


def test_split_summary_counts() -> None:
    df = make_frame([[{"Mass", "Nodule"}, set()], [{"Mass"}], [set()]])
    splits = {
        "train": ["00000001_000.png", "00000001_001.png", "00000004_000.png"],
        "validation": [],
        "test": ["00000007_000.png"],
    }
    summary = split_summary(splits, df)
    assert summary["train"]["images"] == 3 and summary["train"]["patients"] == 2
    assert summary["train"]["positives"]["Mass"] == 2
    assert summary["train"]["positives"]["Nodule"] == 1
    assert summary["train"]["no_finding"] == 1
    assert summary["validation"] == {
        "images": 0,
        "patients": 0,
        "positives": dict.fromkeys(FINDINGS, 0),
        "labelled": dict.fromkeys(FINDINGS, 0),
        "uncertain": dict.fromkeys(FINDINGS, 0),
        "no_finding": 0,
    }
    assert summary["train"]["labelled"]["Mass"] == 3
    assert summary["test"]["no_finding"] == 1
