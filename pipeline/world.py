"""Who this process is in the job (rank, local rank, world size, master), read from the launcher's
environment. No torch import: the CLI asks this on every exit, and a config error must come back
without paying torch's import (about 2.5 s on the slowest CPU type seen).

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; `srun` with one task per process
sets SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS/SLURM_JOB_NODELIST. Both launches behave the same.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "none"  # none | torchrun | slurm


def first_host(nodelist: str) -> str:
    """First host of a Slurm nodelist: 'gpu[003-005,007],cpu1' -> 'gpu003'."""
    try:  # scontrol knows every syntax Slurm accepts; use it where present
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^(.*?)\[([^\]]+)\](.*)$", head)
    if not match:
        return head
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def world_info_from_env(env: dict | None = None) -> WorldInfo:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun (also torchrun started by srun)
        return WorldInfo(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]),
                         int(env.get("LOCAL_WORLD_SIZE", 1)), env.get("MASTER_ADDR", "127.0.0.1"),
                         int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:  # srun, one task per process
        job = int(env.get("SLURM_JOB_ID", 0))
        return WorldInfo(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]),
                         int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]),
                         env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
                         int(env.get("MASTER_PORT", 20000 + job % 20000)), "slurm")
    return WorldInfo()
