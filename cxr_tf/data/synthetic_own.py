"""Synthetic class folders, labels CSV and DICOM imitations (work in progress)."""
