"""What `python -m cxr_tf.explore` computes and draws about a dataset (not part of the data
path): `exploration` (statistics) and `exploration_report` (plots and markdown)."""
