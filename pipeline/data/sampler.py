"""Global-rank sharding with epoch-seeded shuffling and per-sample augmentation seeds.

Every backend that reads files draws its order from here, so a run is reproducible for a given
seed, resumable mid-epoch (start at any step), and the same images go to the same ranks whatever
the number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads nearby (seed, epoch, index) apart


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A per-sample augmentation seed: a function of (run seed, epoch, sample, copy), not of the
    worker or rank. `copy` numbers the repeats of a sample under repeated augmentation (0: the first,
    and the only one without it), so each copy gets its own view."""
    return ((seed * 1_000_003 + epoch) * _MIX + index + (copy << 40)) % (2**63 - 1)


@dataclass
class ShardPlan:
    """Which samples one rank sees in one epoch.

    Training (`train=True`) shuffles with a generator seeded by (seed, epoch), pads the order to a
    multiple of the global batch (world_size * batch_size * accumulation) by wrapping (so every rank
    runs the same number of steps, which DDP needs, and every optimizer step is whole) and drops
    nothing. Rank r takes order[r::world]: after k optimizer steps exactly order[:k * global batch]
    is used, whatever the world size, so an epoch can go on at another size with the same global
    batch (pipeline/training/elastic.py). Validation keeps the natural order and gives rank r the
    indices r, r+world, ... with no padding: every image is seen exactly once across ranks.

    Repeated augmentation (`repeats` = k > 1, torchvision's RASampler semantics): the epoch's order
    is the first ceil(total / k) images of the shuffle, each repeated k times in a row, cut to the
    same total as without it. Consecutive positions go to consecutive ranks, so a sample's copies
    land on k different ranks when world >= k (on one rank at world 1, where RASampler refuses to
    run), each copy with its own seed. Unlike RASampler's, the order depends on the global batch
    only, not on the world size: a resume at another world size with the same global batch goes on
    with the same stream of copies.
    """

    num_samples: int
    rank: int
    world_size: int
    batch_size: int
    train: bool
    seed: int = 0
    drop_last: bool = False  # train: drop the incomplete global batch instead of wrapping around
    accumulation: int = 1  # train: micro-batches per optimizer step (optim.accumulation)
    repeats: int = 1  # train: repeated augmentation, copies of each chosen sample in an epoch
    # A rescaled resume (trainer.elastic=rescale, pipeline/training/elastic.py): epoch `partial[0]`
    # goes on from position `partial[2]` of the stream it was drawn as at global batch `partial[1]`,
    # dealt in this plan's global batches. The samples not yet used are used once, in the same order
    # and with the same augmentation seeds; only the last step's padding is drawn anew.
    partial: tuple[int, int, int] | None = None
    # The streaming order (data.shuffle=blocks): each sample's shard, and shards per window
    # (`blocks_order`). Validation then goes shard by shard. None: a global shuffle.
    shard_of: np.ndarray | None = None
    window: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("cannot shard an empty dataset")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size * self.accumulation

    def steps_per_epoch(self) -> int:
        """Micro-batches of a whole epoch on this rank."""
        if not self.train:
            return -(-len(range(self.rank, self.num_samples, self.world_size)) // self.batch_size)
        return epoch_steps(self.num_samples, self.global_batch, self.drop_last) * self.accumulation

    def steps_in(self, epoch: int) -> int:
        """Micro-batches of `epoch` on this rank: a whole epoch's, or what a rescaled resume left of it."""
        if not self.train or self.partial is None or epoch != self.partial[0]:
            return self.steps_per_epoch()
        _, stream_batch, offset = self.partial  # the stream's length is known without drawing it
        left = max(0, min(epoch_steps(self.num_samples, stream_batch, self.drop_last) * stream_batch,
                          self.num_samples) - offset)
        return (left // self.global_batch if self.drop_last else -(-left // self.global_batch)) * self.accumulation

    def _order(self, epoch: int, global_batch: int) -> tuple[list[int], list[int]]:
        """The epoch's global order of (sample, copy number) at `global_batch`, padded to whole global batches."""
        gen = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
        if self.shard_of is None:
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = blocks_order(self.shard_of, self.window, gen).tolist()
        total = epoch_steps(self.num_samples, global_batch, self.drop_last) * global_batch
        chosen = -(-total // self.repeats)
        while len(order) < chosen:  # wrap (like DistributedSampler's padding) so all ranks step equally
            order += order[: chosen - len(order)]
        if self.repeats == 1:
            return order[:total], [0] * total
        copies = list(range(self.repeats)) * chosen
        return [i for i in order[:chosen] for _ in range(self.repeats)][:total], copies[:total]

    def _rest_of_stream(self, epoch: int) -> tuple[list[int], list[int]]:
        """A rescaled epoch's unused part of its stream: the positions from the offset up to the
        samples' end (the old padding is not carried over)."""
        _, stream_batch, offset = self.partial
        order, copies = self._order(epoch, stream_batch)
        end = min(len(order), self.num_samples)
        return order[offset:end], copies[offset:end]

    def _epoch_stream(self, epoch: int) -> tuple[list[int], list[int]]:
        if self.partial is None or epoch != self.partial[0]:
            return self._order(epoch, self.global_batch)
        order, copies = self._rest_of_stream(epoch)
        total = self.steps_in(epoch) // self.accumulation * self.global_batch
        while order and len(order) < total:  # pad the last step from the start of what is left
            order, copies = order + order[: total - len(order)], copies + copies[: total - len(order)]
        return order[:total], copies[:total]

    def _positions(self, epoch: int) -> tuple[list[int], list[int]]:
        if not self.train:
            if self.shard_of is not None:  # shard by shard: each rank reads the shard the others read
                return np.argsort(self.shard_of, kind="stable")[self.rank :: self.world_size].tolist(), []
            return list(range(self.rank, self.num_samples, self.world_size)), []
        order, copies = self._epoch_stream(epoch)
        return order[self.rank :: self.world_size], copies[self.rank :: self.world_size]

    def indices(self, epoch: int) -> list[int]:
        return self._positions(epoch)[0]

    def batches(self, epoch: int, start_step: int = 0) -> list[list[tuple[int, int]]]:
        """Batches of (index, augmentation seed) for this rank, from `start_step` on."""
        idx, copies = self._positions(epoch)
        copies = copies or [0] * len(idx)
        out = []
        for step in range(start_step, self.steps_in(epoch)):
            span = slice(step * self.batch_size, (step + 1) * self.batch_size)
            out.append([(i, sample_seed(self.seed, epoch, i, c)) for i, c in zip(idx[span], copies[span])])
        return out


def epoch_steps(num_samples: int, global_batch: int, drop_last: bool) -> int:
    """Optimizer steps in a whole training epoch at `global_batch`."""
    return max(1, num_samples // global_batch) if drop_last else -(-num_samples // global_batch)


def blocks_order(shard_of: np.ndarray, window: int, gen: torch.Generator) -> np.ndarray:
    """The streaming order of an epoch: the shards permuted, cut into windows of `window` shards;
    inside a window each shard's samples are shuffled and dealt round-robin over the window's
    shards (position p of the window reads its shard p mod window, until a shard runs out).

    A pure function of (shard_of, window, generator): the same for every world size. Rank r takes
    positions r, r + world, ..., so where `world` divides `window` it reads `window / world` shards
    of each window, and a node reads its own share of them: the node's cache holds a window's
    share, not the split. Each global batch of G samples still mixes G / window samples of every
    shard in the window, and `pipeline prepare` writes shards from a global shuffle."""
    shard_of = np.asarray(shard_of)
    count = int(shard_of.max()) + 1
    members = np.argsort(shard_of, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(shard_of, minlength=count))])
    shards = torch.randperm(count, generator=gen).numpy()
    parts = []
    for start in range(0, count, max(1, window)):
        group = shards[start : start + max(1, window)]
        lists = [members[bounds[s] : bounds[s + 1]][torch.randperm(int(bounds[s + 1] - bounds[s]), generator=gen).numpy()]
                 for s in group]
        longest = max(len(x) for x in lists)
        table = np.full((longest, len(lists)), -1, dtype=np.int64)
        for column, values in enumerate(lists):
            table[: len(values), column] = values
        dealt = table.ravel()  # row by row: one sample of each shard in turn
        parts.append(dealt[dealt >= 0])
    return np.concatenate(parts)
