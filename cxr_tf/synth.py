"""`python -m cxr_tf.synth --out DIR --n N --seed S [--layout L]`: a synthetic dataset folder
with learnable findings, for tests, the demo and benchmarks. The default layout imitates NIH
ChestX-ray14 (label file, box file, split lists, PNGs); the others imitate CheXpert,
MIMIC-CXR-JPG and PadChest, or hold your own kind of images (class folders, a labels CSV,
DICOM files), each in its own style, so that a model trained on one and evaluated on
another shows a domain shift. What is drawn and how: `cxr_tf.synthetic.generator` (NIH) and
`cxr_tf.synthetic.layouts` (the others)."""

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
    if config.layout not in ("nih", "nih_folders"):
        from cxr_tf.synthetic.layouts import generate_layout

        summary = generate_layout(config)
        print(
            f"wrote a {config.layout} imitation: {summary['n_images']} images of "
            f"{summary['n_patients']} patients to {summary['out']}",
            file=sys.stderr,
        )
        return 0
    from cxr_tf.synthetic.generator import generate

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
