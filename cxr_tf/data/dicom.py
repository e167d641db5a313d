"""DICOM pixel data and header reading (work in progress)."""

from __future__ import annotations

import numpy as np


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then `DICM`."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode(data: bytes) -> np.ndarray:
    raise ValueError("DICOM decoding is not available yet")
