"""ImageNet folder layout (`train/<class>/*`, `val/<class>/*`) decoded with PIL through torchvision.

Images leave the workers as uint8 CHW tensors; normalization happens on the device (see
`pipeline.data.loader`), which moves 4x fewer bytes than float tensors and is what DALI does too.
"""
from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.data.augment import random_resized_crop
from pipeline.data.autoaugment import SeededPolicy, erase_region, interpolation_mode
from pipeline.data import bad_images
from pipeline.data.labels import SUBSET_SETTING, check_split_labels
from pipeline.data.normalize import PixelNormalizer, finish_sample
from pipeline.data.resolution import val_resize_shorter, val_size
from pipeline.data.sample_index import SampleIndex, load_or_build, names_blob
from pipeline.data import streaming
from pipeline.data.object_store import is_remote
from pipeline.data.remote_shards import scan_remote_shards
from pipeline.data.shards import is_shard_split, read_bytes, scan_shards
from pipeline.data.types import DataError, ShardMember

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def class_folders(root: Path) -> list[str]:
    """Sorted class folder names; hidden folders (`.index`, `.ipynb_checkpoints`) are not classes."""
    return sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))


def scan_folder(root: Path) -> tuple[list[str], SampleIndex]:
    """Classes (sorted folder names) and (path, label) samples; empty class folders are an error.
    Mapped from the node's index cache while the split and class folders are unchanged."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = class_folders(root)
    if not classes:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    # A file added, removed or renamed changes its class folder's mtime, so the key sees it.
    index = load_or_build(root, "folder", [root, *(root / name for name in classes)], lambda: build_folder_index(root))
    return index.classes, index


def build_folder_index(root: Path) -> SampleIndex:
    classes = class_folders(root)
    names, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f.name for f in os.scandir(root / name)
                       if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {root / name} has no images")
        names += [f"{name}/{file}" for file in files]
        labels.append(np.full(len(files), label, dtype=np.int32))
    blob, ends = names_blob(names)
    return SampleIndex(classes, blob, ends, np.concatenate(labels), prefix=os.path.abspath(root))


def read_file_list(path: Path) -> tuple[list[str], SampleIndex]:
    """A file list in DALI's `file_list` format: one "<path> <label>" per line, the label an integer
    class index, relative paths taken from the list's folder. Classes are named by their index.
    Mapped from the node's index cache while the list file is unchanged."""
    if not path.is_file():
        raise DataError(f"file list not found: {path}")
    index = load_or_build(path, "list", [path], lambda: build_list_index(path))
    return index.classes, index


def build_list_index(path: Path) -> SampleIndex:
    names, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, label = text.rpartition(" ")
        if not name.strip() or not label.isdigit():
            raise DataError(f"file list {path} line {number}: expected '<path> <integer label>', got {text!r}")
        names.append(name.strip())
        labels.append(int(label))
    if not names:
        raise DataError(f"file list {path} lists no images")
    blob, ends = names_blob(names)
    return SampleIndex([str(i) for i in range(max(labels) + 1)], blob, ends, np.array(labels, dtype=np.int32),
                       prefix=os.path.abspath(path.parent))


def split_samples(cfg: DataConfig) -> dict[str, tuple[list[str], SampleIndex]]:
    """(classes, samples) of the train and val splits, from `data.train_list` / `data.val_list`
    when given, else from data.path/train and data.path/val (class folders or WebDataset shards),
    checked to agree."""
    root = Path(cfg.path)
    splits = {}
    remote = is_remote(cfg.path) and streaming.open_remote(cfg)
    for split, listed in (("train", cfg.train_list), ("val", cfg.val_list)):
        if listed:
            splits[split] = read_file_list(Path(listed))
            continue
        if remote:
            splits[split] = scan_remote_shards(f"{cfg.path.rstrip('/')}/{split}")
            continue
        if not (root / split).is_dir():
            raise DataError(f"dataset split not found: {root / split} (expected {root}/train/<class>/ and "
                            f"{root}/val/<class>/, shards {root}/{split}/*.tar, or data.{split}_list)")
        splits[split] = scan_shards(root / split) if is_shard_split(root / split) else scan_folder(root / split)
    (train_classes, train_samples), (val_classes, val_samples) = splits["train"], splits["val"]
    sharded = [split for split in splits if not getattr(cfg, f"{split}_list") and
               (remote or is_shard_split(root / split))]
    if remote:
        streaming.check_cache_limit(cfg, {split: splits[split][1] for split in sharded})
    if cfg.train_list or cfg.val_list or sharded:
        sources = {split: f"data.{split}_list {listed}" if listed else
                   f"{'shards' if split in sharded else 'folder'} {cfg.path.rstrip('/') if remote else root}/{split}"
                   for split, listed in (("train", cfg.train_list), ("val", cfg.val_list))}
        check_split_labels(train_samples.label_set(), val_samples.label_set(), sources, cfg.val_subset)
    elif val_classes != train_classes:
        extra, missing = sorted(set(val_classes) - set(train_classes)), sorted(set(train_classes) - set(val_classes))
        if extra or not cfg.val_subset:
            shown = ", ".join((extra or missing)[:3])
            raise DataError(f"train and val class folders differ in {root}: {len(extra)} only in val, "
                            f"{len(missing)} only in train (e.g. {shown})"
                            + ("" if extra else f"; a val split with fewer classes on purpose needs {SUBSET_SETTING}"))
        # A deliberate subset: val images keep the train index of their class, found by name.
        train_label = np.array([train_classes.index(name) for name in val_classes], dtype=np.int32)
        splits["val"] = (train_classes, replace(val_samples, classes=train_classes,
                                                labels=train_label[val_samples.labels]))
    return splits


