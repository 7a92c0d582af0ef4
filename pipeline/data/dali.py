"""NVIDIA DALI pipelines: GPU ("mixed") JPEG decode on GPUs, the same graph on CPU without one.

File order comes from the same `ShardPlan` as the torchvision backend (fed through
`fn.external_source`), so both backends shard by global rank identically, every rank runs the same
number of steps, validation sees each image exactly once with no padded repeats, and a resumed run
restarts at the exact batch. The DALI graph does everything after reading the bytes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipeline.config import DataConfig
from pipeline.data.folder import DataError, load_rgb, require_splits, scan_folder
from pipeline.data.loader import DataBundle, Placement
from pipeline.data.sampler import ShardPlan

# Host/device scratch the decoder reserves up front so it does not reallocate as image sizes vary;
# DALI's own defaults for ImageNet-scale JPEGs.
HOST_MEMORY_PADDING = 8 << 20
DEVICE_MEMORY_PADDING = 16 << 20
# Share of JPEGs sent to the A100/H100 hardware JPEG decoder (the rest go to CUDA decode); NVIDIA's
# ResNet-50 example uses 0.65 to keep both busy.
HW_DECODER_LOAD = 0.65
PREFETCH_DEPTH = 2  # batches DALI prepares ahead of the training step


def _decode_device(device: torch.device) -> tuple[str, str]:
    """(decoder device, device of the ops after it)."""
    return ("mixed", "gpu") if device.type == "cuda" else ("cpu", "cpu")


@pipeline_def
def train_pipeline(cfg: DataConfig, source, decode_device: str, op_device: str, layout: str):
    """Random-resized crop decoded from the crop region only (ROI decode), resize, flip, normalize."""
    jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    images = fn.decoders.image_random_crop(
        jpegs, device=decode_device, output_type=types.RGB,
        random_area=list(cfg.scale), random_aspect_ratio=list(cfg.ratio), num_attempts=10,
        host_memory_padding=HOST_MEMORY_PADDING,
        **({"device_memory_padding": DEVICE_MEMORY_PADDING, "hw_decoder_load": HW_DECODER_LOAD}
           if decode_device == "mixed" else {}))
    images = fn.resize(images, device=op_device, resize_x=cfg.image_size, resize_y=cfg.image_size,
                       interp_type=types.INTERP_LINEAR, antialias=cfg.train_antialias)
    images = fn.crop_mirror_normalize(
        images, device=op_device, dtype=types.FLOAT, output_layout=layout,
        mean=[m * 255 for m in cfg.mean], std=[s * 255 for s in cfg.std],
        mirror=fn.random.coin_flip(probability=cfg.hflip))
    return images, labels


@pipeline_def
def val_pipeline(cfg: DataConfig, source, decode_device: str, op_device: str, layout: str):
    """Resize the shorter side to image_size / crop_fraction, center crop, normalize."""
    jpegs, labels = fn.external_source(source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT64])
    images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB,
                               host_memory_padding=HOST_MEMORY_PADDING)
    images = fn.resize(images, device=op_device, resize_shorter=round(cfg.image_size / cfg.crop_fraction),
                       interp_type=types.INTERP_LINEAR, antialias=True)
    images = fn.crop_mirror_normalize(
        images, device=op_device, dtype=types.FLOAT, output_layout=layout,
        crop=(cfg.image_size, cfg.image_size), crop_pos_x=0.5, crop_pos_y=0.5,
        mean=[m * 255 for m in cfg.mean], std=[s * 255 for s in cfg.std])
    return images, labels


@dataclass
class _EncodedBatches:
    """external_source callback: the bytes and labels of the plan's batches, in order."""

    samples: list[tuple[str, int]]
    batches: list[list[tuple[int, int]]]
    on_bad_image: str = "fail"
    position: int = 0
    error: str = ""  # set when a file fails the pre-decode check under on_bad_image=fail
    replaced: list = None  # paths swapped out under on_bad_image=skip

    def __call__(self):
        if self.position >= len(self.batches):
            raise StopIteration
        batch = self.batches[self.position]
        self.position += 1
        data, labels = [], []
        for index, _seed in batch:
            for attempt in range(len(self.samples)):
                path, label = self.samples[(index + attempt) % len(self.samples)]
                problem = ""
                try:
                    encoded = np.fromfile(path, dtype=np.uint8)
                    problem = _container_problem(encoded)
                except OSError as exc:  # unreadable (permissions, vanished file)
                    problem = str(exc)
                if not problem:
                    break
                # Stop here rather than inside the decoder: a DALI operator error leaves the
                # pipeline unusable, a Python error is reported cleanly.
                if self.on_bad_image == "fail":
                    self.error = f"cannot read image {path}: {problem} (set data.on_bad_image=skip to skip such files)"
                    raise StopIteration
                print(f"warning: skipping unreadable image {path}: {problem}", file=sys.stderr, flush=True)
                self.replaced = (self.replaced or []) + [path]
            data.append(encoded)
            labels.append(np.array(label, dtype=np.int64))
        return data, labels


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"P5", b"P6", b"GIF8")


