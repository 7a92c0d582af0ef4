#!/usr/bin/env bash
# The fast recipe (FFCV's, configs/imagenet/resnet18_fast_16ep.yaml) against the standard one
# (He 2015's, configs/imagenet/resnet18.yaml with its milestones at the same 1/3 and 2/3 of the
# budget) on the same small data, the same 16-epoch budget, both in fp32 NCHW (not `auto`, so the
# CPU type does not pick the precision). Sizes are scaled down from ImageNet's by 2: the fast
# recipe trains 80 -> 96 px (FFCV 160 -> 192) and validates at 128 (FFCV 256); the standard one
# trains and validates at 96 (ImageNet 224 / 256 resize). Both are then evaluated at 128 too.
#   bash bench/recipe_compare.sh [OUT_DIR] [SEEDS]      (default /tmp/recipe_compare, "0")
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/recipe_compare}"
seeds="${2:-0}"
py="${PYTHON:-.venv/bin/python}"
data="$out/data"
[ -d "$data" ] || "$py" -m pipeline make-demo-data "$data" --size 144 --train-per-class 60 --val-per-class 20
common=(data.path="$data" model.num_classes=10 data.batch_size=64 data.workers=2 trainer.epochs=16
        trainer.precision=fp32 trainer.channels_last=false trainer.checkpoint_every=0 trainer.eval_every=16
        logging.wandb.mode=disabled logging.progress=none trainer.resume=never)
for seed in $seeds; do
  for recipe in standard fast; do
    run="$out/$recipe-s$seed"
    if [ "$recipe" = standard ]; then
      args=(-c configs/imagenet/resnet18.yaml data.image_size=96 "optim.milestones=[5,11]")
    else
      args=(-c configs/imagenet/resnet18_fast_16ep.yaml data.image_size_start=80 data.image_size=96
            data.size_step=16 data.val_image_size=128)
    fi
    start=$(date +%s.%N)
    "$py" -m pipeline train "${args[@]}" "${common[@]}" trainer.seed="$seed" trainer.run_dir="$run" > "$run.log" 2>&1
    end=$(date +%s.%N)
    full=$("$py" -m pipeline eval "${args[@]}" "${common[@]}" trainer.run_dir="$run" data.val_image_size=128 \
           | tail -1)
    "$py" - "$run" "$recipe" "$seed" "$start" "$end" "$full" <<'PY'
import json, sys
run, recipe, seed, start, end, full = sys.argv[1:]
s = json.load(open(f"{run}/summary.json"))
print(json.dumps({"recipe": recipe, "seed": int(seed), "wall_s": round(float(end) - float(start), 1),
                  "train_seconds": s["train_seconds"], "own_val_top1": s["final/val/top1"],
                  "val128_top1": json.loads(full)["val/top1"], "data_backend": s.get("data_backend"),
                  "precision": s.get("precision")}))
PY
  done
done
