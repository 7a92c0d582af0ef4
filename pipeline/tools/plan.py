"""`pipeline plan`: what a job will do at the scale it is launched at, before it runs.

  pipeline plan --config configs/imagenet/resnet152.yaml --nodes 2 --gpus-per-node 8 [key=value ...]
  pipeline plan -c configs/imagenet/resnet50_fast_16ep.yaml --gpus-per-node 8 --interconnect-gbps 1600
  pipeline plan -c configs/imagenet/resnet50.yaml --nodes 1-4 --gpus-per-node 8   # a job that may grow

With a node range (Slurm's --nodes=MIN-MAX) the global batch is planned for MAX nodes
(trainer.plan_world_size, as slurm/*.sh set it), and a table shows the accumulation at each size.

Prints the plan (pipeline/training/plan.py), the predicted scaling over 1, 2, 4 ... nodes
(pipeline/training/scaling.py: its assumptions are stated there) and, last, the plan as one JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from pipeline.config import ConfigError, RootConfig, load_config
from pipeline.data.resolution import train_sizes
from pipeline.training import published_scaling, scaling
from pipeline.training.plan import RECORDED_IMG_PER_SEC, format_plan, make_plan, train_images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--nodes", default="1", help="N, or MIN-MAX for a job that may get any count in the range")
    p.add_argument("--gpus-per-node", type=int, default=1, help="processes per node (one per GPU)")
    p.add_argument("--resume", metavar="RUN_DIR", default="",
                   help="a run to go on at this size: what its resume will do (accumulation, position), or why it "
                        "is refused")
    p.add_argument("--img-per-sec", type=float, default=0.0,
                   help="per-GPU training img/s to plan with (default: the rate recorded for the model)")
    p.add_argument("--img-per-sec-size", type=int, default=224, help="the image size --img-per-sec was measured at")
    p.add_argument("--interconnect-gbps", type=float, default=scaling.DEFAULT_INTERCONNECT_GBPS,
                   help="all-reduce bus bandwidth across nodes in Gbit/s, the node's NICs together (NCCL busbw): "
                        + "; ".join(f"{name} {gbps:g}" for name, gbps in scaling.FABRICS_GBPS.items()))
    p.add_argument("--nvlink-gbps", type=float, default=scaling.DEFAULT_NVLINK_GBPS,
                   help="all-reduce bus bandwidth within one node in Gbit/s (default 300 GB/s)")
    p.add_argument("--overlap", type=float, default=scaling.DEFAULT_OVERLAP,
                   help="share of the backward pass that hides the all-reduce (1: all of it, 0: none; default: the "
                        "middle of what the published runs allow, docs/scaling.md)")
    p.add_argument("--jitter", type=float, default=scaling.DEFAULT_JITTER,
                   help="coefficient of variation of one rank's step time: the wait for the slowest rank "
                        "(default: fitted to the published runs, docs/scaling.md)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    low, args.nodes = _node_range(args.nodes)
    if low < 1 or args.gpus_per_node < 1:
        raise ValueError(f"--nodes and --gpus-per-node must be >= 1, got {low}-{args.nodes} and {args.gpus_per_node}")
    world, recorded = args.nodes * args.gpus_per_node, None
    from pipeline.training import elastic

    if low < args.nodes:  # a range: planned for its largest size unless the config says otherwise
        if cfg.trainer.plan_world_size <= 0:
            cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, plan_world_size=world))
        print("\n".join(_range_table(cfg, low, args.nodes, args.gpus_per_node)))
    unplanned = cfg
    cfg, _ = elastic.planned(cfg, world)  # a size outside the plan is refused here: one line, exit 2
    if args.resume:
        from pathlib import Path

        recorded = elastic.recorded_layout(Path(args.resume), cfg.trainer.engine)
        if recorded is None:
            print(f"resume: no checkpoint with a recorded launch layout in {args.resume}: the run starts from step 0")
        else:
            cfg, line, _ = elastic.resolve(unplanned, world, recorded)  # a refusal: one line, exit 2
            print(line.replace("resumed", "resumes").replace("rescaled", "rescales") if line else
                  f"resumes at the same world {world} from step {recorded.get('global_step', 0)}")
    if (min(args.interconnect_gbps, args.nvlink_gbps) <= 0 or not 0 <= args.overlap <= 1 or args.img_per_sec < 0
            or not 0 <= args.jitter < 1):
        raise ConfigError(f"--interconnect-gbps {args.interconnect_gbps:g} and --nvlink-gbps {args.nvlink_gbps:g} must "
                          f"be > 0, --overlap {args.overlap:g} within [0, 1], --jitter {args.jitter:g} within [0, 1), "
                          f"--img-per-sec {args.img_per_sec:g} >= 0")
    rate = ((args.img_per_sec, args.img_per_sec_size, "given by --img-per-sec") if args.img_per_sec
            else RECORDED_IMG_PER_SEC.get(cfg.model.name))
    images, images_source = train_images(cfg, world)  # counted once: a real train folder is 1.28 M files
    table = _scaling(cfg, args, rate, images)
    row = next((r for r in table if r["nodes"] == args.nodes), None)
    efficiency, why = (row["efficiency"], f"scaling efficiency {row['efficiency']:.1%} (published runs allow "
                       f"{row['efficiency_range'][0]:.0%}-{row['efficiency_range'][1]:.0%}) at {args.nodes} node(s) by "
                       f"the scaling model, docs/scaling.md") if row else (1.0, "")
    plan = make_plan(cfg, world, images, images_source, rate=rate, efficiency=efficiency, efficiency_source=why)
    plan["scaling"] = table
    if args.resume and recorded is not None and plan.get("steps_per_epoch"):
        done, in_epoch = recorded.get("global_step", 0), recorded.get("step_in_epoch", 0)
        left_in_epoch = (plan["steps_per_epoch"] - in_epoch) * plan["global_batch"]
        print(f"resume: {max(0, plan['total_steps'] - done):,} of {plan['total_steps']:,} steps left; "
              f"{left_in_epoch:,} samples left in epoch {recorded.get('epoch', 0) + 1}, each used once, dealt over "
              f"{world} ranks")
    title = (f"plan: {args.config or 'the defaults (demo job)'} on {args.nodes} node(s) x {args.gpus_per_node} "
             f"GPU(s), model {cfg.model.name}")
    print("\n".join(format_plan(plan, title)))
    print("\n".join(_format_scaling(table, args)))
    print(json.dumps({"config": args.config, "model": cfg.model.name, **plan}))
    return 0


def _node_range(text: str) -> tuple[int, int]:
    """--nodes N or MIN-MAX -> (MIN, MAX)."""
    low, _, high = str(text).partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise ConfigError(f"--nodes {text}: expected a node count N or a range MIN-MAX") from None


def _range_table(cfg: RootConfig, low: int, high: int, gpus_per_node: int) -> list[str]:
    """The accumulation at each size of a node range, for the plan's global batch."""
    plan, batch = cfg.trainer.plan_world_size, cfg.data.batch_size
    global_batch = plan * batch * cfg.optim.accumulation
    lines = [f"node range {low}-{high} x {gpus_per_node} GPU(s): global batch {global_batch} planned for {plan} "
             "processes (trainer.plan_world_size)"]
    for nodes in range(low, high + 1):
        world = nodes * gpus_per_node
        if global_batch % (batch * world) == 0:
            what = f"accumulation {global_batch // (batch * world)}, global batch {global_batch}"
        elif cfg.trainer.elastic == "rescale":
            what = (f"outside the plan: trainer.elastic=rescale re-plans the global batch to "
                    f"{batch * world * cfg.optim.accumulation} (linear LR rule)")
        else:
            what = "refused: no whole accumulation (set trainer.elastic=rescale, or a plan size that it divides)"
        lines.append(f"  {nodes:3d} node(s), world {world:4d}: {what}")
    return lines


