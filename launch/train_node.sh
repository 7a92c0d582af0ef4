#!/usr/bin/env bash
# One node: one process per GPU (or NPROC CPU processes without GPUs), DDP by default.
#   launch/train_node.sh [--config FILE] [key=value ...]
#   NPROC=2 launch/train_node.sh trainer.engine=deepspeed distributed.zero_stage=1
set -euo pipefail
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
nproc="${NPROC:-$(( gpus > 0 ? gpus : 1 ))}"
if [ "$gpus" -eq 0 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / nproc > 0 ? $(nproc) / nproc : 1 ))}"; fi
exec torchrun --standalone --nproc_per_node="$nproc" -m pipeline train "$@"
