# shellcheck shell=bash
# Shared logic of slurm/resnet*.sh: one srun task per GPU, ranks from Slurm's variables.
#
# Why one task per GPU rather than one torchrun per node: Slurm is then the only process manager,
# so its signals (preemption warning, scontrol requeue, time limit) reach every training process
# directly; ranks come from SLURM_PROCID/SLURM_LOCALID (pipeline/world.py) and the
# rendezvous is the first host of the allocation, with no c10d store to place.
#
# Environment (all optional): PIPELINE_HOME (repo, default: submit dir), PIPELINE_PYTHON,
#   NPROC_PER_NODE (default: GPUs allocated on the node, 1 without GPUs), DATA_PATH (a folder or
#   s3://bucket/prefix; AWS_* pass through), CACHE_DIR, CACHE_LIMIT (s3:// shard cache), RUN_DIR,
#   WANDB_MODE (online|offline|disabled|auto), WANDB_PROJECT, WANDB_GROUP, MASTER_PORT,
#   MAX_RESTARTS (default 3: requeues after a failed training step, counted in the run directory),
#   PLAN_NODES (the largest node count the job may get: plan the global batch for it; read from the
#   job's --nodes=MIN-MAX where Slurm tells it, see node_range below),
#   NCCL_* (passed through), DRY_RUN=1 (print the commands, run nothing).
# Arguments after the script name are `pipeline train` overrides (key=value).

set -euo pipefail

pipeline_home="${PIPELINE_HOME:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$pipeline_home"
python_bin="${PIPELINE_PYTHON:-}"
if [ -z "$python_bin" ]; then
  if [ -x "$pipeline_home/.venv/bin/python" ]; then python_bin="$pipeline_home/.venv/bin/python"; else python_bin=python3; fi
fi

gpus_on_node() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"; return; fi
  if [ -n "${SLURM_JOB_GPUS:-}" ]; then echo "${SLURM_JOB_GPUS}" | tr ',' '\n' | grep -c .; return; fi
  echo 0
}

nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
gpus="$(gpus_on_node)"
nproc_per_node="${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}"
job_id="${SLURM_JOB_ID:-0}"
job_name="${SLURM_JOB_NAME:-$JOB_CONFIG_NAME}"
head_node="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || true)"
export MASTER_ADDR="${MASTER_ADDR:-${head_node:-127.0.0.1}}"
export MASTER_PORT="${MASTER_PORT:-$(( 20000 + job_id % 20000 ))}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"

# A requeued job keeps its id, so the same run directory (and W&B run) is resumed.
run_dir="${RUN_DIR:-runs/${job_name}-${job_id}}"
overrides=("trainer.run_dir=$run_dir" "trainer.resume=auto" "logging.progress=lines")
[ -n "${DATA_PATH:-}" ] && overrides+=("data.path=$DATA_PATH")
# s3:// data: the node-local shard cache (default $SLURM_TMPDIR, else ~/.cache) and its limit in bytes.
[ -n "${CACHE_DIR:-}" ] && overrides+=("data.cache_dir=$CACHE_DIR")
[ -n "${CACHE_LIMIT:-}" ] && overrides+=("data.cache_limit=$CACHE_LIMIT")
# Tracked by default (online with a key, offline otherwise; an unreachable service falls back to offline).
overrides+=("logging.wandb.mode=${WANDB_MODE:-auto}")
[ -n "${WANDB_PROJECT:-}" ] && overrides+=("logging.wandb.project=$WANDB_PROJECT")
overrides+=("logging.wandb.group=${WANDB_GROUP:-${job_name}-${job_id}}")

