"""NVIDIA DALI pipelines: GPU ("mixed") JPEG decode on GPUs, the same graph on CPU without one.

File order comes from the same `ShardPlan` as the torchvision backend (fed through
`fn.external_source`), so both backends shard by global rank identically, every rank runs the same
number of steps, validation sees each image exactly once with no padded repeats, and a resumed run
restarts at the exact batch. The train crop windows and flips come with the bytes, drawn per sample
from the sample's seed by `augment.random_resized_crop` like the torchvision backend's: both
backends cut the same windows, and a resumed run gets the same batches bit for bit on CPU.

On a GPU the DALI graph does everything after reading the bytes: ROI decode (hardware decoder where
there is one), resize, flip, normalize. On CPU the same graph runs with CPU operators up to the
decoded crops, and torch's vectorized resize finishes them (`data.dali_resize`): DALI's CPU
resampler costs 4-7x more per image than torch's (antialiased), more than the ROI decode itself.
With data.auto_augment the resize stays in DALI, since the policy's operators run after it.
The graphs themselves are in `dali_graph.py`.
"""
from __future__ import annotations


import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipeline.config import DataConfig
from pipeline.config.policy import policy_kind
from pipeline.data import bad_images
from pipeline.data.autoaugment import erase_regions
from pipeline.data.dali_graph import PREFETCH_DEPTH, decode_device_for, train_pipeline, val_pipeline
from pipeline.data.encoded import EncodedBatches
from pipeline.data.folder import load_rgb, split_samples
from pipeline.data.planned import PlannedLoader
from pipeline.data.resolution import train_size, val_size
from pipeline.data.sample_index import SampleIndex
from pipeline.data.sampler import ShardPlan
from pipeline.data.shard_cache import followed
from pipeline.data.streaming import plan_order, prefetcher
from pipeline.data.torch_resize import TorchResize
from pipeline.data.types import DataBundle, DataError, Placement


