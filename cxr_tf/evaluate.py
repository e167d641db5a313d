"""`python -m cxr_tf.evaluate`: a trained run on one split -> predictions, metrics, report.

Examples:
  # the test split, Youden thresholds chosen on validation, 1,000 patient resamples
  python -m cxr_tf.evaluate --run_dir runs/densenet121-multilabel-3f9c2a1b

  # ten-crop test-time augmentation, thresholds reaching 90% sensitivity on validation
  python -m cxr_tf.evaluate --run_dir RUN --tta tencrop --threshold_method sensitivity \\
      --target_sensitivity 0.9

Writes into `--out` (default RUN/eval/<split>-<checkpoint>[-tta-<mode>][-<method>], e.g.
RUN/eval/test-best, RUN/eval/test-last-tta-flip: evaluations with other options never
overwrite each other): `predictions.csv` (image, patient, the probability and the label of
every output), `report.json`, `report.md`, `roc_pr.png`, `calibration.png` and
`thresholds.json`, the operating thresholds chosen on the validation split; the same
thresholds.json also into RUN, where export reads it (`load_thresholds`). It records what
the thresholds were chosen for: the checkpoint file (name, size, sha256), the test-time
augmentation and the split; export uses them only for that very file without TTA.

Per output (finding): n, the images whose label for it is known (labelled by the image's
dataset and not uncertain: uncertain labels are always left out here), and over those
images only: prevalence, AUROC with a 95% patient-level bootstrap interval, AUPRC,
sensitivity / specificity / PPV / NPV / F1 / accuracy and the confusion counts at the
validation-chosen threshold (chosen on known validation labels too), ECE, Brier score and a
reliability diagram. Outputs without a known label, or without positives (or negatives),
are "n/a" with the reason and left out of the mean, which says over how many outputs it is.
A multi-class run gets accuracy, the confusion matrix and one-vs-rest AUROC per class
instead of thresholds.

Another dataset (external validation):
  python -m cxr_tf.evaluate --run_dir RUN --dataset tfrecords/padchest_256_raw

evaluates the run's model on that converted dataset's split (several: comma-separated) over
the outputs it labels (the others are listed as not labelled and skipped), with the
thresholds chosen on the run's OWN validation split, into
RUN/eval/external-<dataset folder>-<split>-<checkpoint>[...]. It needs the run's own
(internal) evaluation on its test split with the same options: the report in
RUN/eval/test-<checkpoint>[...] when it was made with the same checkpoint, TTA, bootstrap
and threshold method, else that evaluation is run first (and written there,
RUN/thresholds.json included). Beside the usual files it writes
`internal_vs_external.{md,json,png}`: internal (test split) and external AUROC [95% CI] (n)
per output and their difference, and prints that table. The dataset must be stored at the
size the model was trained on (convert it with that `--stored_size`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import (
    add_quiet,
    bad_inputs,
    build_parser,
    dataset_problem,
    parse_config,
    run_command,
    run_problem,
)
from cxr_tf.config import ConfigError, EvaluateConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (130 on Ctrl-C)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("\nevaluate: interrupted; rerun the same command (it starts over)", file=sys.stderr)
        return 130


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser(
        EvaluateConfig, description=__doc__, prog="python -m cxr_tf.evaluate", extra=add_quiet
    )
    config, args = parse_config(EvaluateConfig, parser, argv)
    if bad_inputs(
        "evaluate",
        run_problem("run_dir", config.run_dir, config.model),
        dataset_problem("dataset", config.dataset),
    ):
        return 2
    from cxr_tf.data.manifest import DatasetError
    from cxr_tf.evaluation import report
    from cxr_tf.evaluation.evaluator import REPORT_MD, evaluate

    try:
        result = evaluate(config, progress=not args.quiet)
    # runs.ModelFileError (a damaged model file) is a ValueError.
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    if result["task"] == "multiclass":
        mc = result["multiclass"]
        print(f"accuracy {report.fmt(mc['accuracy'])}, macro AUROC {report.fmt(mc['macro_auroc'])}")
    mean = result["mean_auroc"]
    where = f"{result['dataset']} " if result.get("external") else ""
    print(
        f"{where}{result['split']}: mean AUROC {report.fmt(mean['value'])} over "
        f"{mean['n_outputs']} of {len(result['outputs'])} outputs ({result['n_images']} images)"
    )
    if result.get("not_labelled"):
        print(f"not labelled by {result['dataset']}, skipped: {', '.join(result['not_labelled'])}")
    table = result.get("internal_vs_external")
    if table:
        print()
        print(report.comparison_markdown(table))
    print(f"wrote {result['out']}/{REPORT_MD}")
    return 0


if __name__ == "__main__":
    run_command(main, "evaluate")
