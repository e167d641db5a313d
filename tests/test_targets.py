"""Label states -> targets: the task's outputs, the uncertainty policy, masking, counts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import read_records

from cxr_tf import labels
from cxr_tf.config import ConfigError, DataConfig, ModelConfig
from cxr_tf.data import reader
from cxr_tf.data.manifest import Manifest
from cxr_tf.data.reader import ReadOptions
from cxr_tf.data.targets import LabelSpec
from cxr_tf.labels import FINDINGS, MASKED, UNLABELLED, VOCABULARY


def _spec(names, uncertain="ignore", stored=None, task="multilabel"):
    return LabelSpec(task, tuple(names), tuple(stored or VOCABULARY), uncertain)


def _task(task="multilabel", findings=()):
    return LabelSpec.from_config(ModelConfig(backbone="tiny", task=task, findings=findings))


def test_targets_from_states_under_each_policy():
    # one image: Atelectasis positive, Cardiomegaly negative, Effusion uncertain,
    # Hernia not labelled
    states = np.full((1, len(VOCABULARY)), UNLABELLED, np.uint8)
    states[0, :3] = [1, 0, 2]
    names = ("Atelectasis", "Cardiomegaly", "Effusion", "Hernia")
    want = {"ignore": [1, 0, -1, -1], "ones": [1, 0, 1, -1], "zeros": [1, 0, 0, -1]}
    for policy, expected in want.items():
        got = _spec(names, policy).select(states).numpy()[0]
        assert got.tolist() == expected, policy
    # a finding the dataset's label vector does not name at all is not labelled
    nih_only = _spec(("Atelectasis", "Fracture"), stored=VOCABULARY[:14])
    assert nih_only.select(states[:, :14]).numpy()[0].tolist() == [1, -1]


def test_any_finding_target_with_unknowns():
    rows = np.full((4, len(VOCABULARY)), UNLABELLED, np.uint8)
    rows[0, 0] = 1  # a positive: positive
    rows[1, 0] = 0  # only negatives: negative
    rows[2, :2] = [0, 2]  # a negative and an uncertain: unknown under ignore
    rows[3, :] = UNLABELLED  # nothing labelled: negative (no positive among what is labelled)
    spec = _spec(("any",), task="binary")
    assert spec.select(rows).numpy()[:, 0].tolist() == [1, 0, -1, 0]
    ones = _spec(("any",), "ones", task="binary")
    assert ones.select(rows).numpy()[:, 0].tolist() == [1, 0, 1, 0]


def test_multiclass_index_needs_a_single_known_class():
    rows = np.full((4, len(VOCABULARY)), UNLABELLED, np.uint8)
    rows[:, :14] = 0
    rows[1, FINDINGS.index("Mass")] = 1  # Mass only: class 1
    rows[2, FINDINGS.index("Mass")] = rows[2, FINDINGS.index("Edema")] = 1  # two: none
    rows[3, FINDINGS.index("Atelectasis")] = 2  # an uncertain label: none
    spec = _spec(("No Finding", "Mass", "Edema"), task="multiclass")
    assert spec.class_index(rows).numpy().tolist() == [0, 1, -1, -1]
    np.testing.assert_array_equal(spec.select(rows[:2]).numpy(), [[1, 0, 0], [0, 1, 0]])


def test_counts_follow_the_uncertainty_policy(small_dataset):
    manifest = Manifest.load(small_dataset)
    train = manifest.splits["train"]
    names = ("Mass", "Fracture")  # NIH labels Mass, never Fracture
    for policy in ("ignore", "ones", "zeros"):
        positives, known, total = _spec(names, policy).for_manifest(manifest).counts(manifest)
        assert total == train.images
        assert positives.tolist() == [train.positives["Mass"], 0]
        assert known.tolist() == [train.images, 0]  # NIH has no uncertain label
    any_finding = _spec(("any",), task="binary").counts(manifest)
    assert any_finding[0].tolist() == [train.images - train.no_finding]
    with pytest.raises(ValueError, match="class_counts"):
        _spec(("No Finding", "Mass"), task="multiclass").counts(manifest)


def test_an_unknown_uncertainty_policy_is_refused():
    with pytest.raises(ConfigError, match="train.uncertain"):
        LabelSpec.from_config(ModelConfig(backbone="tiny"), uncertain="maybe")
    assert MASKED == -1.0


def test_task_label_selection_matches_records(small_dataset):
    labels = {
        name: record["labels"][: len(FINDINGS)]
        for name, record in read_records(small_dataset).items()
        if record["split"] == "validation"
    }
    data = DataConfig(dataset=str(small_dataset), batch_size=4)

    def collect(spec):
        ds = reader.make_dataset(data, spec, "validation", ReadOptions(extra_keys=("image_index",)))
        return {
            n.decode(): t
            for _, targets, extra in ds
            for n, t in zip(extra["image_index"].numpy(), targets.numpy(), strict=True)
        }

    subset = collect(_task("multilabel", ("Mass", "Edema")))
    for name, target in subset.items():
        np.testing.assert_array_equal(
            target, labels[name][[FINDINGS.index("Mass"), FINDINGS.index("Edema")]]
        )
    anything = collect(_task("binary", ("any",)))
    for name, target in anything.items():
        assert target.tolist() == [float(labels[name].max())]
    classes = ("No Finding", "Mass", "Edema")
    multi = collect(_task("multiclass", classes))
    expected = {
        n
        for n, v in labels.items()
        if v.sum() == 0 or (v.sum() == 1 and v[[FINDINGS.index(c) for c in classes[1:]]].sum())
    }
    assert set(multi) == expected
    for name, target in multi.items():
        v = labels[name]
        want = (
            0
            if v.sum() == 0
            else 1 + [FINDINGS.index(c) for c in classes[1:]].index(int(np.argmax(v)))
        )
        assert int(np.argmax(target)) == want and target.sum() == 1


def test_unknown_finding_and_bad_counts_in_config():
    # any name may be a dataset's own finding: checked against the dataset's labels, later
    assert ModelConfig(task="binary", findings=("Pneumonitis",)).output_names == ("Pneumonitis",)
    with pytest.raises(labels.UnknownFindingError, match="Pneumonitis"):
        labels.check_findings(["Pneumonitis"], "model.findings", labels.VOCABULARY)
    with pytest.raises(ConfigError, match="cannot name a finding"):
        ModelConfig(task="binary", findings=("Mass|Edema",))
    with pytest.raises(ConfigError, match="exactly one"):
        ModelConfig(task="binary", findings=("Mass", "Edema"))
    with pytest.raises(ConfigError, match="multiclass needs"):
        ModelConfig(task="multiclass", findings=("Mass",))
