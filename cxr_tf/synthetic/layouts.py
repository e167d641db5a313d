"""Every synthetic imitation, in one place: the `--layout` choices of `python -m cxr_tf.synth`
and the one module that imports the imitation modules.

Each imitation writes one dataset's files, columns and folder layout (`cxr_tf.synthetic.<name>`)
with images drawn by `cxr_tf.synthetic.drawing` in a style of its own, so that a model
trained on one layout and evaluated on another meets a domain shift, as between hospitals.
The rest of the package asks here (`generate_layout`, `LAYOUTS`, `check_layout`); adding an
imitation is one module beside these (its `IMITATION = common.Imitation(...)`) and one line
below.
"""

from __future__ import annotations

from typing import Any

from cxr_tf.config import ConfigError, SynthConfig
from cxr_tf.synthetic import (
    chexpert,
    csv_labels,
    dicom,
    folders,
    mimic,
    nih,
    padchest,
    rsna,
    vindr,
)
from cxr_tf.synthetic.common import Imitation

# In the order `--help` lists them.
_ALL: tuple[Imitation, ...] = (
    nih.IMITATION,
    nih.IMITATION_ARCHIVES,
    chexpert.IMITATION,
    mimic.IMITATION,
    padchest.IMITATION,
    vindr.IMITATION,
    rsna.IMITATION,
    folders.IMITATION,
    csv_labels.IMITATION,
    dicom.IMITATION,
)
_BY_LAYOUT: dict[str, Imitation] = {imitation.layout: imitation for imitation in _ALL}
# The values `--layout` takes.
LAYOUTS: tuple[str, ...] = tuple(_BY_LAYOUT)
# The layouts of other sources than the default NIH-like dataset (the conversion
# benchmark times each against the NIH one).
OTHER_LAYOUTS: tuple[str, ...] = tuple(
    i.layout for i in _ALL if i not in (nih.IMITATION, nih.IMITATION_ARCHIVES)
)


def check_layout(layout: str) -> None:
    """ConfigError naming the `layout` field and the choices unless `layout` is one of
    LAYOUTS (the config cannot list them: they are defined here, above it)."""
    if layout not in _BY_LAYOUT:
        raise ConfigError(f"layout: must be one of {', '.join(LAYOUTS)}, not {layout!r}")


def describe() -> str:
    """The layouts and what each writes, one line each (for `--help`)."""
    width = max(len(layout) for layout in LAYOUTS)
    return "\n".join(f"  {i.layout:<{width}}  {i.about}" for i in _ALL)


def generate_layout(config: SynthConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the imitation `config.layout` into `config.out`; returns its summary (at least
    `out`, `layout`, `n_images`, `n_patients`).

    Raises:
        ConfigError: `config.layout` is none of LAYOUTS.
    """
    check_layout(config.layout)
    return _BY_LAYOUT[config.layout].generate(config, progress)
