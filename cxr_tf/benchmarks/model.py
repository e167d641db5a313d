"""The model benchmark on any Keras backend (no TensorFlow import under JAX or torch), with
timm's DenseNet121 in PyTorch as the peer."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cxr_tf import config as config_lib
from cxr_tf.config import (
    BenchModelConfig,
)

# --- bench model: the project's network on any Keras backend, and a timm peer --------------

# Synthetic multi-label targets: about one positive in ten, like NIH's findings.
_PREVALENCE = 0.1


def step_figures(window_seconds: Sequence[float], steps: int, batch: int) -> dict:
    """ms/step and images/s of the median timed window (each `steps` steps long)."""
    per_step = sorted(seconds / steps for seconds in window_seconds)
    middle = len(per_step) // 2
    median = (
        per_step[middle] if len(per_step) % 2 else (per_step[middle - 1] + per_step[middle]) / 2
    )
    return {
        "ms_step": median * 1000,
        "img_s": batch / median,
        "ms_step_windows": [seconds / steps * 1000 for seconds in window_seconds],
    }


def _time_windows(run_steps: Callable[[int], object], config: BenchModelConfig) -> list[float]:
    """Seconds of each timed window; `run_steps(n)` runs n steps and returns once they
    finished on the device. The warm-up (compilation included) is not timed."""
    run_steps(config.warmup)
    seconds = []
    for _ in range(config.windows):
        start = time.perf_counter()
        run_steps(config.steps)
        seconds.append(time.perf_counter() - start)
    return seconds


def _environment(backend: str) -> dict:
    """Versions and device of the Keras backend (importing only that backend)."""
    import keras

    info: dict = {
        "keras_backend": backend,
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        info.update(
            backend_version=jax.__version__, device=f"{device.platform} ({device.device_kind})"
        )
    elif backend == "torch":
        import torch

        cuda = torch.cuda.is_available()
        name = torch.cuda.get_device_name(0) if cuda else ""
        info.update(backend_version=torch.__version__, device=f"cuda ({name})" if cuda else "cpu")
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        name = details.get("device_name", "GPU")
        info.update(backend_version=tf.__version__, device=f"gpu ({name})" if gpus else "cpu")
    return info


def _reset_peak_memory(backend: str) -> None:
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def _peak_memory(backend: str) -> int | None:
    """Peak device bytes where the backend reports them (not for CPUs). JAX keeps one
    process-wide peak that cannot be reset: its figure is the peak so far in the run."""
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy `name` while the block runs (layers read it when built)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _cycle(items: list) -> Iterator:
    while True:
        yield from items


def _time_keras_model(config: BenchModelConfig, precision: str, jit: bool, batch: int) -> dict:
    """One row: the project's model built, compiled and fed as `fit` does (augmentation,
    resize and all inside the step), on two in-memory uint8 batches cycled (no input
    pipeline). With jit on, `compile_model` compiles the step or raises, naming the layer."""
    import keras
    import numpy as np

    from cxr_tf.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
    from cxr_tf.modeling import losses, models
    from cxr_tf.training import optimization

    run = RunConfig(
        model=ModelConfig(backbone=config.backbone, weights="", input_size=config.input_size),
        train=TrainConfig(epochs=1, xla=jit, seed=config.seed),
    )
    outputs = len(run.model.output_names)
    rng = np.random.default_rng(config.seed)
    side = config.stored_size
    batches = [
        (
            rng.integers(0, 256, (batch, side, side, 1), dtype=np.uint8),
            (rng.random((batch, outputs)) < _PREVALENCE).astype(np.float32),
        )
        for _ in range(2)
    ]
    backend = keras.backend.backend()
    with _dtype_policy(precision):
        # No keras.utils.set_random_seed: it imports TensorFlow wherever installed, and
        # the timing does not depend on the initial weights.
        model = models.build_model(
            run.model,
            stored_size=side,
            augment=AugmentConfig() if config.augment else None,
            seed=config.seed,
        )
        loss = losses.build_loss(
            run.train.loss, run.model.task, gamma=run.train.focal_gamma, alpha=run.train.focal_alpha
        )
        optimization.compile_model(model, run, loss, run.train.lr, config.steps, 1)
        _reset_peak_memory(backend)

        def train(steps: int) -> None:  # fit() returns once the last loss is on the host
            model.fit(_cycle(batches), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

        row: dict = {
            "model": f"cxr_tf {config.backbone}",
            "batch": batch,
            "precision": precision,
            "jit": "on" if jit else "off",
            # compile_model raises when jit is asked and cannot be had
            "jit_effective": bool(model.jit_compile),
            "train": step_figures(_time_windows(train, config), config.steps, batch),
        }
        if config.inference:
            images = [(x,) for x, _ in batches]  # (inputs,): a generator yields tuples

            def infer(steps: int) -> None:
                model.predict(_cycle(images), steps=steps, verbose=0)

            row["inference"] = step_figures(_time_windows(infer, config), config.steps, batch)
        row["peak_memory_bytes"] = _peak_memory(backend)
    return row


def _time_timm(
    config: BenchModelConfig, precision: str, jit: bool, batch: int, outputs: int
) -> dict:
    """One row of the timm peer (imports torch and timm, which the caller checked)."""
    import timm
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision)
    torch.manual_seed(config.seed)
    model = timm.create_model(config.peer_model, pretrained=False, num_classes=outputs)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)  # as fp16 AMP
    criterion = torch.nn.BCEWithLogitsLoss()
    net = torch.compile(model) if jit else model
    size = config.input_size
    x = torch.randn(batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, outputs, device=device) < _PREVALENCE).float()

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def sync() -> None:  # CUDA runs ahead of Python: wait for the device
        if cuda:
            torch.cuda.synchronize()

    def train(steps: int) -> None:
        net.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = criterion(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        sync()

    def infer(steps: int) -> None:
        net.eval()
        with torch.no_grad(), autocast():
            for _ in range(steps):
                net(x)
        sync()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    row: dict = {
        "model": f"timm {config.peer_model}",
        "batch": batch,
        "precision": precision,
        "jit": "on" if jit else "off",
        "jit_effective": jit,
        "train": step_figures(_time_windows(train, config), config.steps, batch),
    }
    if config.inference:
        row["inference"] = step_figures(_time_windows(infer, config), config.steps, batch)
    row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated()) if cuda else None
    return row


def _peer_timm(config: BenchModelConfig, outputs: int) -> dict:
    """timm's model in PyTorch at the same batch sizes, as timm's own benchmark runs it:
    device-resident float batches at the network size, channels_last, AMP for the mixed
    policies, torch.compile when jit is on; Adam and BCE-with-logits as the project's."""
    try:
        import timm
        import torch
    except ImportError as err:
        missing = err.name or str(err)
        return {"skipped": f"peer timm skipped: {missing} is not installed (it needs torch, timm)"}
    rows = []
    for precision in config.precision:
        for jit in config.jit:
            for batch in config.batch_sizes:
                try:
                    rows.append(_time_timm(config, precision, jit == "on", batch, outputs))
                except Exception as err:
                    rows.append(_error_row(f"timm {config.peer_model}", precision, jit, batch, err))
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    cuda = torch.cuda.is_available()
    size = config.input_size
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu",
        "input": f"float32 (batch, 3, {size}, {size}) on the device, no augmentation",
        "rows": rows,
    }


