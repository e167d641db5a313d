"""cxr_tf: chest X-ray classifiers on NIH ChestX-ray14 with Keras 3 and TensorFlow."""

__version__ = "0.1.0"
