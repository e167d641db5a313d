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

Per output (finding): prevalence, AUROC with a 95% patient-level bootstrap interval,
AUPRC, sensitivity / specificity / PPV / NPV / F1 / accuracy and the confusion counts at
the validation-chosen threshold, ECE, Brier score and a reliability diagram. Outputs
without positives (or negatives) in the split have an undefined AUROC and are left out of
the mean, which says over how many outputs it is. A multi-class run gets accuracy, the
confusion matrix and one-vs-rest AUROC per class instead of thresholds.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import add_quiet, build_parser, parse_config
from cxr_tf.config import ConfigError, EvaluateConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser(
        EvaluateConfig, description=__doc__, prog="python -m cxr_tf.evaluate", extra=add_quiet
    )
    config, args = parse_config(EvaluateConfig, parser, argv)
    from cxr_tf.data import pipeline
    from cxr_tf.evaluation import report
    from cxr_tf.evaluation.evaluator import REPORT_MD, evaluate

    try:
        result = evaluate(config, progress=not args.quiet)
    # runs.ModelFileError (a damaged model file) is a ValueError.
    except (ConfigError, pipeline.DatasetError, FileNotFoundError, ValueError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    if result["task"] == "multiclass":
        mc = result["multiclass"]
        print(f"accuracy {report.fmt(mc['accuracy'])}, macro AUROC {report.fmt(mc['macro_auroc'])}")
    mean = result["mean_auroc"]
    print(
        f"{result['split']}: mean AUROC {report.fmt(mean['value'])} over {mean['n_outputs']} of "
        f"{len(result['outputs'])} outputs ({result['n_images']} images)"
    )
    print(f"wrote {result['out']}/{REPORT_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
