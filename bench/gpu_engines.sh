#!/usr/bin/env bash
# One GPU: ResNet-50 bf16 channels_last, batch 256, synthetic data: img/s and peak memory of the
# single-process trainer, DDP (world 1) and DeepSpeed ZeRO-0/1/2 (world 1), all via `pipeline train`.
set -euo pipefail
out="${OUT:-gpu_engines_out}"
mkdir -p "$out"
common=(model.name=resnet50 model.num_classes=1000 data.dataset=synthetic data.batch_size=256
        data.synthetic_samples=12800 trainer.epochs=1 trainer.log_every=10 logging.progress=none
        trainer.checkpoint_every=0 trainer.keep_checkpoints=1)
python3 -m pipeline train "${common[@]}" trainer.run_dir=/tmp/eng/single > "$out/single.log" 2>&1
for engine in ddp zero0 zero1 zero2; do
  extra=(trainer.engine=ddp)
  [ "$engine" != ddp ] && extra=(trainer.engine=deepspeed "distributed.zero_stage=${engine#zero}")
  torchrun --standalone --nproc_per_node=1 -m pipeline train "${common[@]}" "${extra[@]}" \
    trainer.run_dir="/tmp/eng/$engine" > "$out/$engine.log" 2>&1 || tail -5 "$out/$engine.log"
done
for run in single ddp zero0 zero1 zero2; do
  python3 - "/tmp/eng/$run/summary.json" "$run" <<'PY' | tee -a "$out/engines.txt"
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    print(f"{sys.argv[2]:<7} {s['train/img_per_sec']:.1f} img/s  peak {s['peak_memory_gib']} GiB  {s['device']}")
except FileNotFoundError:
    print(f"{sys.argv[2]:<7} failed")
PY
done
