#!/usr/bin/env bash
# GPU check for one H100/H200, about 5 minutes. Everything lands in $OUT (or ./gpu_check_out).
#  1. ResNet-50 training throughput, bf16 + channels_last, synthetic data: the project's trainer
#     against a bare PyTorch loop in the same process, plus the naive fp32 loop and peak memory.
#  2. When DALI is importable (bench/device_wheels.sh bundles it; the bundles in .carry/ are
#     installed here first), on ImageNet-sized JPEGs:
#     - the DALI GPU pipeline alone ("mixed" decode), images/s, against what training consumes;
#     - `pipeline train` on those JPEGs through DALI and on synthetic data, same model and batch:
#       images/s, the share of time the loop waits for data, peak memory.
#  3. The torchvision.io.decode_jpeg GPU decode baseline.
#  COMPILE=1 adds torch.compile (default and reduce-overhead = CUDA graphs) variants and a check that
#  CUDA graphs reproduce the eager losses (several more minutes: each variant compiles).
set -euo pipefail
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
repo="$(pwd)"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$repo"

if [ -d .carry ] && ! python3 -c "import nvidia.dali" 2>/dev/null; then
  # Join DALI's wheel from its parts (bundle order does not matter, part names do) and install
  # into the image's own environment: nvImageCodec ships nvidia/__init__.py, which must sit in the
  # same folder as torch's nvidia-* libraries rather than shadow them from another path.
  name=$(cat .carry/*/dali.whl.name)
  find .carry -name 'dali.whl.part-*' -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat > "/tmp/$name"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "/tmp/$name" .carry/*/*.whl
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
BATCH="${BATCH:-256}"
python3 -m pipeline bench train --model resnet50 --batch "$BATCH" --steps 30 --repeats 3 2>&1 | tee "$OUT/bench_train_resnet50_b${BATCH}.txt"
if [ "${COMPILE:-0}" = 1 ]; then
  for mode in default reduce-overhead; do
    python3 -m pipeline bench train --model resnet50 --batch "$BATCH" --steps 30 --repeats 3 --skip-fp32 --compile \
      --compile-mode "$mode" 2>&1 | tee "$OUT/bench_train_compile_${mode}.txt" || true
  done
  # CUDA graphs (reduce-overhead) must not change the arithmetic: the same 20 fp32 steps, eager and graphed.
  steps=(model.name=resnet18 data.backend=synthetic data.batch_size=64 data.image_size=224 trainer.precision=fp32
         trainer.epochs=1 trainer.max_steps=20 trainer.log_every=1 data.synthetic_samples=1280
         logging.progress=none logging.wandb.mode=disabled trainer.resume=never)
  python3 -m pipeline train "${steps[@]}" trainer.run_dir=/tmp/graphs_eager > "$OUT/graphs_eager.txt" 2>&1 || true
  python3 -m pipeline train "${steps[@]}" trainer.compile=true trainer.compile_mode=reduce-overhead \
    trainer.run_dir=/tmp/graphs_on > "$OUT/graphs_on.txt" 2>&1 || true
  python3 - <<'EOF' | tee "$OUT/graphs_vs_eager.txt" || true
import json
def losses(run):
    return [r["train/loss"] for r in map(json.loads, open(f"/tmp/{run}/metrics.jsonl")) if "train/loss" in r]
eager, graphs = losses("graphs_eager"), losses("graphs_on")
worst = max(abs(g - e) / abs(e) for e, g in zip(eager, graphs))
print(f"{len(eager)} eager / {len(graphs)} graphed steps; largest relative loss difference {worst:.2e}")
EOF
fi

if python3 -c "import nvidia.dali" 2>/dev/null; then
  python3 -c "import nvidia.dali; print('dali', nvidia.dali.__version__)" | tee -a "$OUT/gpu.txt"
  jpegs=/tmp/jpeg500
  # 800 rendered JPEGs (~30 s), each train image under 20 names: 12,000 train files, 46 steps of 256.
  [ -d "$jpegs" ] || python3 bench/jpeg_folder.py "$jpegs" --train-per-class 60 --val-per-class 20 --links 20
  workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  python3 -m pipeline bench data "$jpegs" --device cuda --batch "$BATCH" --workers "$workers" --repeats 3 \
    --backends dali 2>&1 | tee "$OUT/bench_data_dali_gpu.txt" || true
  common=(model.name=resnet50 "data.path=$jpegs" data.image_size=224 "data.scale=[0.08,1.0]" "data.batch_size=$BATCH"
          "data.workers=$workers" trainer.epochs=1 trainer.max_steps=40 trainer.log_every=10 trainer.eval_every=1000
          logging.progress=lines logging.wandb.mode=disabled trainer.keep_checkpoints=1 trainer.resume=never
          "data.synthetic_samples=$((BATCH * 40))")
  for backend in dali synthetic; do
    python3 -m pipeline train "${common[@]}" "data.backend=$backend" "trainer.run_dir=/tmp/gpu_check_$backend" \
      2>&1 | tee "$OUT/train_resnet50_${backend}.txt" || true
    cp "/tmp/gpu_check_$backend/summary.json" "$OUT/summary_${backend}.json" || true
  done
  python3 - "$OUT" <<'EOF' | tee "$OUT/dali_vs_synthetic.txt"
import json, sys
out = sys.argv[1]
runs = {b: json.load(open(f"{out}/summary_{b}.json")) for b in ("dali", "synthetic")}
for b, s in runs.items():
    print(f"{b:<10} {s['train/img_per_sec']:>8.0f} img/s  data wait {s['train/data_wait']:.3f}  peak {s['peak_memory_gib']} GiB")
print(f"JPEG through DALI vs synthetic: {runs['dali']['train/img_per_sec'] / runs['synthetic']['train/img_per_sec']:.3f}x")
EOF
else
  echo "DALI not importable: run bench/device_wheels.sh here and carry .carry/1..N (see that script)" | tee "$OUT/dali_missing.txt"
fi
python3 bench/gpu_decode.py 2>&1 | tee "$OUT/gpu_decode.txt" || true
