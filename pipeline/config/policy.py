"""`data.auto_augment` read without torch: the policy's kind and, for RandAugment, timm's settings.

The grammar is timm's (`timm.data.auto_augment.rand_augment_transform`): `rand` then dash-separated
sections, each a key and a number: m (magnitude, 0-10 by default), n (ops per image), mstd (std of
the magnitude noise; > 100: uniform in [0, m]), mmax (the magnitude's clip), p (each op's
probability), inc (1: the "increasing" op variants). Parsed here so that a mistyped policy is one
error line before torch is imported, and so that the DALI backend gets the same numbers timm does.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from pipeline.config.schema import ConfigError, RootConfig

LEVEL_DENOM = 10  # timm's magnitude scale: level / 10 of each op's range


@dataclass(frozen=True)
class RandAugmentSettings:
    magnitude: float = 10.0  # timm's default when m is not given
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    prob: float = 0.5  # timm applies each chosen op with this probability
    increasing: bool = False


_KEYS = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob",
         "inc": "increasing"}


def policy_kind(text: str) -> str:
    """none | ta_wide | autoaug | rand; raises ConfigError naming the bad part."""
    if text in ("none", "", "ta_wide", "autoaug"):
        return text or "none"
    if text.startswith("rand"):
        rand_settings(text)
        return "rand"
    raise ConfigError(f"config key 'data.auto_augment' is '{text}', expected one of none, ta_wide, autoaug, "
                      "or rand-m<M>-n<N>-mstd<S>-inc<0|1> (timm's RandAugment grammar)")


@functools.lru_cache(maxsize=64)  # the DALI feed asks once per sample
def rand_settings(text: str) -> RandAugmentSettings:
    parts = text.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"data.auto_augment '{text}': a RandAugment policy starts with 'rand-'")
    values: dict = {}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
        if not match or match.group(1) not in _KEYS:
            raise ConfigError(f"data.auto_augment '{text}': section '{part}' is not one of m<magnitude>, n<ops>, "
                              "mstd<std>, mmax<max>, p<probability>, inc<0|1> (timm's RandAugment grammar)")
        key, number = _KEYS[match.group(1)], float(match.group(2))
        if key in ("num_ops",) and number != int(number):
            raise ConfigError(f"data.auto_augment '{text}': n must be a whole number of ops, got {number}")
        values[key] = bool(int(number)) if key == "increasing" else int(number) if key == "num_ops" else number
    settings = RandAugmentSettings(**values)
    if not 0 <= settings.prob <= 1:
        raise ConfigError(f"data.auto_augment '{text}': p is a probability, got {settings.prob}")
    if settings.num_ops < 1:
        raise ConfigError(f"data.auto_augment '{text}': n must be >= 1")
    return settings


def check_augmentation(cfg: RootConfig) -> None:
    """The recipes' augmentations work on decoded ImageNet-style images, not CIFAR's fixed arrays."""
    d = cfg.data
    policy_kind(d.auto_augment)
    if d.dataset in ("cifar10", "cifar100"):
        for key, value, default in (("auto_augment", d.auto_augment, "none"), ("random_erase", d.random_erase, 0.0),
                                    ("interpolation", d.interpolation, "bilinear")):
            if value != default:
                raise ConfigError(f"data.{key}={value}: the recipes' augmentations need ImageNet-style images "
                                  f"(dataset imagefolder), not {d.dataset}'s arrays")
    if cfg.optim.bce_target_thresh > 0 and cfg.optim.loss != "bce":
        raise ConfigError(f"optim.bce_target_thresh={cfg.optim.bce_target_thresh} needs optim.loss=bce")
