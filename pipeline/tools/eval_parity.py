"""`pipeline eval-parity`: one checkpoint evaluated through DALI's validation graph and through the
torchvision backend's transforms, on the same val images in the same order.

    pipeline eval-parity trainer.run_dir=runs/resnet50 data.path=/datasets/imagenet [--checkpoint PATH]

A run trained with DALI (GPU JPEG decode, DALI's resize) is often served with torchvision's
transforms (PIL/libjpeg-turbo decode, torchvision's resize): a gap between the two views is accuracy
lost in deployment. Reports each backend's top-1, the share of images whose top-1 class agrees, and
the largest and mean absolute logit difference; exits 1 when the top-1 values differ by more than
--max-gap points (default 0.3) and by more than one image. On a GPU, DALI decodes with nvJPEG
("mixed"); on a CPU both decode with libjpeg-turbo, so a gap there comes from the resize filters.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError, RootConfig, load_config
from pipeline.data import Placement, build_data
from pipeline.engines import wrap_model
from pipeline.models import build_model
from pipeline.runtime import configure_threads, make_runtime
from pipeline.world import world_info_from_env

BACKENDS = ("dali", "torchvision")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (the run's config.yaml, for example)")
    p.add_argument("--checkpoint", help="a run directory, a step-*.pt file or a DeepSpeed ds-step-* folder (default: newest in "
                                        "trainer.run_dir)")
    p.add_argument("--max-gap", type=float, default=0.3, help="largest top-1 difference in points that passes")


@torch.no_grad()
def _logits(model: torch.nn.Module, loader, rt) -> tuple[torch.Tensor, torch.Tensor]:
    """Every val image's logits (fp32, on the host) and label, in the loader's order."""
    outputs, labels = [], []
    loader.set_epoch(0)
    for images, target in loader:
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.use_autocast):
            outputs.append(model(images).float().cpu())
        labels.append(target.cpu())
    return torch.cat(outputs), torch.cat(labels)


def parity(cfg: RootConfig, checkpoint: str | None) -> dict:
    world = world_info_from_env()
    if world.world_size > 1:
        raise ConfigError("pipeline eval-parity runs as one process: start it without torchrun or srun")
    configure_threads(cfg.trainer, world)
    rt = make_runtime(cfg.trainer, world)
    path = ckpt.resolve(checkpoint) if checkpoint else None
    path, state = ((path, ckpt.load_checkpoint(path)) if path
                   else ckpt.load_latest(cfg.trainer.run_dir) or (None, None))
    if state is None:
        raise ckpt.CheckpointError(f"no checkpoint in {ckpt.checkpoint_dir(cfg.trainer.run_dir)}")
    placement = Placement(rt.device, rt.channels_last)
    results, module = {}, None
    for backend in BACKENDS:
        data = build_data(dataclasses.replace(cfg.data, backend=backend), placement, cfg.trainer.seed,
                          cfg.model.num_classes)
        if data.backend != backend:
            raise ConfigError(f"data backend {backend} is not available here (got {data.backend})")
        if module is None:
            model = build_model(cfg.model, cfg.model.num_classes or data.num_classes)
            model.load_state_dict(state["model"])
            _, module = wrap_model(model, cfg, dataclasses.replace(rt, engine_kind="single"))
            module.eval()
        results[backend] = _logits(module, data.val, rt)
    (a, labels_a), (b, labels_b) = results["dali"], results["torchvision"]
    if not torch.equal(labels_a, labels_b):
        raise RuntimeError("the two backends gave the val images in different orders or with different labels")
    top1 = {k: 100.0 * (v[0].argmax(1) == v[1]).double().mean().item() for k, v in results.items()}
    diff = (a - b).abs()
    return {"checkpoint": str(path), "images": len(labels_a), "device": str(rt.device),
            "precision": rt.precision, "dali/top1": top1["dali"], "torchvision/top1": top1["torchvision"],
            "top1_gap": top1["dali"] - top1["torchvision"],
            "argmax_agreement": 100.0 * (a.argmax(1) == b.argmax(1)).double().mean().item(),
            "max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
            "logit_scale": b.abs().mean().item()}


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    r = parity(cfg, args.checkpoint)
    one_image = 100.0 / max(1, r["images"])
    passed = abs(r["top1_gap"]) <= max(args.max_gap, one_image)
    print(f"checkpoint {r['checkpoint']} on {r['images']} val images, {r['device']} {r['precision']}:")
    print(f"  top-1  DALI {r['dali/top1']:.2f}%  torchvision {r['torchvision/top1']:.2f}%  "
          f"(gap {r['top1_gap']:+.2f} points; limit {args.max_gap:g} or one image, {one_image:.2f})")
    print(f"  same top-1 class on {r['argmax_agreement']:.2f}% of the images; logits differ by at most "
          f"{r['max_abs_logit_diff']:.4g} (mean {r['mean_abs_logit_diff']:.4g}; mean |logit| {r['logit_scale']:.4g})")
    print(json.dumps({**r, "passed": passed}))
    return 0 if passed else 1
