"""`python -m cxr_tf.localize`: heatmap localization of a trained run against the NIH boxes.

Examples:
  # Grad-CAM on every test image with boxes: Wang et al.'s table and the pointing game
  python -m cxr_tf.localize --run_dir runs/densenet121-multilabel-3f9c2a1b

  # CAM for one finding, 20 overlays, boxes where heat >= 0.6 x the map's maximum
  python -m cxr_tf.localize --run_dir RUN --method cam --finding Cardiomegaly \\
      --overlays 20 --threshold 0.6

For every image of the split that has ground-truth boxes, each boxed finding the model
predicts gets a heatmap of its logit (`cxr_tf.evaluation.localization.gradcam` or `.cam`) at the
stored image size; boxes come from thresholding the heatmap (connected components, as in
Wang et al. 2017). Each ground-truth box is one case, scored by IoU and IoBB with the
predicted boxes and by the pointing game (the heatmap's peak inside the box).

Writes into `--out` (default RUN/localize_<split>): `localization.json` (the table and
every case), `localization.md` (accuracy at T(IoBB) in {0.1, 0.25, 0.5, 0.75, 0.9} per
finding in Wang et al.'s layout, with their published numbers as reference rows) and
`overlays/*.png` for the first `--overlays` images (those of an earlier run in the folder
are removed first): the heatmap, the ground-truth box (green) and the predicted boxes (red
dashed), for each boxed finding, or only `--finding`, and the image's `--top_k` most
probable outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import add_quiet, bad_inputs, build_parser, parse_config, run_command, run_problem
from cxr_tf.config import ConfigError, LocalizeConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (130 on Ctrl-C)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("\nlocalize: interrupted; rerun the same command (it starts over)", file=sys.stderr)
        return 130


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser(
        LocalizeConfig, description=__doc__, prog="python -m cxr_tf.localize", extra=add_quiet
    )
    config, args = parse_config(LocalizeConfig, parser, argv)
    if bad_inputs("localize", run_problem("run_dir", config.run_dir, config.model)):
        return 2
    from cxr_tf.data.manifest import DatasetError
    from cxr_tf.evaluation import report
    from cxr_tf.evaluation.localizer import LOCALIZATION_MD, localize

    try:
        result = localize(config, progress=not args.quiet)
    # runs.ModelFileError (a damaged model file) is a ValueError.
    except (ConfigError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"localize: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{result['split']}: {result['n_cases']} boxes on {result['n_images']} images, "
        f"pointing game {report.fmt(result['pointing_game'])}, accuracy at IoBB > 0.5: "
        f"{report.fmt(result['table']['all']['accuracy']['0.5'])}"
    )
    print(f"wrote {result['out']}/{LOCALIZATION_MD}")
    return 0


if __name__ == "__main__":
    run_command(main, "localize")
