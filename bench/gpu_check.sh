#!/usr/bin/env bash
# GPU check for one H100/H200: install the carried bundles (bench/device_wheels.sh) if DALI is not
# importable, then run bench/gpu_check.py, which runs every GPU path once and records each step as
# PASS / FAIL / SKIPPED with its figure in $OUT (table on stdout, $OUT/summary.json). Exit code 1
# when any step failed. GPU_CHECK_DRY=1 runs the same steps' CPU twins (tests/test_gpu_check.py).
set -euo pipefail
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .carry ] && ! python3 -c "import nvidia.dali" 2>/dev/null; then
  # Join DALI's wheel from its parts (bundle order does not matter, part names do) and install
  # into the image's own environment: nvImageCodec ships nvidia/__init__.py, which must sit in the
  # same folder as torch's nvidia-* libraries rather than shadow them from another path.
  name=$(cat .carry/*/dali.whl.name)
  find .carry -name 'dali.whl.part-*' -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat > "/tmp/$name"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "/tmp/$name" .carry/*/*.whl
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || [ "${GPU_CHECK_DRY:-0}" = 1 ]
python3 bench/gpu_check.py --out "$OUT" "$@"
