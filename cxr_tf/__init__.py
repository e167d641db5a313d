"""cxr_tf: chest X-ray classifiers on NIH ChestX-ray14 with Keras 3 and TensorFlow."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the commands' own output;
# an explicit TF_CPP_MIN_LOG_LEVEL in the environment still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
