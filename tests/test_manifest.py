"""The typed dataset manifest: the file it writes, loading, validation, the upgrade of
schema-1 manifests and the figures several datasets share."""

from __future__ import annotations

import json
import shutil

import pytest

from cxr_tf.data.manifest import MANIFEST, DatasetError, Manifest, shard_fingerprint
from cxr_tf.labels import FINDINGS, VOCABULARY


def test_to_dict_is_the_file_the_converter_wrote(small_dataset):
    text = (small_dataset / MANIFEST).read_text()
    manifest = Manifest.load(small_dataset)
    # same keys, values and order: the file format does not depend on the class
    assert json.dumps(manifest.to_dict(), indent=2) + "\n" == text
    assert manifest.stored_size == json.loads(text)["image"]["size"] == 64
    assert manifest.fingerprint == shard_fingerprint(manifest.splits)
    train = manifest.splits["train"]
    assert train.records == train.images == sum(s.records for s in train.shards)
    assert train.bytes == sum((small_dataset / s.file).stat().st_size for s in train.shards)
    assert manifest.images == sum(e.images for e in manifest.splits.values())
    assert manifest.images_in("nonexistent") == 0
    assert manifest.split_strategy == "official"


def _schema_1(small_dataset) -> dict:
    """`small_dataset`'s manifest as schema 1 wrote it: NIH's 14 labels, 0/1 only."""
    data = json.loads((small_dataset / MANIFEST).read_text())
    data["schema_version"] = 1
    data["labels"] = list(FINDINGS)
    for key in ("label_states", "labelled_findings"):
        del data[key]
    data["source"] = {"root": "/nih", "layout": "folders", "data_entry": "/nih/Data_Entry.csv"}
    for entry in data["splits"].values():
        del entry["labelled"], entry["uncertain"]
        entry["positives"] = {f: entry["positives"][f] for f in FINDINGS}
        for shard in entry["shards"]:
            del shard["bytes"]
    return data


def test_a_schema_1_manifest_is_upgraded_in_one_place(small_dataset):
    manifest = Manifest.from_dict(_schema_1(small_dataset))
    assert manifest.schema_version == 1 and manifest.labels == FINDINGS
    assert manifest.labelled_findings == FINDINGS
    assert manifest.label_states == {"0": "negative", "1": "positive"}
    assert manifest.source.kind == "nih" and manifest.source.labels_file == "/nih/Data_Entry.csv"
    for entry in manifest.splits.values():
        assert entry.labelled == {f: entry.images for f in FINDINGS}  # all labelled
        assert entry.uncertain == {f: 0 for f in FINDINGS}
        assert all(s.bytes is None for s in entry.shards)
    assert manifest.count("train", "positives", "Lung_Opacity") == 0  # not stored
    assert manifest.features()["labels"].shape == (len(FINDINGS),)


def test_split_files_skip_the_size_check_without_recorded_sizes(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    (copy / MANIFEST).write_text(json.dumps(_schema_1(small_dataset)))
    manifest = Manifest.load(copy)
    shard = copy / manifest.splits["train"].shards[0].file
    shard.write_bytes(shard.read_bytes() + b"\0")  # no recorded size: not caught here
    assert manifest.split_files("train")[0] == str(shard)
    with pytest.raises(DatasetError, match="no split 'dev'"):
        manifest.split_files("dev")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(schema_version=3), "schema version 3, this version reads 1, 2"),
        (lambda m: m.update(labels=m["labels"][:13]), "label order"),
        (lambda m: m["image"].pop("size"), "not a cxr_tf manifest"),
        (lambda m: m["splits"]["train"]["shards"][0].pop("sha256"), "not a cxr_tf manifest"),
        (lambda m: m.pop("schema_version"), "not a cxr_tf manifest"),
    ],
)
def test_a_bad_manifest_is_a_clear_error_naming_the_file(small_dataset, tmp_path, change, message):
    data = json.loads((small_dataset / MANIFEST).read_text())
    change(data)
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message) as info:
        Manifest.load(tmp_path)
    assert str(tmp_path / MANIFEST) in str(info.value)


def test_missing_and_unreadable_manifests(tmp_path):
    with pytest.raises(DatasetError, match="not a finished conversion"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text('{"splits": [')
    with pytest.raises(DatasetError, match="not a cxr_tf manifest"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text("[]")
    with pytest.raises(DatasetError, match="not a cxr_tf manifest"):
        Manifest.load(tmp_path)


def test_merged_sums_the_counts_of_several_datasets(small_dataset):
    nih = Manifest.load(small_dataset)
    old = Manifest.from_dict(_schema_1(small_dataset))
    merged = Manifest.merged([nih, old])
    assert merged.dataset == "small+small" and merged.labels == VOCABULARY
    assert merged.labelled_findings == FINDINGS
    assert merged.folder is None and merged.stored_size == nih.stored_size
    for split, entry in merged.splits.items():
        assert entry.images == 2 * nih.splits[split].images
        assert entry.shards == ()
        for finding in FINDINGS:
            assert entry.labelled[finding] == 2 * nih.splits[split].images
            assert entry.positives[finding] == 2 * nih.splits[split].positives[finding]
    assert Manifest.merged([nih]) is nih
