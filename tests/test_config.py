"""The config base: `Literal` choices checked once for every config, old field names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

import pytest

from cxr_tf import config as config_lib
from cxr_tf import recipes
from cxr_tf.config import ConfigError, ConvertConfig, ModelConfig, RunConfig
from cxr_tf.config.base import literal_choices

CONFIGS = [
    getattr(config_lib, name)
    for name in config_lib.__all__
    if name.endswith("Config") and dataclasses.is_dataclass(getattr(config_lib, name))
]
# The least each config needs to be valid (its required fields).
REQUIRED = {
    "SynthConfig": {"out": "x"},
    "ExploreConfig": {"nih_root": "x"},
    "EvaluateConfig": {"run_dir": "x"},
    "LocalizeConfig": {"run_dir": "x"},
    "BenchReadConfig": {"dataset": "x"},
    "BenchServeConfig": {"run_dir": "x"},
}
LITERALS = [
    (cls, field.name)
    for cls in CONFIGS
    for field in dataclasses.fields(cls)
    if literal_choices(typing.get_type_hints(cls)[field.name]) is not None
]


def test_every_config_derives_from_the_base():
    assert len(CONFIGS) >= 20
    assert all(issubclass(cls, config_lib.Config) for cls in CONFIGS)


@pytest.mark.parametrize(("cls", "name"), LITERALS, ids=[f"{c.__name__}.{n}" for c, n in LITERALS])
def test_every_literal_field_refuses_a_value_outside_its_choices(cls, name):
    tp = typing.get_type_hints(cls)[name]
    kwargs = dict(REQUIRED.get(cls.__name__, {}))
    cls(**kwargs)  # valid as it is
    kwargs[name] = ("bogus",) if typing.get_origin(tp) is tuple else "bogus"
    prefix = f"{cls.section}." if cls.section else ""
    # (views are upper-cased before the check, so the value may come back as BOGUS)
    with pytest.raises(
        ConfigError, match=rf"(?i)^{prefix}{name}: (must be one|one or more) of .*bogus"
    ):
        cls(**kwargs)


def test_literal_fields_are_found():
    names = {f"{c.__name__}.{n}" for c, n in LITERALS}
    assert {"ModelConfig.backbone", "TrainConfig.uncertain", "ConvertConfig.encoding",
            "BenchModelConfig.precision", "BenchFitConfig.backbones"} <= names  # fmt: skip


@pytest.mark.parametrize("cls", [c for c in CONFIGS if c.renamed], ids=lambda c: c.__name__)
def test_old_names_point_at_current_fields(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.renamed.values()) <= fields
    assert not set(cls.renamed) & fields


def test_old_keys_in_json_are_read_under_the_current_names(tmp_path):
    old_run = config_lib.to_dict(RunConfig(model=ModelConfig(backbone="tiny", weights="")))
    old_run["model"]["image_size"] = old_run["model"].pop("input_size") // 2
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old_run))  # a run folder written by an older version
    run = config_lib.load(RunConfig, path)
    assert run.model.input_size == 112
    assert "image_size" not in config_lib.to_dict(run)["model"]

    convert = config_lib.from_dict(ConvertConfig, {"nih_root": "/d", "image_size": 64})
    assert (convert.root, convert.stored_size) == ("/d", 64)
    # the current name wins over the old one in the same dict
    both = {"root": "/new", "nih_root": "", "stored_size": 128, "image_size": 64}
    assert config_lib.rename_old_keys(ConvertConfig, both) == {"root": "/new", "stored_size": 128}


def test_a_later_layer_wins_whatever_name_it_uses():
    merged = config_lib.merge_layers(
        RunConfig, {"model": {"input_size": 224}}, {"model": {"image_size": 64}}
    )
    assert merged == {"model": {"input_size": 64}}
    assert recipes.load("cpu-smoke", {"model.image_size": 32}).model.input_size == 32
    assert config_lib.current_name(RunConfig, "model.image_size") == "model.input_size"
    assert config_lib.current_name(RunConfig, "train.lr") == "train.lr"


def test_the_dataset_folder_is_named_after_the_resolved_source():
    config = ConvertConfig(root="x", stored_size=64, encoding="png")
    assert config.dataset_name("chest_source") == "chest_source_64_png"
    assert ConvertConfig(root="x", name="mine").dataset_name("any") == "mine"


def test_the_default_run_folder_keeps_its_name_across_the_rename():
    from cxr_tf.runs import folder

    run = RunConfig(model=ModelConfig(backbone="tiny", weights=""))
    data = config_lib.to_dict(run)
    data["train"]["run_dir"] = ""
    data["model"]["image_size"] = data["model"].pop("input_size")  # as older versions hashed
    old = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    assert folder.config_hash(run) == old[:8]