# Outside an allocation (DRY_RUN=1 on a login node) the job would get what its #SBATCH lines ask for.
if [ "${DRY_RUN:-0}" = 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
  sbatch_value() { grep -m 1 -E "^#SBATCH --$1=" "$JOB_SCRIPT" | sed -E "s/^#SBATCH --$1=//" || true; }
  nodes="$(sbatch_value nodes)"; nodes="${nodes:-1}"; nodes="${nodes##*-}"  # MIN-MAX: shown at MAX
  requested_gpus="$(sbatch_value gpus-per-node)"
  nproc_per_node="${NPROC_PER_NODE:-${requested_gpus:-1}}"
fi

# A job that may get any node count in a range (sbatch --nodes=MIN-MAX) plans its global batch for
# MAX nodes (trainer.plan_world_size), so a requeue onto more or fewer nodes goes on with the same
# recipe through another accumulation (pipeline/training/elastic.py). Slurm reports a running job's
# allocated count only (scontrol's NumNodes, squeue's MaxNodes), so the range is read from, in order:
# PLAN_NODES (MAX); the accounting record's submit line (sacct SubmitLine, where slurmdbd runs: a
# range given on the sbatch command line); the submitted script's own #SBATCH --nodes line, used
# only when the allocation lies inside it (a count given on the command line overrides that line).
nodes_flag() { grep -oE -- '(--nodes[= ]|-N ?)[0-9]+(-[0-9]+)?' | tail -n 1 | grep -oE '[0-9]+(-[0-9]+)?$' || true; }
node_range() {  # $1: the job's script; prints MIN-MAX, or nothing for a fixed count
  local found="" low high
  if [ -n "${PLAN_NODES:-}" ]; then echo "1-$PLAN_NODES"; return; fi
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    found="$(timeout 20 sacct -n -X -j "$SLURM_JOB_ID" -o SubmitLine%4000 2>/dev/null | head -n 1 | nodes_flag)"
  fi
  if [ -z "$found" ]; then
    found="$(grep -E '^#SBATCH +(--nodes|-N)' "$1" 2>/dev/null | nodes_flag)"
    low="${found%%-*}" high="${found##*-}"
    if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "$found" ] && { [ "$nodes" -lt "$low" ] || [ "$nodes" -gt "$high" ]; }; then
      found=""  # the command line asked for another count
    fi
  fi
  case "$found" in *-*) echo "$found" ;; esac
}
# In a batch job $0 is the submitted copy of the script (slurmd's spool); outside one, the script itself.
submitted_script="$JOB_SCRIPT"; [ -n "${SLURM_JOB_ID:-}" ] && submitted_script="$0"
node_range="$(node_range "$submitted_script")"
plan_note=""
if [ -n "$node_range" ]; then
  overrides+=("trainer.plan_world_size=$(( ${node_range##*-} * nproc_per_node ))")
  plan_note=", node range $node_range: global batch planned for ${node_range##*-} node(s)"
fi

