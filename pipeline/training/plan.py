"""The plan of a job before it runs: world, batches, the LR the rules give, warmup and decay points in
epochs and steps, and a time estimate from recorded throughput. `pipeline plan` prints it, the Slurm
scripts' dry run print it, and every run records it (environment.json, the W&B config, summary.json).
"""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import RootConfig
from pipeline.data.folder import IMAGE_EXTENSIONS
from pipeline.data.resolution import scheduled, size_runs, train_sizes, val_resize_shorter, val_size
from pipeline.data.sampler import ShardPlan
from pipeline.optim import scaled_lr, warmup_epochs_for
from pipeline.training.ema import torchvision_decay
from pipeline.training.scaling import rate_at

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train split
# Throughput recorded in docs/benchmarks.md, per GPU, for the time estimate (model: img/s, at px, where).
RECORDED_IMG_PER_SEC = {
    "resnet50": (4715.0, 224, "one H200, bf16 channels_last, batch 256, eager, synthetic data: training steps "
                              "only, no data loading or validation (docs/benchmarks.md, issue 7)"),
}


def train_images(cfg: RootConfig, world_size: int) -> tuple[int | None, str]:
    """Images in one training epoch, and where the number comes from."""
    data = cfg.data
    if data.dataset == "synthetic" or data.backend == "synthetic":
        return max(1, data.synthetic_samples // data.batch_size) * data.batch_size * world_size, "synthetic"
    if data.dataset in ("cifar10", "cifar100"):
        return 50_000 - data.cifar_holdout, f"{data.dataset} train split"
    if data.train_list:
        path = Path(data.train_list)
        if path.is_file():
            return sum(1 for line in path.read_text().splitlines() if line.strip()), f"listed in {path}"
    root = Path(data.path) / "train"
    if root.is_dir():
        count = sum(1 for c in os.scandir(root) if c.is_dir() for f in os.scandir(c.path)
                    if f.name.lower().endswith(IMAGE_EXTENSIONS))
        return count, f"counted in {root}"
    if cfg.model.num_classes == 1000:
        return IMAGENET_TRAIN_IMAGES, f"ImageNet-1k train split, assumed: {root} not found here"
    return None, f"unknown: {root} not found here"


def make_plan(cfg: RootConfig, world_size: int, images: int | None = None, images_source: str = "",
              rate: tuple[float, int, str] | None = None, efficiency: float = 1.0, efficiency_source: str = "") -> dict:
    """The plan as a flat-ish dict (JSON-ready). `images`: the train split's size when known.
    `rate`: (per-GPU img/s, measured at px, where) instead of RECORDED_IMG_PER_SEC's; `efficiency`:
    the scaling model's at this layout (pipeline/training/scaling.py), 1.0 for linear scaling."""
    if images is None:
        images, images_source = train_images(cfg, world_size)
    o, t = cfg.optim, cfg.trainer
    accumulation = o.accumulation
    global_batch = cfg.data.batch_size * world_size * accumulation
    lr = scaled_lr(o, global_batch)
    warmup_epochs, warmup_reason = warmup_epochs_for(o, global_batch)
    plan = {"world_size": world_size, "per_gpu_batch": cfg.data.batch_size, "accumulation": accumulation,
            "global_batch": global_batch, "bn_batch": cfg.data.batch_size * (world_size if cfg.distributed.sync_bn else 1),
            "lr": lr, "lr_rule": (f"{o.lr} per {o.base_batch} images x {global_batch}/{o.base_batch}"
                                  if o.base_batch > 0 else f"{o.lr} as set (base_batch=0: not scaled)"),
            "warmup_epochs": warmup_epochs, "warmup_reason": warmup_reason, "warmup_lr": o.warmup_lr, "schedule": o.schedule,
            "epochs": t.epochs, "images_per_epoch": images, "images_source": images_source,
            "image_sizes": [list(run) for run in size_runs(train_sizes(cfg.data, t.epochs))],
            "val_image_size": val_size(cfg.data), "val_view": _val_view(cfg),
            "expected": _expected_note(cfg.expected, global_batch),
            "recipe": recipe_note(cfg, global_batch), "lr_note": _adaptive_lr_note(cfg, global_batch, lr)}
    if images is None:
        return {**plan, "steps_per_epoch": None, "total_steps": None, "warmup_steps": None, "decay": [],
                "estimate": "unknown: images per epoch unknown"}
    steps = max(1, ShardPlan(images, 0, world_size, cfg.data.batch_size * accumulation, True).steps_per_epoch())
    total = t.epochs * steps if t.max_steps <= 0 else min(t.epochs * steps, t.max_steps)
    plan.update(steps_per_epoch=steps, total_steps=total, warmup_steps=int(warmup_epochs * steps) + o.warmup_steps,
                decay=_decay_points(cfg, steps, lr))
    plan.update(_estimate(cfg, world_size, total, global_batch, steps, rate or RECORDED_IMG_PER_SEC.get(cfg.model.name),
                          efficiency, efficiency_source))
    return plan


def _val_view(cfg: RootConfig) -> str:
    d = cfg.data
    shorter = val_resize_shorter(d)
    view = (f"shorter side to {shorter}, center crop {val_size(d)}" if d.val_crop_mode == "center"
            else f"squashed to {shorter}x{shorter}, center crop {val_size(d)}")
    return view + (", flip TTA" if cfg.trainer.tta_flip else "")


def _expected_note(expected: dict, global_batch: int) -> str:
    """The config's paper number and whether this global batch is inside the range it holds for."""
    if not expected or expected.get("value") is None:
        return ""
    note = f"{expected.get('metric', '')} {expected['value']} ({expected.get('source', '')})".strip()
    batches = expected.get("global_batch") or {}
    if batches:
        inside = batches.get("rule_holds_to", 0) >= global_batch
        note += (f"; measured at global batch {batches.get('measured')}, the scaling rule holds to "
                 f"{batches.get('rule_holds_to')}: {global_batch} is " + ("inside" if inside else "OUTSIDE that range"))
    return note


def recipe_note(cfg: RootConfig, global_batch: int) -> str:
    """The train-time regularization a config turns on, in one line ("" for none)."""
    d, o, t = cfg.data, cfg.optim, cfg.trainer
    parts = [f"{d.interpolation} resize"] if d.interpolation != "bilinear" else []
    parts += [f"auto_augment {d.auto_augment}"] if d.auto_augment != "none" else []
    parts += [f"random erase {d.random_erase:g}"] if d.random_erase else []
    parts += [f"mixup {d.mixup:g} / cutmix {d.cutmix:g} (one per batch)"] if d.mixup or d.cutmix else []
    parts += [f"repeated augmentation x{d.repeat_aug} (~{1 / d.repeat_aug:.0%} distinct images an epoch)"
              ] if d.repeat_aug > 1 else []
    if o.loss == "bce":
        parts.append("BCE loss" + (f", targets thresholded at {o.bce_target_thresh:g}" if o.bce_target_thresh else ""))
    parts += [f"label smoothing {o.label_smoothing:g}"] if o.label_smoothing else []
    parts += [f"stochastic depth {cfg.model.drop_path_rate:g}"] if cfg.model.drop_path_rate else []
    if t.ema_decay > 0:
        decay = (torchvision_decay(t.ema_decay, global_batch, t.ema_every, t.epochs) if t.ema_torchvision_rule
                 else t.ema_decay)
        parts.append(f"EMA every {t.ema_every} step(s), decay {decay:.6g}"
                     + (" (torchvision's rule at this batch; copies during the warmup)" if t.ema_torchvision_rule else ""))
    return ", ".join(parts)


def _adaptive_lr_note(cfg: RootConfig, global_batch: int, lr: float) -> str:
    """LAMB/LARS past the batch the recipe was published at: the linear rule is this pipeline's
    choice, not the optimizer's paper (You et al. 2020 scale LAMB's LR with the square root)."""
    measured = ((cfg.expected or {}).get("global_batch") or {}).get("measured")
    if cfg.optim.name not in ("lamb", "lars") or not measured or global_batch <= measured or cfg.optim.base_batch <= 0:
        return ""
    root = cfg.optim.lr * (global_batch / measured) ** 0.5
    return (f"{cfg.optim.name.upper()} past the published batch {measured}: the linear rule gives {lr:.4g} "
            f"(x{global_batch / measured:g}); the square-root rule of the LAMB paper would give {root:.4g}. "
            f"Untested at this batch by the publisher: to choose, set optim.base_batch=0 and optim.lr")


def _decay_points(cfg: RootConfig, steps_per_epoch: int, lr: float) -> list[dict]:
    o = cfg.optim
    if o.schedule == "multistep":
        at = [m * steps_per_epoch if o.milestones_in == "epochs" else m for m in o.milestones]
    elif o.schedule == "step":
        at = list(range(o.step_size * steps_per_epoch, cfg.trainer.epochs * steps_per_epoch, o.step_size * steps_per_epoch))
    else:
        return []  # cosine: a smooth decay to min_lr at the last step; constant: none
    return [{"step": s, "epoch": round(s / steps_per_epoch, 2), "lr": lr * o.gamma ** (i + 1)} for i, s in enumerate(at)]


def _estimate(cfg: RootConfig, world_size: int, total_steps: int, global_batch: int, steps_per_epoch: int,
              recorded: tuple[float, int, str] | None, efficiency: float, efficiency_source: str) -> dict:
    """Wall time from the per-GPU rate, scaled to each epoch's image size (compute ~ pixels) and by
    the scaling model's efficiency at this layout."""
    if recorded is None:
        known = ", ".join(sorted(RECORDED_IMG_PER_SEC))
        return {"estimate": f"unknown: no throughput recorded for {cfg.model.name} (recorded: {known}; "
                            "`pipeline plan --img-per-sec N` gives one)"}
    per_gpu, at_size, source = recorded
    seconds, left = 0.0, total_steps
    for size in train_sizes(cfg.data, cfg.trainer.epochs):
        steps = min(steps_per_epoch, left)
        seconds += steps * global_batch / (rate_at(per_gpu, at_size, size) * world_size * efficiency)
        left -= steps
    fixed = total_steps * global_batch / (rate_at(per_gpu, at_size, cfg.data.image_size) * world_size * efficiency)
    every = cfg.trainer.checkpoint_every or steps_per_epoch
    scaling = efficiency_source or "linear scaling across GPUs assumed"
    out = {"estimate": f"{per_gpu:,.0f} img/s per GPU at {at_size} px, {source}; compute scaled by pixels; {scaling}",
           "wall_hours": round(seconds / 3600, 2), "gpu_hours": round(seconds * world_size / 3600, 1),
           "checkpoint_minutes": round(every * global_batch / (rate_at(per_gpu, at_size, cfg.data.image_size)
                                                             * world_size * efficiency) / 60, 1)}
    if scheduled(cfg.data):  # what progressive resizing saves against the final size throughout
        out["size_effect"] = round(seconds / fixed, 3)
    return out


def format_plan(plan: dict, title: str) -> list[str]:
    p = plan
    lines = [title,
             f"  world size        {p['world_size']}",
             f"  batch             {p['per_gpu_batch']} per GPU (BN batch {p['bn_batch']}), {p['global_batch']:,} global"
             + (f" ({p['accumulation']} accumulation steps)" if p["accumulation"] > 1 else ""),
             f"  learning rate     {p['lr']:.6g} peak ({p['lr_rule']})"]
    if p.get("lr_note"):
        lines.append(f"  LR note           {p['lr_note']}")
    if p.get("expected"):
        lines.append(f"  paper number      {p['expected']}")
    if p.get("recipe"):
        lines.append(f"  regularization    {p['recipe']}")
    if p["total_steps"] is None:
        return lines + [f"  images per epoch  {p['images_source']}", f"  estimate          {p['estimate']}"]
    warmup = (f"{p['warmup_epochs']:g} epochs = {p['warmup_steps']:,} steps, linear from {p.get('warmup_lr', 0):g}"
              if p["warmup_steps"] else "none") + f" ({p['warmup_reason']})"
    decay = ", ".join(f"x{d['lr'] / p['lr']:.3g} at epoch {d['epoch']:g} (step {d['step']:,})" for d in p["decay"])
    sizes = ", ".join(f"{size} px epochs {first + 1}-{last + 1}" if last > first else f"{size} px epoch {first + 1}"
                      for first, last, size in p["image_sizes"])
    lines += [f"  image size        train {sizes}; val {p['val_view']}"]
    if "size_effect" in p:
        lines.append(f"  resizing effect   x{p['size_effect']:g} of the training time at the final size throughout "
                     "(compute ~ pixels: the best case, docs/benchmarks.md)")
    lines += [f"  warmup            {warmup}",
              f"  schedule          {p['schedule']}" + (f": {decay}" if decay else ""),
              f"  images per epoch  {p['images_per_epoch']:,} ({p['images_source']})",
              f"  steps             {p['steps_per_epoch']:,} per epoch, {p['total_steps']:,} total ({p['epochs']} epochs)"]
    if "wall_hours" in p:
        lines += [f"  checkpoints       every {p['checkpoint_minutes']:g} min",
                  f"  estimate          {p['wall_hours']:g} h wall, {p['gpu_hours']:g} GPU-hours ({p['estimate']})"]
    else:
        lines += [f"  estimate          {p['estimate']}"]
    return lines
