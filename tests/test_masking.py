"""Label states in training: masked targets give no loss and no gradient, CheXpert-style
records keep their uncertain and blank labels, several datasets in one run (each masked
where it does not label a finding), and a short training run on two sources at once.
Targets from states: test_targets.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_run_config


@pytest.fixture(scope="module")
def chexpert_dataset(tmp_path_factory) -> Path:
    """A CheXpert-style imitation (uncertain and blank labels) converted at 64 px."""
    from cxr_tf.config import ConvertConfig, SynthConfig
    from cxr_tf.data import conversion
    from cxr_tf.synthetic import layouts as synthetic_layouts

    root = tmp_path_factory.mktemp("chexpert_src")
    synthetic_layouts.generate_layout(
        SynthConfig(out=str(root), n=260, seed=3, image_size=128, prevalence="0.1",
                    layout="chexpert"),  # fmt: skip
        progress=False,
    )
    out = tmp_path_factory.mktemp("chexpert_tfrecords")
    manifest = conversion.convert(
        ConvertConfig(root=str(root), out_dir=str(out), stored_size=64), progress=False
    )
    return out / manifest.dataset


def _spec(names, uncertain="ignore", stored=None, task="multilabel"):
    from cxr_tf.data.targets import LabelSpec
    from cxr_tf.labels import VOCABULARY

    return LabelSpec(task, tuple(names), tuple(stored or VOCABULARY), uncertain)


@pytest.mark.parametrize("name", ["bce", "weighted_bce", "focal"])
def test_masked_targets_give_no_loss_and_no_gradient(name):
    import tensorflow as tf

    from cxr_tf.modeling import losses

    loss = losses.build_loss(name, "multilabel", pos_counts=[3, 5], total=[10, 20])
    logits = tf.Variable([[2.0, -1.0], [0.5, 3.0]])
    targets = tf.constant([[1.0, -1.0], [-1.0, 0.0]])
    with tf.GradientTape() as tape:
        per_entry = loss.call(targets, logits)
    grad = tape.gradient(per_entry, logits).numpy()
    values = per_entry.numpy()
    assert values[0, 1] == 0 and values[1, 0] == 0  # masked entries: no loss
    assert grad[0, 1] == 0 and grad[1, 0] == 0  # ... and no gradient
    assert values[0, 0] > 0 and values[1, 1] > 0 and grad[0, 0] != 0 and grad[1, 1] != 0
    # the known entries are what they are without any mask
    unmasked = loss.call(tf.constant([[1.0, 0.0], [0.0, 0.0]]), logits).numpy()
    np.testing.assert_allclose(values[0, 0], unmasked[0, 0], rtol=1e-6)
    np.testing.assert_allclose(values[1, 1], unmasked[1, 1], rtol=1e-6)


def test_weighted_bce_counts_known_labels_per_class():
    from cxr_tf.modeling import losses

    w_pos, w_neg = losses.bce_weights([10, 10], [100, 20])  # 100 vs 20 images labelled
    np.testing.assert_allclose(w_pos, [0.9, 0.5])
    np.testing.assert_allclose(w_neg, [0.1, 0.5])


def test_chexpert_records_keep_uncertain_and_blank(chexpert_dataset):
    from cxr_tf.config import DataConfig
    from cxr_tf.data import reader
    from cxr_tf.data.manifest import Manifest

    manifest = Manifest.load(chexpert_dataset)
    entry = manifest.splits["train"]
    assert manifest.source.kind == "chexpert"
    assert "Hernia" not in manifest.labelled_findings
    assert sum(entry.uncertain.values()) > 0
    # some images leave a labelled finding blank (not mentioned): fewer labelled than images
    assert min(entry.labelled[f] for f in manifest.labelled_findings) < entry.images
    spec = _spec(("Effusion", "Hernia"), uncertain="ignore")
    targets = np.concatenate([
        y.numpy() for _, y in reader.make_dataset(
            DataConfig(dataset=str(chexpert_dataset), batch_size=16), spec, "train"
        )
    ])  # fmt: skip
    assert (targets[:, 1] == -1).all()  # CheXpert never labels Hernia
    known = targets[:, 0] >= 0
    assert known.sum() == entry.labelled["Effusion"]
    assert (targets[known, 0] == 1).sum() == entry.positives["Effusion"]


def test_two_datasets_are_sampled_by_weight_and_masked_each_their_way(
    small_dataset, chexpert_dataset
):
    """NIH-style and CheXpert-style records mixed 1:3; Hernia is masked exactly in the
    CheXpert-style records (which the masked Lung_Opacity target tells apart: NIH never
    labels it, CheXpert's imitation mostly does)."""
    from cxr_tf.config import ConfigError, DataConfig
    from cxr_tf.data import reader
    from cxr_tf.data.manifest import Manifest
    from cxr_tf.data.reader import ReadOptions

    data = DataConfig(
        dataset=f"{small_dataset},{chexpert_dataset}", batch_size=50, weights=(1.0, 3.0)
    )
    spec = _spec(("Hernia", "Lung_Opacity"))
    epoch = ReadOptions(training=True, seed=0, steps_per_epoch=8)
    ds = reader.make_dataset(data, spec, "train", epoch)
    targets = np.concatenate([y.numpy() for _, y in ds])
    assert targets.shape == (400, 2)
    nih_rows = targets[:, 0] >= 0  # NIH labels Hernia, CheXpert never does
    assert (targets[nih_rows, 1] == -1).all()  # ... and NIH never labels Lung_Opacity
    share = nih_rows.mean()
    assert 0.15 < share < 0.35, share  # weight 1 of 4
    # the same seed, the same batches
    again = np.concatenate([y.numpy() for _, y in reader.make_dataset(data, spec, "train", epoch)])
    assert (again[:, 0] >= 0).tolist() == nih_rows.tolist()
    # evaluation reads both, one after the other, patient IDs kept apart
    evaluation = reader.make_dataset(
        data, spec, "validation", ReadOptions(extra_keys=("patient_id",))
    )
    ids = np.concatenate([e["patient_id"].numpy() for _, _, e in evaluation])
    merged = reader.merged_manifest(data)
    assert len(ids) == merged.splits["validation"].images
    assert (ids >= 2**32).sum() == Manifest.load(chexpert_dataset).splits["validation"].images
    with pytest.raises(ConfigError, match="weight"):
        reader.dataset_dirs(DataConfig(dataset=f"{small_dataset},{chexpert_dataset}",
                                        weights=(1.0,)))  # fmt: skip


@pytest.mark.slow
def test_training_on_two_sources_predicts_the_union(small_dataset, chexpert_dataset, tmp_path):
    from cxr_tf.data.manifest import Manifest
    from cxr_tf.labels import VOCABULARY
    from cxr_tf.training import trainer

    run = tiny_run_config(small_dataset, tmp_path / "run", epochs=2, steps_per_epoch=4)
    run.data.dataset = f"{small_dataset},{chexpert_dataset}"
    run.data.batch_size = 16
    summary = trainer.fit(run, verbose=0)
    union = [
        n for n in VOCABULARY
        if n in Manifest.load(small_dataset).labelled_findings
        or n in Manifest.load(chexpert_dataset).labelled_findings
    ]  # fmt: skip
    assert summary["outputs"] == union and len(union) == 20
    assert summary["epochs_done"] == 2
    assert summary["best_val_mean_auroc"] is not None
    history = json.loads(json.dumps(summary["history_this_session"]))
    assert all(np.isfinite(v) for v in history["loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert tuple(config["model"]["findings"]) == tuple(union)
