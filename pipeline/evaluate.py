"""`pipeline eval`: load a checkpoint (newest in run_dir by default) and validate it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.config import RootConfig
from pipeline.data import Placement, build_data
from pipeline.engine import wrap_model
from pipeline.models import build_model
from pipeline.runtime import agree_on_numerics, configure_threads, make_runtime
from pipeline.train import evaluate


def run_eval(cfg: RootConfig, checkpoint: str | None) -> dict:
    world = dist_utils.world_info_from_env()
    configure_threads(cfg.trainer, world)
    rt = make_runtime(cfg.trainer, world)
    dist_utils.init_process_group(world, rt.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    rt = agree_on_numerics(rt)
    try:
        if checkpoint:
            path, state = Path(checkpoint), ckpt.load_checkpoint(checkpoint)
        else:
            found = ckpt.load_latest(cfg.trainer.run_dir)
            if found is None:
                raise ckpt.CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(cfg.trainer.run_dir)}")
            path, state = found
        placement = Placement(rt.device, rt.channels_last, world.rank, world.world_size)
        data = build_data(cfg.data, placement, cfg.trainer.seed, cfg.model.num_classes)
        model = build_model(cfg.model, cfg.model.num_classes or data.num_classes)
        model.load_state_dict(state["model"])
        _, bare = wrap_model(model, cfg, dataclasses.replace(rt, engine="single"))  # no DDP to evaluate
        metrics = evaluate(bare, data.val, rt)
        return {"checkpoint": str(path), "step": state["progress"]["global_step"], **metrics}
    finally:
        dist_utils.shutdown()
