"""The training loss and the batch mixing in front of it, as the config's recipe composes them."""
from __future__ import annotations

import torch

from pipeline.config import RootConfig


def make_loss(cfg: RootConfig, num_classes: int):
    """Returns (mixup_fn or None, loss(logits, targets)), composed as timm's train.py does: with
    mixup/cutmix the label smoothing goes into the mixed soft targets (timm's Mixup switches between
    the two per batch), and the loss is soft-target cross-entropy or timm's BinaryCrossEntropy."""
    o = cfg.optim
    threshold = o.bce_target_thresh or None
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0:
        from timm.data import Mixup
        from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=cfg.data.mixup, cutmix_alpha=cfg.data.cutmix,
                      label_smoothing=o.label_smoothing, num_classes=num_classes)
        return mixup, BinaryCrossEntropy(target_threshold=threshold) if o.loss == "bce" else SoftTargetCrossEntropy()
    if o.loss == "bce":
        from timm.loss import BinaryCrossEntropy

        return None, BinaryCrossEntropy(smoothing=o.label_smoothing, target_threshold=threshold)
    return None, torch.nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
