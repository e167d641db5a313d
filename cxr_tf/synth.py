"""`python -m cxr_tf.synth --out DIR --n N --seed S`: a synthetic NIH ChestX-ray14-like folder
(label file, box file, split lists, PNGs) with learnable findings, for tests, the demo and
benchmarks. What is drawn and how: `cxr_tf.data.synthetic`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import SynthConfig


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr_tf.synth --out DIR --n N --seed S`."""
    parser = build_parser(
        SynthConfig,
        description=__doc__.split("\n\n")[0] if __doc__ else "",
        prog="python -m cxr_tf.synth",
    )
    config, _ = parse_config(SynthConfig, parser, argv)
    from cxr_tf.data.synthetic import generate

    summary = generate(config)
    print(
        f"wrote {summary['n_images']} images of {summary['n_patients']} patients "
        f"({summary['no_finding']} No Finding, {summary['n_test']} test, "
        f"{summary['n_boxes']} boxes) to {summary['out']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
