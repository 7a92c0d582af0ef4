"""ZeRO-1/2 optimizer state saved by N ranks, loaded by M: gathered and re-split with DeepSpeed's own code.

DeepSpeed refuses a ZeRO-1/2 checkpoint at another data-parallel size unless it is converted to a
"universal" checkpoint, whose converter reads Adam's state by name and does not carry SGD momentum
(../shared/reference/elastic.md). The state needed is small and regular: per param group, each rank
holds one flat slice of the fp32 master weights and the same slice of every optimizer buffer
(SGD's `momentum_buffer`), padding at the end of the last rank's slice. So: the module is loaded
by DeepSpeed (module only), and the saved slices of all N ranks are handed to the ZeRO optimizer's
own elastic restore functions (`_restore_from_elastic_fp32_weights`,
`_restore_elastic_base_optimizer_state`: merge all partitions, re-partition for this world, take
this rank's), after reshaping DeepSpeed's "rigid" per-rank files into the per-group lists they take.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pipeline import checkpoint as ckpt

_RANK_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def saved_world(tag_dir: Path) -> int:
    """How many data-parallel ranks wrote the ZeRO optimizer files of a tag (0 at stage 0)."""
    return sum(1 for p in Path(tag_dir).iterdir() if _RANK_FILE.match(p.name))


def _elastic_view(rigid: dict) -> dict:
    """One rank's saved optimizer state as the elastic restore functions read it: the base state as
    a list per param group, each buffer trimmed to the group's unpadded slice."""
    from deepspeed.checkpoint.constants import (BASE_OPTIMIZER_STATE, BASE_OPTIMIZER_STATE_STEP,
                                                SINGLE_PARTITION_OF_FP32_GROUPS)

    fp32 = rigid[SINGLE_PARTITION_OF_FP32_GROUPS]
    base = rigid[BASE_OPTIMIZER_STATE]
    groups = []
    for i, param_id in enumerate(group["params"][0] for group in base["param_groups"]):
        state = base["state"].get(param_id, {})
        groups.append({key: value[: fp32[i].numel()] if torch.is_tensor(value) and value.dim() == 1 else value
                       for key, value in state.items()})
    steps = {group.get("step") for group in base["param_groups"]}
    return {**rigid, BASE_OPTIMIZER_STATE: groups, BASE_OPTIMIZER_STATE_STEP: steps.pop() if len(steps) == 1 else None}


def load_resharded(wrapped, tag_dir: Path) -> dict:
    """Load a tag written at another world size into the DeepSpeed engine `wrapped`; returns our
    client state (progress, scheduler, rng...) as `checkpoint.load_checkpoint` reads it."""
    ckpt.verify_deepspeed_files(tag_dir)  # weights-only first: DeepSpeed's own loader would run a pickle
    load_path, _ = wrapped.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_module_only=True,
                                           load_optimizer_states=False, load_lr_scheduler_states=False)
    if load_path is None:
        raise ckpt.CheckpointError(f"DeepSpeed could not load the module of {tag_dir}")
    files = sorted((p for p in tag_dir.iterdir() if _RANK_FILE.match(p.name)),
                   key=lambda p: int(_RANK_FILE.match(p.name).group(1)))
    with torch.serialization.safe_globals(ckpt.deepspeed_safe_globals()):
        saved = [torch.load(p, map_location="cpu", weights_only=True)["optimizer_state_dict"] for p in files]
    views = [_elastic_view(rank_state) for rank_state in saved]
    optimizer = wrapped.optimizer  # DeepSpeedZeroOptimizer (stages 1 and 2)
    optimizer._load_global_state(views[0])  # loss scaler, overflow flag, clip setting: the same on every rank
    optimizer._restore_elastic_base_optimizer_state(views)  # momentum: merged, re-split, this rank's slice
    optimizer._restore_from_elastic_fp32_weights(views)  # fp32 master weights, the same way
    optimizer._link_all_hp_params()
    return ckpt.load_checkpoint(tag_dir)
