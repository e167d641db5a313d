"""`python -m cxr_tf.fit`: train a classifier on a converted dataset.

Examples:
  # DenseNet121, ImageNet weights, all 14 findings, on the official NIH split at 224 px
  python -m cxr_tf.fit --data.dataset tfrecords/nih_256_raw --model.backbone densenet121

  # binary Pneumothorax vs rest, balanced batches, weighted BCE
  python -m cxr_tf.fit --model.task binary --model.findings Pneumothorax \\
      --data.balanced --train.loss weighted_bce

  # continue a killed run: rerun the same command, or name its directory
  python -m cxr_tf.fit --resume runs/densenet121-multilabel-3f9c2a1b

The run directory (default runs/<backbone>-<task>[-<finding>]-<config hash>) is printed
first; rerunning the same command resumes it at its last finished epoch. Exit status: 0
done, 1 the loss became NaN/infinite (the best checkpoint is kept), 2 a bad config,
dataset or weights file (one line on stderr).

Every field of the config has a flag (`--section.field`); `--config FILE` reads a JSON
config (a run's config.json or a tuned best_config.json) that flags then override.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_tf.cli import CHECK_ARGS, add_quiet, build_parser, parse_config, value_error
from cxr_tf.config import ConfigError, RunConfig


def _extra(parser) -> None:  # argparse parser
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    add_quiet(parser, "one line per epoch, no bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(RunConfig, __doc__, "python -m cxr_tf.fit", extra=_extra)
    args_list = list(argv) if argv is not None else sys.argv[1:]
    probe = parser.parse_known_args(args_list)[0]
    if probe.resume:
        config = Path(probe.resume) / "config.json"
        if not config.exists() and not os.environ.get(CHECK_ARGS):
            value_error(parser, f"--resume {probe.resume}: no run there ({config} not found)")
        # The directory itself is resumed, wherever it is and whatever config.json says.
        args_list = ["--config", str(config), *args_list, "--train.run_dir", probe.resume]
    run, args = parse_config(RunConfig, parser, args_list)
    import tensorflow as tf

    from cxr_tf.data import pipeline
    from cxr_tf.modeling import models
    from cxr_tf.training import distribute, trainer

    try:
        summary = trainer.fit(run, verbose=2 if args.quiet else 1)
    except (
        ConfigError,
        pipeline.DatasetError,
        models.WeightsUnavailable,
        distribute.UnsupportedKerasVersion,
        OSError,
    ) as err:
        print(f"fit: error: {err}", file=sys.stderr)
        return 2
    except tf.errors.DataLossError as err:  # a shard damaged after conversion
        print(f"fit: error: {pipeline.read_error_message(run.data.dataset, err)}", file=sys.stderr)
        return 2
    except trainer.TrainingDiverged as err:
        print(f"fit: stopped: {err}", file=sys.stderr)
        return 1
    best = summary["best_val_mean_auroc"]
    print(
        f"run directory: {summary['run_dir']}\n"
        f"best validation mean AUROC: {'undefined' if best is None else f'{best:.4f}'} "
        f"(epoch {summary['best_epoch']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
