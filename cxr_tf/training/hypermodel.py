"""The Keras Tuner hypermodel: a base `RunConfig` plus a search-space file -> trials.

A search space is a JSON file under `tuning/` (format in `tuning/README.md`) whose keys are
dotted `RunConfig` fields, the same names as the `python -m cxr_tf.fit` flags:

    {"description": "...",
     "hyperparameters": {
        "train.lr": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
        "train.loss": {"values": ["bce", "weighted_bce", "focal"]},
        "train.focal_gamma": {"min": 0.5, "max": 3.0, "step": 0.5,
                              "when": {"train.loss": ["focal"]}},
        "model.input_size": {"values": [224, 448],
                             "datasets": ["tfrecords/nih_512_png"]}}}

Every hyperparameter's default is the base config's value, so an empty
`keras_tuner.HyperParameters()` resolves to the base config itself. A trial is the base
config with the trial's values written over it (`CxrHyperModel.config_for`); `build`
makes the model with `models.build_model` and compiles it with `optimization.compile_model`,
and `fit` trains it with `trainer.run_phases`, the loop `trainer.fit` runs (head, then
fine-tuning; seeds, counters and NaN handling alike), with `callbacks.AurocCallback`
supplying the objective `val_mean_auroc`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from cxr_tf import config as config_lib
from cxr_tf.config import ConfigError, RunConfig
from cxr_tf.data import reader
from cxr_tf.data.manifest import DatasetError, Manifest
from cxr_tf.data.targets import LabelSpec
from cxr_tf.modeling import models
from cxr_tf.training import callbacks, checkpoint, optimization, trainer

OBJECTIVE = callbacks.MONITOR
# Fields a search may not vary: where a trial writes, how it is distributed, and the
# dataset (chosen through `model.input_size` and its "datasets").
FIXED_FIELDS = ("train.run_dir", "train.strategy", "data.dataset")
_SPEC_KEYS = {"values", "min", "max", "step", "sampling", "when", "datasets"}


class SpaceError(ConfigError):
    """A search-space file is invalid; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class HpSpec:
    """One tuned config field: a choice, a numeric range or a boolean."""

    name: str  # dotted RunConfig field, e.g. "train.lr"
    kind: str  # "choice", "int", "float" or "boolean"
    default: Any  # the base config's value
    values: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    sampling: str = "linear"
    when: tuple[str, tuple] | None = None  # (parent name, parent values)
    datasets: tuple[str, ...] = ()  # model.input_size: converted datasets to pick from

    def declare(self, hp: kt.HyperParameters) -> Any:
        """Registers this hyperparameter in `hp`; its value, or None when inactive."""
        parent = (
            {"parent_name": self.when[0], "parent_values": list(self.when[1])} if self.when else {}
        )
        if self.kind == "choice":
            return hp.Choice(self.name, list(self.values), default=self.default, **parent)
        if self.kind == "boolean":
            return hp.Boolean(self.name, default=self.default, **parent)
        number = hp.Int if self.kind == "int" else hp.Float
        return number(
            self.name,
            self.min,
            self.max,
            step=self.step,
            sampling=self.sampling,
            default=self.default,
            **parent,
        )


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file."""

    hyperparameters: tuple[HpSpec, ...]
    description: str = ""
    raw: dict = dataclasses.field(default_factory=dict)  # the file's content
    dataset_sizes: dict = dataclasses.field(default_factory=dict)  # folder -> stored size

    def dataset_for(self, input_size: int, base: RunConfig) -> str:
        """The base dataset when its stored size suffices, else the smallest listed one."""
        if self.dataset_sizes.get(base.data.dataset, 0) >= input_size:
            return base.data.dataset
        fits = sorted((s, d) for d, s in self.dataset_sizes.items() if s >= input_size)
        if not fits:
            raise SpaceError(f"model.input_size: no dataset stores images of {input_size} px")
        return fits[0][1]


def _get(run: RunConfig, path: str) -> Any:
    value: Any = run
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _set(data: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value


def _check_values(spec: HpSpec, base: RunConfig) -> None:
    """Each candidate value alone must give a valid config (fail now, not in a trial)."""
    for value in spec.values or ((spec.min, spec.max) if spec.min is not None else ()):
        data = config_lib.to_dict(base)
        _set(data, spec.name, value)
        try:
            config_lib.from_dict(RunConfig, data)
        except ConfigError as err:
            raise SpaceError(f"hyperparameters[{spec.name!r}]: {value!r}: {err}") from None


def _field_type(path: str) -> Any:
    """The annotated type of a dotted RunConfig field (an error names the known ones)."""
    cls: Any = RunConfig
    parts = path.split(".")
    for index, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = ", ".join(sorted(hints))
            raise SpaceError(f"{path!r}: no config field {part!r} (known here: {known})")
        tp = hints[part]
        last = index == len(parts) - 1
        if dataclasses.is_dataclass(tp) != (not last):
            raise SpaceError(f"{path!r}: not a single config value")
        cls = tp
    return cls


def _cast(tp: Any, value: Any, where: str) -> Any:
    """A space value as the field's type (so "1" and 1 mean the same for a str field)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SpaceError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SpaceError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise SpaceError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpaceError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        return str(value)
    raise SpaceError(f"{where}: fields of type {tp} cannot be tuned")


