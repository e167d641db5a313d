"""`python -m cxr_tf.bench <what>`: benchmarks that print figures next to a baseline measured
in the same run, on the same cores.

- `convert`: conversion images/s vs bare PNG decoding of the same 1024 px files;
- `read`: records/s through TFDS (`builder_from_directory`) vs the project's batch parser;
- `pipeline`: training batches/s from the shards vs a plain tf.data pipeline decoding the
  original 1024 px PNGs, and with augmentation moved onto the CPU;
- `fit`: seconds per epoch of `cxr_tf.fit` (validation and checkpoints included) vs a plain
  Keras loop doing the same work, start-up removed (runs of N and 3N epochs differenced).
- `shards`: distinct patients per training batch with contiguous (sorted-name) shards vs
  the converter's seeded random shards, against a fully shuffled reference.
- `serve`: requests/s and latency of the exported `serving_default` (encoded PNGs in) vs
  `model.predict` and a direct model call on preprocessed tensors, at batch 1 and 32, on CPU.
- `model`: training and inference images/s and ms/step of the project's model (in-model
  augmentation, resize and normalisation included) on in-memory uint8 batches, on any
  Keras backend (`KERAS_BACKEND=jax` imports no TensorFlow), per batch size, precision and
  jit setting; `--peer timm` times timm's DenseNet121 in PyTorch in the same run.

Each benchmark takes a typed config (`cxr_tf.config.Bench*Config`): one flag per field,
`--config FILE` for a JSON file of them, `--json PATH` to write the figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxr_tf.benchmarks.data import (
    bench_convert,
    bench_pipeline,
    bench_read,
    bench_shards,
    check_layouts,
)
from cxr_tf.benchmarks.model import bench_model
from cxr_tf.benchmarks.serving import bench_serve
from cxr_tf.benchmarks.training import bench_fit
from cxr_tf.cli import Parser, build_parser, parse_config, run_command
from cxr_tf.config import (
    BenchConvertConfig,
    BenchFitConfig,
    BenchModelConfig,
    BenchPipelineConfig,
    BenchReadConfig,
    BenchServeConfig,
    BenchShardsConfig,
)

# --- command line -----------------------------------------------------------------------------

PROG = "python -m cxr_tf.bench"

MODEL_EXAMPLES = """
Examples:
  # CPU: DenseNet121 at batch 32, jitted and not (docs/benchmarks.md's JAX rows)
  KERAS_BACKEND=jax python -m cxr_tf.bench model --batch_sizes 32 --precision float32 \\
      --jit on off --no-augment --warmup 1 --steps 1 --windows 3
  # a GPU, timm's densenet121 timed in the same run (benchmarks/gpu_model_bench.sh)
  KERAS_BACKEND=jax python -m cxr_tf.bench model --batch_sizes 64 128 \\
      --precision mixed_bfloat16 --jit on --no-augment --peer timm --json gpu.json
"""

# name -> (config, function, one-line summary)
COMMANDS: dict[str, tuple[type, Callable[[Any], dict], str]] = {
    "convert": (BenchConvertConfig, bench_convert, "conversion vs bare PNG decode"),
    "read": (BenchReadConfig, bench_read, "TFDS reader vs the project's batch parser"),
    "pipeline": (BenchPipelineConfig, bench_pipeline, "training input pipeline vs decoding PNGs"),
    "fit": (BenchFitConfig, bench_fit, "per-epoch seconds: cxr_tf.fit vs a plain Keras loop"),
    "shards": (BenchShardsConfig, bench_shards, "patients per batch: contiguous vs random shards"),
    "serve": (BenchServeConfig, bench_serve, "exported serving_default vs model.predict, on CPU"),
    "model": (BenchModelConfig, bench_model, "train/predict img/s of the model, any backend"),
}

# How long the long ones take with their defaults on a 2-core CPU (measured), said up front.
DURATIONS: dict[str, str] = {
    "fit": "about 15 minutes on a 2-core CPU with the defaults",
    "model": "15-22 minutes on a 2-core CPU with the defaults (fewer --batch_sizes, --jit "
    "values or --steps make it shorter)",
}

# Benchmarks reading a dataset take it as their first argument too (`bench read DATASET`).
_POSITIONAL = {"read": "dataset", "fit": "dataset"}


def _top_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="what", required=True, metavar="{" + ",".join(COMMANDS) + "}",
        help="the benchmark to run (`bench WHAT --help` for its options)",
    )  # fmt: skip
    for name, (_, _, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary)
    return parser


def parser_for(what: str) -> argparse.ArgumentParser:
    """The parser of one benchmark: a flag per field of its config (`cxr_tf.cli`)."""
    cls, _, summary = COMMANDS[what]

    def extra(parser: argparse.ArgumentParser) -> None:
        if what in _POSITIONAL:
            field = _POSITIONAL[what]
            parser.add_argument(
                field, nargs="?", default=argparse.SUPPRESS, help=f"same as --{field}"
            )
        parser.add_argument("--json", metavar="PATH", help="also write the figures to this file")

    description = f"{summary}.\n\n{inspect.cleandoc(cls.__doc__ or '')}\n"
    if what in DURATIONS:
        description += f"\nIt takes {DURATIONS[what]}.\n"
    description += MODEL_EXAMPLES if what == "model" else ""
    return build_parser(cls, description, f"{PROG} {what}", extra=extra)


def parse(argv: Sequence[str] | None = None) -> tuple[str, Any, argparse.Namespace]:
    """(benchmark name, its typed config, the parsed namespace) from the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = _top_parser()
        top.parse_args(argv)  # --help, or the usage error listing the benchmarks
        top.error(f"the first argument names the benchmark: {', '.join(COMMANDS)}")
    what = argv[0]
    check = check_layouts if what == "convert" else None
    config, args = parse_config(COMMANDS[what][0], parser_for(what), argv[1:], check=check)
    return what, config, args


def main(argv: Sequence[str] | None = None) -> int:
    what, config, args = parse(argv)
    if what in DURATIONS:
        print(f"bench {what}: {DURATIONS[what]}", file=sys.stderr, flush=True)
    results = COMMANDS[what][1](config)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_command(main, "bench")
