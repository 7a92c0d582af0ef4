"""The process's runtime: facts derived once at start-up (device, precision, world), kept apart
from the frozen config; the stop signals it obeys; and the provenance a run records."""
from __future__ import annotations

import dataclasses
import os
import platform
import random
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import TrainerConfig
from pipeline.world import WorldInfo
from pipeline.numerics import choose

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    world: WorldInfo
    precision: str  # fp32 | bf16 | fp16 (resolved from "auto")
    engine_kind: str  # single | ddp | deepspeed (trainer.engine, resolved from "auto")
    channels_last: bool = True  # resolved from "auto"
    numerics_reason: str = ""  # why this precision and layout (pipeline.numerics)

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def use_autocast(self) -> bool:
        return self.precision != "fp32"

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def resolve_device(cfg: TrainerConfig, world: WorldInfo) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA GPU is visible")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def configure_threads(cfg: TrainerConfig, world: WorldInfo) -> None:
    """Share the cores between the processes of one node, unless the user set a count."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, world.local_world_size)))


def make_runtime(cfg: TrainerConfig, world: WorldInfo) -> Runtime:
    device = resolve_device(cfg, world)
    engine = cfg.engine if cfg.engine != "auto" else ("ddp" if world.world_size > 1 else "single")
    if engine == "single" and world.world_size > 1:
        raise RuntimeError(f"trainer.engine=single but the job has {world.world_size} processes; use ddp or deepspeed")
    numerics = choose(cfg, device, announce=world.rank == 0)
    return Runtime(device, world, numerics.precision, engine, numerics.channels_last, numerics.reason)


def agree_on_numerics(rt: Runtime) -> Runtime:
    """Every rank trains with rank 0's choice: probes run concurrently and can disagree by noise."""
    if rt.world.world_size == 1 or not torch.distributed.is_initialized():
        return rt
    choice = [(rt.precision, rt.channels_last, rt.numerics_reason)]
    torch.distributed.broadcast_object_list(choice, src=0)
    precision, channels_last, reason = choice[0]
    return dataclasses.replace(rt, precision=precision, channels_last=channels_last, numerics_reason=reason)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopSignal:
    """SIGTERM/SIGUSR1 (preemption warning, torchrun shutdown) ask for a checkpoint at the next step."""

    def __init__(self) -> None:
        self.requested = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = signum

    def agreed(self, world_size: int, device: torch.device) -> bool:
        """All ranks must stop at the same step: take the max of the flags (one tiny all-reduce)."""
        if world_size == 1:
            return bool(self.requested)
        flag = torch.tensor([float(bool(self.requested))], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment_facts(rt: Runtime, data_backend: str) -> dict:
    """Provenance of a run (environment.json, the W&B config): code, libraries, device, numerics."""
    import timm
    import torchvision

    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "device": rt.device_name(),
            "device_count": torch.cuda.device_count() if rt.device.type == "cuda" else 0,
            "world_size": rt.world.world_size, "launcher": rt.world.launcher, "engine": rt.engine_kind,
            "precision": rt.precision, "channels_last": rt.channels_last, "numerics_reason": rt.numerics_reason,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "data_backend": data_backend,
            "host": platform.node()}