def _parse_entry(name: str, entry: dict, base: RunConfig, done: dict[str, HpSpec]) -> HpSpec:
    where = f"hyperparameters[{name!r}]"
    if not isinstance(entry, dict):
        raise SpaceError(f"{where}: expected an object, got {entry!r}")
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {sorted(unknown)}; known {sorted(_SPEC_KEYS)}")
    if name in FIXED_FIELDS:
        raise SpaceError(f"{where}: {name} cannot be tuned")
    tp = _field_type(name)
    default = _get(base, name)
    when = None
    if "when" in entry:
        cond = entry["when"]
        if not (isinstance(cond, dict) and len(cond) == 1):
            raise SpaceError(f"{where}: 'when' takes one {{parent: [values]}} entry")
        ((parent, parent_values),) = cond.items()
        parent = config_lib.current_name(RunConfig, parent)
        if parent not in done or done[parent].kind not in ("choice", "boolean"):
            raise SpaceError(f"{where}: 'when' needs {parent!r} declared above as a choice")
        values = parent_values if isinstance(parent_values, list) else [parent_values]
        when = (parent, tuple(_cast(_field_type(parent), v, where) for v in values))
    datasets = tuple(str(d) for d in entry.get("datasets", ()))
    if datasets and name != "model.input_size":
        raise SpaceError(f"{where}: 'datasets' belongs to model.input_size only")
    if tp is bool:
        if set(entry) - {"values", "when"} or set(entry.get("values", [True, False])) != {
            True,
            False,
        }:
            raise SpaceError(f"{where}: a boolean field takes {{}} or {{'values': [true, false]}}")
        return HpSpec(name, "boolean", default, when=when)
    if "values" in entry:
        if {"min", "max", "step", "sampling"} & set(entry):
            raise SpaceError(f"{where}: give either 'values' or 'min'/'max', not both")
        values = [_cast(tp, v, where) for v in entry["values"]]
        if not values:
            raise SpaceError(f"{where}: 'values' is empty")
        if default not in values:  # the base config is always a candidate
            values.insert(0, default)
        values = list(dict.fromkeys(values))
        return HpSpec(name, "choice", default, tuple(values), when=when, datasets=datasets)
    if not {"min", "max"} <= set(entry):
        raise SpaceError(f"{where}: give 'values' or both 'min' and 'max'")
    if tp not in (int, float):
        raise SpaceError(f"{where}: a range needs a numeric field; use 'values'")
    low, high = _cast(tp, entry["min"], where), _cast(tp, entry["max"], where)
    step = None if entry.get("step") is None else _cast(tp, entry["step"], where)
    sampling = entry.get("sampling", "linear")
    if sampling not in ("linear", "log", "reverse_log"):
        raise SpaceError(f"{where}: sampling is linear, log or reverse_log, not {sampling!r}")
    if not low < high or (sampling != "linear" and low <= 0):
        raise SpaceError(f"{where}: need min < max (and min > 0 for {sampling} sampling)")
    if not low <= default <= high:
        raise SpaceError(
            f"{where}: the base config's value {default!r} lies outside [{low}, {high}]; "
            f"widen the range or change the base config"
        )
    kind = "int" if tp is int else "float"
    return HpSpec(name, kind, default, (), low, high, step, sampling, when, datasets)


def parse_space(data: dict, base: RunConfig, source: str = "search space") -> SearchSpace:
    """Validates a search-space mapping against the base config.

    Raises:
        SpaceError: an unknown field or key, a malformed range, a base value outside its
            range, or an image size that no dataset stores.
    """
    try:
        if not isinstance(data, dict) or set(data) - {"description", "hyperparameters"}:
            raise SpaceError("expected an object with 'description' and 'hyperparameters'")
        entries = data.get("hyperparameters", {})
        if not isinstance(entries, dict):
            raise SpaceError("'hyperparameters' must map config fields to entries")
        specs: dict[str, HpSpec] = {}
        # a field's old name (`model.image_size`) stands for its current one
        entries = {config_lib.current_name(RunConfig, n): e for n, e in entries.items()}
        for name, entry in entries.items():
            specs[name] = _parse_entry(name, entry, base, specs)
            _check_values(specs[name], base)
        sizes = {}
        size_spec = specs.get("model.input_size")
        folders = [base.data.dataset, *(size_spec.datasets if size_spec else ())]
        for folder in dict.fromkeys(folders):
            try:
                sizes[folder] = Manifest.load(folder).stored_size
            except (DatasetError, OSError) as err:
                raise SpaceError(f"dataset {folder}: {err}") from err
        space = SearchSpace(tuple(specs.values()), str(data.get("description", "")), data, sizes)
        for size in size_spec.values if size_spec else ():
            space.dataset_for(size, base)
        return space
    except SpaceError as err:
        raise SpaceError(f"{source}: {err}") from None


