"""PyTorch's own training step for one process or DDP: autocast, (scaled) backward, clip, step."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.runtime import Runtime


class TorchEngine:
    """Single process or DDP: autocast forward, (scaled) backward, clip, step."""

    layout = ckpt.PLAIN

    def __init__(self, wrapped: nn.Module, module: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime,
                 grad_clip: float, cuda_graphs: bool = False) -> None:
        self.wrapped, self.module, self.optimizer, self.rt = wrapped, module, optimizer, rt
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
        sync = self.wrapped.no_sync() if (self.rt.engine_kind == "ddp" and not last_micro) else contextlib.nullcontext()
        if self.cuda_graphs:
            # A new step: the graphs may overwrite the previous replay's outputs (the loss was
            # already accumulated into a separate tensor, nothing else is kept).
            torch.compiler.cudagraph_mark_step_begin()
        with sync:
            with self.autocast():
                loss = loss_fn(self.wrapped(images), targets)
            # Dividing by 1 would add an op forward and one backward for nothing.
            self.scaler.scale(loss / accumulation if accumulation > 1 else loss).backward()
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

    def save_checkpoint(self, run_dir: Path, global_step: int, extra: dict) -> None:
        # Only rank 0 writes: DDP keeps the replicas identical.
        if self.rt.is_main:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), **extra}
            ckpt.save_checkpoint(state, run_dir, global_step)
        dist_utils.barrier()

    def load_checkpoint(self, path: Path) -> dict:
        state = ckpt.load_checkpoint(path)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return state
