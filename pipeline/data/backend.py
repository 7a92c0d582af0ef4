"""Which data backend a config runs on (torch-free, so the data layer's modules can ask it without
importing the factory that builds the loaders)."""
from __future__ import annotations

import importlib.util

from pipeline.config import DataConfig


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_backend(cfg: DataConfig) -> str:
    if cfg.dataset == "synthetic" or cfg.backend == "synthetic":
        return "synthetic"
    if cfg.backend == "auto":
        # DALI reads the ImageNet folder layout; CIFAR's in-memory arrays stay on torchvision.
        return "dali" if cfg.dataset == "imagefolder" and dali_available() else "torchvision"
    return cfg.backend
