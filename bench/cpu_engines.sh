#!/usr/bin/env bash
# Per-step cost of DDP and DeepSpeed ZeRO-1/2 against one process, on CPU (2 processes x 1 thread
# vs 1 process x 2 threads; same global batch; synthetic data). Prints one line per engine.
set -euo pipefail
out="${OUT:-/tmp/cpu_engines}"
mkdir -p "$out"
common=(model.name=resnet18 data.dataset=synthetic data.image_size=112 data.synthetic_samples=1024
        trainer.epochs=1 trainer.log_every=4 logging.progress=none trainer.checkpoint_every=0)
python -m pipeline train "${common[@]}" data.batch_size=64 trainer.run_dir="$out/single" > /dev/null
for engine in ddp zero1 zero2; do
  extra=(trainer.engine=ddp)
  [ "$engine" != ddp ] && extra=(trainer.engine=deepspeed "distributed.zero_stage=${engine#zero}")
  OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m pipeline train "${common[@]}" data.batch_size=32 \
    "${extra[@]}" trainer.run_dir="$out/$engine" > /dev/null 2>&1
done
for run in single ddp zero1 zero2; do
  python - "$out/$run/summary.json" "$run" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<7} {s['train/img_per_sec']:.1f} img/s (median of log windows), world {s['world_size']}")
PY
done
