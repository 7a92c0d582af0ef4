#!/usr/bin/env bash
# The project's local Slurm cluster for tests (adapted from shared/reference/slurm-local.sh).
# Throwaway Slurm (munged + slurmctld + N slurmd) on ONE machine for CI. Root, no systemd.
#   bash slurm-local.sh start   # install (if needed), configure, start, wait for idle nodes
#   bash slurm-local.sh stop    # kill every daemon it started, by PID file
# Env: SLURM_CI_NODES (default 1)  nodes n1..nN = N slurmd processes on 127.0.0.1, ports 17001..
#      SLURM_CI_CPUS  (default nproc) CPUs advertised per node (may exceed real: config_overrides)
#      SLURM_CI_MEM   (default RAM-512 MiB) RealMemory advertised per node, MiB
#      SLURM_CI_GPUS  (default 0) fake GPUs per node (char devices aliasing /dev/null)
#      SLURM_CI_PARTITIONS (default "debug") extra names, e.g. "debug gpu"; first one is Default
set -euo pipefail
NODES=${SLURM_CI_NODES:-1}
CPUS=${SLURM_CI_CPUS:-$(nproc)}
MEM=${SLURM_CI_MEM:-$(( $(free -m | awk '/^Mem:/{print $2}') - 512 ))}
GPUS=${SLURM_CI_GPUS:-0}
PARTS=${SLURM_CI_PARTITIONS:-debug}
NODELIST="n[1-${NODES}]"; [ "$NODES" = 1 ] && NODELIST=n1

stop() {
  for pf in /run/slurmd-n*.pid /run/slurmctld.pid /run/munge/munged.pid; do
    [ -s "$pf" ] || continue
    pid=$(cat "$pf")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pf"
  done
}

start() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
     || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /run/munge
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/n*   # fresh cluster state every run
  chown munge:munge /run/munge

  # node names must resolve (scontrol show hostnames -> MASTER_ADDR)
  local names="" i
  for i in $(seq 1 "$NODES"); do names="$names n$i"; mkdir -p "/var/spool/slurmd/n$i"; done
  grep -q "# slurm-ci" /etc/hosts || echo "127.0.0.1 $names # slurm-ci" >> /etc/hosts

  local gres=""
  if [ "$GPUS" -gt 0 ]; then
    mkdir -p /run/slurm-ci-gpus
    for i in $(seq 0 $((GPUS - 1))); do
      [ -c "/run/slurm-ci-gpus/nvidia$i" ] || mknod "/run/slurm-ci-gpus/nvidia$i" c 1 3
    done
    printf 'AutoDetect=off\nName=gpu File=/run/slurm-ci-gpus/nvidia[0-%d]\n' $((GPUS - 1)) > /etc/slurm/gres.conf
    gres="Gres=gpu:$GPUS"
  else
    rm -f /etc/slurm/gres.conf
  fi

  {
    cat <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
SlurmdTimeout=30
MinJobAge=300
KillWait=10
EOF
    [ -n "$gres" ] && echo "GresTypes=gpu"
    for i in $(seq 1 "$NODES"); do
      echo "NodeName=n$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$MEM $gres State=UNKNOWN"
    done
    local d="Default=YES" p
    for p in $PARTS; do echo "PartitionName=$p Nodes=$NODELIST $d MaxTime=INFINITE State=UP"; d=""; done
  } > /etc/slurm/slurm.conf

  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create
    chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
  fi
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
  slurmctld                                         # daemonizes; /run/slurmctld.pid
  for i in $(seq 1 "$NODES"); do slurmd -N "n$i"; done   # /run/slurmd-nI.pid

  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" -eq "$NODES" ]; then
      sinfo -N -o '%N %P %T %c %m %G'; return 0
    fi
    sleep 1
  done
  echo "slurm nodes never became idle" >&2
  sinfo -N -l >&2 || true; tail -n 30 /var/log/slurm/*.log >&2 || true
  return 1
}

case "${1:-start}" in
  start) start ;;
  stop)  stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
