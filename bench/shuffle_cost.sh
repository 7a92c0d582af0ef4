#!/usr/bin/env bash
# What the streaming order costs against a global shuffle (issue 42): the demo job (ResNet-20, 32 px,
# 5 epochs) on the demo data as shards, data.shuffle=global vs blocks (window 2 of 22 train shards: 1/11 of the data per window;
# ImageNet's default is 16 of ~275 shards, 1/17),
# three seeds each; prints each run's final val top-1. Usage: bash bench/shuffle_cost.sh OUT_DIR
set -euo pipefail
out="${1:?output folder}"
py="${PIPELINE_PYTHON:-.venv/bin/python}"
mkdir -p "$out"
[ -d "$out/demo" ] || "$py" -m pipeline make-demo-data "$out/demo" >/dev/null
[ -d "$out/shards/train" ] || "$py" -m pipeline prepare shards "$out/demo" --out "$out/shards" --shard-mb 0.2 >/dev/null 2>&1
echo "train shards: $(find "$out/shards/train" -name '*.tar' | wc -l)"
for seed in 0 1 2; do
  for order in global blocks; do
    run="$out/run-$order-$seed"
    rm -rf "$run"
    OMP_NUM_THREADS=2 "$py" -m pipeline train data.path="$out/shards" data.make_demo=false data.backend=torchvision \
      data.shuffle="$order" data.shuffle_window=2 trainer.seed="$seed" trainer.precision=fp32 \
      trainer.run_dir="$run" logging.wandb.mode=disabled logging.progress=lines >/dev/null 2>&1
    echo "$order seed $seed top1 $("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['final/val/top1'])" "$run/summary.json")"
  done
done
