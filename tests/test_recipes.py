"""The shipped recipes: complete typed configs with provenance, each builds its model and
takes a training step (shrunk: no ImageNet download, 64 px), fit prints the recipe and the
flags that changed it, and the batch/learning-rate rule for several replicas."""

from __future__ import annotations

import configparser
import json
import math
import re
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import PROJECT

from cxr_tf import cli, recipes
from cxr_tf import fit as fit_cli
from cxr_tf.config import ConfigError, ConvertConfig, RunConfig, for_replicas, lr_factor, to_dict
from cxr_tf.config import describe_scaling as scaling_line
from cxr_tf.modeling import models
from cxr_tf.training import optimization

NAMES = recipes.names()


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_the_published_setups_are_shipped():
    assert {"chexnet", "densenet121-official", "screening-any", "cpu-smoke"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_is_a_complete_typed_config_with_provenance(name):
    metadata, config = recipes.read(name)
    assert all(metadata[key] for key in recipes.REQUIRED)
    # every field written out, so a changed default never changes a recipe
    assert _keys(config) == _keys(to_dict(RunConfig()))
    run = recipes.load(name)
    assert to_dict(run) == config  # nothing coerced or resolved behind the file's back
    assert run.train.run_dir == ""  # the run directory comes from the config hash


def test_recipes_say_what_the_task_asks():
    chexnet = recipes.load("chexnet")
    assert (chexnet.model.backbone, chexnet.model.weights, chexnet.model.input_size) == (
        "densenet121", "imagenet", 224,
    )  # fmt: skip
    assert chexnet.data.batch_size == 16 and chexnet.data.augment.flip
    assert (chexnet.train.optimizer, chexnet.train.lr, chexnet.train.schedule) == (
        "adam", 1e-3, "plateau",
    )  # fmt: skip
    assert chexnet.train.plateau_factor == 0.1 and chexnet.train.loss == "bce"
    assert chexnet.train.head_epochs == 0  # end to end, as the paper
    assert "0.841" in recipes.read("chexnet")[0]["expected_mean_auroc"]

    strong = recipes.load("densenet121-official")
    assert strong.model.input_size >= 320 and strong.model.weights == "imagenet"
    assert (strong.train.optimizer, strong.train.schedule) == ("adamw", "cosine")
    assert strong.train.warmup_epochs > 0 and strong.train.mixed_precision
    expected = recipes.read("densenet121-official")[0]["expected_mean_auroc"]
    assert "0.807" in expected and "0.822" in expected and "Guendel" in expected

    screening = recipes.load("screening-any")
    assert (screening.model.task, screening.model.findings) == ("binary", ("any",))
    assert screening.data.balanced
    assert "--threshold_method sensitivity" in recipes.read("screening-any")[0]["evaluate"]

    smoke = recipes.load("cpu-smoke")
    assert smoke.model.backbone == "tiny" and smoke.model.weights == ""


@pytest.mark.parametrize("name", NAMES)
def test_the_data_command_makes_the_dataset_the_recipe_reads(name):
    metadata, config = recipes.read(name)
    words = shlex.split(metadata["data"])
    assert words[:2] == ["python", "-m"]
    dataset = config["data"]["dataset"]
    if words[2] == "cxr_tf.demo":  # the demo writes <--out>/tfrecords/<name>, --out demo
        assert words[3:] == [] and dataset == "demo/tfrecords/demo_64"
        return
    assert words[2] == "cxr_tf.convert"
    parser = cli.build_parser(ConvertConfig, "", "convert")
    conversion, _ = cli.parse_config(ConvertConfig, parser, words[3:])
    source = conversion.source if conversion.source != "auto" else "nih"  # /data/nih
    assert str(Path(conversion.out_dir) / conversion.dataset_name(source)) == dataset
    assert conversion.stored_size >= config["model"]["input_size"]
    if name == "chexnet":  # CheXNet's kind of split; the others use NIH's official one
        assert conversion.split.strategy == "random"
        assert conversion.split.fractions == (0.7, 0.1, 0.2)
    else:
        assert conversion.split.strategy == "official"


def _one_step(run: RunConfig) -> tuple[keras.Model, float]:
    """Builds the recipe's model and takes one training step with its optimizer, schedule
    and loss, eagerly (tracing DenseNet's train step takes ~40 s on 2 cores, a step 5 s)."""
    from cxr_tf.data.targets import LabelSpec

    spec = LabelSpec.from_config(run.model)
    rng = np.random.default_rng(0)
    counts, total = np.full(spec.size, 3.0), 8
    with optimization.precision_policy(run):
        model = models.build_model(
            run.model, stored_size=64, augment=run.data.augment, seed=run.train.seed
        )
        loss = optimization.build_loss(run, spec, counts, total)
        optimization.compile_model(model, run, loss, run.train.lr, steps_per_epoch=4, epochs=2)
        model.run_eagerly = True
        images = rng.integers(0, 256, (2, 64, 64, 1)).astype("float32")
        targets = (rng.random((2, spec.size)) < 0.5).astype("float32")
        value = float(model.train_on_batch(images, targets))
        assert model.predict_on_batch(images).shape == (2, spec.size)
    return model, value


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_recipe_builds_its_model_and_trains_one_step(name):
    shrink = {"model.input_size": 64}
    if recipes.load(name).model.weights == "imagenet":
        shrink["model.weights"] = ""  # no download here; the graph is the same
    run = recipes.load(name, shrink)
    model, value = _one_step(run)
    assert math.isfinite(value) and value > 0
    optimizer = model.optimizer
    if run.train.mixed_precision:  # float16 compute with loss scaling, float32 logits
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        optimizer = optimizer.inner_optimizer
        assert any(layer.compute_dtype == "float16" for layer in model.layers)
        assert model.output.dtype == "float32"
    types = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}
    assert type(optimizer) is types[run.train.optimizer]
    if not run.train.mixed_precision:
        assert int(optimizer.iterations) == 1
    elif int(optimizer.iterations) == 0:  # float16 overflowed: step skipped, scale halved
        assert float(model.optimizer.dynamic_scale) < model.optimizer.initial_scale
    flip = any("aug_flip" in layer.name for layer in model.layers)
    assert flip == run.data.augment.flip
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after


