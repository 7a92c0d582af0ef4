"""Pixel normalization: on the device after the copy (GPU), or in the loader workers (CPU)."""
from __future__ import annotations

import torch

from pipeline.data.types import Placement


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


def finish_sample(image: torch.Tensor, normalize: PixelNormalizer | None, hwc: bool) -> torch.Tensor:
    """Optional normalization and HWC layout, done in the loader worker."""
    if hwc:
        image = image.permute(1, 2, 0).contiguous()  # reorder as uint8: 4x fewer bytes than float
    if normalize is None:
        return image
    return normalize(image) if hwc else normalize.chw(image)


