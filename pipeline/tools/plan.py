"""`pipeline plan`: what a job will do at the scale it is launched at, before it runs.

  pipeline plan --config configs/imagenet/resnet152.yaml --nodes 2 --gpus-per-node 8 [key=value ...]

Prints the plan (pipeline/training/plan.py) and, last, the same as one JSON line.
"""
from __future__ import annotations

import argparse
import json

from pipeline.config import load_config
from pipeline.training.plan import format_plan, make_plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1, help="processes per node (one per GPU)")
    p.add_argument("--resume", metavar="RUN_DIR", default="",
                   help="a run to go on at this size: what its resume will do (accumulation, position), or why it "
                        "is refused")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise ValueError(f"--nodes and --gpus-per-node must be >= 1, got {args.nodes} and {args.gpus_per_node}")
    world, recorded = args.nodes * args.gpus_per_node, None
    if args.resume:
        from pathlib import Path

        from pipeline.training import elastic

        recorded = elastic.recorded_layout(Path(args.resume), cfg.trainer.engine)
        if recorded is None:
            print(f"resume: no checkpoint with a recorded launch layout in {args.resume}: the run starts from step 0")
        else:
            cfg, line = elastic.adapt(cfg, world, recorded)  # a refusal is a ConfigError: one line, exit 2
            print(line.replace("resumed", "resumes") if line else
                  f"resumes at the same world {world} from step {recorded.get('global_step', 0)}")
    plan = make_plan(cfg, world)
    if args.resume and recorded is not None and plan.get("steps_per_epoch"):
        done, in_epoch = recorded.get("global_step", 0), recorded.get("step_in_epoch", 0)
        left_in_epoch = (plan["steps_per_epoch"] - in_epoch) * plan["global_batch"]
        print(f"resume: {max(0, plan['total_steps'] - done):,} of {plan['total_steps']:,} steps left; "
              f"{left_in_epoch:,} samples left in epoch {recorded.get('epoch', 0) + 1}, each used once, dealt over "
              f"{world} ranks")
    title = (f"plan: {args.config or 'the defaults (demo job)'} on {args.nodes} node(s) x {args.gpus_per_node} "
             f"GPU(s), model {cfg.model.name}")
    print("\n".join(format_plan(plan, title)))
    print(json.dumps({"config": args.config, "model": cfg.model.name, **plan}))
    return 0
