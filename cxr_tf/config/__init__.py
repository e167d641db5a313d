"""Typed configuration, one module per stage that reads it.

Every command builds one of these from defaults, an optional JSON config file and dotted
command-line overrides (see `cxr_tf.cli`). A run writes its resolved config into its
directory once; later commands read it back instead of re-asking for flags.

- `base`: `ConfigError`, the `Config` base (checks every `Literal` field's choice, keeps
  renamed fields' old names), JSON (de)serialisation
- `data`: splits, conversion, synthetic data, exploration, the input pipeline
- `model`: the network and its augmentation
- `train`: training, the whole run, batch and learning rate on several replicas
- `tune`: the hyperparameter search
- `serve`: export and prediction
- `evaluate`: evaluation and localization
- `bench`: the benchmarks
"""

from cxr_tf.config.base import (
    Config,
    ConfigError,
    check_choices,
    current_name,
    from_dict,
    load,
    merge_dicts,
    merge_layers,
    rename_old_keys,
    require,
    save,
    to_dict,
)
from cxr_tf.config.bench import (
    PRECISIONS,
    BenchConvertConfig,
    BenchFitConfig,
    BenchModelConfig,
    BenchPipelineConfig,
    BenchReadConfig,
    BenchServeConfig,
    BenchShardsConfig,
)
from cxr_tf.config.data import (
    ENCODINGS,
    SPLIT_NAMES,
    STORED_SIZES,
    VIEWS,
    ConvertConfig,
    DataConfig,
    Encoding,
    ExploreConfig,
    Split,
    SplitConfig,
    SynthConfig,
    View,
)
from cxr_tf.config.evaluate import EvaluateConfig, LocalizeConfig
from cxr_tf.config.model import BACKBONES, TASKS, AugmentConfig, Backbone, ModelConfig, Task
from cxr_tf.config.serve import ExportConfig, PredictConfig
from cxr_tf.config.train import (
    BATCH_SCALING,
    UNCERTAIN_POLICIES,
    RunConfig,
    TrainConfig,
    Uncertain,
    describe_scaling,
    for_replicas,
    lr_factor,
)
from cxr_tf.config.tune import TuneConfig

__all__ = [
    "BACKBONES",
    "BATCH_SCALING",
    "ENCODINGS",
    "PRECISIONS",
    "SPLIT_NAMES",
    "STORED_SIZES",
    "TASKS",
    "UNCERTAIN_POLICIES",
    "VIEWS",
    "AugmentConfig",
    "Backbone",
    "BenchConvertConfig",
    "BenchFitConfig",
    "BenchModelConfig",
    "BenchPipelineConfig",
    "BenchReadConfig",
    "BenchServeConfig",
    "BenchShardsConfig",
    "Config",
    "ConfigError",
    "ConvertConfig",
    "DataConfig",
    "Encoding",
    "EvaluateConfig",
    "ExploreConfig",
    "ExportConfig",
    "LocalizeConfig",
    "ModelConfig",
    "PredictConfig",
    "RunConfig",
    "Split",
    "SplitConfig",
    "SynthConfig",
    "Task",
    "TrainConfig",
    "TuneConfig",
    "Uncertain",
    "View",
    "check_choices",
    "current_name",
    "describe_scaling",
    "for_replicas",
    "from_dict",
    "load",
    "lr_factor",
    "merge_dicts",
    "merge_layers",
    "rename_old_keys",
    "require",
    "save",
    "to_dict",
]
