"""Image sizes: the training size as a schedule over epochs (progressive resizing), and the
validation size, which may differ from it.

Progressive resizing follows FFCV's ImageNet recipe (libffcv/ffcv-imagenet, `get_resolution`):
`image_size_start` up to epoch `size_ramp[0]`, `image_size` from epoch `size_ramp[1]` on, and in
between a linear ramp rounded to the nearest multiple of `size_step`. Epochs count from 0. Small
images early are cheap (compute grows with pixels); the last epochs at the full size, and
validation above it (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"), give
back the accuracy. The size is a function of the epoch alone, so a resumed run uses the size the
uninterrupted run used.
"""
from __future__ import annotations

from pipeline.config import DataConfig


def scheduled(cfg: DataConfig) -> bool:
    """Whether the training size changes during the run."""
    return cfg.image_size_start > 0 and cfg.image_size_start != cfg.image_size


def train_size(cfg: DataConfig, epoch: int) -> int:
    """The training crop size of `epoch` (0-based)."""
    if not scheduled(cfg):
        return cfg.image_size
    start, end = cfg.size_ramp
    if epoch <= start:
        return cfg.image_size_start
    if epoch >= end:
        return cfg.image_size
    ramped = cfg.image_size_start + (cfg.image_size - cfg.image_size_start) * (epoch - start) / (end - start)
    # round() is Python's round-half-to-even, as FFCV's np.round: 176 / 32 = 5.5 rounds to 6 (192)
    return int(round(ramped / cfg.size_step)) * cfg.size_step


def train_sizes(cfg: DataConfig, epochs: int) -> list[int]:
    return [train_size(cfg, e) for e in range(epochs)]


def val_size(cfg: DataConfig) -> int:
    """The evaluation crop: data.val_image_size, else the final training size."""
    return cfg.val_image_size or cfg.image_size


def val_resize_shorter(cfg: DataConfig) -> int:
    """The "center" view resizes the shorter side to this, then center-crops val_size."""
    return round(val_size(cfg) / cfg.crop_fraction)  # 224 / 0.875 = 256


def size_runs(sizes: list[int]) -> list[tuple[int, int, int]]:
    """(first epoch, last epoch, size) for each run of equal sizes: [(0, 70, 160), (71, 87, 192)]."""
    runs: list[tuple[int, int, int]] = []
    for epoch, size in enumerate(sizes):
        if runs and runs[-1][2] == size:
            runs[-1] = (runs[-1][0], epoch, size)
        else:
            runs.append((epoch, epoch, size))
    return runs


def size_note(cfg: DataConfig, epoch: int, resumed: bool = False) -> str:
    """The log line when an epoch starts at a new train size (or a run resumes under a schedule)."""
    if not scheduled(cfg) or (epoch > 0 and not resumed and train_size(cfg, epoch - 1) == train_size(cfg, epoch)):
        return ""
    return f"epoch {epoch + 1}: train image size {train_size(cfg, epoch)} px (progressive resizing)"


def val_view_geometry(cfg: DataConfig, width: int, height: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of torchvision's Resize then CenterCrop
    for an image of this size, with v2's own arithmetic: the longer side int(resize x long / short),
    the crop's corner int(round((side - crop) / 2)) (Python's round: half to even)."""
    size, resized = val_size(cfg), val_resize_shorter(cfg)
    if cfg.val_crop_mode == "squash":
        new_w = new_h = resized
    elif width <= height:
        new_w, new_h = resized, int(resized * height / width)
    else:
        new_w, new_h = int(resized * width / height), resized
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
