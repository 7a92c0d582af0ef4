"""Synthetic batches: the model's speed without any input pipeline."""
from __future__ import annotations

import torch

from pipeline.config import DataConfig
from pipeline.data.resolution import train_size, val_size
from pipeline.data.types import Placement


class SyntheticLoader:
    """Random tensors resident on the device: measures the model, not the input pipeline. The
    image size follows the epoch's train size (progressive resizing) or the evaluation size."""

    backend = "synthetic"
    replaced_images = 0  # no files, none to replace

    def __init__(self, cfg: DataConfig, num_classes: int, placement: Placement, train: bool, seed: int) -> None:
        self.cfg, self.placement, self.train = cfg, placement, train
        self.gen_seed = seed + placement.rank
        gen = torch.Generator().manual_seed(self.gen_seed)
        self.images = self._images(train_size(cfg, 0) if train else val_size(cfg), gen)
        self.labels = torch.randint(0, num_classes, (cfg.batch_size,), generator=gen).to(placement.device)
        per_rank = max(1, cfg.synthetic_samples // cfg.batch_size) if train else 1
        self._steps, self._start, self._end = per_rank, 0, per_rank
        self.num_samples = per_rank * cfg.batch_size * placement.world_size
        self._partial: tuple[int, int] | None = None  # (epoch, samples used) of a rescaled resume

    def _images(self, size: int, gen: torch.Generator | None = None) -> torch.Tensor:
        gen = gen or torch.Generator().manual_seed(self.gen_seed * 10_007 + size)
        fmt = torch.channels_last if self.placement.channels_last else torch.contiguous_format
        shape = (self.cfg.batch_size, 3, size, size)
        return torch.randn(shape, generator=gen).to(self.placement.device).contiguous(memory_format=fmt)

    def steps_per_epoch(self) -> int:
        return self._steps

    def steps_in(self, epoch: int) -> int:
        if self._partial is None or epoch != self._partial[0]:
            return self._steps
        acc = self.placement.accumulation
        global_batch = self.cfg.batch_size * self.placement.world_size * acc
        return -(-max(0, self.num_samples - self._partial[1]) // global_batch) * acc

    def continue_epoch(self, epoch: int, stream_batch: int, offset: int) -> None:
        self._partial = (epoch, offset)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self._start = start_step
        self._end = self.steps_in(epoch) if self.train else self._steps
        size = train_size(self.cfg, epoch) if self.train else val_size(self.cfg)
        if self.images.shape[-1] != size:
            self.images = self._images(size)

    def __iter__(self):
        for _ in range(self._start, self._end):
            yield self.images, self.labels
