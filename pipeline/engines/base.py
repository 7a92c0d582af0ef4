"""The interface every engine offers the Trainer: one micro-batch in, gradients and steps out."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Engine(Protocol):
    wrapped: nn.Module  # what the forward runs through: DDP, a compiled module, DeepSpeed's engine
    module: nn.Module  # the bare network: its state_dict, the EMA's source, what validation runs
    optimizer: torch.optim.Optimizer  # the base optimizer: LRSchedule sets its param_groups' lr
    layout: str  # the checkpoint layout it writes (pipeline.checkpoint.PLAIN or DEEPSPEED)
    skipped_steps: torch.Tensor | None  # fp16 steps skipped for inf/NaN gradients, None if not counted

    def micro_step(self, images: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, last_micro: bool,
                   accumulation: int) -> torch.Tensor:
        """Forward and backward of one micro-batch; the optimizer steps on the last one. Returns the loss."""

    def sync_buffers(self) -> None:
        """Make every rank's buffers (BatchNorm statistics) rank 0's before validation or a save."""

    def save_checkpoint(self, run_dir: Path, global_step: int, extra: dict) -> None:
        """Write the engine's state (model, optimizer, loss scaler) and `extra`; every rank calls it."""

    def load_checkpoint(self, path: Path) -> dict:
        """Restore the engine's state from a checkpoint of its layout; returns `extra`.

        Raises pipeline.checkpoint.CheckpointError when the checkpoint does not load."""
