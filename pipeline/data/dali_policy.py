"""data.auto_augment inside the DALI graph, with nvidia.dali.auto_aug's operators.

The op lists and magnitude ranges are the published policies' own:
- ta_wide and autoaug are built from torchvision's tables at run time
  (`TrivialAugmentWide._AUGMENTATION_SPACE`, `AutoAugment._policies`), each op mapped to the DALI
  augmentation that does the same thing (DALI's default suites differ: brightness from 0.01,
  solarize from 256, a 128 fill, another ImageNet AutoAugment policy);
- rand is timm's RandAugment (`rand_augment_transform`): its 15 ops with timm's level-to-argument
  rules on timm's 0-10 scale.
The random choices come with the sample from the file source (`policy_draws`): the torchvision
backend's own choices for that sample, so the graph draws no random numbers, a resumed pass repeats
the uninterrupted one, and the two backends differ only where the operators do.
Where DALI's operator differs from the library's, docs/experiments.md says how, with the measured
per-op difference (tests/test_dali_policies.py).
"""
from __future__ import annotations

import warnings

import numpy as np
from nvidia.dali import types
from nvidia.dali.auto_aug import augmentations as a
from nvidia.dali.auto_aug.auto_augment import Policy
from nvidia.dali.auto_aug.core import signed_bin
from nvidia.dali.auto_aug.core._select import select

from pipeline.config import DataConfig
from pipeline.config.policy import policy_kind, rand_settings
from pipeline.data.policy_draws import AUTOAUG_STAGES, RAND_BINS, TA_WIDE_BINS


def _tables_outside_autograph() -> None:
    """DALI converts everything a conditional pipeline calls with its autograph, including the
    Python loops that precompute each augmentation's parameter table, one call per magnitude bin
    (~0.3 ms each): a RandAugment graph took 67 s to build on a 2-core CPU, 3.5 s with these
    loops left as plain Python. They hold no DataNode conditionals, so nothing else changes."""
    from nvidia.dali.auto_aug.core import _augmentation
    from nvidia.dali.pipeline import do_not_convert

    cls = _augmentation.Augmentation
    if getattr(cls, "_pipeline_plain_tables", False):
        return
    for name in ("_map_mags_to_params", "_get_magnitudes", "_map_mag_to_param"):
        setattr(cls, name, do_not_convert(getattr(cls, name)))
    signed = _augmentation._SignedMagnitudeBin
    signed._remap_to_signed_magnitudes = staticmethod(do_not_convert(signed._remap_to_signed_magnitudes))
    cls._pipeline_plain_tables = True


_tables_outside_autograph()


def _current_operators():
    """DALI's `equalize` and `sharpness` augmentations call fn.experimental.equalize and .filter,
    which DALI 2.x deprecates (a DeprecationWarning on every graph built with a policy). The same
    augmentations on the current operators where the installed DALI has them; DALI's own elsewhere."""
    from nvidia.dali import fn
    from nvidia.dali.auto_aug.core import augmentation

    if not (hasattr(fn, "equalize") and hasattr(fn, "filter")):
        return a.equalize, a.sharpness

    @augmentation
    def equalize(data, _):
        return fn.equalize(data)

    @augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=a.sharpness_kernel, param_device="auto")
    def sharpness(data, kernel):
        return fn.filter(data, kernel)

    return equalize, sharpness


EQUALIZE, SHARPNESS = _current_operators()


def _tv_augmentation(name: str, magnitudes, signed: bool):
    """The DALI augmentation doing torchvision's op `name` over torchvision's own magnitude table
    (an explicit array of DALI's custom magnitudes: the same numbers bin for bin)."""
    fixed = {"Identity": a.identity, "AutoContrast": a.auto_contrast, "Equalize": EQUALIZE, "Invert": a.invert}
    if name in fixed or magnitudes is None:
        return fixed[name]
    table = np.asarray(magnitudes, dtype=np.float32)
    if name == "Solarize":  # torchvision v2: a fraction of the uint8 maximum, pixels >= threshold inverted
        return a.solarize.augmentation(table * 255, False)
    if name == "Posterize":  # the bits kept
        return a.posterize.augmentation(table, False, a.poster_mask_uint8)
    ops = {"ShearX": (a.shear_x, None), "ShearY": (a.shear_y, None), "Rotate": (a.rotate, None),
           "TranslateX": (a.translate_x_no_shape, None), "TranslateY": (a.translate_y_no_shape, None),
           "Brightness": (a.brightness, a.shift_enhance_range), "Color": (a.color, a.shift_enhance_range),
           "Contrast": (a.contrast, a.shift_enhance_range), "Sharpness": (SHARPNESS, a.sharpness_kernel)}
    op, to_param = ops[name]
    if name.startswith("Shear"):  # DALI's shear matrix leans the other way for the same factor
        table = -table
    if name.startswith("Translate"):  # torchvision shifts by int(magnitude) pixels
        table = np.trunc(table)
    return op.augmentation(table, signed, to_param) if to_param else op.augmentation(table, signed)


def _tv_space(transform, num_bins: int, size: int) -> dict:
    """{op name: DALI augmentation} over a torchvision policy's magnitude tables at `size`."""
    space = {}
    for name, (magnitudes_fn, signed) in transform._AUGMENTATION_SPACE.items():
        magnitudes = magnitudes_fn(num_bins, size, size)
        space[name] = _tv_augmentation(name, magnitudes, signed)
    return space


def ta_wide_suite(size: int) -> list:
    """torchvision's TrivialAugmentWide ops in its order (31 bins, translations in pixels at `size`)."""
    from torchvision.transforms import v2

    return list(_tv_space(v2.TrivialAugmentWide(), TA_WIDE_BINS, size).values())


