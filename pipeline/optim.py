"""Optimizer (torch SGD, or timm's LARS/LAMB) and the per-iteration LR schedule (timm schedulers)."""
from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler, StepLRScheduler
from torch import nn

from pipeline.config import OptimConfig


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """Linear scaling rule (Goyal 2017): lr x global_batch / base_batch, when base_batch is set."""
    return cfg.lr * global_batch / cfg.base_batch if cfg.base_batch > 0 else cfg.lr


def warmup_epochs_for(cfg: OptimConfig, global_batch: int) -> tuple[float, str]:
    """(warmup epochs, why): the config's own warmup, else Goyal's gradual warmup when the linear
    scaling rule raised the LR above the recipe's (global batch > base_batch), else none."""
    if cfg.warmup_epochs > 0:
        return cfg.warmup_epochs, "set by the config"
    if cfg.auto_warmup_epochs > 0 and cfg.base_batch > 0 and global_batch > cfg.base_batch:
        return cfg.auto_warmup_epochs, (f"auto: global batch {global_batch} > base_batch {cfg.base_batch} "
                                        "(Goyal 2017 gradual warmup)")
    return 0.0, "none: the LR is not scaled above the recipe's" if cfg.base_batch > 0 else "none: the LR is not scaled"


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Weight decay off for BN parameters and biases (all 1-d tensors) unless asked for."""
    if cfg.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "sgd":
        # fused SGD is one kernel for all parameters on GPU; foreach batches the CPU updates.
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fast)
    from timm.optim import Lamb, Lars

    if cfg.name == "lars":
        return Lars(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return Lamb(groups, lr=lr)


class LRSchedule:
    """LR as a function of the optimizer step, on top of timm's schedulers (t_in_epochs=False).

    Warmup is linear from warmup_lr (timm), or constant at warmup_lr ("constant" warmup, as the
    ResNet-110/1202 CIFAR recipe's 0.01 for the first ~400 iterations) when warmup_lr > 0 and the
    schedule is step/multistep, which is how the papers describe it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int,
                 warmup_epochs: float | None = None) -> None:
        """warmup_epochs: the resolved warmup (`warmup_epochs_for`); None takes the config's as set."""
        self.optimizer = optimizer
        self.factor = 1.0  # trainer.elastic=rescale: the peak LR relative to the recipe's
        warmup_epochs = cfg.warmup_epochs if warmup_epochs is None else warmup_epochs
        self.warmup_steps = int(warmup_epochs * steps_per_epoch) + cfg.warmup_steps
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.constant_warmup = cfg.warmup_lr > 0 and cfg.schedule in ("step", "multistep")
        self.warmup_lr = cfg.warmup_lr
        warmup = {} if self.constant_warmup else {"warmup_t": self.warmup_steps, "warmup_lr_init": cfg.warmup_lr}
        # warmup_prefix=False: milestones and the cosine count from step 0, warmup included, as the
        # papers count epochs (timm's step/multistep default would shift every decay by the warmup).
        common = dict(t_in_epochs=False, warmup_prefix=False, **warmup)
        if cfg.schedule == "cosine":
            self.inner = CosineLRScheduler(optimizer, t_initial=self.total_steps, lr_min=cfg.min_lr, **common)
        elif cfg.schedule == "multistep":
            unit = steps_per_epoch if cfg.milestones_in == "epochs" else 1
            # timm's MultiStepLRScheduler counts a milestone as passed at t + 1 (bisect_right(decay_t,
            # t + 1)), so a milestone of 32k steps would already apply to step 31,999; +1 makes step
            # m the first at the lower LR, as the papers count ("divide at 32k iterations").
            self.inner = MultiStepLRScheduler(optimizer, decay_t=[m * unit + 1 for m in cfg.milestones],
                                              decay_rate=cfg.gamma, **common)
        elif cfg.schedule == "triangular":
            # FFCV's "cyclic" schedule: up from warmup_lr to the peak at the end of the warmup, then
            # linearly down to min_lr at the last step. timm's poly schedule with power 1 is that line;
            # warmup_prefix=True starts it at the peak, so the two legs meet there.
            self.inner = PolyLRScheduler(optimizer, t_initial=max(1, self.total_steps - self.warmup_steps), power=1.0,
                                         lr_min=cfg.min_lr, t_in_epochs=False, warmup_prefix=True,
                                         warmup_t=self.warmup_steps, warmup_lr_init=cfg.warmup_lr)
        elif cfg.schedule == "step":
            self.inner = StepLRScheduler(optimizer, decay_t=cfg.step_size * steps_per_epoch, decay_rate=cfg.gamma, **common)
        else:
            self.inner = StepLRScheduler(optimizer, decay_t=self.total_steps * 10, decay_rate=1.0, **common)

    def set_step(self, step: float) -> None:
        """Set the LR used by optimizer step `step` (0-based; fractional after a rescale, whose
        position is samples seen / the schedule's global batch), times `factor` (the rescale's)."""
        self.inner.step_update(num_updates=step)
        if self.constant_warmup and step < self.warmup_steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.warmup_lr
        if self.factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
