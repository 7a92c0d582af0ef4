#!/usr/bin/env bash
# The CPU record of the defaults on this machine, natively or as an AVX2-only CPU (issue 13):
#   bash bench/cpu_defaults.sh native   # this CPU as it is
#   bash bench/cpu_defaults.sh avx2     # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
# Run from a checkout with .venv (`make setup`). Writes the raw output of every step to
# docs/cpu-runs/<date>-<mode>/ (override with OUT=...): the CPU facts, `pipeline bench train` on
# ResNet-18 96 px batch 32 (the defaults against every bare variant), and the demo job (`make train`
# with a fresh data/demo and run directory). STEPS=all adds the slow ones: bench train with
# --all-variants (bf16 timed even where it is emulated) and `pipeline bench data` on an
# ImageNet-sized JPEG folder.
set -euo pipefail
mode="${1:-native}"
cd "$(dirname "$0")/.."
out="${OUT:-docs/cpu-runs/$(date +%F)-$mode}"
mkdir -p "$out"
if [ "$mode" = avx2 ]; then
  export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
elif [ "$mode" != native ]; then
  echo "usage: bash bench/cpu_defaults.sh native|avx2" >&2
  exit 2
fi
py=.venv/bin/python
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)  mode: $mode"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "flags (vector/bf16): $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)"
  echo "env: ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-}"
  $py -c "import torch; print('torch', torch.__version__, 'capability', torch.backends.cpu.get_cpu_capability())"
} | tee "$out/cpu.txt"

$py -m pipeline bench train --model resnet18 --image-size 96 --batch 32 --steps 5 --repeats 5 \
  2>&1 | tee "$out/bench_train_resnet18_96px_b32.txt"

rm -rf data/demo runs/default
{ /usr/bin/time -f "make train wall %e s" make train ARGS=logging.progress=lines; } 2>&1 | tee "$out/make_train.txt"
cp runs/default/summary.json "$out/make_train_summary.json"

if [ "${STEPS:-}" = all ]; then
  $py -m pipeline bench train --model resnet18 --image-size 96 --batch 32 --steps 2 --repeats 3 --all-variants \
    2>&1 | tee "$out/bench_train_all_variants.txt"
  [ -d /tmp/big3 ] || $py bench/jpeg_folder.py /tmp/big3 > /dev/null
  $py -m pipeline bench data /tmp/big3 --repeats 5 2>&1 | tee "$out/bench_data_big3.txt"
fi
echo "raw output in $out"
