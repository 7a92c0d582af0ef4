"""`pipeline sweep`: a set of configs x seeds as one experiment group, then `pipeline compare`.

  pipeline sweep configs/ablations/identity_mappings --seeds 0,1,2 --group table1 [key=value ...]
  pipeline sweep configs/cifar10/resnet20.yaml configs/cifar10/plain20.yaml --slurm slurm/resnet50.sh

Locally the runs go one after another (each a `pipeline train` process); with --slurm each is an
sbatch job of that script (JOB_CONFIG, RUN_DIR and WANDB_GROUP set per run). Run directories are
runs/<group>/<config>-s<seed>, so the group feeds `pipeline compare runs/<group>/*`.
`pipeline degradation` is the He 2015 Figure 6 experiment built on it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def expand(specs: list[str]) -> list[Path]:
    configs: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            configs += sorted(p for p in path.glob("*.yaml") if not p.name.startswith("_"))
        elif path.is_file():
            configs.append(path)
        else:
            raise FileNotFoundError(f"sweep: no config or folder {spec}")
    return configs


def plan(configs: list[Path], seeds: list[int], group: str, root: Path) -> list[tuple[Path, int, Path]]:
    return [(c, s, root / group / f"{c.stem}-s{s}") for c in configs for s in seeds]


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    configs = expand(args.configs)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = plan(configs, seeds, args.group, Path(args.root))
    failed = 0
    for config, seed, run_dir in jobs:
        extra = [f"trainer.seed={seed}", f"trainer.run_dir={run_dir}", f"logging.wandb.group={args.group}", *overrides]
        if args.slurm:
            cmd = ["sbatch", "--parsable", f"--job-name={args.group}-{config.stem}-s{seed}", args.slurm, *extra]
            env = {**os.environ, "JOB_CONFIG": str(config), "RUN_DIR": str(run_dir), "WANDB_GROUP": args.group}
        else:
            cmd = [sys.executable, "-m", "pipeline", "train", "--config", str(config), *extra]
            env = dict(os.environ)
        print(("(dry run) " if args.dry_run else "") + " ".join(cmd), flush=True)
        if args.dry_run:
            continue
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            failed += 1
            print(f"sweep: {config} seed {seed} exited {proc.returncode}", file=sys.stderr, flush=True)
    print(f"sweep {args.group}: {len(jobs) - failed}/{len(jobs)} "
          + ("planned" if args.dry_run else "submitted" if args.slurm else "finished") + f"; compare: pipeline compare {Path(args.root) / args.group}/*")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("configs", nargs="+", help="config files or folders (files starting with _ are bases)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--group", default="sweep")
    p.add_argument("--root", default="runs")
    p.add_argument("--slurm", help="submit each run with this sbatch script instead of running it here")
    p.add_argument("--dry-run", action="store_true")


def main(args: argparse.Namespace) -> int:
    return run(args, args.overrides)
