"""Synthetic batches: the model's speed without any input pipeline."""
from __future__ import annotations

import torch

from pipeline.config import DataConfig
from pipeline.data.types import Placement


class SyntheticLoader:
    """Random tensors resident on the device: measures the model, not the input pipeline."""

    backend = "synthetic"
    replaced_images = 0  # no files, none to replace

    def __init__(self, cfg: DataConfig, num_classes: int, placement: Placement, train: bool, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed + placement.rank)
        fmt = torch.channels_last if placement.channels_last else torch.contiguous_format
        shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        self.images = torch.randn(shape, generator=gen).to(placement.device).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (cfg.batch_size,), generator=gen).to(placement.device)
        per_rank = max(1, cfg.synthetic_samples // cfg.batch_size) if train else 1
        self._steps, self._start = per_rank, 0
        self.num_samples = per_rank * cfg.batch_size * placement.world_size

    def steps_per_epoch(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self._start = start_step

    def __iter__(self):
        for _ in range(self._start, self._steps):
            yield self.images, self.labels
