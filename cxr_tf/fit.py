"""`python -m cxr_tf.fit`: train a classifier on a converted dataset.

Examples:
  # DenseNet121, ImageNet weights, all 14 findings, on the official NIH split at 224 px
  python -m cxr_tf.fit --data.dataset tfrecords/nih_256_raw --model.backbone densenet121

  # binary Pneumothorax vs rest, balanced batches, weighted BCE
  python -m cxr_tf.fit --model.task binary --model.findings Pneumothorax \\
      --data.balanced --train.loss weighted_bce

  # continue a killed run
  python -m cxr_tf.fit --resume runs/20261127-101500-densenet121-multilabel

Every field of the config has a flag (`--section.field`); `--config FILE` reads a JSON
config (a run's config.json or a tuned best_config.json) that flags then override.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import ConfigError, RunConfig


def _extra(parser) -> None:  # noqa: ANN001 - argparse parser
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no bars")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(RunConfig, __doc__, "python -m cxr_tf.fit", extra=_extra)
    args_list = list(argv) if argv is not None else sys.argv[1:]
    probe = parser.parse_known_args(args_list)[0]
    if probe.resume:
        args_list = ["--config", str(Path(probe.resume) / "config.json"), *args_list]
    run, args = parse_config(RunConfig, parser, args_list)
    from cxr_tf import pipeline, train

    try:
        summary = train.fit(run, verbose=2 if args.quiet else 1)
    except (ConfigError, pipeline.DatasetError, FileNotFoundError) as err:
        print(f"fit: error: {err}", file=sys.stderr)
        return 2
    best = summary["best_val_mean_auroc"]
    print(
        f"run directory: {summary['run_dir']}\n"
        f"best validation mean AUROC: {'undefined' if best is None else f'{best:.4f}'} "
        f"(epoch {summary['best_epoch']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
