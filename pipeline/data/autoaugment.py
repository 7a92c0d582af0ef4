"""The recipes' augmentations after the crop and flip, for the torchvision backend, decided per sample.

- `data.auto_augment`: torchvision's TrivialAugmentWide and AutoAugment (ImageNet policy) and timm's
  `rand_augment_transform`: the libraries' own transforms, run under global random states seeded
  from the sample's seed (they draw from torch's, Python's and numpy's global generators), so a
  sample gets the same view in any worker, after any resume. The states are restored afterwards:
  with data.workers=0 this runs in the training process.
- `data.random_erase`: torchvision's RandomErasing, its region drawn by torchvision's own
  `get_params` under the same kind of seeded state. The region travels with the sample and is
  erased after normalization (`erase_regions`), as torchvision erases the normalized tensor. The
  DALI backend draws the same region for the same sample (`pipeline.data.encoded`).
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torchvision import transforms as T
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.config.policy import policy_kind

POLICY_SALT = 0x2545F4914F6CDD1D  # the policy's stream differs from the crop's (which is seeded by the seed itself)
ERASE_SALT = 0x5851F42D4C957F2D
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision's RandomErasing defaults


def derived_seed(seed: int, salt: int) -> int:
    return (seed * 6364136223846793005 + salt) % (2**63 - 1)


@contextlib.contextmanager
def seeded_globals(seed: int, python_and_numpy: bool = True):
    """torch's CPU generator (and Python's and numpy's) seeded from `seed`, restored afterwards.
    torch's CPU generator alone, not torch.manual_seed: that also seeds every accelerator's
    generators, 0.17 ms a call here, paid per sample."""
    generator = torch.default_generator
    torch_state = generator.get_state()
    generator.manual_seed(seed)
    if python_and_numpy:
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        generator.set_state(torch_state)
        if python_and_numpy:
            random.setstate(py_state)
            np.random.set_state(np_state)


def interpolation_mode(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode.BICUBIC if name == "bicubic" else v2.InterpolationMode.BILINEAR


def library_policy(cfg: DataConfig, image_size: int):
    """The library transform of data.auto_augment (PIL image in, PIL image out), or None."""
    kind = policy_kind(cfg.auto_augment)
    mode = interpolation_mode(cfg.interpolation)
    if kind == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=mode)
    if kind == "autoaug":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode)
    if kind == "rand":
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        # timm's transforms_imagenet_train hparams: translate 45% of the size, fill with the mean pixel.
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in cfg.mean),
                   "interpolation": str_to_pil_interp(cfg.interpolation)}
        return rand_augment_transform(cfg.auto_augment, hparams)
    return None


class SeededPolicy:
    """data.auto_augment applied to one sample with its own random state."""

    def __init__(self, cfg: DataConfig) -> None:
        self.transform = library_policy(cfg, cfg.image_size)

    def __bool__(self) -> bool:
        return self.transform is not None

    def __call__(self, img, seed: int):
        with seeded_globals(derived_seed(seed, POLICY_SALT)):
            return self.transform(img)


def erase_region(seed: int, size: int, prob: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) that torchvision's RandomErasing(prob) would erase in a size x size
    image, drawn from the sample's seed; (0, 0, 0, 0) when it erases nothing."""
    if prob <= 0:
        return (0, 0, 0, 0)
    with seeded_globals(derived_seed(seed, ERASE_SALT), python_and_numpy=False):  # torch's draws only
        if not torch.rand(1) < prob:  # RandomErasing.forward's draw
            return (0, 0, 0, 0)
        top, left, h, w, _ = T.RandomErasing.get_params(torch.empty(3, size, size), ERASE_SCALE, ERASE_RATIO, [0])
    if h >= size and w >= size:  # get_params' fallback after 10 failed tries: the image itself (unchanged)
        return (0, 0, 0, 0)
    return (int(top), int(left), int(h), int(w))


def erase_regions(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Set each image's region (N x [top, left, height, width]) to 0 in the normalized batch: the
    mean pixel, as torchvision's RandomErasing(value=0) after Normalize. One slice assignment per
    erased image (a tenth of a batch under the V2 recipe), in any memory format."""
    for i, (top, left, h, w) in enumerate(regions.view(-1, 4).tolist()):
        if h and w:
            images[i, :, top:top + h, left:left + w] = 0.0
    return images
