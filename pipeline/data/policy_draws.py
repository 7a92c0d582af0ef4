"""The random choices of data.auto_augment for one sample, for the DALI graph to apply
(`pipeline/data/dali_policy.py`): the torchvision backend's own choices for that sample.

DALI's auto_aug functions draw their choices inside the graph (fn.random.*) from the pipeline's
seed. This pipeline builds one DALI pipeline per pass and may start it mid-epoch, so choices drawn
in the graph would differ between a resumed and an uninterrupted run. Here they are drawn the way
the libraries draw them, from the generators the torchvision backend seeds for the sample
(`autoaugment.seeded_globals`): the same op, magnitude and sign for a sample in both backends, in
any pass, worker or world size; the graph itself draws nothing. One int32 row per sample:

- ta_wide (torchvision's TrivialAugmentWide.forward): [op, magnitude bin of 31, negated];
- autoaug (torchvision's AutoAugment.forward, ImageNet policy): [sub-policy, stage 1 runs,
  stage 2 runs, stage 1 negated, stage 2 negated];
- rand (timm's RandAugment.__call__ and AugmentOp.__call__): per op slot [applied, op, magnitude
  bin, negated]: ops chosen with replacement by numpy, each applied with probability p, its level
  drawn from N(m, mstd) (uniform in [0, m] for mstd > 100) and clipped to [0, mmax], quantized to
  RAND_BINS bins over [0, 10], and negated with probability 1/2 by the ops whose timm level
  function negates.
"""
from __future__ import annotations

import functools
import random
import threading

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.config.policy import LEVEL_DENOM, RandAugmentSettings, policy_kind, rand_settings
from pipeline.data.autoaugment import POLICY_SALT, derived_seed

TA_WIDE_BINS = 31
AUTOAUG_STAGES = 2
RAND_BINS = 1001  # level 0-10 in steps of 0.01
# timm's _RAND_INCREASING_TRANSFORMS / _RAND_TRANSFORMS order (dali_policy.rand_suite follows it):
# Rotate, ShearX/Y, TranslateX/YRel always negate at random; the enhance ops only in the "increasing" set.
RAND_OPS = 15
_NEGATING = frozenset({3, 11, 12, 13, 14})
_NEGATING_INCREASING = _NEGATING | {7, 8, 9, 10}


@functools.lru_cache(maxsize=None)
def _tv_tables() -> tuple[tuple, tuple]:
    """Per op of TrivialAugmentWide: (has a magnitude, signed); per AutoAugment sub-policy, per
    stage: (probability, has a magnitude, signed). Read once from torchvision's tables: the
    draws run for every sample, in the process (or feed worker) that feeds DALI."""
    from torchvision.transforms import v2

    def info(space, name, bins):
        magnitudes_fn, signed = space[name]
        return magnitudes_fn(bins, 1, 1) is not None, signed

    ta_space = v2.TrivialAugmentWide._AUGMENTATION_SPACE
    autoaug = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    return (tuple(info(ta_space, name, TA_WIDE_BINS) for name in ta_space),
            tuple(tuple((p, *info(autoaug._AUGMENTATION_SPACE, name, 10)) for name, p, _ in sub)
                  for sub in autoaug._policies))


def draw_policy(cfg: DataConfig, seed: int) -> np.ndarray | None:
    """This sample's row of policy choices, or None without a policy."""
    kind = policy_kind(cfg.auto_augment)
    if kind == "none":
        return None
    policy_seed = derived_seed(seed, POLICY_SALT)
    if kind == "rand":
        return _timm_rand(rand_settings(cfg.auto_augment), policy_seed)
    gen = torch.Generator().manual_seed(policy_seed)  # torch's global generator after manual_seed: the same stream

    def randint(n: int) -> int:
        return int(torch.randint(n, (), generator=gen))

    def coin() -> int:
        return int(torch.rand((), generator=gen) <= 0.5)

    ta_ops, autoaug = _tv_tables()
    if kind == "ta_wide":
        has_magnitude, signed = ta_ops[op := randint(len(ta_ops))]
        if not has_magnitude:
            return np.array([op, 0, 0], dtype=np.int32)
        magnitude_bin = randint(TA_WIDE_BINS)
        return np.array([op, magnitude_bin, coin() if signed else 0], dtype=np.int32)
    sub = randint(len(autoaug))
    runs, negated = [], []
    for probability, has_magnitude, signed in autoaug[sub]:
        runs.append(int(torch.rand((), generator=gen) <= probability))
        negated.append(coin() if runs[-1] and signed and has_magnitude else 0)
    return np.array([sub, *runs, *negated], dtype=np.int32)


_local = threading.local()  # one reseeded numpy generator per thread: constructing one costs 0.3 ms


def _timm_rand(s: RandAugmentSettings, policy_seed: int) -> np.ndarray:
    if not hasattr(_local, "numpy"):
        _local.numpy = np.random.RandomState()
    numpy_rng = _local.numpy
    numpy_rng.seed(policy_seed % 2**32)  # np.random.seed(x) on the global generator: the same stream
    ops = numpy_rng.choice(RAND_OPS, s.num_ops, replace=True)
    rng = random.Random(policy_seed)  # random.seed(x) on the global generator is Random(x)
    negating = _NEGATING_INCREASING if s.increasing else _NEGATING
    rows = []
    for op in ops:
        if s.prob < 1.0 and rng.random() > s.prob:
            rows.append([0, op, 0, 0])
            continue
        level = s.magnitude
        if s.magnitude_std > 100:
            level = rng.uniform(0, level)
        elif s.magnitude_std > 0:
            level = rng.gauss(level, s.magnitude_std)
        level = max(0.0, min(level, s.magnitude_max or LEVEL_DENOM))
        negated = int(rng.random() > 0.5) if op in negating else 0
        rows.append([1, op, round(level / LEVEL_DENOM * (RAND_BINS - 1)), negated])
    return np.array(rows, dtype=np.int32).reshape(-1)
