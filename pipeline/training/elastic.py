"""Resuming at another world size: keep the recipe (the global batch), change the accumulation.

The per-GPU batch stays what the config says (it is also the BatchNorm batch, Goyal et al. §2.3),
and the accumulation becomes global batch / (per-GPU batch x new world). With the global batch kept,
an optimizer step still means the same number of samples: the step count, the LR schedule (in
steps), the epoch length and the data position ("k steps done" = the first k global batches of the
epoch's one global order, `ShardPlan`) all carry over unchanged, and the rest of the interrupted
epoch is dealt over the new ranks, each sample once. When no integer accumulation keeps the global
batch, the resume is refused with one line saying what to set.

DeepSpeed ZeRO-1/2 optimizer shards are re-split for the new world by `engines/zero_reshard.py`.
Not yet: `trainer.elastic=rescale` (re-planning the global batch by the linear-scaling rule).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError, RootConfig


def recorded_layout(run_dir: Path, engine: str) -> dict | None:
    """The newest checkpoint's launch layout (world size, per-GPU batch, accumulation, step,
    epoch position) for `engine` (trainer.engine or the resolved kind: DeepSpeed has its own
    checkpoint layout), read without loading its tensors; None for no checkpoint or an old one."""
    layout = ckpt.DEEPSPEED if engine == "deepspeed" else ckpt.PLAIN
    for path in ckpt.list_checkpoints(run_dir, layout):
        file = path / ckpt.DEEPSPEED_MODEL_FILE if path.is_dir() else path
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - an unreadable newest checkpoint: resume() reports and skips it
            continue
        progress = state.get("progress", {}) if isinstance(state, dict) else {}
        if progress.get("world_size"):
            return {**progress, "checkpoint": str(path)}
        return None
    return None


def adapt(cfg: RootConfig, world_size: int, recorded: dict | None) -> tuple[RootConfig, str]:
    """(the config to resume with, the line that says what changed); unchanged at the same world."""
    if not recorded or recorded["world_size"] == world_size or cfg.trainer.resume == "never":
        return cfg, ""
    old_world, old_batch, old_acc = recorded["world_size"], recorded["batch_size"], recorded["accumulation"]
    global_batch = old_world * old_batch * old_acc
    batch = cfg.data.batch_size
    where = f"the checkpoint {recorded['checkpoint']} (world {old_world} x batch {old_batch} x accumulation {old_acc})"
    if global_batch % (batch * world_size):
        fits = [w for w in range(1, 2 * max(world_size, old_world) + 1) if global_batch % (batch * w) == 0]
        raise ConfigError(f"cannot keep the global batch {global_batch} of {where} at world {world_size} with "
                          f"data.batch_size={batch}: {global_batch} / ({batch} x {world_size}) is not a whole "
                          f"accumulation; resume at world {', '.join(map(str, fits[:6]))}, or set a data.batch_size "
                          f"that divides {global_batch // world_size}" if global_batch % world_size == 0 else
                          f"cannot keep the global batch {global_batch} of {where} at world {world_size}: it is not "
                          f"a multiple of {world_size}; resume at world {', '.join(map(str, fits[:6]))}")
    accumulation = global_batch // (batch * world_size)
    adapted = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accumulation=accumulation))
    position = recorded.get("step_in_epoch", 0) * global_batch
    line = (f"resumed at world {world_size} from world {old_world} (step {recorded.get('global_step', 0)}, epoch "
            f"{recorded.get('epoch', 0) + 1} at sample {position:,}): global batch {global_batch} kept, "
            f"accumulation {old_acc} -> {accumulation}")
    if cfg.data.repeat_aug > 1:  # ShardPlan: the stream of copies depends on the global batch alone
        line += (f"; repeated augmentation x{cfg.data.repeat_aug}: the epoch's stream of copies is unchanged, "
                 f"each sample's copies now spread over {min(world_size, cfg.data.repeat_aug)} of {world_size} ranks")
    return adapted, line
