"""Parallelize a model: every wrapper in one fixed order, then the engine that trains it."""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import RootConfig
from pipeline.engines.base import Engine
from pipeline.runtime import Runtime


# CUDA graphs exist only on GPUs: on CPU the graph-capturing modes mean their graph-free twins.
_CPU_COMPILE_MODE = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode_for(mode: str, device: torch.device) -> str:
    return _CPU_COMPILE_MODE.get(mode, mode) if device.type == "cpu" else mode


def compiles(cfg: RootConfig, device: torch.device) -> bool:
    """trainer.compile resolved: auto compiles on a GPU only (see the schema's comment)."""
    choice = str(cfg.trainer.compile).lower()
    return choice == "true" or (choice == "auto" and device.type == "cuda")


def compile_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """torch.compile with this project's CPU rules (the trainer and `pipeline bench train` share them)."""
    if device.type == "cpu":
        # torch 2.14.1's FX graph cache corrupted the heap on the first compiled CPU step
        # ("malloc(): unaligned fastbin chunk detected" or SIGSEGV, in both the AVX-512 and AVX2
        # code paths, with an empty cache); without it every run was clean (docs/benchmarks.md).
        # The cost is a full compile per process, 20-40 s for a ResNet on 2 cores.
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
    # dynamic=False: under progressive resizing each image size gets its own static-shape graph (one
    # recompile per size change, a handful per run) instead of a dynamic-shape graph from the second
    # size on, whose kernels are slower; validation's own size is one more graph.
    return torch.compile(model, mode=compile_mode_for(mode, device), dynamic=False)


def wrap_model(model: nn.Module, cfg: RootConfig, rt: Runtime) -> tuple[nn.Module, nn.Module]:
    """Return (wrapped, module): what the forward runs through, and the bare network. Order matters:

    1. SyncBatchNorm: replaces BN modules, so before anything captures them (GPU only: the
       CPU/gloo path has no SyncBN kernel).
    2. device + channels_last (not under DeepSpeed, see below): parameters must be in their final place and layout before the
       optimizer and DDP see them (DDP buckets are views of the parameters).
    3. torch.compile on the bare module: DDP then wraps the compiled module, and its bucket hooks
       stay outside the graph.
    4. DDP last: it must see the final parameters.
    """
    # Under DDP at any world size, so a one-process NCCL group runs the same converted model as a job.
    if cfg.distributed.sync_bn and (rt.world.world_size > 1 or rt.engine_kind == "ddp"):
        if rt.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("distributed.sync_bn ignored: SyncBatchNorm runs only on GPUs", stacklevel=2)
    model = model.to(rt.device)
    # DeepSpeed flattens parameters into contiguous buffers and rejects channels_last weights; the
    # channels_last *inputs* still make convolutions pick the NHWC kernels.
    if rt.channels_last and rt.engine_kind != "deepspeed":
        model = model.to(memory_format=torch.channels_last)
    module = model
    if compiles(cfg, rt.device):
        if cfg.trainer.compile_cache_dir:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cfg.trainer.compile_cache_dir)
        model = compile_model(model, cfg.trainer.compile_mode, rt.device)
    if rt.engine_kind == "ddp":
        model = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            bucket_cap_mb=cfg.distributed.bucket_cap_mb,
            find_unused_parameters=cfg.distributed.find_unused_parameters,
            gradient_as_bucket_view=True,  # grads alias the all-reduce buckets: no copy per step
        )
    return model, module


def build_engine(model: nn.Module, optimizer_for, cfg: RootConfig, rt: Runtime) -> Engine:
    """The one place that picks the engine. `optimizer_for(module)` builds the optimizer once the
    module's parameters are in their final place and layout (after wrap_model)."""
    wrapped, module = wrap_model(model, cfg, rt)
    optimizer = optimizer_for(module)
    if rt.engine_kind == "deepspeed":
        from pipeline.engines.deepspeed_zero import DeepSpeedEngine  # DeepSpeed is an optional install

        return DeepSpeedEngine(module, optimizer, cfg, rt)
    from pipeline.engines.pytorch import TorchEngine

    cuda_graphs = (compiles(cfg, rt.device) and rt.device.type == "cuda"
                   and cfg.trainer.compile_mode in ("reduce-overhead", "max-autotune"))
    return TorchEngine(wrapped, module, optimizer, rt, cfg.optim.grad_clip, cuda_graphs)
