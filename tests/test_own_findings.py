"""A dataset's own class names (open vocabulary): class folders named `normal` / `abnormal`,
or `normal` / `pneumonia_bacterial` / `pneumonia_viral`, convert, train (binary and
multi-class, tiny backbone), evaluate, export and predict under those names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import convert_folder, tiny_run_config
from PIL import Image

from cxr_tf import labels
from cxr_tf.config import ConfigError, ModelConfig
from cxr_tf.data.manifest import DatasetError, Manifest
from cxr_tf.labels import NO_FINDING, VOCABULARY

SIZE = 48


def _image(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A gray chest-like background with a learnable mark per class: none (normal), a bright
    disc on the left (bacterial, abnormal), vertical stripes on the right (viral)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pixels = 90 + 25 * np.exp(-((xx - SIZE / 2) ** 2) / 300) + rng.normal(0, 8, (SIZE, SIZE))
    if kind in ("pneumonia_bacterial", "abnormal"):
        cx, cy = rng.integers(10, 20), rng.integers(12, 36)
        pixels += 90 * (((xx - cx) ** 2 + (yy - cy) ** 2) < 36)
    elif kind == "pneumonia_viral":
        band = (xx > 28) & (xx < 44) & (yy > 8) & (yy < 40)
        pixels += 70 * band * (xx % 4 < 2)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _class_folders(root: Path, classes: dict[str, str], per_class: int, seed: int) -> Path:
    """root/<folder>/<name>.png for each folder name -> drawing kind, plus patients.csv."""
    rng = np.random.default_rng(seed)
    rows = ["image,patient"]
    for folder, kind in classes.items():
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            name = f"{folder}/{folder}_{i}.png"
            Image.fromarray(_image(rng, kind)).save(root / name)
            rows.append(f"{name},p{folder}{i // 2}")  # two images per patient
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return root


def test_own_names_map_onto_the_vocabulary_or_stay_the_datasets_own():
    assert labels.finding_of("0_normal") == NO_FINDING
    assert labels.finding_of("Healthy") == NO_FINDING
    assert labels.finding_of("pleural thickening") == "Pleural_Thickening"
    assert labels.finding_of("2_Effusion") == "Effusion"
    for own in ("abnormal", "1_abnormal", "tb", "COVID-19", "pneumonia_viral"):
        assert labels.finding_of(own) is None, own
    assert labels.own_findings(["tb", "TB", "normal", "Mass", "abnormal"]) == ("abnormal", "TB")
    with pytest.raises(labels.UnknownFindingError, match="cannot name a finding"):
        labels.own_findings(["a|b"])
    # the model config takes any name; the dataset checks them when training starts
    assert ModelConfig(task="binary", findings=("tb",)).output_names == ("tb",)
    assert ModelConfig(task="multiclass").output_names == ()
    with pytest.raises(ConfigError, match="repeated"):
        ModelConfig(findings=("tb", "TB"))


def test_a_manifest_keeps_its_own_findings_after_the_vocabulary(tmp_path):
    root = _class_folders(tmp_path / "tb", {"health": "normal", "tb": "abnormal"}, 6, 0)
    dataset = convert_folder(
        root, tmp_path / "out", stored_size=64,
        split=_random_split(),
    )  # fmt: skip
    manifest = Manifest.load(dataset)
    assert manifest.labels == (*VOCABULARY, "tb") and manifest.own_findings == ("tb",)
    assert manifest.labelled_findings == ("tb",)
    assert sum(s.positives["tb"] for s in manifest.splits.values()) == 6
    assert sum(s.no_finding for s in manifest.splits.values()) == 6
    assert "not read from the dataset's own 'No Finding' column" in json.loads(
        (dataset / "manifest.json").read_text()
    )["count_meanings"]["no_finding"]
    # read with another dataset: the union of their labels, each masked where not stored
    from cxr_tf.data.targets import LabelSpec
    from cxr_tf.labels import MASKED, NEGATIVE, POSITIVE, UNLABELLED

    other_root = _class_folders(tmp_path / "mass", {"normal": "normal", "Mass": "abnormal"}, 12, 1)
    other = Manifest.load(convert_folder(other_root, tmp_path / "out2", stored_size=64,
                                         split=_random_split()))  # fmt: skip
    assert other.own_findings == () and other.labelled_findings == ("Mass",)
    merged = Manifest.merged([other, manifest])
    assert merged.labels == (*VOCABULARY, "tb")
    assert merged.labelled_findings == ("Mass", "tb")
    spec = LabelSpec("multilabel", ("Mass", "TB"), merged.labels)
    mass_only = np.full((1, len(VOCABULARY)), UNLABELLED, np.uint8)
    mass_only[0, VOCABULARY.index("Mass")] = POSITIVE
    np.testing.assert_array_equal(spec.for_manifest(other).select(mass_only), [[1.0, MASKED]])
    tb_neg = np.full((1, len(VOCABULARY) + 1), UNLABELLED, np.uint8)
    tb_neg[0, -1] = NEGATIVE
    np.testing.assert_array_equal(spec.for_manifest(manifest).select(tb_neg), [[MASKED, 0.0]])

    # an own finding out of order, or with '|', is not a manifest this version wrote
    data = json.loads((dataset / "manifest.json").read_text())
    for bad in ([*VOCABULARY, "zeta", "alpha"], [*VOCABULARY, "a|b"], [*VOCABULARY, "Mass"]):
        with pytest.raises(DatasetError, match="label order"):
            Manifest.from_dict({**data, "labels": bad})


def _random_split():
    from cxr_tf.config import SplitConfig

    return SplitConfig(strategy="random", fractions=(0.5, 0.25, 0.25), seed=0)


@pytest.mark.slow
def test_own_class_names_train_evaluate_export_and_predict_end_to_end(tmp_path, capsys):
    from cxr_tf import evaluate, export, predict
    from cxr_tf.evaluation import evaluator
    from cxr_tf.serving import exporter
    from cxr_tf.training import trainer

    kinds = {"normal": "normal", "pneumonia_bacterial": "pneumonia_bacterial",
             "pneumonia_viral": "pneumonia_viral"}  # fmt: skip
    three = _class_folders(tmp_path / "pediatric", kinds, 80, 1)
    capsys.readouterr()
    from cxr_tf import convert

    out = tmp_path / "tfrecords"
    argv = ["--root", str(three), "--out_dir", str(out), "--stored_size", "64",
            "--split.strategy", "random", "--split.fractions", "0.5", "0.25", "0.25"]  # fmt: skip
    assert convert.main(argv) == 0
    err = capsys.readouterr().err
    assert "own findings: pneumonia_bacterial, pneumonia_viral" in err
    dataset = out / "folders_64_raw"
    assert Manifest.load(dataset).own_findings == ("pneumonia_bacterial", "pneumonia_viral")

    # multi-class: the folders' classes by default, softmax over them
    run_dir = tmp_path / "runs" / "three"
    run = tiny_run_config(dataset, run_dir, epochs=6, steps_per_epoch=25)
    run.data.batch_size = 16
    run.model.task = "multiclass"
    trainer.fit(run, verbose=0)
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["model"]["findings"] == [NO_FINDING, "pneumonia_bacterial", "pneumonia_viral"]
    report = _evaluate(evaluate, evaluator, run_dir, tmp_path / "eval3")
    aurocs = {k: v["auroc"] for k, v in report["per_output"].items()}
    assert set(aurocs) == {NO_FINDING, "pneumonia_bacterial", "pneumonia_viral"}
    assert min(aurocs.values()) > 0.8, aurocs
    assert report["multiclass"]["accuracy"] > 0.6, report["multiclass"]

    # export and predict keep the names; the SavedModel says them
    export_dir = tmp_path / "export"
    exporting = ["--run_dir", str(run_dir), "--model", "last", "--out", str(export_dir)]
    assert export.main(exporting) == 0
    meta = json.loads(
        next(export_dir.glob(f"*/1/assets.extra/{exporter.METADATA_FILE}")).read_text()
    )
    assert meta["labels"] == [NO_FINDING, "pneumonia_bacterial", "pneumonia_viral"]
    image = three / "pneumonia_viral" / "pneumonia_viral_0.png"
    capsys.readouterr()
    assert predict.main([str(image), "--model", str(run_dir / "last.keras"), "--json"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)["images"]
    names = [f["name"] for f in answer["findings"]]
    assert names == [NO_FINDING, "pneumonia_bacterial", "pneumonia_viral"]
    assert max(answer["findings"], key=lambda f: f["probability"])["name"] == "pneumonia_viral"

    # binary on an own finding, named in another case: spelled as the dataset spells it
    two = _class_folders(tmp_path / "xr", {"0_normal": "normal", "1_abnormal": "abnormal"}, 40, 2)
    out = tmp_path / "tfrecords2"
    assert convert.main([*argv[:1], str(two), "--out_dir", str(out), *argv[4:]]) == 0
    dataset = out / "folders_64_raw"
    assert Manifest.load(dataset).own_findings == ("1_abnormal",)
    run_dir = tmp_path / "runs" / "two"
    run = tiny_run_config(dataset, run_dir, epochs=5, early_stopping_patience=5)
    run.data.batch_size = 16
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, task="binary",
                            findings=("1_ABNORMAL",))  # fmt: skip
    trainer.fit(run, verbose=0)
    assert json.loads((run_dir / "config.json").read_text())["model"]["findings"] == [
        "1_abnormal"
    ]
    report = _evaluate(evaluate, evaluator, run_dir, tmp_path / "eval2")
    assert report["per_output"]["1_abnormal"]["auroc"] > 0.8
    # a name the dataset does not have is named with what it has
    run.model = ModelConfig(backbone="tiny", weights="", input_size=64, task="binary",
                            findings=("1_abnormel",))  # fmt: skip
    run.train.run_dir = str(tmp_path / "runs" / "typo")
    with pytest.raises(ConfigError, match=r"has no finding \['1_abnormel'\].*1_abnormal"):
        trainer.fit(run, verbose=0)


def _evaluate(evaluate, evaluator, run_dir: Path, out: Path) -> dict:
    # `last`: validation AUROC reaches 1.0 within two epochs here, so `best` would be a model
    # whose batch-norm statistics have not settled yet
    argv = ["--run_dir", str(run_dir), "--model", "last", "--bootstrap", "20", "--out", str(out),
            "--quiet"]  # fmt: skip
    assert evaluate.main(argv) == 0
    return json.loads((out / evaluator.REPORT_JSON).read_text())
