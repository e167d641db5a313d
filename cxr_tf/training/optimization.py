"""What `fit` compiles: the loss with the training split's class weights, the optimizer
and its schedule, and the mixed-precision policy. Tuning trials and `bench model` compile
the same way; this module imports no TensorFlow (`bench model` runs on JAX or torch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from cxr_tf.config import RunConfig
from cxr_tf.modeling import losses

if TYPE_CHECKING:  # the targets module imports TensorFlow; `bench model` must not
    from cxr_tf.data.targets import LabelSpec

# --- building blocks shared with tuning ---------------------------------------------------


def build_loss(run: RunConfig, spec: LabelSpec, counts: np.ndarray, total: np.ndarray | int):
    """The configured loss, with class weights from the training split's counts (`total`:
    per output, the images whose label is known)."""
    return losses.build_loss(
        run.train.loss,
        spec.task,
        pos_counts=counts,
        total=total,
        gamma=run.train.focal_gamma,
        alpha=run.train.focal_alpha,
    )


def make_optimizer(run: RunConfig, lr: float, steps_per_epoch: int, epochs: int):
    """Adam/AdamW with a constant rate or cosine decay with linear warm-up."""
    train = run.train
    rate: Any = lr
    if train.schedule == "cosine":
        total = max(1, steps_per_epoch * epochs)
        warmup = min(int(train.warmup_epochs * steps_per_epoch), total - 1)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else lr,
            decay_steps=total - warmup,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=train.weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def compile_model(
    model: keras.Model,
    run: RunConfig,
    loss: Any,
    lr: float,
    steps_per_epoch: int,
    epochs: int,
) -> keras.Model:
    """The one place that compiles a classifier (training and tuning both call it)."""
    model.compile(
        optimizer=make_optimizer(run, lr, steps_per_epoch, epochs),
        loss=loss,
        jit_compile=run.train.xla,
    )
    return model


@contextlib.contextmanager
def precision_policy(run: RunConfig) -> Iterator[None]:
    """The run's mixed-precision policy while the block runs; the previous one after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if run.train.mixed_precision else "float32"
    )
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
