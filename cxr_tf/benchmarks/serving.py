"""The serving benchmark: the exported `serving_default` vs `model.predict`, on CPU."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cxr_tf.config import (
    BenchServeConfig,
)


def _bench_images(config: BenchServeConfig, count: int) -> list[bytes]:
    """Encoded PNGs: files from --images, else synthetic gray chest-film-like images."""
    import numpy as np
    import tensorflow as tf

    if config.images:
        folder = Path(config.images)
        files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jp*g"))
        if not files:
            raise SystemExit(f"bench serve: no PNG/JPEG files in {folder}")
        return [files[i % len(files)].read_bytes() for i in range(count)]
    rng = np.random.default_rng(config.seed)
    side = config.source_size
    ramp = np.linspace(40, 200, side, dtype=np.float32)
    images = []
    for _ in range(min(count, 8)):  # 8 distinct images, cycled
        noise = rng.normal(0, 6, (side, side)).astype(np.float32)
        image = np.clip(ramp[None, :] * 0.5 + ramp[:, None] * 0.5 + noise, 0, 255)
        images.append(tf.io.encode_png(image.astype(np.uint8)[..., None]).numpy())
    return [images[i % len(images)] for i in range(count)]


def _latencies(calls: dict, repeats: int, min_seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each path, timed in rounds of one call per path.

    Interleaving spreads any drift in machine load (shared cores) over every path alike.
    Two untimed warm-up calls per path; then rounds until each path has `repeats` calls
    and the rounds took `min_seconds` per path.
    """
    for call in calls.values():
        for _ in range(2):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    begin = time.perf_counter()
    while True:
        enough = min(len(t) for t in times.values()) >= repeats
        if enough and time.perf_counter() - begin >= min_seconds * len(calls):
            break
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def bench_serve(config: BenchServeConfig) -> dict:
    import numpy as np
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # the figures are CPU figures
    from cxr_tf.config import ExportConfig
    from cxr_tf.data import preprocessing
    from cxr_tf.runs import folder as runs
    from cxr_tf.serving import client, exporter

    run_dir = Path(config.run_dir)
    out = Path(config.workdir) / "serve_export"
    shutil.rmtree(out, ignore_errors=True)
    folder = exporter.export(
        ExportConfig(
            run_dir=str(run_dir), model=config.model, name="bench", version=1, out=str(out),
            warmup=False,
        ),
        verbose=False,
    )  # fmt: skip
    loaded = tf.saved_model.load(str(folder))
    serve_bytes = loaded.signatures[client.SERVING_SIGNATURE]
    serve_images = loaded.signatures[client.IMAGES_SIGNATURE]
    model = runs.load_model(run_dir, config.model)
    size = int(model.inputs[0].shape[1])
    encoded = _bench_images(config, max(config.batches))
    stored = np.stack([preprocessing.bytes_to_stored(b, size).numpy() for b in encoded])
    stored = stored.astype(np.float32)
    rows = []
    for batch in config.batches:
        data = tf.constant(encoded[:batch], dtype=tf.string)
        x_np = stored[:batch]
        x_tf = tf.constant(x_np)
        paths = {
            "SavedModel serving_default (PNG bytes)": lambda d=data: serve_bytes(image_bytes=d),
            "SavedModel predict_images (tensors)": lambda x=x_tf: serve_images(images=x),
            "Keras model.predict (tensors)": lambda x=x_np, b=batch: model.predict(
                x, batch_size=b, verbose=0
            ),
            "Keras model(x) direct call (tensors)": lambda x=x_tf: model(x, training=False),
        }
        for name, measured in _latencies(paths, config.repeats, config.min_seconds).items():
            times = np.array(measured)
            rows.append(
                {
                    "batch": batch,
                    "path": name,
                    "calls": int(len(times)),
                    "requests_s": float(1.0 / times.mean()),
                    "images_s": float(batch / times.mean()),
                    "p50_ms": float(np.percentile(times, 50) * 1000),
                    "p95_ms": float(np.percentile(times, 95) * 1000),
                }
            )
    source = config.images or f"synthetic {config.source_size}px gray PNGs"
    print(
        f"serve benchmark: {run_dir} ({runs.MODEL_FILES[config.model]}), stored size {size}, "
        f"CPU ({os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f}), "
        f"images: {source}, one client, sequential calls interleaved across paths"
    )
    print(f"  {'batch':>5}  {'path':<40} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for r in rows:
        print(
            f"  {r['batch']:>5}  {r['path']:<40} {r['requests_s']:8.2f} {r['images_s']:8.1f} "
            f"{r['p50_ms']:8.1f} {r['p95_ms']:8.1f}"
        )
    return {"run_dir": str(run_dir), "stored_size": size, "source": source, "rows": rows}
