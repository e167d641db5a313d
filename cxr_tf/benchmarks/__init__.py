"""What `python -m cxr_tf.bench` runs, one module per stage it times."""
