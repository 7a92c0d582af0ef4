"""Where a run is, in the units each consumer needs: steps of this start, the LR schedule's steps,
epochs. They coincide for a run that never rescaled; after `trainer.elastic=rescale`
(pipeline/training/elastic.py) the schedule counts in the recipe's global batch, and the epoch the
rescale happened in is shorter (it goes on from an offset of its stream)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.data.types import BatchLoader
from pipeline.training.state import TrainState


@dataclass
class RunPosition:
    state: TrainState
    loader: BatchLoader  # the train loader
    global_batch: int  # this start's
    accumulation: int
    steps_per_epoch: int  # optimizer steps of a whole epoch at this start's global batch
    epochs: int

    def partial_epoch(self, epoch: int) -> bool:
        stream = self.state.epoch_stream
        return bool(stream) and stream[0] == epoch

    def steps_in(self, epoch: int) -> int:
        """Optimizer steps of `epoch` at this start's global batch."""
        if self.partial_epoch(epoch):
            return self.loader.steps_in(epoch) // self.accumulation
        return self.steps_per_epoch

    def schedule_step(self) -> float:
        """The LR schedule's position: samples seen / the global batch it counts in (an integer,
        the global step, for a run that never rescaled)."""
        whole, rest = divmod(self.state.samples_seen, self.state.schedule_batch)
        return whole if rest == 0 else self.state.samples_seen / self.state.schedule_batch

    def warmup_end_step(self, warmup_steps: int) -> int:
        """The global step at which the schedule's warmup ends, in this start's steps."""
        s = self.state
        if s.schedule_batch == self.global_batch:
            return warmup_steps
        left = (warmup_steps - self.schedule_step()) * s.schedule_batch / self.global_batch
        return s.global_step + math.ceil(left)

    def total_steps(self, max_steps: int) -> int:
        """The global step the run ends at: the steps done, the rest of this epoch, the later epochs."""
        s = self.state
        total = s.global_step
        if s.epoch < self.epochs:
            total += self.steps_in(s.epoch) - s.step_in_epoch + (self.epochs - s.epoch - 1) * self.steps_per_epoch
        return min(total, max_steps) if max_steps > 0 else total

    def epoch_fraction(self) -> float:
        """Epochs done, fractional: for logs and the summary."""
        s = self.state
        if not self.partial_epoch(s.epoch):
            return s.epoch + s.step_in_epoch / self.steps_per_epoch
        offset = s.epoch_stream[2]
        return s.epoch + min(1.0, (offset + s.step_in_epoch * self.global_batch)
                             / (self.steps_per_epoch * self.global_batch))
