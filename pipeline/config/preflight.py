"""Checks of a config against this machine that need no torch. The CLI runs them before the heavy
imports (torch, torchvision, timm: 6-7 s a process on the slowest CPU type seen), so a mistyped
path comes back in well under a second; the data layer raises the same line where it builds."""
from __future__ import annotations

from pathlib import Path

from pipeline.config.schema import DataConfig

DEMO_PATH = "data/demo"  # the default data.path; the only place training creates the demo data by itself


def missing_dataset(cfg: DataConfig) -> str | None:
    """The error line for an image folder that is not there and will not be made; None when fine."""
    if cfg.dataset != "imagefolder" or cfg.backend == "synthetic" or cfg.train_list or cfg.val_list:
        return None
    if cfg.path.startswith("s3://"):  # checked against the store when the data is built
        return None
    path = Path(cfg.path)
    if path.exists() or (cfg.make_demo and path.resolve() == Path(DEMO_PATH).resolve()):
        return None
    return (f"dataset folder not found: {path} (data.path; the demo dataset is created only at {DEMO_PATH}, "
            f"or by `pipeline make-demo-data {path}`)")
