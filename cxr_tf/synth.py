"""`python -m cxr_tf.synth --out DIR --n N --seed S [--layout L]`: a synthetic dataset folder
with learnable findings, for tests, the demo and benchmarks. The default layout imitates NIH
ChestX-ray14 (label file, box file, split lists, PNGs); the others imitate the other
sources' public releases or hold your own kind of images (class folders, a labels CSV,
DICOM files), each in its own style, so that a model trained on one and evaluated on
another shows a domain shift. The imitations: `cxr_tf.synthetic.layouts`; what is drawn
and how: `cxr_tf.synthetic.drawing`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import build_parser, parse_config, run_command
from cxr_tf.config import SynthConfig
from cxr_tf.synthetic import layouts


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr_tf.synth --out DIR --n N --seed S`."""
    parser = build_parser(
        SynthConfig,
        description=__doc__.split("\n\n")[0] if __doc__ else "",
        prog="python -m cxr_tf.synth",
        choices={"layout": layouts.LAYOUTS},
    )
    parser.epilog = f"layouts:\n{layouts.describe()}"
    config, _ = parse_config(
        SynthConfig, parser, argv, check=lambda c: layouts.check_layout(c.layout)
    )
    summary = layouts.generate_layout(config)
    if "n_boxes" in summary:  # the NIH imitation: its split and box file
        print(
            f"wrote {summary['n_images']} images of {summary['n_patients']} patients "
            f"({summary['no_finding']} No Finding, {summary['n_test']} test, "
            f"{summary['n_boxes']} boxes) to {summary['out']}",
            file=sys.stderr,
        )
    else:
        print(
            f"wrote a {config.layout} imitation: {summary['n_images']} images of "
            f"{summary['n_patients']} patients to {summary['out']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    run_command(main, "synth")
