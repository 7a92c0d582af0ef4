"""CIFAR-10 in its standard python format (cifar-10-batches-py: data_batch_1..5, test_batch)."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.data.normalize import finish_sample
from pipeline.data.types import DataError

def _read_batches(folder: Path, names: list[str], label_key: bytes = b"labels") -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR file not found: {path}")
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")  # the official format is a pickle of arrays
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _find_root(path: Path, marker: str, sub: str) -> Path:
    for candidate in (path, path / sub):
        if (candidate / marker).is_file():
            return candidate
    raise DataError(f"CIFAR python files not found in {path} (expected {marker} in it or in {sub}/)")


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = [str(i) for i in range(int(labels.max()) + 1)]
        self.normalize = None  # a PixelNormalizer on CPU: normalize in the workers
        self.hwc = False

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        # Per-sample seed (see sampler.sample_seed). Only the CPU generator: torch.manual_seed also
        # queues CUDA seeding with a recorded stack trace, ~0.5 ms per call.
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        img = self.images[index]
        img = self.transform(img) if self.transform else img
        return finish_sample(img, self.normalize, self.hwc), int(self.labels[index]), 0


def cifar_datasets(cfg: DataConfig) -> tuple[TensorImages, TensorImages]:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test; fine labels)."""
    if cfg.dataset == "cifar100":
        root = _find_root(Path(cfg.path), "train", "cifar-100-python")
        train_names, test_names, key = ["train"], ["test"], b"fine_labels"
    else:
        root = _find_root(Path(cfg.path), "data_batch_1", "cifar-10-batches-py")
        train_names, test_names, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
    train_x, train_y = _read_batches(root, train_names, key)
    # He 2015: pad 4 pixels, random 32x32 crop, horizontal flip.
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(cfg.hflip)])
    if cfg.cifar_holdout > 0:  # the paper's 45k/5k split: validate on the last images of train
        n = len(train_y) - cfg.cifar_holdout
        return (TensorImages(train_x[:n], train_y[:n], augment),
                TensorImages(train_x[n:], train_y[n:], None))
    test_x, test_y = _read_batches(root, test_names, key)
    return TensorImages(train_x, train_y, augment), TensorImages(test_x, test_y, None)
