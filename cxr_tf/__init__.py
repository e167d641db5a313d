"""cxr_tf: chest X-ray classifiers on NIH ChestX-ray14 with Keras 3 and TensorFlow.

Quiet by default: TensorFlow's start-up chatter (oneDNN, CUDA probing on CPU machines,
"All log messages before absl::InitializeLog()") and TFDS' `dtype` deprecation notices
bury the commands' own output, so they are silenced. `CXR_TF_VERBOSE=1` shows them; an
explicit `TF_CPP_MIN_LOG_LEVEL` in the environment wins.
"""

import importlib.abc
import importlib.util
import logging
import os
import sys

__version__ = "0.1.0"

VERBOSE = os.environ.get("CXR_TF_VERBOSE", "") not in ("", "0")


class _QuietImport(importlib.abc.MetaPathFinder):
    """Sends the C++ libraries' start-up lines to /dev/null while `tensorflow` imports.

    They are written by C++ code straight to file descriptor 2 before any logging is set
    up, so no Python setting reaches them; Python errors still surface as exceptions.
    """

    def find_spec(self, name, path=None, target=None):  # finder API
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module):
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                with open(os.devnull, "w") as devnull:
                    os.dup2(devnull.fileno(), 2)
                    execute(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


class _DropDeprecations(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "dtype` is deprecated" not in record.getMessage()


class _DropRetracing(logging.Filter):
    """TensorFlow's "N out of the last M calls ... triggered tf.function retracing": Keras
    traces a predict function per model and per batch shape (the last batch is smaller), so
    a command that runs several models in one process (the demo: train, evaluate, localize,
    export, predict) trips TensorFlow's count; it says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def python_command() -> str:
    """This Python as a printed command should call it: relative to the working folder when
    it lies below it (`.venv/bin/python`), else its full path."""
    executable = os.path.abspath(sys.executable)
    relative = os.path.relpath(executable)
    return executable if relative.startswith("..") else relative


if not VERBOSE:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietImport())
    logging.getLogger("absl").addFilter(_DropDeprecations())
    logging.getLogger("tensorflow").addFilter(_DropRetracing())
