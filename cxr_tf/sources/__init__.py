"""Dataset sources: each folder kind `--source` names read into one common table.

`catalog` (the table) and `base` (the `Source` interface, shared CSV helpers) come first;
one module per source (`nih`, `chexpert`, `mimic`, `padchest`, `folders`, `csv_labels`)
builds on them, and `registry` lists the sources. `images` says where image files live and
`dicom` decodes DICOM files (a format, read in every source and by `predict`). Outside this
package only `registry`, `catalog`, `base`, `images` and `dicom` are imported.
"""
