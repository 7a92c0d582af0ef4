"""What a run carries between steps and across restarts: its progress and its log window."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

HISTORY = 50  # log windows of throughput and data wait kept in a checkpoint


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done in `epoch`
    global_step: int = 0
    best_top1: float = -1.0
    last_val: dict = field(default_factory=dict)
    img_per_sec: list = field(default_factory=list)
    train_seconds: float = 0.0  # accumulated over attempts (resume keeps counting)
    # Per log window: the share of wall time the loop spent waiting for the next batch. On a GPU
    # the host runs ahead of the device, so time blocked on the loader is time the GPU may starve.
    data_wait: list = field(default_factory=list)
    wandb_run_id: str = ""  # kept beside "progress" in a checkpoint, not in it
    # The schedule's position in samples (trainer.elastic=rescale keeps it across a change of global
    # batch); a run that never rescaled has samples_seen = global_step x its global batch.
    samples_seen: int = 0
    schedule_batch: int = 0  # the global batch the LR schedule counts steps in (elastic.Continuation)
    lr_factor: float = 1.0
    epoch_stream: list = field(default_factory=list)  # [epoch, stream's global batch, offset] after a rescale
    rescales: list = field(default_factory=list)  # one line per rescale (summary, model card)

    def to_dict(self) -> dict:
        """The checkpoint's "progress" entry (histories trimmed to the last HISTORY windows)."""
        progress = asdict(self)
        progress.pop("wandb_run_id")
        progress["img_per_sec"] = progress["img_per_sec"][-HISTORY:]
        progress["data_wait"] = progress["data_wait"][-HISTORY:]
        return progress

    @classmethod
    def from_dict(cls, progress: dict, wandb_run_id: str = "") -> TrainState:
        known = {name: progress[name] for name in cls.__dataclass_fields__ if name in progress}
        return cls(**known, wandb_run_id=wandb_run_id)


@dataclass
class WindowStats:
    mean_loss: float
    top1: float  # on this rank's training batches, in percent
    img_per_sec: float  # all ranks together
    data_wait: float  # share of the window's wall time spent waiting for batches
    seconds: float


class LogWindow:
    """One log interval's accumulators. Loss and hits stay on the device until `close` (the one
    host sync of the interval); images and the time waited for data are counted on the host."""

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.device, self.world_size = device, world_size
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.hits = torch.zeros((), device=self.device, dtype=torch.long)
        self.micro_batches = self.local_images = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()

    def counting(self, loss_fn):
        """`loss_fn` that also counts correct top-1 predictions (argmax of soft mixup targets)."""
        def counted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            labels = target.argmax(1) if target.ndim > 1 else target
            # max(1).indices, not argmax(1): the same first-maximum index, and on bf16 CPU logits
            # [32, 1000] 32 us instead of 123 us (bench/trainer_overhead.py, docs/benchmarks.md).
            self.hits.add_((logits.detach().max(1).indices == labels).sum())
            return loss_fn(logits, target)
        return counted

    def add(self, loss: torch.Tensor, batch_size: int) -> None:
        self.loss_sum += loss
        self.micro_batches += 1
        self.local_images += batch_size

    def close(self) -> WindowStats:
        loss_total, hit_total = torch.stack([self.loss_sum, self.hits.to(self.loss_sum.dtype)]).tolist()
        seconds = time.perf_counter() - self.start
        stats = WindowStats(loss_total / max(1, self.micro_batches), 100.0 * hit_total / max(1, self.local_images),
                            self.local_images * self.world_size / max(seconds, 1e-9),
                            self.data_wait / max(seconds, 1e-9), seconds)
        self.reset()
        return stats
