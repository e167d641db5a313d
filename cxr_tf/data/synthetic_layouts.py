"""Synthetic imitations of other datasets' layouts (CheXpert, MIMIC-CXR-JPG, PadChest, class
folders, a labels CSV, DICOM files), drawn with `cxr_tf.data.synthetic.draw` (work in
progress)."""
