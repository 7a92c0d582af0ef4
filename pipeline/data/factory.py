"""The only place that picks and imports a data backend: `build_data` returns train/val loaders."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import DataConfig
from pipeline.config.preflight import missing_dataset
from pipeline.data.backend import resolve_backend
from pipeline.data.labels import check_num_classes, display_names
from pipeline.data.planned import TorchLoader
from pipeline.data.object_store import is_remote
from pipeline.data.remote_shards import remote_classes_file
from pipeline.data.sampler import ShardPlan
from pipeline.data.streaming import plan_order
from pipeline.data.synthetic import SyntheticLoader
from pipeline.data.types import DataBundle, DataError, Placement


def build_data(cfg: DataConfig, placement: Placement, seed: int, num_classes: int = 0) -> DataBundle:
    """Build the train and val loaders for this rank (file backends imported on demand: DALI may be
    absent). num_classes: model.num_classes when set; every train label must fit it."""
    bundle = _build(cfg, placement, seed, num_classes)
    check_num_classes(bundle.num_classes, num_classes)
    if cfg.dataset == "imagefolder" and bundle.backend != "synthetic":
        bundle.classes = display_names(remote_classes_file(cfg.path) if is_remote(cfg.path) else Path(cfg.path),
                                       bundle.classes)
    return bundle


def _build(cfg: DataConfig, placement: Placement, seed: int, num_classes: int) -> DataBundle:
    backend = resolve_backend(cfg)
    if backend == "synthetic":
        classes = num_classes or 1000
        return DataBundle(SyntheticLoader(cfg, classes, placement, True, seed),
                          SyntheticLoader(cfg, classes, placement, False, seed + 1),
                          classes, backend, [str(i) for i in range(classes)])
    listed = cfg.train_list or cfg.val_list
    if cfg.dataset == "imagefolder" and not listed and not is_remote(cfg.path) and not Path(cfg.path).exists():
        _make_demo_or_refuse(cfg, placement)
    if backend == "dali":
        from pipeline.data.dali import dali_loaders

        return dali_loaders(cfg, placement, seed)
    if cfg.dataset in ("cifar10", "cifar100"):
        from pipeline.data.cifar import cifar_datasets

        train_set, val_set = cifar_datasets(cfg)
    else:
        from pipeline.data.folder import folder_datasets

        train_set, val_set = folder_datasets(cfg)
    val_batch = cfg.val_batch_size or cfg.batch_size
    train_plan = ShardPlan(len(train_set), placement.rank, placement.world_size, cfg.batch_size, True, seed,
                           accumulation=placement.accumulation, repeats=cfg.repeat_aug,
                           **plan_order(cfg, getattr(train_set, "samples", None)))
    val_plan = ShardPlan(len(val_set), placement.rank, placement.world_size, val_batch, False, seed,
                         **plan_order(cfg, getattr(val_set, "samples", None)))
    return DataBundle(TorchLoader(train_set, train_plan, cfg, placement),
                      TorchLoader(val_set, val_plan, cfg, placement),
                      len(train_set.classes), "torchvision", list(train_set.classes))


def _make_demo_or_refuse(cfg: DataConfig, placement: Placement) -> None:
    """The demo dataset is written only at its own path: a mistyped data.path must never train on it."""
    from pipeline.data.demo import make_demo_data

    if line := missing_dataset(cfg):
        raise DataError(line)
    if placement.rank == 0 or placement.world_size == 1:
        make_demo_data(Path(cfg.path))
    _barrier(placement)


def _barrier(placement: Placement) -> None:
    if placement.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