def _dali_device_id(device: torch.device) -> int | None:
    """DALI's device_id: None builds a CPU-only pipeline, so a bare torch.device("cuda") must become
    its current index, or the "mixed" decoder could not be built."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


class DaliLoader(PlannedLoader):
    """Same interface as TorchLoader; a DALI pipeline per pass, starting at the pass's first step, and
    reused by the next pass when that one has the same size (`_reuse`).

    Batches leave as torch tensors on the training device. With `TorchResize` (CPU default) the
    DALI graph stops at the decoded crops and torch finishes them in this process while DALI's
    threads decode the next batches.
    """

    backend = "dali"

    def __init__(self, split: tuple[list[str], SampleIndex], cfg: DataConfig, placement: Placement,
                 batch_size: int, seed: int, train: bool) -> None:
        self.classes, self.samples = split
        super().__init__(ShardPlan(len(self.samples), placement.rank, placement.world_size, batch_size, train, seed,
                                   accumulation=placement.accumulation if train else 1,
                                   repeats=cfg.repeat_aug if train else 1, **plan_order(cfg, self.samples)),
                         len(self.samples))
        self.prefetch = prefetcher(cfg, self.samples, train)
        self.cfg, self.placement, self.train = cfg, placement, train
        self.layout = "HWC" if placement.channels_last else "CHW"
        self.torch_resize = (TorchResize(cfg, placement.channels_last, cfg.train_antialias if train else True)
                             if _resize_in_torch(cfg, placement.device, train) else None)
        self.bad_files: set[int] = set()  # under on_bad_image=skip: indices found undecodable
        self.pipelines_built = 0  # at most one per pass (epoch or resumed part of one), never one per batch
        self._idle = None  # (pipeline, iterator, size) of a pass that ran to its end: the next may reuse it

    def size(self) -> int:  # this pass's: the epoch's train size, or the evaluation size
        return train_size(self.cfg, self._epoch) if self.train else val_size(self.cfg)

    def _reuse(self, batches: list):
        """The last pass's pipeline and iterator, its source given this pass's batches, when that pass
        ran to its end at this pass's size; else None. A build costs ~2.4 s on an H200 (20-30 ms on
        CPU), paid by every epoch and every evaluation (docs/benchmarks.md, issue 45). DALI restarts
        the source's iteration count at 0 on reset. The parallel feed's workers hold a copy of the
        source, so with data.dali_feed_workers each pass still builds its own."""
        idle, self._idle = self._idle, None
        if idle is None or idle[2] != self.size():
            return None
        self._source.batches = batches
        return idle

    def _keep(self, pipe, iterator) -> None:
        """The pass ran to its end: keep its pipeline for the next pass (in-process feed only)."""
        if not self.cfg.dali_feed_workers:
            self._idle = (pipe, iterator, self.size())

    def _pipeline(self, batches: list):
        decode_device, op_device = decode_device_for(self.placement.device)
        build = train_pipeline if self.train else val_pipeline
        self._source = EncodedBatches(self.samples, batches, self.cfg, self.train,
                                       self.bad_files, size=self.size())
        workers = self.cfg.dali_feed_workers
        feed = {"py_num_workers": workers, "py_start_method": _start_method()} if workers else {}
        pipe = build(cfg=self.cfg, source=self._source, decode_device=decode_device, op_device=op_device,
                     layout=self.layout, resize_in_dali=self.torch_resize is None, size=self.size(),
                     parallel=workers > 0,
                     batch_size=self.plan.batch_size, num_threads=max(1, self.cfg.workers),
                     device_id=_dali_device_id(self.placement.device),
                     prefetch_queue_depth=PREFETCH_DEPTH, exec_dynamic=True, **feed)
        if workers:
            pipe.start_py_workers()
        self.pipelines_built += 1
        return pipe

    def _pass(self, start: int):
        """(images, labels) batches of one pipeline, from `start` to the end of the pass."""
        batches = self.plan.batches(self._epoch, start)  # drawn once: the feed and the prefetcher share it
        if self.prefetch is None:
            yield from self._pass_batches(batches)
        else:  # DALI asks for PREFETCH_DEPTH batches beyond the one it hands over
            yield from followed(self._pass_batches(batches), self.prefetch, batches, PREFETCH_DEPTH)

    def _pass_batches(self, batches: list):
        """The pass's batches. The loop consuming them stops after the last one without asking for
        more, so the end is taken here, before the last batch leaves: the source has already raised
        StopIteration by then (DALI prefetches), and the pipeline is kept for the next pass."""
        reused = self._reuse(batches)
        pipe, iterator = reused[:2] if reused else (self._pipeline(batches), None)
        if self.torch_resize is None:
            # DALIGenericIterator copies each batch into torch memory (device memory on GPU)
            # without a host round trip; the pass ends when the source raises StopIteration.
            if iterator is None:
                iterator = DALIGenericIterator([pipe], ["images", "labels", "replaced"], auto_reset=False)
            else:
                iterator.reset()  # prefetches this pass's first batches
            outputs = self._iterated(iterator)
        else:
            if reused:
                pipe.reset()
            else:
                pipe.build()
            outputs = self._run(pipe)
        for count, batch in enumerate(outputs, 1):
            if count == len(batches):
                for _ in outputs:  # the end, with nothing left: the pipeline can serve another pass
                    raise RuntimeError("DALI gave more batches than the plan holds")
                self._keep(pipe, iterator)
            yield batch

    def _iterated(self, iterator):
        for out in iterator:
            self.replaced_images += int(out[0]["replaced"].sum())
            yield self._to_torch(out[0]["images"]), out[0]["labels"].to(self.placement.device, non_blocking=True).view(-1)

    def _run(self, pipe):
        size = self.size()
        while True:
            try:
                crops, labels, replaced, *extra = pipe.run()
            except StopIteration:
                return
            self.replaced_images += int(np.asarray(replaced.as_tensor()).sum())
            if not self.train and self.cfg.val_view == "torchvision":  # the whole images, their resize and corner
                resized, corners = (np.asarray(out.as_tensor()) for out in extra)
                yield self.torch_resize.resize_crop(crops, resized, corners, size), \
                    torch.from_numpy(np.array(labels.as_tensor())).view(-1)
                continue
            flips = np.asarray(extra[0].as_tensor()) if extra else None
            images = self.torch_resize(crops, flips, size)
            if self.train and self.cfg.random_erase > 0:  # data.random_erase: the source's regions, after normalizing
                top_left, extent = (torch.from_numpy(np.array(out.as_tensor())) for out in extra[-2:])
                images = erase_regions(images, torch.cat([top_left, extent], 1).int())
            yield images, torch.from_numpy(np.array(labels.as_tensor())).view(-1)

    def __iter__(self):
        step = self._start
        while True:
            try:
                for images, labels in self._pass(step):
                    step += 1
                    yield images, labels
                if self._source.error:
                    raise DataError(self._source.error)
                return
            except Exception as exc:  # noqa: BLE001 - DALI re-raises its feed workers' errors as Exception
                if self._source.error:
                    raise DataError(self._source.error) from None
                if isinstance(exc, DataError):
                    raise
                if worker_error := _worker_data_error(exc):  # a feed worker's pre-decode check, under fail
                    raise DataError(worker_error) from None
                bad = self._find_bad(step)
                if not bad:  # not a file: the pipeline itself failed (an operator, or the source callback)
                    where = "a DALI operator" if "operator" in str(exc).lower() else \
                        "its file source (the external_source callback)"
                    raise RuntimeError(f"DALI pipeline failed at step {step} of the epoch in {where}: "
                                       f"{_reason(exc)}") from None
                for index in bad:  # raises on the first one under on_bad_image=fail
                    bad_images.report(self.samples[index][0], f"DALI: {_reason(exc)}", self.cfg.on_bad_image)
                self.bad_files.update(bad)  # restart the pass at the failing batch, bad files replaced

    def _find_bad(self, step: int) -> list[int]:
        """Which files of the failing batch (and those prefetched after it) do not decode."""
        bad, n = [], len(self.samples)
        for batch in self.plan.batches(self._epoch, step)[: PREFETCH_DEPTH + 1]:
            for index, _ in batch:
                used = bad_images.replacement(index, n, self.bad_files)  # the file the source read
                try:
                    load_rgb(self.samples[used][0])
                except Exception:  # noqa: BLE001 - any decode failure marks the file
                    bad.append(used)
        return sorted(set(bad))

    def _to_torch(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.placement.device, non_blocking=True)
        if self.layout == "HWC":  # NHWC memory viewed as NCHW: exactly torch's channels_last
            return images.permute(0, 3, 1, 2)
        return images


def _start_method() -> str:
    """fork is cheap, but a forked CUDA context is unusable: once CUDA is up, the workers are spawned."""
    return "spawn" if torch.cuda.is_initialized() else "fork"


def _resize_in_torch(cfg: DataConfig, device: torch.device, train: bool) -> bool:
    if cfg.dali_resize == "torch" and device.type == "cuda":
        raise DataError("data.dali_resize=torch works on CPU only; on a GPU DALI resizes on the GPU (use auto or dali)")
    policy = train and policy_kind(cfg.auto_augment) != "none"
    if policy and cfg.dali_resize == "torch":
        raise DataError(f"data.auto_augment={cfg.auto_augment} runs inside the DALI graph after the resize: "
                        "set data.dali_resize=auto or dali (not torch)")
    # With a policy the resize stays in DALI, where the policy's operators run after it.
    return not policy and (cfg.dali_resize == "torch" or (cfg.dali_resize == "auto" and device.type == "cpu"))


def _worker_data_error(exc: Exception) -> str:
    """The DataError line inside a parallel feed worker's traceback, as DALI passes it on."""
    marker = "DataError: "
    lines = [ln.strip() for ln in str(exc).splitlines() if marker in ln]
    return lines[-1].split(marker, 1)[1] if lines else ""


def _reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "Critical error" not in ln]
    return (lines[0] if lines else "decode failed")[:160]


def dali_loaders(cfg: DataConfig, placement: Placement, seed: int) -> DataBundle:
    splits = split_samples(cfg)
    val_batch = cfg.val_batch_size or cfg.batch_size
    train = DaliLoader(splits["train"], cfg, placement, cfg.batch_size, seed, True)
    val = DaliLoader(splits["val"], cfg, placement, val_batch, seed, False)
    return DataBundle(train, val, len(train.classes), "dali", train.classes)
