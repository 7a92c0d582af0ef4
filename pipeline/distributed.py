"""The one place that resolves the world (rank, local rank, world size, master) and owns the process group.

torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; `srun` with one task per process
sets SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS/SLURM_JOB_NODELIST. Both launches behave the same.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def init_process_group(world: WorldInfo, device: torch.device, backend: str, timeout_s: int,
                       always: bool = False) -> None:
    """NCCL on GPUs, gloo on CPU; a no-op for a single process unless `always`."""
    if (world.world_size == 1 and not always) or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", world.master_addr)
    os.environ.setdefault("MASTER_PORT", str(world.master_port if world.world_size > 1 else _free_port()))
    timeout = datetime.timedelta(seconds=timeout_s)
    device_id = device if device.type == "cuda" else None
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart > 0:
        # After a torchrun restart the agent's store can still hold the previous round's keys
        # (gloo/NCCL peer addresses): a rank reading them connects to a dead peer ("Connection
        # refused"). Namespace this round's keys by the restart count.
        from torch.distributed.rendezvous import rendezvous

        store, _, _ = next(rendezvous("env://", world.rank, world.world_size, timeout=timeout))
        dist.init_process_group(backend, store=dist.PrefixStore(f"pipeline/restart{restart}", store),
                                rank=world.rank, world_size=world.world_size, timeout=timeout, device_id=device_id)
        return
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size, timeout=timeout,
                            device_id=device_id)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
