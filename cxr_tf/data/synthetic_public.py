"""Synthetic CheXpert, MIMIC-CXR-JPG and PadChest imitations (work in progress)."""