def _scaling(cfg: RootConfig, args: argparse.Namespace, rate: tuple[float, int, str] | None,
             images: int | None) -> list[dict]:
    """The all-reduce model's table at the size most epochs train at; [] without a rate."""
    if rate is None or args.gpus_per_node < 1:
        return []
    import torch

    from pipeline.models import build_model

    with torch.device("meta"):  # the parameter count without allocating the weights
        model = build_model(cfg.model, cfg.model.num_classes or 1000)
    gradient_bytes = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)  # fp32 gradients
    sizes = train_sizes(cfg.data, cfg.trainer.epochs)
    size = max(set(sizes), key=sizes.count)
    fabric = scaling.Fabric(args.interconnect_gbps, args.nvlink_gbps, args.overlap, cfg.distributed.bucket_cap_mb,
                            args.jitter)
    per_gpu = scaling.rate_at(rate[0], rate[1], size)
    rows = scaling.scaling_table(cfg.data.batch_size, per_gpu, gradient_bytes, args.gpus_per_node,
                                 scaling.node_counts(args.nodes), images, fabric)
    for row in rows:
        row.update(image_size=size, gradient_mb=round(gradient_bytes / 2**20, 1))
        run, gpus = published_scaling.nearest(row["gpus"], row["allreduce_ms"] / row["compute_ms"])
        published = dict(run.points)[gpus]
        row["basis"] = (f"{run.key} at {gpus} GPUs: published {published:.1%}, this model "
                        f"{published_scaling.predicted(run, gpus):.1%}")
    return rows


def _format_scaling(table: list[dict], args: argparse.Namespace) -> list[str]:
    if not table:
        return ["scaling: no per-GPU rate for this model (give --img-per-sec)"]
    first = table[0]
    lines = [f"scaling at {first['image_size']} px, {args.gpus_per_node} GPU(s) per node, {first['gradient_mb']} MB of fp32 "
             f"gradients, all-reduce (NCCL's ring or tree) at {args.nvlink_gbps:g} Gbit/s in a node and {args.interconnect_gbps:g} "
             f"across nodes, overlap {args.overlap:g}, jitter {args.jitter:g} (pipeline/training/scaling.py; held "
             "against published multi-node runs in docs/scaling.md):",
             "  nodes  GPUs    img/s  efficiency    range  slowest-rank ms  all-reduce ms  exposed ms  min/epoch"]
    for r in table:
        epoch = f"{r['epoch_minutes']:9.2f}" if r["epoch_minutes"] is not None else "        ?"
        low, high = r["efficiency_range"]
        lines.append(f"  {r['nodes']:5d} {r['gpus']:5d} {r['img_per_sec']:8.0f} {r['efficiency']:10.1%} "
                     f"{low:4.0%}-{high:3.0%} {r['straggler_ms']:16.2f} {r['allreduce_ms']:14.2f} "
                     f"{r['exposed_ms']:11.2f} {epoch}")
    requested = next((r for r in table if r["nodes"] == args.nodes), table[-1])
    lines.append(f"  basis at {requested['nodes']} node(s): the nearest published point is {requested['basis']} "
                 "(docs/scaling.md)")
    return lines