def _container_problem(encoded: np.ndarray) -> str:
    """A cheap pre-decode check: empty files, unknown signatures, JPEGs cut short (no EOI marker)."""
    if encoded.size == 0:
        return "empty file"
    head = encoded[:8].tobytes()
    if not head.startswith(_SIGNATURES):
        return "not an image (unknown file signature)"
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in encoded[-64:].tobytes():
        return "truncated JPEG (no end-of-image marker)"
    return ""


class DaliLoader:
    """Same interface as TorchLoader; one DALI pipeline per pass (seeded by seed, epoch and start)."""

    backend = "dali"

    def __init__(self, root: Path, cfg: DataConfig, placement: Placement, world_size: int, batch_size: int,
                 seed: int, train: bool) -> None:
        self.classes, self.samples = scan_folder(root)
        self.plan = ShardPlan(len(self.samples), placement.rank, world_size, batch_size, train, seed)
        self.cfg, self.placement, self.train = cfg, placement, train
        self.num_samples = len(self.samples)
        self.layout = "HWC" if placement.channels_last else "CHW"
        self.bad_files: set[int] = set()  # under on_bad_image=skip: indices found undecodable
        self.replaced_images = 0
        self._epoch, self._start = 0, 0

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self._epoch, self._start = epoch, start_step

    def _batches(self, start: int) -> list[list[tuple[int, int]]]:
        batches = self.plan.batches(self._epoch, start)
        if not self.bad_files:
            return batches
        n = len(self.samples)
        fixed = []
        for batch in batches:
            out = []
            for index, seed in batch:
                swap = index
                while swap in self.bad_files:  # the same replacement rule as the torchvision backend
                    swap = (swap + 1) % n
                out.append((swap, seed))
            fixed.append(out)
        return fixed

    def _iterator(self, start: int) -> DALIGenericIterator:
        decode_device, op_device = _decode_device(self.placement.device)
        build = train_pipeline if self.train else val_pipeline
        seed = (self.plan.seed * 1_000_003 + self._epoch * 1009 + start) * 131 + self.placement.rank
        source = _EncodedBatches(self.samples, self._batches(start), self.cfg.on_bad_image)
        self._source = source
        pipe = build(cfg=self.cfg, source=source, decode_device=decode_device, op_device=op_device, layout=self.layout,
                     batch_size=self.plan.batch_size, num_threads=max(1, self.cfg.workers),
                     device_id=self.placement.device.index if self.placement.device.type == "cuda" else None,
                     seed=seed % (2**31), prefetch_queue_depth=PREFETCH_DEPTH, exec_dynamic=True)
        # The pass ends when the source raises StopIteration; DALIGenericIterator copies each
        # batch into torch memory (device memory on GPU) without a host round trip.
        return DALIGenericIterator([pipe], ["images", "labels"], auto_reset=False)

    def __iter__(self):
        step = self._start
        while True:
            try:
                for out in self._iterator(step):
                    images, labels = out[0]["images"], out[0]["labels"]
                    step += 1
                    yield self._to_torch(images), labels.to(self.placement.device, non_blocking=True).view(-1)
                    self._count_replaced()
                if self._source.error:
                    raise DataError(self._source.error)
                self._count_replaced()
                return
            except RuntimeError as exc:
                if self._source.error:
                    raise DataError(self._source.error) from None
                bad = self._find_bad(step)
                if not bad:
                    raise
                if self.cfg.on_bad_image == "fail":
                    path = self.samples[bad[0]][0]
                    raise DataError(f"cannot decode image {path} (DALI: {_reason(exc)}) "
                                    "(set data.on_bad_image=skip to skip such files)") from None
                for index in bad:
                    print(f"warning: skipping unreadable image {self.samples[index][0]}", file=sys.stderr, flush=True)
                self.bad_files.update(bad)
                self.replaced_images += len(bad)  # restart the pass at the failing batch, bad files swapped

    def _count_replaced(self) -> None:
        if self._source.replaced:
            self.replaced_images += len(self._source.replaced)
            self._source.replaced = []

    def _find_bad(self, step: int) -> list[int]:
        """Which files of the failing batch (and those prefetched after it) do not decode."""
        bad = []
        for batch in self._batches(step)[: PREFETCH_DEPTH + 1]:
            for index, _ in batch:
                try:
                    load_rgb(self.samples[index][0])
                except Exception:  # noqa: BLE001 - any decode failure marks the file
                    bad.append(index)
        return sorted(set(bad))

    def _to_torch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.placement.device, non_blocking=True)
        if self.layout == "HWC":  # NHWC memory viewed as NCHW: exactly torch's channels_last
            return images.permute(0, 3, 1, 2)
        return images


def _reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "Critical error" not in ln]
    return (lines[0] if lines else "decode failed")[:160]


def dali_loaders(cfg: DataConfig, placement: Placement, seed: int) -> DataBundle:
    root = Path(cfg.path)
    require_splits(root)
    val_batch = cfg.val_batch_size or cfg.batch_size
    train = DaliLoader(root / "train", cfg, placement, placement.world_size, cfg.batch_size, seed, True)
    val = DaliLoader(root / "val", cfg, placement, placement.world_size, val_batch, seed, False)
    return DataBundle(train, val, len(train.classes), "dali", train.classes)
