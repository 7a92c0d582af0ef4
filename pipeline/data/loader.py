"""One batch interface for every backend, and the factory that picks the backend.

A loader yields (images, labels) already on the training device: images float32, normalized,
NCHW or channels_last as the model wants; labels int64. `set_epoch(epoch, start_step)` selects
the epoch's order and where in it to start (mid-epoch resume).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch

from pipeline.config import DataConfig
from pipeline.data.sampler import ShardPlan


class BatchLoader(Protocol):
    num_samples: int  # images in the split, all ranks together
    backend: str

    def steps_per_epoch(self) -> int: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Placement:
    """Where and in which layout batches must arrive (from the runtime, not the config)."""

    device: torch.device
    channels_last: bool
    rank: int = 0
    world_size: int = 1


class Normalizer:
    """uint8 NCHW -> normalized float on the device; the copy is async from pinned memory.

    `in_workers=True` (CPU training): the loader workers already normalized, in parallel, so the
    training process only fixes the memory format.
    """

    def __init__(self, mean, std, placement: Placement, in_workers: bool = False) -> None:
        self.in_workers = in_workers
        self.device = placement.device
        self.memory_format = torch.channels_last if placement.channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.in_workers:
            return images.contiguous(memory_format=self.memory_format)
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)


class PixelNormalizer:
    """uint8 HWC pixels (one image or a batch) -> normalized float32 on the CPU, same shape.

    The per-channel constants are laid out as rows of width*3 interleaved values: a broadcast over
    a last dimension of 3 does not vectorize, one over a whole row does. `chw` handles CHW images.
    """

    def __init__(self, mean, std) -> None:  # fractions of 255, as in DataConfig
        self.scale = 1 / (torch.tensor(std) * 255)
        self.shift = -torch.tensor(mean) * 255 * self.scale
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        width = pixels.shape[-2]
        if width not in self._rows:
            self._rows[width] = (self.scale.repeat(width), self.shift.repeat(width))
        scale, shift = self._rows[width]
        out = torch.empty(pixels.shape) if out is None else out
        rows = out.view(-1, width * 3)
        rows.copy_(pixels.reshape(-1, width * 3))
        return rows.mul_(scale).add_(shift).view(pixels.shape)

    def chw(self, image: torch.Tensor) -> torch.Tensor:
        return image.float().mul_(self.scale.view(3, 1, 1)).add_(self.shift.view(3, 1, 1))


class TorchLoader:
    """A torch DataLoader over a map-style dataset, batches chosen by a ShardPlan."""

    backend = "torchvision"

    def __init__(self, dataset, plan: ShardPlan, cfg: DataConfig, placement: Placement) -> None:
        self.dataset, self.plan = dataset, plan
        self.num_samples = len(dataset)
        # On CPU the training process is the bottleneck: normalize in the loader workers instead.
        in_workers = placement.device.type == "cpu" and cfg.workers > 0
        if in_workers:
            dataset.normalize = PixelNormalizer(cfg.mean, cfg.std)
        self.normalize = Normalizer(cfg.mean, cfg.std, placement, in_workers)
        dataset.hwc = placement.channels_last
        self.workers = cfg.workers
        self.pin = placement.device.type == "cuda"
        self.replaced_images = 0  # undecodable files swapped out under on_bad_image=skip
        self._epoch, self._start = 0, 0
        self._loader = None

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self._epoch, self._start = epoch, start_step

    # The DataLoader iterates this object as its batch sampler, in the main process, so one
    # DataLoader with persistent workers serves every epoch and resume position.
    def __len__(self) -> int:
        return self.plan.steps_per_epoch() - self._start

    def _batch_sampler_iter(self):
        return iter(self.plan.batches(self._epoch, self._start))

    def __iter__(self):
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=_BatchSource(self), num_workers=self.workers, pin_memory=self.pin,
                prefetch_factor=4 if self.workers else None, persistent_workers=self.workers > 0)
        for images, labels, replaced in self._loader:
            self.replaced_images += int(replaced.sum())
            if images.ndim == 4 and images.shape[-1] == 3 and self.dataset.hwc:
                images = images.permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW view, no copy
            yield self.normalize(images), labels.to(self.normalize.device, non_blocking=True)


class _BatchSource:
    def __init__(self, owner: TorchLoader) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self):
        return self.owner._batch_sampler_iter()


class SyntheticLoader:
    """Random tensors resident on the device: measures the model, not the input pipeline."""

    backend = "synthetic"

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


@dataclass
class DataBundle:
    train: BatchLoader
    val: BatchLoader
    num_classes: int
    backend: str
    classes: list[str]


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_backend(cfg: DataConfig) -> str:
    if cfg.dataset == "synthetic" or cfg.backend == "synthetic":
        return "synthetic"
    if cfg.backend == "auto":
        # DALI reads the ImageNet folder layout; CIFAR's in-memory arrays stay on torchvision.
        return "dali" if cfg.dataset == "imagefolder" and dali_available() else "torchvision"
    return cfg.backend


def build_data(cfg: DataConfig, placement: Placement, seed: int, num_classes: int = 0) -> DataBundle:
    """Build the train and val loaders for this rank."""
    backend = resolve_backend(cfg)
    if backend == "synthetic":
        classes = num_classes or 1000
        return DataBundle(SyntheticLoader(cfg, classes, placement, True, seed),
                          SyntheticLoader(cfg, classes, placement, False, seed + 1),
                          classes, backend, [str(i) for i in range(classes)])
    listed = cfg.train_list or cfg.val_list
    if cfg.dataset == "imagefolder" and cfg.make_demo and not listed and not Path(cfg.path).exists():
        from pipeline.data.demo import make_demo_data

        if placement.rank == 0 or placement.world_size == 1:
            make_demo_data(Path(cfg.path))
        _barrier(placement)
    if backend == "dali":
        from pipeline.data.dali import dali_loaders

        return dali_loaders(cfg, placement, seed)
    if cfg.dataset in ("cifar10", "cifar100"):
        from pipeline.data.cifar import cifar_datasets

        train_set, val_set = cifar_datasets(cfg)
    else:
        from pipeline.data.folder import folder_datasets

        train_set, val_set = folder_datasets(cfg)
    val_batch = cfg.val_batch_size or cfg.batch_size
    train_plan = ShardPlan(len(train_set), placement.rank, placement.world_size, cfg.batch_size, True, seed)
    val_plan = ShardPlan(len(val_set), placement.rank, placement.world_size, val_batch, False, seed)
    return DataBundle(TorchLoader(train_set, train_plan, cfg, placement),
                      TorchLoader(val_set, val_plan, cfg, placement),
                      len(train_set.classes), "torchvision", list(train_set.classes))


def _barrier(placement: Placement) -> None:
    if placement.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