def _error_row(model: str, precision: str, jit: str, batch: int, err: Exception) -> dict:
    """A setting that failed (e.g. an op XLA cannot compile): the reason instead of figures."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
    for line in lines:  # XLA names the op it cannot compile on one line of a long message
        if "unsupported operations" in line or "No registered" in line or "train.xla" in line:
            reason = f"{type(err).__name__}: {line.strip()}"
            break
    return {"model": model, "batch": batch, "precision": precision, "jit": jit, "error": reason}


def _table_line(row: dict) -> str:
    if "error" in row:
        return (
            f"  {row['model']:<22} {row['precision']:<15} {row['jit']:<7} {row['batch']:>5} "
            f"failed: {row['error']}"
        )
    jit = row["jit"] if row["jit_effective"] == (row["jit"] == "on") else "on->off"
    infer = row.get("inference")
    memory = row["peak_memory_bytes"]
    return (
        f"  {row['model']:<22} {row['precision']:<15} {jit:<7} {row['batch']:>5} "
        f"{row['train']['img_s']:>11.1f} {row['train']['ms_step']:>9.1f} "
        + (
            f"{infer['img_s']:>11.1f} {infer['ms_step']:>9.1f} "
            if infer
            else f"{'-':>11} {'-':>9} "
        )
        + (f"{memory / 2**20:>9.0f}" if memory is not None else f"{'-':>9}")
    )


def bench_model(config: BenchModelConfig) -> dict:
    """Train-step and predict speed of `models.build_model` on in-memory uint8 batches, on
    the Keras backend in use (`KERAS_BACKEND`), with an optional timm peer."""
    import keras

    from cxr_tf.config import ModelConfig

    backend = keras.backend.backend()
    environment = _environment(backend)
    rows = []
    for precision in config.precision:
        for jit in config.jit:
            for batch in config.batch_sizes:
                try:
                    rows.append(_time_keras_model(config, precision, jit == "on", batch))
                except Exception as err:
                    rows.append(_error_row(f"cxr_tf {config.backbone}", precision, jit, batch, err))
                keras.backend.clear_session()  # free the model before the next one
                gc.collect()
    outputs = len(ModelConfig(backbone=config.backbone, weights="").output_names)
    peer = _peer_timm(config, outputs) if config.peer == "timm" else None
    augment = "on" if config.augment else "off"
    print(
        f"model benchmark: {config.backbone} (random init, augmentation {augment}), uint8 "
        f"{config.stored_size} px in -> {config.input_size} px, {outputs} outputs; keras "
        f"{environment['keras']} on {backend} {environment.get('backend_version', '')}, "
        f"{environment.get('device', '?')}, {environment['cpu_count']} CPUs (load "
        f"{environment['load_average_1min']:.1f}); median of {config.windows} windows of "
        f"{config.steps} steps after {config.warmup} warm-up steps"
    )
    print(
        f"  {'model':<22} {'precision':<15} {'jit':<7} {'batch':>5} {'train img/s':>11} "
        f"{'ms/step':>9} {'infer img/s':>11} {'ms/step':>9} {'peak MiB':>9}"
    )
    for row in rows + (peer or {}).get("rows", []):
        print(_table_line(row))
    if backend == "jax" and any(row.get("peak_memory_bytes") for row in rows):
        print("  peak MiB on jax: the process's peak so far (JAX cannot reset it)")
    if peer is not None and "skipped" in peer:
        print(f"  {peer['skipped']}")
    return {
        "config": config_lib.to_dict(config),
        "environment": environment,
        "rows": rows,
        "peer": peer,
    }
