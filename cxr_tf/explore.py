"""Exploring ChestX-ray14 before training: who is in which split, how rare each finding is.

`python -m cxr_tf.explore --nih_root DIR` reads an NIH folder (Data_Entry, split lists and,
for the sample grid, whatever images are present); `--dataset DIR` reads a converted
dataset (manifest and records). Both write into `--out` (default `explore/<name>`):

- `report.md`: the tables below, linking every plot;
- `summary.json`: every number of the report;
- `prevalence.png`: per-split finding prevalence and `No Finding` share;
- `cooccurrence.png`: finding co-occurrence counts and P(B|A);
- `images_per_patient.png`: images per patient (follow-ups), per split;
- `demographics.png`: age, sex and view position per split;
- `samples.png`: a few images per finding, boxes drawn where the image has one.

For an NIH folder the splits come from `--split.*` through `cxr_tf.data.splits.make_splits`;
for a dataset, from its manifest. The patient-overlap check is reported (PASS or the
offending patients), never raised: when the split lists overlap, the statistics are over
the lists as given.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import (
    add_quiet,
    bad_inputs,
    build_parser,
    dataset_problem,
    folder_problem,
    parse_config,
    run_command,
)
from cxr_tf.config import ExploreConfig


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr_tf.explore (--nih_root DIR | --dataset DIR) [--out DIR]`."""
    parser = build_parser(
        ExploreConfig, description=__doc__, prog="python -m cxr_tf.explore", extra=add_quiet
    )
    config, args = parse_config(ExploreConfig, parser, argv)
    if bad_inputs(
        "explore",
        folder_problem("nih_root", config.nih_root) if config.nih_root else "",
        dataset_problem("dataset", config.dataset),
    ):
        return 2
    from cxr_tf.analysis.exploration import explore

    try:
        summary = explore(config, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:  # missing files, bad metadata or lists
        print(f"explore: error: {err}", file=sys.stderr)
        return 2  # bad input, as for every command (docs/commands.md)
    for split, entry in summary["prevalence"].items():
        print(
            f"{split:>10}: {entry['images']:>7} images, {entry['patients']:>6} patients, "
            f"No Finding {100 * entry['no_finding_share']:.1f}%"
        )
    print(f"patient overlap: {summary['overlap']['status']}")
    print(f"wrote {config.out_dir}/report.md ({summary['seconds']['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    run_command(main, "explore")
