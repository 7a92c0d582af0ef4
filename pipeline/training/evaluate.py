"""Evaluation: the validation pass (top-1/top-5 over the whole split), the replica check, and
`pipeline eval` (a checkpoint of either layout, newest in trainer.run_dir by default)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pipeline import checkpoint as ckpt
from pipeline import distributed as dist_utils
from pipeline.config import RootConfig
from pipeline.data import Placement, build_data
from pipeline.engines import wrap_model
from pipeline.models import build_model
from pipeline.runtime import Runtime, agree_on_numerics, configure_threads, make_runtime
from pipeline.world import world_info_from_env


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, rt: Runtime, prefix: str = "val", flip: bool = False) -> dict:
    """Top-1/top-5/loss over the whole split; each image counted once across ranks. `flip`
    (trainer.tta_flip): the logits are the mean of the image's and its mirror image's."""
    model.eval()
    totals = torch.zeros(4, device=rt.device, dtype=torch.float64)  # loss sum, top1, top5, count
    loader.set_epoch(0)
    for images, labels in loader:
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.use_autocast):
            logits = model(images).float()
            if flip:  # width is the last dim of the NCHW view in either memory format
                logits = (logits + model(images.flip(3)).float()) / 2
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        totals += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                               torch.tensor(float(len(labels)), device=rt.device, dtype=torch.float64)])
    dist_utils.all_reduce_sum(totals)
    loss_sum, top1, top5, count = totals.tolist()
    model.train()
    return {f"{prefix}/loss": loss_sum / max(count, 1), f"{prefix}/top1": 100 * top1 / max(count, 1),
            f"{prefix}/top5": 100 * top5 / max(count, 1), f"{prefix}/samples": int(count)}


def replica_checksum(module: torch.nn.Module, device: torch.device) -> bool:
    """True when every rank holds bit-identical parameters (compares exact fp64 sums across ranks)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return True
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        weights = torch.arange(len(flat), dtype=torch.float64, device=flat.device)  # order-sensitive
        mine = torch.stack([flat.sum(), (flat * flat).sum(), (flat * weights).sum()]).to(device)
    gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def run_eval(cfg: RootConfig, checkpoint: str | None) -> dict:
    world = world_info_from_env()
    configure_threads(cfg.trainer, world)
    rt = make_runtime(cfg.trainer, world)
    dist_utils.init_process_group(world, rt.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    rt = agree_on_numerics(rt)
    try:
        if checkpoint:  # a run directory, a step-*.pt file or a DeepSpeed ds-step-* folder
            path = ckpt.resolve(checkpoint)
            state = ckpt.load_checkpoint(path)
        else:
            found = ckpt.load_latest(cfg.trainer.run_dir)
            if found is None:
                raise ckpt.CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(cfg.trainer.run_dir)}")
            path, state = found
        placement = Placement(rt.device, rt.channels_last, world.rank, world.world_size)
        data = build_data(cfg.data, placement, cfg.trainer.seed, cfg.model.num_classes)
        model = build_model(cfg.model, cfg.model.num_classes or data.num_classes)
        model.load_state_dict(state["model"])
        _, module = wrap_model(model, cfg, dataclasses.replace(rt, engine_kind="single"))  # no DDP to evaluate
        metrics = evaluate(module, data.val, rt, flip=cfg.trainer.tta_flip)
        return {"checkpoint": str(path), "step": state["progress"]["global_step"], **metrics}
    finally:
        dist_utils.shutdown()
