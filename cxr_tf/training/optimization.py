"""What `fit` compiles: the loss with the training split's class weights, the optimizer
and its schedule, the mixed-precision policy, and whether the train step is compiled
(`--train.xla`: XLA on TensorFlow, jit on JAX). Tuning trials and `bench model` compile the
same way; this module imports TensorFlow only on the TensorFlow backend (`bench model`
runs on JAX or torch).

`--train.xla` never falls back silently: Keras would run a model holding a layer that
declares `supports_jit=False` uncompiled with only a warning, and TensorFlow's XLA fails
on an op it has no kernel for only at the first step, deep in a traceback. `check_jit`
finds both up front and `compile_model` raises a ConfigError naming the layer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from cxr_tf.config import ConfigError, RunConfig
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
    """The one place that compiles a classifier (training, tuning and `bench model`).

    Raises:
        ConfigError: `run.train.xla` is on and the train step cannot be compiled.
    """
    if run.train.xla:
        check_jit(model)
    model.compile(
        optimizer=make_optimizer(run, lr, steps_per_epoch, epochs),
        loss=loss,
        jit_compile=run.train.xla,
    )
    if run.train.xla and not model.jit_compile:  # Keras' other reasons, e.g. op determinism
        raise ConfigError(
            "train.xla: Keras declined to compile the train step (TensorFlow op determinism "
            "on, or TensorFlow on an Apple GPU); run without --train.xla"
        )
    return model


def jit_blockers(model: keras.Model) -> list[str]:
    """`name (Class)` of each layer, nested ones included, that declares
    `supports_jit=False`: Keras runs a model holding one without jit, whatever was asked."""
    return sorted(
        f"{layer.name} ({type(layer).__name__})"
        for layer in model._flatten_layers()
        if not layer.supports_jit
    )


def check_jit(model: keras.Model) -> None:
    """Stops unless the model's training-mode forward pass compiles (XLA, jit).

    Checks the layers' `supports_jit` declarations on every backend and, on TensorFlow,
    lowers the forward pass to XLA's HLO (a trace and a conversion, no compilation),
    which fails on an op XLA has no kernel for.

    Raises:
        ConfigError: naming the layer(s) that cannot be compiled.
    """
    blockers = jit_blockers(model)
    if blockers:
        raise ConfigError(
            f"train.xla: the train step cannot be compiled: layer(s) {', '.join(blockers)} "
            f"declare supports_jit=False; run without --train.xla"
        )
    if keras.backend.backend() == "tensorflow":
        _check_tf_xla(model)


def _check_tf_xla(model: keras.Model) -> None:
    import tensorflow as tf

    if tf.distribute.has_strategy() and tf.distribute.get_replica_context() is None:
        return  # cross-replica context of a distribution strategy: the first step tells
    spec = tf.TensorSpec((1, *model.inputs[0].shape[1:]), model.inputs[0].dtype)
    forward = tf.function(lambda x: model(x, training=True), jit_compile=True)
    try:
        forward.experimental_get_compiler_ir(spec)(stage="hlo")
    except (ValueError, tf.errors.OpError) as err:
        text = str(err)
        if "unsupported operations" not in text:
            raise
        names = {layer.name for layer in model._flatten_layers(include_self=False)}
        ops_ = sorted(set(re.findall(r"No registered '(\w+)'", text)))
        where = set()
        for node in re.findall(r"\{\{node ([^}]+)\}\}", text):
            for part in node.split("/"):  # name scopes; a layer's may carry a _N suffix
                name = part if part in names else re.sub(r"_\d+$", "", part)
                if name in names:
                    where.add(name)
        raise ConfigError(
            f"train.xla: XLA cannot compile the train step: op(s) {', '.join(ops_) or '?'} "
            f"in layer(s) {', '.join(sorted(where)) or '?'}; run without --train.xla"
        ) from None


def step_line(run: RunConfig) -> str:
    """The line `fit` prints on whether its train step is compiled (`compile_model` makes
    it true or raises)."""
    if run.train.xla:
        compiler = "XLA" if keras.backend.backend() == "tensorflow" else "jit"
        return f"train step: compiled ({compiler}, --train.xla)"
    return "train step: not compiled (--train.xla compiles it)"


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