def load_rgb(path: str | ShardMember) -> Image.Image:
    """Decode any PIL-readable image (CMYK, grayscale, 16-bit, palette) to 8-bit RGB: a file, or a
    member of a shard."""
    with (io.BytesIO(read_bytes(path)) if isinstance(path, ShardMember) else open(path, "rb")) as fh:
        img = Image.open(fh)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            img = img.point(lambda v: v / 256).convert("L")  # 16-bit: keep the top 8 bits
        if img.mode != "RGB":
            img = img.convert("RGB")
        img.load()
    return img


class TrainTransform:
    """RandomResizedCrop + horizontal flip with the window from `augment` (shared with DALI), to the
    size the loader passes with each sample (the epoch's, under progressive resizing), then
    data.auto_augment on the PIL image, as torchvision's and timm's train presets order them."""

    def __init__(self, cfg: DataConfig) -> None:
        self.size, self.scale, self.ratio, self.hflip = cfg.image_size, tuple(cfg.scale), tuple(cfg.ratio), cfg.hflip
        self.interpolation = interpolation_mode(cfg.interpolation)
        self.policy = SeededPolicy(cfg)
        self.erase_prob = cfg.random_erase

    def __call__(self, img: Image.Image, seed: int, size: int = 0) -> torch.Tensor:
        size = size or self.size
        w = random_resized_crop(seed, img.width, img.height, self.scale, self.ratio, self.hflip)
        img = v2.functional.resized_crop(img, w.top, w.left, w.height, w.width, [size, size],
                                         interpolation=self.interpolation, antialias=True)
        if w.flip:
            img = v2.functional.horizontal_flip(img)
        if self.policy:
            img = self.policy(img, seed)
        return v2.functional.pil_to_tensor(img)

    def erase(self, seed: int, size: int = 0) -> torch.Tensor:
        """The RandomErasing region of this sample ([top, left, height, width]; zeros: none)."""
        return torch.tensor(erase_region(seed, size or self.size, self.erase_prob), dtype=torch.int32)


class ValTransform:
    """The evaluation view at data.val_image_size (`data.val_crop_mode`): no randomness, the seed is
    ignored. center: shorter side to size / crop_fraction, center crop; squash: the whole image to
    that square, center crop."""

    erase_prob = 0.0

    def __init__(self, cfg: DataConfig) -> None:
        size, resized = val_size(cfg), val_resize_shorter(cfg)
        resize = v2.Resize(resized if cfg.val_crop_mode == "center" else [resized, resized],
                           interpolation=interpolation_mode(cfg.interpolation), antialias=True)
        self.steps = v2.Compose([resize, v2.CenterCrop(size), v2.PILToTensor()])

    def __call__(self, img: Image.Image, seed: int, size: int = 0) -> torch.Tensor:  # noqa: ARG002
        return self.steps(img)


class FolderDataset(torch.utils.data.Dataset):
    """Indexed by (index, augmentation seed) pairs from `ShardPlan.batches`.

    Returns (image uint8 CHW, label, replaced) where replaced=1 marks an undecodable file that was
    swapped for the next readable one under on_bad_image=skip; under data.random_erase also the
    sample's erase region, applied by the loader after normalization.
    """

    def __init__(self, classes: list[str], samples: SampleIndex, transform, on_bad_image: str = "fail") -> None:
        self.classes, self.samples = classes, samples
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.normalize: PixelNormalizer | None = None  # set on CPU: normalize in the workers
        self.hwc = False  # emit HWC so a batch is NHWC memory: channels_last with no copy

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        # The crop and flip depend on the sample's seed, a function of (run seed, epoch, index)
        # only: a resumed run and a run with any number of workers see identical augmentations.
        index, seed, *size = item  # the train size rides with the sample under progressive resizing
        for candidate in bad_images.candidates(index, len(self.samples)):
            path, label = self.samples[candidate]
            try:
                img = load_rgb(path)
            except _DECODE_ERRORS as exc:
                bad_images.report(path, str(exc), self.on_bad_image)
                continue
            image = finish_sample(self.transform(img, seed, *size), self.normalize, self.hwc)
            if self.transform.erase_prob > 0:
                return image, label, int(candidate != index), self.transform.erase(seed, *size)
            return image, label, int(candidate != index)
        raise DataError(f"no readable image among the {len(self.samples)} of this split")


def folder_datasets(cfg: DataConfig) -> tuple[FolderDataset, FolderDataset]:
    splits = split_samples(cfg)
    return (FolderDataset(*splits["train"], TrainTransform(cfg), cfg.on_bad_image),
            FolderDataset(*splits["val"], ValTransform(cfg), cfg.on_bad_image))