# --- fit --recipe / --config ----------------------------------------------------------------


def test_fit_help_and_list_show_the_recipes(capsys):
    with pytest.raises(SystemExit) as info:
        fit_cli.main(["--help"])
    assert info.value.code == 0
    # argparse wraps help lines, also after a name's hyphen (cpu-\nsmoke)
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))
    assert all(name in text for name in NAMES) and "--recipe list" in text
    assert fit_cli.main(["--recipe", "list"]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        assert f"recipe {name}: " in listing
        assert f"python -m cxr_tf.fit --recipe {name}" in listing
    assert "python -m cxr_tf.convert --root /data/nih --stored_size 224 --split.strategy" in (
        listing
    )


def test_an_unknown_recipe_names_the_known_ones(capsys):
    with pytest.raises(SystemExit) as info:
        fit_cli.main(["--recipe", "chexnext"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'chexnext'" in err and "densenet121-official" in err


def test_fit_prints_the_recipe_and_the_flags_that_change_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "not_converted"
    args = ["--recipe", "cpu-smoke", "--data.dataset", str(missing), "--train.epochs", "3",
            "--train.lr", "0.003", "--train.run_dir", "run", "--quiet"]  # fmt: skip
    assert fit_cli.main(args) == 2  # the dataset does not exist: stops before training
    out, err = capsys.readouterr()
    assert out.startswith("recipe cpu-smoke: CPU smoke test")
    assert "data:     demo/tfrecords/demo_64, made by: python -m cxr_tf.demo" in out
    overrides = next(line for line in out.splitlines() if line.startswith("overrides: "))
    # --train.lr 0.003 is the recipe's own value: not an override
    assert overrides == (
        f'overrides: data.dataset="{missing}" (recipe: "demo/tfrecords/demo_64"), '
        'train.epochs=3 (recipe: 20), train.run_dir="run" (recipe: "")'
    )
    assert "not_converted" in err and not (tmp_path / "run").exists()


def test_a_copied_recipe_reads_as_a_config_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "mine.json"
    data = json.loads((Path(recipes.__file__).parent / "cpu-smoke.json").read_text())
    data["data"]["dataset"] = "nowhere"
    copy.write_text(json.dumps(data))
    assert fit_cli.main(["--config", str(copy), "--train.seed", "4", "--quiet"]) == 2
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [f"config: {copy}", "overrides: train.seed=4 (config: 0)"]
    # a recipe under a config file: the file overrides the recipe, flags both
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"data": {"dataset": "nowhere"}, "train": {"epochs": 2}}))
    args = ["--recipe", "cpu-smoke", "--config", str(partial), "--train.epochs", "1", "--quiet"]
    assert fit_cli.main(args) == 2
    out = capsys.readouterr().out
    assert out.startswith("recipe cpu-smoke:")
    assert "overrides: train.epochs=1 (config: 2)" in out


