"""Runtime facts derived once at start-up (device, precision, world): kept apart from the frozen config."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from pipeline.config import TrainerConfig
from pipeline.distributed import WorldInfo
from pipeline.numerics import choose

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    world: WorldInfo
    precision: str  # fp32 | bf16 | fp16 (resolved from "auto")
    engine: str  # single | ddp | deepspeed (resolved from "auto")
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
