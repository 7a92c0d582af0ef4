"""A job that grows (issue 35): how close a run that starts at world 1 and goes on at world 2 comes to
one that ran at world 2 from the start, by both paths.

  straight  world 2 x 16 (global batch 32) from step 0 to the end: the reference
  plan      trainer.plan_world_size=2: world 1 x 16 x accumulation 2 (global batch 32), stopped by a
            fault, resumed at world 2 x 16 x 1 from its checkpoint: the same recipe at both sizes
  rescale   world 1 x 16 (global batch 16), stopped by a fault, resumed at world 2 with
            trainer.elastic=rescale: global batch 32, peak LR x2, the schedule kept in samples

Both resumed runs restart from the checkpoint at sample CHECKPOINT_SAMPLES of the run (the same data
position), then run to the end. Reported: the mean train loss over the 10 steps after the resume and
over the last 20 steps (each against the straight run's at the same steps), the final val top-1 and
the steps. Real BatchNorm (not frozen), fp32, so the figures are what a user would see.

    .venv/bin/python bench/elastic_grow.py [--out /tmp/elastic_grow] [--epochs 6] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.metrics import read_metrics  # noqa: E402

CHECKPOINT_SAMPLES = 1280  # a checkpoint at 40 steps of 32 = 80 steps of 16: mid epoch 2 of 800 samples


def launch(world: int, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "pipeline", "train", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=full_env)


def grow(args: list[str], run: Path, checkpoint_step: int, fault_step: int, said: str) -> str:
    """World 1 until a fault at `fault_step` (a checkpoint at `checkpoint_step`), then world 2 to the
    end; returns the resume's line (the one starting with `said`)."""
    args = [*args, f"trainer.checkpoint_every={checkpoint_step}", f"trainer.run_dir={run}"]
    launch(1, args, {"PIPELINE_FAULT_RAISE_AT_STEP": str(fault_step)})
    proc = launch(2, args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(line for line in proc.stdout.splitlines() if line.startswith(said))


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run) if "train/loss" in r}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/elastic_grow")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    data = out / "data"
    if not data.exists():
        subprocess.run([sys.executable, "-m", "pipeline", "make-demo-data", str(data), "--train-per-class", "80",
                        "--val-per-class", "25"], check=True, cwd=REPO, capture_output=True)
    common = ["model.name=resnet20", "data.image_size=32", "data.workers=0", "data.backend=torchvision",
              f"data.path={data}", "data.batch_size=16", "trainer.precision=fp32", "trainer.channels_last=false",
              f"trainer.epochs={a.epochs}", "trainer.log_every=1", "logging.progress=none", "trainer.engine=ddp",
              "logging.wandb.mode=disabled", f"trainer.seed={a.seed}", "distributed.timeout_s=120"]
    runs = {name: out / f"seed{a.seed}" / name for name in ("straight", "plan", "rescale")}
    for run in runs.values():
        run.mkdir(parents=True, exist_ok=True)
    proc = launch(2, [*common, f"trainer.run_dir={runs['straight']}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # plan: checkpoint at step 40 (global batch 32), a fault at step 45, resumed at world 2
    plan_line = grow([*common, "trainer.plan_world_size=2"], runs["plan"], checkpoint_step=40, fault_step=45,
                     said="resumed at world")
    # rescale: checkpoint at step 80 (global batch 16), a fault at step 90, resumed at world 2
    rescale_line = grow([*common, "trainer.elastic=rescale"], runs["rescale"], checkpoint_step=80, fault_step=90,
                        said="rescaled at world")

    straight = losses(runs["straight"])
    summary = {name: json.loads((run / "summary.json").read_text()) for name, run in runs.items()}
    # Steps after the resume, in each run's own numbering, and the straight run's at the same samples
    # (global batch 32 from the resume on in both grown runs: the straight run's step = samples / 32).
    resumed_at = {"plan": CHECKPOINT_SAMPLES // 32, "rescale": CHECKPOINT_SAMPLES // 16}
    print(f"python {sys.version.split()[0]}, epochs {a.epochs}, seed {a.seed}, checkpoint at sample {CHECKPOINT_SAMPLES}")
    print(f"plan:    {plan_line}")
    print(f"rescale: {rescale_line}")
    print("run       steps  final top-1  loss, 10 steps after resume (straight)  loss, last 20 steps (straight)")
    for name in ("straight", "plan", "rescale"):
        s, own = summary[name], losses(runs[name])
        line = f"{name:9s} {s['steps']:5d} {s['final/val/top1']:11.2f}%"
        if name != "straight":
            first = resumed_at[name] + 1
            after = [own[k] for k in range(first, first + 10)]
            ref = [straight[CHECKPOINT_SAMPLES // 32 + 1 + i] for i in range(10)]
            last = [own[k] for k in sorted(own)[-20:]]
            ref_last = [straight[k] for k in sorted(straight)[-20:]]
            line += (f"  {sum(after) / 10:.4f} ({sum(ref) / 10:.4f})                      "
                     f"{sum(last) / 20:.4f} ({sum(ref_last) / 20:.4f})")
        print(line)
    print(json.dumps({name: {k: summary[name][k] for k in ("steps", "final/val/top1", "global_batch")}
                      for name in runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