def test_recipes_are_package_data():
    """A non-editable install ships the JSON files (setup.cfg's package_data)."""
    setup = configparser.ConfigParser()
    setup.read(PROJECT / "setup.cfg")
    assert setup["options.package_data"]["cxr_tf.recipes"].strip() == "*.json"


def test_the_readme_tables_every_recipe():
    text = (PROJECT / "README.md").read_text()
    section = re.split(r"\n#{2,3} ", text.split("\n### Recipes", 1)[1])[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert sorted(re.match(r"\| `([\w-]+)`", row).group(1) for row in rows) == NAMES
    for name in NAMES:
        assert f"--recipe {name}" in section


# --- batch size and learning rate on several replicas ---------------------------------------


@pytest.mark.parametrize("replicas", [1, 2, 8])
def test_batch_scaling_rule(replicas):
    base = recipes.load("densenet121-official")  # 32 per replica, lr 5e-4, sqrt
    for rule, factor in (("linear", replicas), ("sqrt", math.sqrt(replicas))):
        run = recipes.load("densenet121-official", {"train.batch_scaling": rule})
        scaled = for_replicas(run, replicas)
        assert scaled.data.batch_size == 32 * replicas
        assert scaled.train.lr == pytest.approx(base.train.lr * factor)
        assert scaled.train.finetune_lr == pytest.approx(base.train.finetune_lr * factor)
        assert lr_factor(rule, replicas) == pytest.approx(factor)
        assert for_replicas(scaled, replicas) == scaled  # applied once only
        assert run.data.batch_size == 32  # the configured run is left as it was
        line = scaling_line(run, replicas)
        assert f"32 per replica x {replicas} replica(s) = {32 * replicas} per step" in line
        assert "no warm-up" not in line  # the recipe warms up for 1 epoch
    # none: the batch is global and split over the replicas; rates as configured
    chexnet = recipes.load("chexnet")
    assert for_replicas(chexnet, replicas) is chexnet
    assert scaling_line(chexnet, replicas).startswith(f"batch: 16 per step over {replicas} ")


def test_scaling_without_warm_up_says_so():
    run = recipes.load("chexnet", {"train.batch_scaling": "linear"})
    assert for_replicas(run, 8).train.lr == pytest.approx(8e-3)
    assert "no warm-up" in scaling_line(run, 8)
    assert "no warm-up" not in scaling_line(run, 1)
    with pytest.raises(ConfigError, match="train.batch_scaling"):
        recipes.load("chexnet", {"train.batch_scaling": "quadratic"})
