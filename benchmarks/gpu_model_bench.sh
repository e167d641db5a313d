#!/usr/bin/env bash
# `bench model` on a GPU machine with JAX, PyTorch and timm (no TensorFlow needed), run from
# anywhere in the repository:
#
#   benchmarks/gpu_model_bench.sh            # figures: $OUT/bench_model_gpu_*.json (OUT=.)
#
# 1. fit: DenseNet121 as `fit` builds it (augmentation and the 256 -> 224 px resize inside
#    the step), jit on (XLA), bf16, at batch 64 and 128, next to timm's densenet121 (AMP
#    bf16, channels_last, torch.compile) in the same process.
# 2. no augmentation: the same rows without the augmentation layers, for comparison.
#
# Keras missing on the machine: put the wheels of keras, namex and optree (built for that
# machine's Python) into .whl/ (git-ignored; carry it), e.g.
#   pip download --no-deps -d .whl keras==3.15.1 namex optree \
#       --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
# and this script installs them (--no-deps: JAX brings numpy and ml_dtypes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-.}
STEPS=${STEPS:-10}
if ! "$PYTHON" -c "import keras" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .whl/*.whl
fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
# JAX otherwise takes 75% of the GPU memory up front; the timm peer shares the device.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PYTHON" -c "import jax, keras; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
common=(--backbone densenet121 --batch_sizes 64 128 --precision mixed_bfloat16 --jit on
        --warmup 3 --steps "$STEPS" --windows 3)
"$PYTHON" -m cxr_tf.bench model "${common[@]}" --peer timm --json "$OUT/bench_model_gpu_fit.json"
"$PYTHON" -m cxr_tf.bench model "${common[@]}" --no-augment --json "$OUT/bench_model_gpu_noaug.json"
