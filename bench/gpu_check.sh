#!/usr/bin/env bash
# GPU check for one H100/H200 (about 5 minutes): ResNet-50 training throughput of the project's
# trainer against a bare PyTorch loop in the same process (bf16 + channels_last, synthetic data),
# the naive fp32 baseline, torch.compile variants, and a JPEG-decode baseline
# (torchvision.io.decode_jpeg on the GPU) for the data-stall question. Output goes to $OUT (or ./gpu_check_out).
set -euo pipefail
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
repo="$(pwd)"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$repo"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
BATCH="${BATCH:-256}"
python3 -m pipeline bench train --model resnet50 --batch "$BATCH" --steps 30 --repeats 3 2>&1 | tee "$OUT/bench_train_resnet50_b${BATCH}.txt"
python3 -m pipeline bench train --model resnet50 --batch "$BATCH" --steps 30 --repeats 3 --skip-fp32 --compile 2>&1 | tee "$OUT/bench_train_compile.txt" || true
python3 bench/gpu_decode.py 2>&1 | tee "$OUT/gpu_decode.txt" || true
