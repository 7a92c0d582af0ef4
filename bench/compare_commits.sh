#!/usr/bin/env bash
# `pipeline bench train` and `pipeline bench data` at two commits on this machine, alternated
# (old, new, old, new) so that drift in the machine's speed hits both alike:
#   bash bench/compare_commits.sh 44d327e HEAD
# Each commit runs from its own git worktree with this checkout's .venv. Raw output goes to
# docs/cpu-runs/<date>-commits-<old>-<new>/ (override with OUT=...). ROUNDS=2 by default.
set -euo pipefail
old="$1"
new="${2:-HEAD}"
cd "$(dirname "$0")/.."
root="$PWD"
old_sha=$(git rev-parse --short "$old")
new_sha=$(git rev-parse --short "$new")
out="${OUT:-docs/cpu-runs/$(date +%F)-commits-$old_sha-$new_sha}"
mkdir -p "$out"
for sha in "$old_sha" "$new_sha"; do
  rm -rf "/tmp/wt-$sha"
  git worktree add -f --detach "/tmp/wt-$sha" "$sha" > /dev/null
done
trap 'git worktree remove -f "/tmp/wt-$old_sha"; git worktree remove -f "/tmp/wt-$new_sha"' EXIT
[ -d /tmp/big3 ] || .venv/bin/python bench/jpeg_folder.py /tmp/big3 > /dev/null
{
  echo "date: $(date -u +%FT%TZ)  old: $old_sha  new: $new_sha"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "flags (vector/bf16): $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)$' | xargs)"
} | tee "$out/cpu.txt"
for round in $(seq "${ROUNDS:-2}"); do
  for sha in "$old_sha" "$new_sha"; do
    # python -m runs the package of the working directory: the worktree's code, not this checkout's.
    (cd "/tmp/wt-$sha" && "$root/.venv/bin/python" -m pipeline bench train --model resnet18 --image-size 96 \
      --batch 32 --steps 5 --repeats 3) 2>&1 | tee "$out/bench_train_${sha}_r$round.txt"
    (cd "/tmp/wt-$sha" && "$root/.venv/bin/python" -m pipeline bench data /tmp/big3 --repeats 3) \
      2>&1 | tee "$out/bench_data_${sha}_r$round.txt"
  done
done
echo "raw output in $out"
