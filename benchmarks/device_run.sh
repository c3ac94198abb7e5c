#!/usr/bin/env bash
# One prepared run on the GPU device machine: the gpu-marked tests and the CUDA reward benchmark.
# Needs the pure-Python wheels the device image lacks in .whl/ (open_clip_torch, ftfy, wcwidth;
# see the device README) and writes to $OUT. Usage there: bash benchmarks/device_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/twinloop-device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_encoders.py tests/test_clip_reward.py \
  2>&1 | tee "$OUT/pytest_gpu.txt"
python3 benchmarks/reward.py --device cuda --models "${MODELS:-ViT-B-32,ViT-L-14}" --cameras 2 \
  --phases sync,spread --seconds "${SECONDS_PER_CASE:-8}" --no-write \
  --body-out "$OUT/reward_cuda.md" 2>&1 | tail -40