def autoaug_policy(size: int) -> Policy:
    """torchvision's AutoAugment ImageNet policy (10 bins) as a DALI Policy."""
    from torchvision.transforms import v2

    transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    space = _tv_space(transform, 10, size)
    subs = [[(space[name], prob, index) for name, prob, index in sub] for sub in transform._policies]
    with warnings.catch_warnings():  # torchvision's table has an Equalize at probability 0: kept as published
        warnings.simplefilter("ignore", UserWarning)
        return Policy("torchvision_imagenet", 10, subs)


def _timm_posterize_mask(bits_fn):
    def to_mask(level):
        bits = int(bits_fn(float(level)))
        return np.array((0xFF << (8 - bits)) & 0xFF if bits < 8 else 0xFF, dtype=np.uint8)
    return to_mask


def rand_suite(cfg: DataConfig, size: int) -> list:
    """timm's RandAugment ops (_RAND_INCREASING_TRANSFORMS with inc1, _RAND_TRANSFORMS without),
    their arguments from the level L in [0, 10] by timm's rules (auto_augment.py *_level_to_arg)."""
    inc = rand_settings(cfg.auto_augment).increasing
    scale = (0, 10)  # the magnitude axis is timm's level; each op maps it to its argument
    if inc:
        posterize = a.posterize.augmentation(scale, False, _timm_posterize_mask(lambda L: 4 - int(L / 10 * 4)))
        solarize = a.solarize.augmentation(scale, False, lambda L: np.float32(256 - int(L / 10 * 256)))
        enhance = {op: op.augmentation((0, 0.9), True, to) for op, to in (
            (a.color, a.shift_enhance_range), (a.contrast, a.shift_enhance_range),
            (a.brightness, a.shift_enhance_range), (SHARPNESS, a.sharpness_kernel))}
    else:
        posterize = a.posterize.augmentation(scale, False, _timm_posterize_mask(lambda L: int(L / 10 * 4)))
        solarize = a.solarize.augmentation(scale, False, lambda L: np.float32(int(L / 10 * 256)))
        enhance = {op: op.augmentation((0.1, 1.9), False, to) for op, to in (
            (a.color, None), (a.contrast, None), (a.brightness, None), (SHARPNESS, a.sharpness_kernel_shifted))}
    translate = 0.45 * size  # TranslateXRel/YRel: 45% of the image side (timm's translate_pct)
    return [a.auto_contrast, EQUALIZE, a.invert, a.rotate.augmentation((0, 30), True), posterize, solarize,
            a.solarize_add.augmentation(scale, False, lambda L: np.uint8(int(L / 10 * 110))),
            enhance[a.color], enhance[a.contrast], enhance[a.brightness], enhance[SHARPNESS],
            # PIL's affine maps output to input: shears and shifts lean the other way in DALI's forward maps.
            a.shear_x.augmentation((0, -0.3), True), a.shear_y.augmentation((0, -0.3), True),
            a.translate_x_no_shape.augmentation((0, -translate), True),
            a.translate_y_no_shape.augmentation((0, -translate), True)]


def rand_fill(cfg: DataConfig) -> int:
    """timm fills warps with the mean pixel; DALI's fill is one value for every channel: their mean."""
    return round(sum(min(255, round(255 * m)) for m in cfg.mean) / 3)


def apply_policy(images, draws, cfg: DataConfig, size: int):
    """data.auto_augment on uint8 HWC `images`, with each sample's choices in `draws`."""
    kind = policy_kind(cfg.auto_augment)
    interp = types.INTERP_LINEAR  # DALI's warps offer linear or nearest (no bicubic)
    if kind == "ta_wide":
        signed = signed_bin(draws[1], random_sign=draws[2])
        return select(ta_wide_suite(size), draws[0], data=images, magnitude_bin=signed, num_magnitude_bins=TA_WIDE_BINS,
                      fill_value=0, interp_type=interp)
    if kind == "autoaug":
        return _apply_autoaug(images, draws, autoaug_policy(size), interp)
    suite, fill = rand_suite(cfg, size), rand_fill(cfg)
    for slot in range(rand_settings(cfg.auto_augment).num_ops):
        row = 4 * slot
        if draws[row] > 0:  # timm applies each chosen op with probability p
            signed = signed_bin(draws[row + 2], random_sign=draws[row + 3])
            images = select(suite, draws[row + 1], data=images, magnitude_bin=signed, num_magnitude_bins=RAND_BINS,
                            fill_value=fill, interp_type=interp)
    return images


def _apply_autoaug(images, draws, policy: Policy, interp):
    """DALI's apply_auto_augment with torchvision's choices from the source: the sub-policy,
    whether each of its stages runs, and each stage's sign."""
    from nvidia.dali.auto_aug.auto_augment import _sub_policy_to_augmentation_map, _sub_policy_to_magnitude_bin_map

    sub_policy = draws[0]
    bins = signed_bin(_sub_policy_to_magnitude_bin_map(policy)[sub_policy],
                      random_sign=draws[1 + AUTOAUG_STAGES:1 + 2 * AUTOAUG_STAGES])
    aug_ids, augmentations = _sub_policy_to_augmentation_map(policy)
    aug_ids = aug_ids[sub_policy]
    for stage in range(AUTOAUG_STAGES):
        if draws[1 + stage] > 0:
            images = select(augmentations[stage], aug_ids[stage], data=images, magnitude_bin=bins[stage],
                            num_magnitude_bins=policy.num_magnitude_bins, fill_value=0, interp_type=interp)
    return images
