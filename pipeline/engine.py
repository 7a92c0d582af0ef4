"""Engines: how a micro-batch becomes gradients and an optimizer step.

`wrap_model` applies every wrapper in one fixed order. `TorchEngine` covers one process and DDP;
`pipeline.deepspeed_engine.DeepSpeedEngine` has the same methods.
"""
from __future__ import annotations

import contextlib
import os
import warnings

from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.config import RootConfig
from pipeline.runtime import Runtime


# CUDA graphs exist only on GPUs: on CPU the graph-capturing modes mean their graph-free twins.
_CPU_COMPILE_MODE = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_mode_for(mode: str, device: torch.device) -> str:
    return _CPU_COMPILE_MODE.get(mode, mode) if device.type == "cpu" else mode


def compile_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """torch.compile with this project's CPU rules (the trainer and `pipeline bench train` share them)."""
    if device.type == "cpu":
        # torch 2.14.1's FX graph cache corrupted the heap on the first compiled CPU step
        # ("malloc(): unaligned fastbin chunk detected" or SIGSEGV, in both the AVX-512 and AVX2
        # code paths, with an empty cache); without it every run was clean (docs/benchmarks.md).
        # The cost is a full compile per process, 20-40 s for a ResNet on 2 cores.
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False
    return torch.compile(model, mode=compile_mode_for(mode, device))


def wrap_model(model: nn.Module, cfg: RootConfig, rt: Runtime) -> tuple[nn.Module, nn.Module]:
    """Return (model to train, the bare module). Order matters:

    1. SyncBatchNorm: replaces BN modules, so before anything captures them (GPU only: the
       CPU/gloo path has no SyncBN kernel).
    2. device + channels_last (not under DeepSpeed, see below): parameters must be in their final place and layout before the
       optimizer and DDP see them (DDP buckets are views of the parameters).
    3. torch.compile on the bare module: DDP then wraps the compiled module, and its bucket hooks
       stay outside the graph.
    4. DDP last: it must see the final parameters.
    """
    # Under DDP at any world size, so a one-process NCCL group runs the same converted model as a job.
    if cfg.distributed.sync_bn and (rt.world.world_size > 1 or rt.engine == "ddp"):
        if rt.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warnings.warn("distributed.sync_bn ignored: SyncBatchNorm runs only on GPUs", stacklevel=2)
    model = model.to(rt.device)
    # DeepSpeed flattens parameters into contiguous buffers and rejects channels_last weights; the
    # channels_last *inputs* still make convolutions pick the NHWC kernels.
    if rt.channels_last and rt.engine != "deepspeed":
        model = model.to(memory_format=torch.channels_last)
    bare = model
    if cfg.trainer.compile:
        if cfg.trainer.compile_cache_dir:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cfg.trainer.compile_cache_dir)
        model = compile_model(model, cfg.trainer.compile_mode, rt.device)
    if rt.engine == "ddp":
        model = DistributedDataParallel(
            model,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            bucket_cap_mb=cfg.distributed.bucket_cap_mb,
            find_unused_parameters=cfg.distributed.find_unused_parameters,
            gradient_as_bucket_view=True,  # grads alias the all-reduce buckets: no copy per step
        )
    return model, bare


class TorchEngine:
    """Single process or DDP: autocast forward, (scaled) backward, clip, step."""

    def __init__(self, model: nn.Module, bare: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime,
                 grad_clip: float, cuda_graphs: bool = False) -> None:
        self.model, self.module, self.optimizer, self.rt = model, bare, optimizer, rt
        self.grad_clip = grad_clip
        self.cuda_graphs = cuda_graphs
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
        # Steps the GradScaler skipped (inf/NaN gradients): counted on the device, read at the end.
        self.skipped_steps = torch.zeros((), dtype=torch.long, device=rt.device)

    def autocast(self):
        return torch.autocast(self.rt.device.type, dtype=self.rt.amp_dtype, enabled=self.rt.use_autocast)

    def micro_step(self, images: torch.Tensor, targets: torch.Tensor, loss_fn, last_micro: bool,
                   accumulation: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; steps the optimizer on the last one."""
        # DDP all-reduces gradients in backward; skip that for all but the last micro-batch.
        sync = self.model.no_sync() if (self.rt.engine == "ddp" and not last_micro) else contextlib.nullcontext()
        if self.cuda_graphs:
            # A new step: the graphs may overwrite the previous replay's outputs (the loss was
            # already accumulated into a separate tensor, nothing else is kept).
            torch.compiler.cudagraph_mark_step_begin()
        with sync:
            with self.autocast():
                loss = loss_fn(self.model(images), targets)
            self.scaler.scale(loss / accumulation).backward()
        if last_micro:
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            if self.scaler.is_enabled():
                # update() halves the scale exactly when this step was skipped. The scale tensor is
                # compared on the device (GradScaler's _scale): get_scale() would sync every step.
                before = self.scaler._scale.clone()
                self.scaler.update()
                self.skipped_steps += (self.scaler._scale < before).long().squeeze()
            else:
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync_buffers(self) -> None:
        """DDP already broadcasts rank 0's buffers before every forward."""

    def save_checkpoint(self, run_dir: Path, global_step: int, extra: dict, keep: int) -> None:
        # Only rank 0 writes: DDP keeps the replicas identical.
        if self.rt.is_main:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), **extra}
            ckpt.save_checkpoint(state, run_dir, global_step, keep)
        dist_utils.barrier()

    def load_checkpoint(self, run_dir: Path, mode: str) -> tuple[str, dict] | None:
        """mode: auto (newest valid in run_dir) or a checkpoint path."""
        if mode == "auto":
            found = ckpt.load_latest(run_dir)
            if found is None:
                return None
            path, state = found
        else:
            path, state = Path(mode), ckpt.load_checkpoint(mode)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return str(path), state
