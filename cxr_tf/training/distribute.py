"""tf.distribute for training: the strategy a config names, and who is the chief.

`make_strategy` returns the strategy of `train.strategy` (default, mirrored or
multi_worker). Keras 3.15's TensorFlow trainer has two problems under
`MultiWorkerMirroredStrategy` (tensorflow/tensorflow#72388):

- it reduces every per-step log value (the scalar loss) with
  `strategy.reduce("MEAN", v, axis=0)`, which fails with "Invalid reduction dimension 0
  for input with 0 dimensions";
- it builds the loss and optimizer state from the first distributed batch by
  all-reducing it, which fails the same way.

`prepare(model, ...)` builds the model's training state from a plain batch of the right
shapes and replaces the log reduction by a mean over replicas (`axis=None`, what is
meant; gradients are unaffected). It touches Keras internals, so it checks the exact
Keras version it was written for and is applied only for `train.strategy=multi_worker`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import numpy as np

KERAS_VERSION = "3.15."  # the release series these internals were read from


class UnsupportedKerasVersion(RuntimeError):
    """The installed Keras is not the one the workaround was written for."""


def check_version(version: str | None = None) -> None:
    """Raises UnsupportedKerasVersion unless Keras is 3.15.x."""
    version = version or keras.__version__
    if not version.startswith(KERAS_VERSION):
        raise UnsupportedKerasVersion(
            f"train.strategy=multi_worker relies on a workaround of Keras {KERAS_VERSION}x "
            f"internals (tensorflow/tensorflow#72388); installed Keras is {version}. Check "
            f"whether the issue is fixed upstream and update cxr_tf/training/distribute.py"
        )


def _patch_log_reduction() -> None:
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "patched_by_cxr_tf", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.patched_by_cxr_tf = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


def prepare(model: keras.Model, stored_size: int, outputs: int) -> None:
    """Builds `model`'s compiled state for a multi-worker fit (call inside the scope)."""
    check_version()
    model._symbolic_build(  # no public equivalent in Keras 3.15
        data_batch=(
            np.zeros((1, stored_size, stored_size, 1), np.float32),
            np.zeros((1, outputs), np.float32),
        )
    )
    # Keras would otherwise all-reduce the first distributed batch just to build what is
    # built now; fit() runs inside strategy.scope(), so the strategy still applies.
    model._distribute_strategy = None
    _patch_log_reduction()


def _tf_config() -> dict:
    return json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")


def worker_shard() -> tuple[int, int]:
    """(this process's index, number of training processes) from TF_CONFIG.

    The chief, when the cluster names one, is index 0 and the workers follow; without a
    TF_CONFIG this is the only process, (0, 1).
    """
    config = _tf_config()
    cluster, task = config.get("cluster", {}), config.get("task", {})
    if not task:
        return 0, 1
    chiefs = len(cluster.get("chief", []))
    count = chiefs + len(cluster.get("worker", []))
    index = int(task.get("index", 0))
    return (index if task.get("type") == "chief" else chiefs + index), max(count, 1)


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker."""
    task = _tf_config().get("task", {})
    if not task or task.get("type") == "chief":
        return True
    return worker_shard()[0] == 0


def make_strategy(name: str):
    """The tf.distribute strategy named in the config."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_version()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
