#!/usr/bin/env bash
# How long `pipeline train` takes to refuse bad input (a config error, a mistyped data.path), median
# of 5, from the checkout given (default: this one), with this checkout's .venv. Run it against an
# older commit's worktree for a before/after in the same run: bash bench/cli_startup.sh /tmp/wt_old
set -euo pipefail
repo="${1:-$(dirname "$0")/..}"
python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
cd "$repo"
for what in "optim.lr=0" "data.path=/nonexistent/imagnet"; do
  times=()
  for _ in 1 2 3 4 5; do
    start=$(date +%s.%N)
    "$python" -m pipeline train "$what" >/dev/null 2>&1 || true
    times+=("$(echo "$(date +%s.%N) - $start" | bc)")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
  printf '%s  pipeline train %-30s  median of 5: %.2f s\n' "$(git rev-parse --short HEAD)" "$what" "$median"
done
