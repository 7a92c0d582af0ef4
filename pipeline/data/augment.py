"""The training crop and flip of one sample, decided from its seed alone.

Both file-reading backends ask this module where to crop and whether to flip, so that for a given
(run seed, epoch, sample) the torchvision backend and DALI cut the same window, and a resumed run
cuts the same windows as an uninterrupted one. The algorithm is torchvision's RandomResizedCrop
(area and log-uniform aspect ratio, 10 tries, then a central crop clamped to the ratio range);
only the random number source differs: a `random.Random` seeded per sample, cheap enough to run
for every image in the process that feeds DALI.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

CROP_ATTEMPTS = 10  # random windows tried before the central fallback, as in torchvision


@dataclass(frozen=True)
class CropWindow:
    left: int
    top: int
    width: int
    height: int
    flip: bool


def random_resized_crop(seed: int, width: int, height: int, scale: tuple[float, float],
                        ratio: tuple[float, float], hflip: float) -> CropWindow:
    """The window of a `width` x `height` image that RandomResizedCrop would keep, and the flip."""
    rng = random.Random(seed)
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            break
    else:  # no window fitted: the whole image, cropped centrally to the nearest allowed ratio
        if width / height < min(ratio):
            w, h = width, round(width / min(ratio))
        elif width / height > max(ratio):
            w, h = round(height * max(ratio)), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return CropWindow(left, top, w, h, rng.random() < hflip)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the marker segments (a few microseconds,
    no decode); None when there is no frame header before the data ends."""
    pos, end = 2, len(data) - 9
    while pos < end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None
