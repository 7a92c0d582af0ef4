"""Starting or resuming at another world size: keep the recipe (the global batch), change the accumulation.

The per-GPU batch stays what the config says (it is also the BatchNorm batch, Goyal et al. §2.3),
and the accumulation becomes global batch / (per-GPU batch x world). With the global batch kept,
an optimizer step still means the same number of samples: the step count, the LR schedule (in
steps), the epoch length and the data position ("k steps done" = the first k global batches of the
epoch's one global order, `ShardPlan`) all carry over unchanged, and the rest of the interrupted
epoch is dealt over the new ranks, each sample once.

`trainer.plan_world_size: N` plans the global batch for N processes from the first start on, so a
job that starts small and grows (Slurm's `--nodes=MIN-MAX`) keeps one recipe at every size that
divides N. A resume that no whole accumulation can keep is refused with one line naming both ways
out, unless `trainer.elastic=rescale`: that re-plans the global batch for the new world (per-GPU
batch x world x optim.accumulation), scales the peak LR (`lr_factor`), keeps the schedule's position
in samples seen (its warmup and decays fall at the same samples), and goes on with the samples of
the interrupted epoch not yet used (`ShardPlan.partial`).

DeepSpeed ZeRO-1/2 optimizer shards are re-split for the new world by `engines/zero_reshard.py`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError, RootConfig


def recorded_layout(run_dir: Path, engine: str) -> dict | None:
    """The newest checkpoint's launch layout (world size, per-GPU batch, accumulation, step,
    epoch position, a rescale's record) for `engine` (trainer.engine or the resolved kind: DeepSpeed
    has its own checkpoint layout), read without loading its tensors; None for no checkpoint or an
    old one."""
    layout = ckpt.DEEPSPEED if engine == "deepspeed" else ckpt.PLAIN
    for path in ckpt.list_checkpoints(run_dir, layout):
        try:
            return layout_of(path)
        except Exception:  # noqa: BLE001 - an unreadable newest checkpoint: resume() reports and skips it
            continue
    return None


def layout_of(path: Path) -> dict | None:
    """One checkpoint's launch layout (a step-*.pt file or a DeepSpeed ds-step-* folder); None for
    an old checkpoint without one. trainer.resume=<path> reads it as auto reads the newest."""
    file = path / ckpt.DEEPSPEED_MODEL_FILE if path.is_dir() else path
    state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    progress = state.get("progress", {}) if isinstance(state, dict) else {}
    return {**progress, "checkpoint": str(path)} if progress.get("world_size") else None


@dataclass(frozen=True)
class Continuation:
    """How this start's steps relate to the recipe's: what a rescale changed (nothing for a run that
    never rescaled). Carried in every checkpoint's progress, so later resumes keep it."""

    schedule_batch: int = 0  # the global batch the LR schedule counts its steps in (0: this start's)
    lr_factor: float = 1.0  # peak LR / the recipe's peak at schedule_batch
    epoch_stream: tuple = ()  # (epoch, stream's global batch, offset): the epoch goes on from a rescale
    rescaled_from: int = 0  # this start re-planned the global batch from this one (0: it did not)
    lr_rule: str = ""  # the rule behind lr_factor, for the line and the model card


def _global_batch(recorded: dict) -> int:
    return recorded["world_size"] * recorded["batch_size"] * recorded["accumulation"]


def _fits(global_batch: int, batch: int, around: int) -> list[int]:
    return [w for w in range(1, 2 * around + 1) if global_batch % (batch * w) == 0][:6]


def planned(cfg: RootConfig, world_size: int) -> tuple[RootConfig, str]:
    """trainer.plan_world_size: the accumulation that runs the planned global batch at this world."""
    plan = cfg.trainer.plan_world_size
    if plan <= 0:
        return cfg, ""
    batch = cfg.data.batch_size
    global_batch = plan * batch * cfg.optim.accumulation
    if global_batch % (batch * world_size):
        if cfg.trainer.elastic == "rescale":
            return cfg, (f"world {world_size} is outside the plan for {plan} (global batch {global_batch}): "
                         f"trainer.elastic=rescale plans global batch {batch * world_size * cfg.optim.accumulation} "
                         f"for this start")
        fits = ", ".join(map(str, _fits(global_batch, batch, max(plan, world_size))))
        raise ConfigError(f"world {world_size} cannot run the plan for trainer.plan_world_size={plan}: global batch "
                          f"{global_batch} / ({batch} x {world_size}) is not a whole accumulation; start at world "
                          f"{fits}, set trainer.plan_world_size to a multiple of {world_size}, or set "
                          "trainer.elastic=rescale")
    accumulation = global_batch // (batch * world_size)
    return (dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accumulation=accumulation)),
            f"world {world_size} of a plan for {plan}: accumulation {accumulation}, global batch {global_batch}")


