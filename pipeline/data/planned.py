"""Loaders whose batches come from a ShardPlan: the shared base, and the torchvision DataLoader one."""
from __future__ import annotations

import torch

from pipeline.config import DataConfig
from pipeline.data.autoaugment import erase_regions
from pipeline.data.normalize import Normalizer, PixelNormalizer
from pipeline.data.resolution import scheduled, train_size
from pipeline.data.sampler import ShardPlan
from pipeline.data.shard_cache import followed
from pipeline.data.streaming import prefetcher
from pipeline.data.types import Placement


class PlannedLoader:
    """What every file-backed loader shares: a ShardPlan, the resume position, the replaced count."""

    backend = ""

    def __init__(self, plan: ShardPlan, num_samples: int) -> None:
        self.plan = plan
        self.num_samples = num_samples
        self.replaced_images = 0  # undecodable files swapped out under on_bad_image=skip
        self._epoch, self._start = 0, 0

    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch()

    def steps_in(self, epoch: int) -> int:
        return self.plan.steps_in(epoch)

    def continue_epoch(self, epoch: int, stream_batch: int, offset: int) -> None:
        self.plan.partial = (epoch, stream_batch, offset)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self._epoch, self._start = epoch, start_step


class TorchLoader(PlannedLoader):
    """A torch DataLoader over a map-style dataset (folder or CIFAR), batches chosen by a ShardPlan."""

    backend = "torchvision"

    def __init__(self, dataset, plan: ShardPlan, cfg: DataConfig, placement: Placement) -> None:
        super().__init__(plan, len(dataset))
        self.dataset = dataset
        # On CPU the training process is the bottleneck: normalize in the loader workers instead.
        in_workers = placement.device.type == "cpu" and cfg.workers > 0
        if in_workers:
            dataset.normalize = PixelNormalizer(cfg.mean, cfg.std)
        self.normalize = Normalizer(cfg.mean, cfg.std, placement, in_workers)
        dataset.hwc = placement.channels_last
        self.workers = cfg.workers
        self.pin = placement.device.type == "cuda"
        # Progressive resizing: each train sample carries its epoch's size to the worker that crops it
        # (persistent workers keep their own copy of the dataset, so an attribute set here would not reach them).
        self.size_schedule = cfg if plan.train and scheduled(cfg) else None
        self._loader = None
        self.prefetch = prefetcher(cfg, getattr(dataset, "samples", None), plan.train)

    # The DataLoader iterates this object as its batch sampler, in the main process, so one
    # DataLoader with persistent workers serves every epoch and resume position.
    def __len__(self) -> int:
        return self.plan.steps_in(self._epoch) - self._start

    def _batch_sampler_iter(self):
        batches = self.plan.batches(self._epoch, self._start)
        if self.size_schedule is not None:
            size = train_size(self.size_schedule, self._epoch)
            batches = [[(index, seed, size) for index, seed in batch] for batch in batches]
        return iter(batches) if self.prefetch is None else followed(batches, self.prefetch, batches)

    def __iter__(self):
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=_BatchSource(self), num_workers=self.workers, pin_memory=self.pin,
                prefetch_factor=4 if self.workers else None, persistent_workers=self.workers > 0)
        try:
            for images, labels, replaced, *erase in self._loader:
                yield self._finish(images, labels, replaced, erase)
        except (ConnectionResetError, EOFError, BrokenPipeError) as exc:
            raise _dead_worker_error(self._loader, exc) from None

    def dead_worker(self) -> str:
        """torch's line for a loader worker that has died ("DataLoader worker (pid N) is killed by
        signal: SIGKILL"), or "" when all are alive."""
        if self._loader is None:
            return ""
        error = _dead_worker_error(self._loader, RuntimeError("asked by the trainer"), wait=0.5)
        return str(error) if "DataLoader worker (pid" in str(error) else ""

    def _finish(self, images, labels, replaced, erase):
        self.replaced_images += int(replaced.sum())
        if images.ndim == 4 and images.shape[-1] == 3 and self.dataset.hwc:
            images = images.permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW view, no copy
        images = self.normalize(images)
        if erase:  # data.random_erase: torchvision erases the normalized image
            images = erase_regions(images, erase[0])
        return images, labels.to(self.normalize.device, non_blocking=True)


def _dead_worker_error(loader, exc: Exception, wait: float = 5.0) -> Exception:
    """A worker killed while it hands over a batch can surface as a reset connection (its shared
    memory is passed over a socket) before torch's own check sees it dead. Name the dead worker as
    torch does ("DataLoader worker (pid N) is killed by signal: ..."), so the trainer reports it
    with its step; anything else is re-raised as it came."""
    import signal
    import time

    workers = getattr(getattr(loader, "_iterator", None), "_workers", None) or []  # torch's, private
    deadline = time.monotonic() + wait  # SIGKILL is asynchronous: let the process finish dying
    while time.monotonic() < deadline:
        dead = [w for w in workers if not w.is_alive()]
        if dead:
            code = dead[0].exitcode or 0
            how = f"is killed by signal: {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return RuntimeError(f"DataLoader worker (pid {dead[0].pid}) {how} ({type(exc).__name__}: {exc})")
        time.sleep(0.05)
    return exc


class _BatchSource:
    def __init__(self, owner: TorchLoader) -> None:
        self.owner = owner

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self):
        return self.owner._batch_sampler_iter()


