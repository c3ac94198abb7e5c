#!/usr/bin/env bash
# One prepared run on the GPU device machine for the learner: the gpu-marked policy tests and
# benchmarks/learner.py --device cuda (updates/s vs the reference, sampling + update from
# GPU-resident replay buffers, actor jitter). tests/conftest.py imports open_clip, which the
# device image lacks: carry it as wheels in .whl/ (open_clip_torch, ftfy, wcwidth; see the device
# README). Writes to $OUT. Usage there: bash benchmarks/device_learner.sh
set -uo pipefail
OUT=${OUT:-/tmp/twinloop-device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_policy_gpu.py 2>&1 | tee "$OUT/pytest_gpu.txt"
python3 benchmarks/learner.py --device cuda --end-to-end --threads 4 \
  --seconds "${SECONDS_PER_CASE:-2}" --rounds 5 --no-write >"$OUT/learner_cuda.md" \
  2>"$OUT/learner_cuda.log"
echo "learner.py exit $?"
cat "$OUT/learner_cuda.md"
