"""The recipes' augmentations (issue 33): the torchvision backend runs the libraries' own transforms
for a sample's seed; the DALI graph gets the same choices, the published op lists and magnitude
tables, and differs from the libraries only where DALI's operators do (a bounded per-op statistic)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from pipeline.config import ConfigError, load_config
from pipeline.data.autoaugment import (ERASE_SALT, POLICY_SALT, derived_seed, erase_region, erase_regions,
                                       seeded_globals)
from pipeline.data.folder import TrainTransform, load_rgb
from pipeline.data.policy_draws import RAND_BINS, draw_policy

SEEDS = range(40)


def _image(demo_data, index=0) -> Image.Image:
    return load_rgb(str(sorted((demo_data / "train").rglob("*.JPEG"))[index]))


def _data(*overrides):
    return load_config(None, list(overrides)).data


@pytest.mark.parametrize("bad, match", [
    ("data.auto_augment=rand-m7-x3", "section 'x3'"), ("data.auto_augment=trivial", "expected one of none, ta_wide"),
    ("data.auto_augment=rand-p1.5", "p is a probability"), ("data.interpolation=lanczos", "bilinear, bicubic"),
    ("optim.bce_target_thresh=0.2", "needs optim.loss=bce"), ("data.repeat_aug=0", "must be >= 1")])
def test_bad_augmentation_settings_are_one_line(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [bad])
    with pytest.raises(ConfigError, match="need ImageNet-style images"):
        load_config(None, ["data.dataset=cifar10", "data.auto_augment=ta_wide"])


def _cropped(cfg, img, seed, size):
    """The crop and flip alone (no policy), as TrainTransform cuts them."""
    plain = TrainTransform(load_config(None, [f"data.interpolation={cfg.interpolation}"]).data)
    return v2.functional.to_pil_image(plain(img, seed, size))


@pytest.mark.parametrize("policy", ["ta_wide", "autoaug", "rand-m7-mstd0.5-inc1", "rand-m9-n3-mstd101-inc0"])
def test_torchvision_backend_runs_the_libraries_transform_for_the_seed(demo_data, policy):
    """The same pixels as the library's own transform (built here, independently) after the crop,
    with torch's, Python's and numpy's generators seeded from the sample's seed."""
    from timm.data.auto_augment import rand_augment_transform

    cfg = _data(f"data.auto_augment={policy}", "data.interpolation=bicubic", "data.image_size=40")
    transform, img = TrainTransform(cfg), _image(demo_data)
    if policy == "ta_wide":
        library = v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BICUBIC)
    elif policy == "autoaug":
        library = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=v2.InterpolationMode.BICUBIC)
    else:
        library = rand_augment_transform(policy, {"translate_const": 18, "img_mean": (124, 116, 104),
                                                  "interpolation": Image.BICUBIC})
    changed = 0
    for seed in range(12):
        crop = _cropped(cfg, img, seed, 40)
        s = derived_seed(seed, POLICY_SALT)
        torch.manual_seed(s), random.seed(s), np.random.seed(s % 2**32)
        expected = v2.functional.pil_to_tensor(library(crop))
        assert torch.equal(transform(img, seed, 40), expected), seed
        changed += not torch.equal(expected, v2.functional.pil_to_tensor(crop))
    assert changed >= 6  # the policy did something to most samples
    state = torch.get_rng_state()
    transform(img, 3, 40)
    assert torch.equal(state, torch.get_rng_state())  # the training process's generators are left alone


def test_dali_draws_are_the_torchvision_backends_choices(demo_data):
    """policy_draws replays the library's draws: applying torchvision's op with the drawn op,
    magnitude and sign reproduces the library transform's output exactly."""
    ta, aa = v2.TrivialAugmentWide(), v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    img = v2.functional.pil_to_tensor(_image(demo_data))
    for seed in SEEDS:
        s = derived_seed(seed, POLICY_SALT)
        op, magnitude_bin, negated = draw_policy(_data("data.auto_augment=ta_wide"), seed)
        name = tuple(ta._AUGMENTATION_SPACE)[op]
        magnitudes = ta._AUGMENTATION_SPACE[name][0](31, *img.shape[-2:])
        magnitude = 0.0 if magnitudes is None else float(magnitudes[magnitude_bin]) * (-1 if negated else 1)
        torch.manual_seed(s)
        assert torch.equal(ta(img), ta._apply_image_or_video_transform(img, name, magnitude, v2.InterpolationMode.NEAREST, ta._fill))
        sub, *flags = draw_policy(_data("data.auto_augment=autoaug"), seed)
        out = img
        for (name, _, index), runs, neg in zip(aa._policies[sub], flags[:2], flags[2:]):
            magnitudes = aa._AUGMENTATION_SPACE[name][0](10, *img.shape[-2:])
            if runs:
                magnitude = 0.0 if magnitudes is None else float(magnitudes[index]) * (-1 if neg else 1)
                out = aa._apply_image_or_video_transform(out, name, magnitude, v2.InterpolationMode.NEAREST, aa._fill)
        torch.manual_seed(s)
        assert torch.equal(aa(img), out), seed