def load_space(path: str | Path, base: RunConfig) -> SearchSpace:
    """Reads and validates a search-space JSON file (see `tuning/README.md`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SpaceError(f"cannot read search space {path}: {err}") from err
    return parse_space(data, base, source=str(path))


class CxrHyperModel(kt.HyperModel):
    """Trials of a base `RunConfig` over a `SearchSpace`; objective `val_mean_auroc`."""

    def __init__(self, base: RunConfig, space: SearchSpace, verbose: int = 0) -> None:
        super().__init__(name="cxr_tf")
        self.base, self.space, self.verbose = base, space, verbose
        self._counts: dict[tuple, tuple] = {}

    def config_for(self, hp: kt.HyperParameters) -> RunConfig:
        """The trial's full RunConfig: the base with `hp`'s values written over it."""
        data = config_lib.to_dict(self.base)
        for spec in self.space.hyperparameters:
            value = spec.declare(hp)
            if value is not None:
                _set(data, spec.name, value)
        run = config_lib.from_dict(RunConfig, data)
        if run.model.input_size != self.base.model.input_size:
            run.data.dataset = self.space.dataset_for(run.model.input_size, self.base)
        return run

    def _data(self, run: RunConfig) -> trainer.TrainingData:
        """The trial's dataset facts (class counts computed once per dataset and task)."""
        spec = LabelSpec.from_config(run.model, uncertain=run.train.uncertain)
        key = (run.data.dataset, spec)
        if key not in self._counts:  # multi-class counts take a pass over the labels
            manifest = reader.check_compatible(run.data, run.model)
            self._counts[key] = trainer.training_counts(run, spec, manifest)
        return trainer.TrainingData.load(run, counts=self._counts[key])

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The trial's model, compiled for its first training phase."""
        run = self.config_for(hp)
        if run.train.strategy != "default":
            raise ConfigError("train.strategy: tune one trial per device (tuning/README.md)")
        with optimization.precision_policy(run):
            keras.utils.set_random_seed(run.train.seed)
            data = self._data(run)
            model = models.build_model(
                run.model,
                stored_size=data.manifest.stored_size,
                augment=run.data.augment,
                seed=run.train.seed,
            )
            first = trainer.training_phases(run.train)[0]
            models.set_backbone_trainable(model, run.model, first.mode)
            loss = optimization.build_loss(run, data.spec, data.counts, data.known)
            optimization.compile_model(
                model, run, loss, first.lr, data.steps, first.end - first.start
            )
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs) -> dict:
        """Trains the trial's phases with `trainer.run_phases`; returns its best score.

        `epochs` and `initial_epoch` (from Hyperband) narrow the epochs run; the tuner's
        own callbacks (checkpoint, reporting) follow the AUROC callback so that they see
        the score.

        Raises:
            keras_tuner.errors.FailedTrialError: the loss became NaN or the validation
                mean AUROC was undefined in every epoch.
        """
        run = self.config_for(hp)
        verbose = int(kwargs.get("verbose", self.verbose))
        state = checkpoint.RunState(None)  # trials keep their state in memory
        with optimization.precision_policy(run):
            try:
                trainer.run_phases(
                    model, run, self._data(run), state,
                    first_epoch=int(kwargs.get("initial_epoch") or 0),
                    end_epoch=int(kwargs.get("epochs") or run.train.epochs),
                    callbacks=kwargs.get("callbacks", []),
                    verbose=2 if verbose else 0,
                )  # fmt: skip
            except trainer.TrainingDiverged as err:
                raise kt.errors.FailedTrialError(str(err)) from None
        scores = [r[OBJECTIVE] for r in state.data["history"] if OBJECTIVE in r]
        defined = [s for s in scores if not math.isnan(s)]
        if not defined:
            raise kt.errors.FailedTrialError(
                "validation mean AUROC undefined in every epoch (no positives or negatives "
                "among the validation images?)"
            )
        losses = [r["loss"] for r in state.data["history"] if "loss" in r]
        return {OBJECTIVE: max(defined), **({"loss": losses[-1]} if losses else {})}
