"""`pipeline degradation`: He 2015 Figure 6 (left vs middle): plain-20/56 against ResNet-20/56.

Trains the four CIFAR networks on the same data with the same recipe and plots training error
(on the training batches) against iterations; deeper plain nets train to a higher error, deeper
residual nets to a lower one. Uses CIFAR-10 when --cifar points at it, else the demo data.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.metrics import read_metrics
from pipeline.tools.sweep import run as run_sweep

MODELS = ("plain20", "plain56", "resnet20", "resnet56")


def plot(root: Path, out: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    final = {}
    for name in MODELS:
        rows = [r for r in read_metrics(root / f"{name}-s0") if "train/top1" in r]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        err = [100 - r["train/top1"] for r in rows]
        # smooth over the last few log windows, as the paper's curves are
        window = max(1, len(err) // 20)
        smooth = [sum(err[max(0, i - window + 1):i + 1]) / len(err[max(0, i - window + 1):i + 1]) for i in range(len(err))]
        ax.plot(steps, smooth, linestyle="--" if name.startswith("plain") else "-", label=name)
        final[name] = sum(err[-max(1, len(err) // 10):]) / max(1, len(err) // 10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training error (%)")
    ax.set_title("Degradation: plain vs residual (He 2015, Fig. 6)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return final


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cifar", help="CIFAR-10 python folder (default: the demo data at 32 px)")
    p.add_argument("--steps", type=int, default=0, help="iterations per model (default: the paper's 64k on CIFAR, 600 on demo)")
    p.add_argument("--group", default="degradation")
    p.add_argument("--out", default="")


def main(args: argparse.Namespace) -> int:
    configs = [f"configs/cifar10/{m}.yaml" for m in MODELS]
    if args.cifar:
        base = [f"data.path={args.cifar}"] + ([f"trainer.max_steps={args.steps}"] if args.steps else [])
    else:
        steps = args.steps or 600
        base = ["data.dataset=imagefolder", "data.path=data/demo", "data.make_demo=true", "data.cifar_holdout=0",
                "model.num_classes=10", "data.scale=[0.35,1.0]", f"trainer.max_steps={steps}", "trainer.log_every=10",
                f"optim.milestones=[{steps // 2},{steps * 3 // 4}]", "trainer.checkpoint_every=0",
                "data.backend=auto", "data.workers=2", "trainer.epochs=1000", "trainer.eval_every=1000"]
    sweep_args = argparse.Namespace(configs=configs, seeds="0", group=args.group, root="runs", slurm=None,
                                    dry_run=False)
    code = run_sweep(sweep_args, base + args.overrides)
    out = Path(args.out or f"runs/{args.group}/training_error.png")
    final = plot(Path("runs") / args.group, out)
    for name, err in final.items():
        print(f"{name:<9} final training error {err:.1f}%")
    print(f"plot written to {out}")
    return code