def test_dali_draws_are_timms_randaugment_choices(demo_data, monkeypatch):
    """Each op timm applies, in order, with its level argument and sign, is a row of the draws
    (the level quantized to RAND_BINS bins)."""
    import timm.data.auto_augment as timm_aa

    policy = "rand-m7-mstd0.5-inc1"
    ra = timm_aa.rand_augment_transform(policy, {"translate_const": 18, "img_mean": (124, 116, 104)})
    applied = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *args, **kw: applied.append((name, args)) or img)(op.name)
    img = _image(demo_data)
    for seed in SEEDS:
        applied.clear()
        with seeded_globals(derived_seed(seed, POLICY_SALT)):
            ra(img)
        rows = draw_policy(_data(f"data.auto_augment={policy}"), seed).reshape(-1, 4)
        ours = [(timm_aa._RAND_INCREASING_TRANSFORMS[op], bin_, neg) for on, op, bin_, neg in rows if on]
        assert [name for name, _ in applied] == [name for name, _, _ in ours]
        for (name, args), (_, magnitude_bin, negated) in zip(applied, ours):
            level = magnitude_bin / (RAND_BINS - 1) * 10
            with monkeypatch.context() as patch:  # the level function's sign, as drawn
                patch.setattr(timm_aa, "_randomly_negate", lambda v, n=negated: -v if n else v)
                expected = timm_aa.LEVEL_TO_ARG[name](level, {"translate_const": 18}) if timm_aa.LEVEL_TO_ARG[name] else ()
            # integer arguments (bits, thresholds) may round across a boundary at the 0.01 level step
            assert np.allclose(args, expected, atol=1.0), (name, args, expected)


def test_random_erase_region_is_torchvisions(demo_data):
    """The region torchvision's RandomErasing(p, value=0) erases, for the sample's seed; erased to 0
    after normalization by one masked fill."""
    hits = 0
    for seed in SEEDS:
        region = erase_region(seed, 32, 0.5)
        with seeded_globals(derived_seed(seed, ERASE_SALT)):
            erased = T.RandomErasing(p=0.5, value=0)(torch.ones(3, 32, 32))
        zero = (erased == 0).all(0)
        top, left, h, w = region
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[top:top + h, left:left + w] = True
        assert torch.equal(zero, mask), seed
        hits += h > 0
    assert 10 <= hits <= 30  # p = 0.5
    batch = torch.ones(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = erase_regions(batch, torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0]]))
    assert out[0, :, 1:4, 2:6].eq(0).all() and out[0].eq(0).sum() == 3 * 12 and out[1].eq(1).all()


def test_interpolation_reaches_the_resizes():
    from pipeline.data.folder import ValTransform

    cfg = _data("data.interpolation=bicubic")
    assert TrainTransform(cfg).interpolation == v2.InterpolationMode.BICUBIC
    assert ValTransform(cfg).steps.transforms[0].interpolation == v2.InterpolationMode.BICUBIC
