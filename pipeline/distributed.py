"""The process group: created, shut down and used in one place. Who this process is (rank, world
size, master) comes from pipeline.world, read from the launcher's environment.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from pipeline.world import WorldInfo


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
