"""The CPU default's last step after DALI's decode (`data.dali_resize=auto|torch`): the decoded
crops resized, flipped and normalized in torch."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.data.normalize import PixelNormalizer


class TorchResize:
    """Resize decoded crops (uint8 HWC, any size) to size x size, flip, normalize, in torch.

    torch's uint8 channels-last bilinear kernel is vectorized; on CPU it costs 0.11-0.16 core-ms
    per ImageNet crop against 0.72-0.79 for DALI's CPU resampler, both antialiased
    (bench/cpu_resize.py, docs/benchmarks.md). Each crop is resized into a reused uint8 batch, then
    the whole batch is normalized in one pass.
    """

    def __init__(self, cfg: DataConfig, channels_last: bool, antialias: bool) -> None:
        self.antialias, self.channels_last = antialias, channels_last
        self.mode = cfg.interpolation  # bilinear | bicubic: torch's uint8 kernels have both
        self.staging = torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        self.normalize = PixelNormalizer(cfg.mean, cfg.std)

    def __call__(self, crops, mirror: np.ndarray | None, size: int) -> torch.Tensor:
        n = len(crops)
        if self.staging.shape[0] < n or self.staging.shape[1] != size:  # a new size: progressive resizing
            self.staging = torch.empty(n, size, size, 3, dtype=torch.uint8)
        threads = torch.get_num_threads()
        # One crop is too small to split across threads, and splitting it competes with DALI's own
        # decode threads (two threads here made the whole loader slower when tried).
        torch.set_num_threads(1)
        try:
            for i in range(n):
                crop = torch.from_numpy(np.asarray(crops[i])).unsqueeze(0).permute(0, 3, 1, 2)  # NHWC memory
                resized = torch.nn.functional.interpolate(crop, size=(size, size), mode=self.mode,
                                                          antialias=self.antialias)[0].permute(1, 2, 0)
                self.staging[i].copy_(resized.flip(1) if mirror is not None and mirror[i] else resized)
            out = self.normalize(self.staging[:n])
        finally:
            torch.set_num_threads(threads)
        images = out.permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: torch's channels_last
        return images if self.channels_last else images.contiguous()

    def resize_crop(self, images, resized: np.ndarray, corners: np.ndarray, size: int) -> torch.Tensor:
        """data.val_view=torchvision on CPU: each decoded image resized to its (width, height), the
        size x size square cut at its (left, top), then the batch normalized as in __call__."""
        n = len(images)
        if self.staging.shape[0] < n or self.staging.shape[1] != size:
            self.staging = torch.empty(n, size, size, 3, dtype=torch.uint8)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in __call__: one image per call, DALI's threads decode meanwhile
        try:
            for i in range(n):
                (width, height), (left, top) = resized[i], corners[i]
                image = torch.from_numpy(np.asarray(images[i])).unsqueeze(0).permute(0, 3, 1, 2)
                out = torch.nn.functional.interpolate(image, size=(int(height), int(width)), mode=self.mode,
                                                      antialias=True)[0].permute(1, 2, 0)
                self.staging[i].copy_(out[top:top + size, left:left + size])
            out = self.normalize(self.staging[:n])
        finally:
            torch.set_num_threads(threads)
        images = out.permute(0, 3, 1, 2)
        return images if self.channels_last else images.contiguous()