def resolve(cfg: RootConfig, world_size: int, recorded: dict | None) -> tuple[RootConfig, str, Continuation]:
    """(the config this start runs, the line that says what changed, its Continuation)."""
    if not recorded or cfg.trainer.resume == "never":
        cfg, line = planned(cfg, world_size)
        return cfg, line, Continuation()
    kept = Continuation(recorded.get("schedule_batch", 0), recorded.get("lr_factor", 1.0),
                        tuple(recorded.get("epoch_stream") or ()))
    try:
        adapted, line = adapt(cfg, world_size, recorded)
    except ConfigError:
        if cfg.trainer.elastic != "rescale":
            raise
        return rescale(cfg, world_size, recorded, kept)
    if cfg.trainer.plan_world_size > 0 and not line:  # every start of a planned run says so
        line = (f"world {world_size} of a plan for {cfg.trainer.plan_world_size}: accumulation "
                f"{adapted.optim.accumulation}, global batch {_global_batch(recorded)}")
    return adapted, line, kept


def lr_factor(cfg: RootConfig, new_batch: int, schedule_batch: int) -> tuple[float, str]:
    """The peak LR at `new_batch` over the recipe's at `schedule_batch`, and the rule. The config's
    own rule when it scales (base_batch > 0: linear, as every start plans it); otherwise linear for
    SGD and LARS (Goyal et al. 2017; You et al. 2017), the square root for LAMB (You et al. 2020)."""
    ratio = new_batch / schedule_batch
    if cfg.optim.base_batch <= 0 and cfg.optim.name == "lamb":
        return math.sqrt(ratio), "square-root rule (LAMB, You et al. 2020)"
    return ratio, "linear rule (Goyal et al. 2017)"


def rescale(cfg: RootConfig, world_size: int, recorded: dict, kept: Continuation) -> tuple[RootConfig, str, Continuation]:
    """trainer.elastic=rescale: the global batch re-planned for this world, the schedule kept in samples."""
    old_batch = _global_batch(recorded)
    new_batch = cfg.data.batch_size * world_size * cfg.optim.accumulation
    schedule_batch = kept.schedule_batch or old_batch
    factor, rule = lr_factor(cfg, new_batch, schedule_batch)
    epoch, done = recorded.get("epoch", 0), recorded.get("step_in_epoch", 0) * old_batch
    stream = kept.epoch_stream
    stream = (epoch, stream[1], stream[2] + done) if stream and stream[0] == epoch else (epoch, old_batch, done)
    line = (f"rescaled at world {world_size} from world {recorded['world_size']} (step {recorded.get('global_step', 0)}, "
            f"epoch {epoch + 1} at sample {stream[2]:,}): global batch {old_batch} -> {new_batch}, peak LR "
            f"x{factor:.4g} of the recipe's by the {rule}, the LR schedule kept in samples seen")
    return cfg, line, Continuation(schedule_batch, factor, stream, old_batch, rule)


def adapt(cfg: RootConfig, world_size: int, recorded: dict | None) -> tuple[RootConfig, str]:
    """(the config to resume with: the checkpoint's global batch through this world's accumulation,
    the line that says what changed: "" at the checkpoint's own layout)."""
    if not recorded or cfg.trainer.resume == "never":
        return cfg, ""
    old_world, old_batch, old_acc = recorded["world_size"], recorded["batch_size"], recorded["accumulation"]
    global_batch = old_world * old_batch * old_acc
    batch = cfg.data.batch_size
    where = f"the checkpoint {recorded['checkpoint']} (world {old_world} x batch {old_batch} x accumulation {old_acc})"
    if global_batch % (batch * world_size):
        fits = ", ".join(map(str, _fits(global_batch, batch, max(world_size, old_world))))
        ways_out = (f"; or set trainer.elastic=rescale to re-plan the global batch for world {world_size} (linear LR "
                    "rule, schedule kept in samples); a new run given trainer.plan_world_size=<largest world> "
                    "keeps one global batch at every size that divides it")
        raise ConfigError((f"cannot keep the global batch {global_batch} of {where} at world {world_size} with "
                           f"data.batch_size={batch}: {global_batch} / ({batch} x {world_size}) is not a whole "
                           f"accumulation; resume at world {fits}, or set a data.batch_size that divides "
                           f"{global_batch // world_size}" if global_batch % world_size == 0 else
                           f"cannot keep the global batch {global_batch} of {where} at world {world_size}: it is not "
                           f"a multiple of {world_size}; resume at world {fits}") + ways_out)
    accumulation = global_batch // (batch * world_size)
    adapted = (cfg if accumulation == cfg.optim.accumulation else
               dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accumulation=accumulation)))
    if old_world == world_size and old_batch == batch:
        return adapted, ""  # the checkpoint's own layout (a planned or rescaled accumulation included)
    stream = recorded.get("epoch_stream") or ()
    position = recorded.get("step_in_epoch", 0) * global_batch
    position += stream[2] if stream and stream[0] == recorded.get("epoch", 0) else 0  # inside a rescaled epoch
    line = (f"resumed at world {world_size} from world {old_world} (step {recorded.get('global_step', 0)}, epoch "
            f"{recorded.get('epoch', 0) + 1} at sample {position:,}): global batch {global_batch} kept, "
            f"accumulation {old_acc} -> {accumulation}")
    if cfg.data.repeat_aug > 1:  # ShardPlan: the stream of copies depends on the global batch alone
        line += (f"; repeated augmentation x{cfg.data.repeat_aug}: the epoch's stream of copies is unchanged, "
                 f"each sample's copies now spread over {min(world_size, cfg.data.repeat_aug)} of {world_size} ranks")
    return adapted, line
