"""DICOM pixel data and header reading (work in progress)."""
