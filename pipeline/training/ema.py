"""The weight EMA (timm's ModelEmaV3), updated as the config's recipe does.

Default: every `trainer.ema_every` steps with timm's decay (which copies the weights for the first
two steps). `trainer.ema_torchvision_rule` runs it as torchvision's V2 recipe
(references/classification/train.py): the decay is rescaled for the number of images between
updates over the run, alpha = min(1, (1 - decay) x global batch x ema_every / epochs), and during
the LR warmup the EMA only copies the weights (torchvision resets its average there), so averaging
starts at the first update after the warmup.
"""
from __future__ import annotations

from timm.utils import ModelEmaV3
from torch import nn

from pipeline.config import TrainerConfig


def torchvision_decay(decay: float, global_batch: int, every: int, epochs: int) -> float:
    """torchvision's `adjust = world_size * batch_size * model_ema_steps / epochs`, applied to 1 - decay."""
    return 1.0 - min(1.0, (1.0 - decay) * global_batch * every / epochs)


class RecipeEma(ModelEmaV3):
    """ModelEmaV3 with the update interval and the warmup rule; its state dict is ModelEmaV3's."""

    def __init__(self, model: nn.Module, decay: float, every: int, torchvision_rule: bool) -> None:
        super().__init__(model, decay=decay)
        self.every, self.torchvision_rule = every, torchvision_rule

    def step(self, model: nn.Module, global_step: int, warmup_steps: int) -> None:
        """After optimizer step `global_step` (0-based): update when the interval says so."""
        if global_step % self.every:
            return
        if not self.torchvision_rule:
            self.update(model, step=global_step)
        elif global_step < warmup_steps + self.every:  # in the warmup, or the first update after it
            self.set(model)
        else:
            self.update(model)  # the fixed (adjusted) decay


def build_ema(model: nn.Module, cfg: TrainerConfig, global_batch: int) -> RecipeEma | None:
    if cfg.ema_decay <= 0:
        return None
    decay = cfg.ema_decay
    if cfg.ema_torchvision_rule:
        decay = torchvision_decay(decay, global_batch, cfg.ema_every, cfg.epochs)
    return RecipeEma(model, decay, cfg.ema_every, cfg.ema_torchvision_rule)
