"""Synthetic imitations of other datasets' layouts, for tests and the demo: which module
writes which `--layout` of `python -m cxr_tf.synth`.

- `cxr_tf.synthetic.public`: chexpert, mimic, padchest (the public releases' files,
  columns and folder layouts);
- `cxr_tf.synthetic.own`: folders, csv, dicom (a user's own images).

Each writes images drawn by `cxr_tf.synthetic.generator.draw` in a style of its own
(`cxr_tf.synthetic.generator.Style`), so a model trained on one layout and evaluated on another
meets a domain shift, as between hospitals.
"""

from __future__ import annotations

from typing import Any

from cxr_tf.config import SynthConfig

PUBLIC = ("chexpert", "mimic", "padchest")
OWN = ("folders", "csv", "dicom")


def generate_layout(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the imitation `config.layout` into `config.out`; returns its summary (at least
    `out`, `layout`, `n_images`, `n_patients`)."""
    if config.layout in PUBLIC:
        from cxr_tf.synthetic import public as writer
    elif config.layout in OWN:
        from cxr_tf.synthetic import own as writer
    else:
        raise ValueError(f"layout {config.layout!r} is written by cxr_tf.synthetic.generator")
    return writer.generate(config, progress=progress)
