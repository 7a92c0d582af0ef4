"""The data layer's shared types: what every backend returns and the one error it raises.

A loader yields (images, labels) already on the training device: images float32, normalized,
NCHW or channels_last as the model wants; labels int64. `set_epoch(epoch, start_step)` selects
the epoch's order and where in it to start (mid-epoch resume).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol

import torch


class DataError(RuntimeError):
    """A dataset problem the user must fix (missing folder, bad list, unreadable image)."""


class RemoteUnavailable(RuntimeError):
    """Object storage stopped answering mid-run, after bounded retries: not the data's fault, so
    not a DataError (exit 1, and Slurm requeues; the resumed run continues from its checkpoint)."""


class ShardMember(NamedTuple):
    """Where one sample's encoded image lies: a byte range of a tar file (`pipeline.data.shards`)."""

    tar: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:  # how error lines name the image
        return f"{self.tar}:{self.name}"


class BatchLoader(Protocol):
    num_samples: int  # images in the split, all ranks together
    backend: str
    replaced_images: int  # unreadable files swapped out under data.on_bad_image=skip

    def steps_per_epoch(self) -> int: ...  # micro-batches of a whole epoch on this rank

    def steps_in(self, epoch: int) -> int: ...  # of `epoch`: less when a rescaled resume goes on inside it

    # trainer.elastic=rescale: `epoch` goes on from position `offset` of its stream drawn at `stream_batch`
    def continue_epoch(self, epoch: int, stream_batch: int, offset: int) -> None: ...

    def set_epoch(self, epoch: int, start_step: int = 0) -> None: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Placement:
    """Where and in which layout batches must arrive (from the runtime, not the config)."""

    device: torch.device
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    # Micro-batches per optimizer step: the train order is padded to whole global batches, so the
    # data position after k steps is the same at any world size with the same global batch.
    accumulation: int = 1


@dataclass
class DataBundle:
    train: BatchLoader
    val: BatchLoader
    num_classes: int
    backend: str
    classes: list[str]
