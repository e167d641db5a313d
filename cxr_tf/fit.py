"""`python -m cxr_tf.fit`: train a classifier on a converted dataset.

Examples:
  # a shipped recipe (a published setup; `--recipe list` shows each one's source, split,
  # expected AUROC, hardware and the convert command that makes its data)
  python -m cxr_tf.fit --recipe chexnet
  python -m cxr_tf.fit --recipe densenet121-official --train.strategy mirrored

  # DenseNet121, ImageNet weights, all 14 findings, on the official NIH split at 224 px
  python -m cxr_tf.fit --data.dataset tfrecords/nih_384_raw --model.backbone densenet121

  # binary Pneumothorax vs rest, balanced batches, weighted BCE
  python -m cxr_tf.fit --model.task binary --model.findings Pneumothorax \\
      --data.balanced --train.loss weighted_bce

  # continue a killed run: rerun the same command, or name its directory
  python -m cxr_tf.fit --resume runs/densenet121-multilabel-3f9c2a1b

The run directory (default runs/<backbone>-<task>[-<finding>]-<config hash>) is printed
first; rerunning the same command resumes it at its last finished epoch, and
`--resume RUN --train.epochs N` continues a run (finished or not) to N epochs. A run
directory is held by one process at a time. Exit status (docs/commands.md): 0 done, 1 the
loss became NaN/infinite (the best checkpoint is kept), 2 a bad config, dataset or weights
file, 3 the run directory is in use by another process, 4 a dataset file or the run's
checkpoint vanished or was damaged, 130 interrupted (Ctrl-C); one line on stderr.

Every field of the config has a flag (`--section.field`); `--config FILE` reads a JSON
config (a run's config.json, a tuned best_config.json or a copied recipe) over the recipe,
and flags override both. With a recipe or a config file, fit first prints it and every
value the flags changed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_tf import python_command, recipes
from cxr_tf.cli import (
    add_quiet,
    bad_inputs,
    build_parser,
    dataset_problem,
    exit_if_checking,
    parse_config,
    read_config_file,
    run_command,
    value_error,
    weights_problem,
)
from cxr_tf.config import ConfigError, RunConfig, from_dict, merge_layers
from cxr_tf.testing import checking_args


def _extra(parser) -> None:  # argparse parser
    parser.add_argument(
        "--recipe",
        metavar="NAME",
        help=f"start from a shipped training setup: {', '.join(recipes.names())}; "
        "`--recipe list` shows each one's source, split, expected AUROC and hardware. "
        "--config and flags override it",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    add_quiet(parser, "one line per epoch, no bars")


def _reference(base: dict, config_file: str | None) -> RunConfig | None:
    """The recipe and config file without the flags (None when that alone is invalid)."""
    try:
        over = read_config_file(config_file) if config_file else {}
        return from_dict(RunConfig, merge_layers(RunConfig, base, over))
    except (OSError, TypeError, ValueError):  # ConfigError and bad JSON are ValueErrors
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(RunConfig, __doc__, "python -m cxr_tf.fit", extra=_extra)
    args_list = list(argv) if argv is not None else sys.argv[1:]
    probe = parser.parse_known_args(args_list)[0]
    if probe.recipe == "list":
        exit_if_checking(parser)
        print(recipes.listing())
        return 0
    metadata, base = {}, {}
    if probe.recipe:
        try:
            metadata, base = recipes.read(probe.recipe)
        except ConfigError as err:
            value_error(parser, str(err))
    config_file = probe.config
    if probe.resume:
        config = Path(probe.resume) / "config.json"
        if not config.exists() and not checking_args():
            value_error(parser, f"--resume {probe.resume}: no run there ({config} not found)")
        # The directory itself is resumed, wherever it is and whatever config.json says.
        args_list = ["--config", str(config), *args_list, "--train.run_dir", probe.resume]
    run, args = parse_config(RunConfig, parser, args_list, base=base)
    if probe.recipe or config_file:
        if probe.recipe:
            print(recipes.header(probe.recipe, metadata, base["data"]["dataset"]))
        else:
            print(f"config: {config_file}")
        reference = _reference(base, config_file)
        against = "recipe" if probe.recipe and not config_file else "config"
        if reference is not None:
            print(recipes.overrides_line(reference, run, against), flush=True)
    if bad_inputs(
        "fit",
        dataset_problem("data.dataset", run.data.dataset),
        weights_problem("model.weights", run.model.weights),
    ):
        return 2
    try:
        return _train(run, args, metadata)
    except KeyboardInterrupt as err:  # trainer.Interrupted says how to resume
        print(f"\nfit: interrupted{f'; {err}' if str(err) else ''}", file=sys.stderr)
        return 130


def _train(run: RunConfig, args, metadata: dict) -> int:  # args: argparse namespace
    from cxr_tf.data.lock import FolderInUse
    from cxr_tf.data.manifest import DatasetError
    from cxr_tf.modeling import models
    from cxr_tf.training import checkpoint, distribute, trainer

    try:
        summary = trainer.fit(run, verbose=2 if args.quiet else 1)
    except (
        ConfigError,
        DatasetError,
        models.WeightsUnavailable,
        distribute.UnsupportedKerasVersion,
        OSError,
    ) as err:
        print(f"fit: error: {err}", file=sys.stderr)
        return 2
    except FolderInUse as err:
        print(f"fit: error: {err}", file=sys.stderr)
        return 3
    except (checkpoint.CheckpointError, trainer.DataVanished) as err:
        print(f"fit: error: {err}", file=sys.stderr)
        return 4
    except trainer.TrainingDiverged as err:
        print(f"fit: stopped: {err}", file=sys.stderr)
        return 1
    best = summary["best_val_mean_auroc"]
    print(
        f"run directory: {summary['run_dir']}\n"
        f"best validation mean AUROC: {'undefined' if best is None else f'{best:.4f}'} "
        f"(epoch {summary['best_epoch']})"
    )
    if metadata.get("evaluate"):
        print(
            f"evaluate as the recipe intends: {python_command()} -m cxr_tf.evaluate "
            f"--run_dir {summary['run_dir']} {metadata['evaluate']}"
        )
    return 0


if __name__ == "__main__":
    run_command(main, "fit")