train_cmd=(srun --ntasks-per-node="$nproc_per_node" --kill-on-bad-exit=1 --export=ALL
           "$python_bin" -m pipeline train --config "$JOB_CONFIG" "${overrides[@]}" "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "sbatch $(grep '^#SBATCH' "$JOB_SCRIPT" | sed 's/^#SBATCH //' | tr '\n' ' ')$JOB_SCRIPT $*"
  echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT nodes=$nodes tasks/node=$nproc_per_node$plan_note"
  echo "${train_cmd[*]}"
  # The recipe at this launch size (each size of a node range): global batch, LR, warmup, decay
  # points, steps, time estimate.
  "$python_bin" -m pipeline plan --config "$JOB_CONFIG" --nodes "${node_range:-$nodes}" \
    --gpus-per-node "$nproc_per_node" "${overrides[@]}" "$@"
  exit 0
fi

echo "job $job_id restart ${SLURM_RESTART_COUNT:-0}: $nodes node(s) x $nproc_per_node task(s), master $MASTER_ADDR:$MASTER_PORT$plan_note"

# Restart budget, as torchrun's --max-restarts: a training step that fails (a rank crashed or was
# killed, a node lost) is requeued and resumes from the newest checkpoint, up to MAX_RESTARTS times.
# The count lives in the run directory, so every requeue of the job shares it. Each rank that fails
# with a Python error writes "rank R on HOST: error" under failures/ (PIPELINE_FAILURE_DIR); a rank
# killed outright is named by srun's own "srun: error: HOST: task R: ..." line.
# Exit 2 is not a fault to retry: a refused configuration, or a run directory that another live
# job holds (pipeline/runlock.py: the same sbatch submitted twice). It is not requeued and spends
# no restart; each job keeps its failure notes under its own id, so a refused duplicate touches
# nothing of the job that holds the directory.
max_restarts="${MAX_RESTARTS:-3}"
failure_dir="$run_dir/failures/$job_id"
mkdir -p "$failure_dir"
rm -f "$failure_dir/"rank-*.txt
export PIPELINE_FAILURE_DIR="$failure_dir"
# This attempt's part of the job log (sbatch --output, appended across requeues): srun's own error
# lines and the ranks' error lines land there.
job_log="$(scontrol show job "$job_id" 2>/dev/null | sed -n 's/^ *StdErr=//p' | head -n 1 || true)"
log_offset="$(stat -c %s "$job_log" 2>/dev/null || echo 0)"
step_output() {
  if [ -r "$job_log" ]; then tail -c +"$(( log_offset + 1 ))" "$job_log"; fi
}

last_failure() {
  # The first failure in the step's output is the cause; the ranks that fail after it (a closed
  # connection, a collective timeout) are its consequences.
  local first rank
  first="$(step_output | grep -m 1 -E '^(srun: error: [^:]+: task [0-9]+: |error \(rank [0-9]+\): )' || true)"
  rank="$(echo "$first" | sed -nE 's/^(srun: error: [^:]+: task |error \(rank )([0-9]+).*/\2/p')"
  if [ -n "$rank" ] && [ -f "$failure_dir/rank-$rank.txt" ]; then
    head -n 1 "$failure_dir/rank-$rank.txt"  # "rank R on HOST: error", written by the rank itself
  elif [ -n "$first" ]; then  # killed outright: srun's line names the host
    echo "$first" | sed -E 's/^srun: error: ([^:]+): task ([0-9]+): /rank \2 on \1: /; s/^error \(rank ([0-9]+)\): /rank \1: /'
  else
    echo "no error line captured (see the job log)"
  fi
}
# shellcheck disable=SC2016  # expanded by the remote shell on each node
srun --ntasks-per-node=1 bash -c 'echo "node $(hostname -s) slurmd ${SLURMD_NODENAME:-?}"'

# Preemption / time limit: sbatch --signal=B:USR1@N warns this shell. Pass SIGUSR1 on to the
# training tasks themselves (scancel without --batch signals the job steps, not this shell; a
# SIGTERM would make Slurm cancel the step, and signalling srun makes it kill the step): they
# checkpoint at the next step and exit 75. Then requeue the job; it resumes from that checkpoint
# in the same run directory.
requeue=0
# shellcheck disable=SC2329  # invoked by the trap
on_warning() {
  echo "preemption or time-limit warning: checkpointing and requeueing job $job_id"
  requeue=1
  scancel --signal=USR1 "$job_id" || true
}
trap on_warning USR1

"${train_cmd[@]}" &
train_pid=$!
status=0
while true; do
  wait "$train_pid" && status=0 || status=$?
  kill -0 "$train_pid" 2>/dev/null || break  # wait returned because of the trap: keep waiting
done
if [ "$requeue" = 0 ] && [ "$status" = 2 ]; then
  echo "job $job_id: not requeued (exit 2: the configuration, the dataset or the run directory was refused, see the error above)" >&2
  exit 2
fi
if [ "$requeue" = 0 ] && [ "$status" != 0 ] && [ "$status" != 75 ]; then
  used="$(cat "$run_dir/restarts" 2>/dev/null || echo 0)"
  if [ "$used" -lt "$max_restarts" ]; then
    echo "$(( used + 1 ))" > "$run_dir/restarts"
    echo "training step failed (exit $status, $(last_failure)): restart $(( used + 1 ))/$max_restarts, requeueing job $job_id" >&2
    requeue=1
  else
    echo "job $job_id failed: restart budget spent (MAX_RESTARTS=$max_restarts); last failure: $(last_failure)" >&2
    exit "$status"
  fi
fi
if [ "$requeue" = 1 ]; then
  if ! scontrol requeue "$job_id"; then
    echo "could not requeue job $job_id; resubmit it to resume from $run_dir" >&2
    exit 1
  fi
  # The requeue ends this shell (SIGTERM). Wait for that instead of exiting: an exit status
  # reported after the requeue could be taken for the next attempt's.
  sleep 300 &
  wait $! || true
  exit 0
fi
exit "$status"
