"""`pipeline compare RUN...`: runs side by side as a table, and val/top1 and train/loss plots.

RUN is a local run directory (metrics.jsonl, config.yaml, summary.json), an offline W&B run
directory (read from its .wandb file), or with W&B reachable an `entity/project/run_id` path; or
select online runs with --project [--group].
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config.load import flat_values


@dataclass
class RunData:
    name: str
    config: dict
    history: list[dict]
    summary: dict = field(default_factory=dict)


def load_run(spec: str) -> RunData:
    path = Path(spec)
    if (path / "metrics.jsonl").exists():  # a pipeline run directory
        from pipeline.metrics import read_metrics

        config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
        return RunData(path.name, config, read_metrics(path), summary)
    if path.exists():  # an offline W&B run (folder or .wandb file)
        from pipeline.tracking.offline import read_offline_run

        run = read_offline_run(path)
        config = {k: v.get("value", v) if isinstance(v, dict) and "value" in v else v for k, v in run.config.items()}
        config.pop("_wandb", None)
        config.pop("environment", None)
        return RunData(run.run_id or path.name, config, run.history, run.summary)
    if spec.count("/") == 2:  # entity/project/run_id, online
        import wandb

        api_run = wandb.Api().run(spec)
        return RunData(api_run.name, dict(api_run.config), list(api_run.scan_history()), dict(api_run.summary))
    raise FileNotFoundError(f"not a run directory, offline W&B run or entity/project/id: {spec}")


def online_runs(project: str, group: str) -> list[RunData]:
    import wandb

    filters = {"group": group} if group else {}
    return [RunData(r.name, dict(r.config), list(r.scan_history()), dict(r.summary))
            for r in wandb.Api().runs(project, filters=filters)]


def _series(run: RunData, key: str) -> list[tuple[float, float]]:
    return [(row["epoch"], row[key]) for row in run.history if key in row and "epoch" in row]


def summarize(run: RunData) -> dict:
    top1 = [v for _, v in _series(run, "val/top1")]
    rates = [v for _, v in _series(run, "train/img_per_sec")]
    epochs = max((row.get("epoch", 0) for row in run.history), default=0)
    expected = run.config.get("expected") or {}
    return {"run": run.name, "model": (run.config.get("model") or {}).get("name", run.config.get("model.name", "?")),
            "best_top1": max(top1) if top1 else None, "final_top1": top1[-1] if top1 else None,
            "expected": expected.get("value"), "img_per_sec": sorted(rates)[len(rates) // 2] if rates else None,
            "epochs": epochs, "wall_s": run.summary.get("wall_seconds"),
            "global_batch": run.summary.get("global_batch"), "peak_lr": run.summary.get("peak_lr")}


def differing_keys(runs: list[RunData]) -> list[str]:
    flats = [flat_values(r.config) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    skip = ("trainer.run_dir", "logging.", "expected", "model.name")
    return [k for k in keys if not k.startswith(skip) and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def plot(runs: list[RunData], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        for ax, key in zip(axes, ("val/top1", "train/loss")):
            pts = _series(run, key)
            if pts:
                ax.plot(*zip(*pts), marker="o" if key == "val/top1" else None, label=run.name)
    for ax, key in zip(axes, ("val/top1", "train/loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", help="run directories, offline W&B run folders or entity/project/id")
    p.add_argument("--project", help="online: entity/project to select runs from")
    p.add_argument("--group", default="")
    p.add_argument("--out", default="compare.png", help="PNG with val/top1 and train/loss against epoch")


def main(args: argparse.Namespace) -> int:
    runs = [load_run(spec) for spec in args.runs]
    if args.project:
        runs += online_runs(args.project, args.group)
    if not runs:
        print("error: no runs given")
        return 2
    diff = differing_keys(runs)
    flats = [flat_values(r.config) for r in runs]
    header = ["run", "model", *diff, "best_top1", "final_top1", "paper", "paper_source", "global_batch", "peak_lr",
              "img/s", "epochs", "wall_s"]
    rows = []
    for run, flat in zip(runs, flats):
        s = summarize(run)
        exp = run.config.get("expected") or {}
        paper = f"{exp.get('metric', '')} {exp['value']}".strip() if exp.get("value") is not None else None
        rows.append([s["run"], s["model"], *[flat.get(k) for k in diff], s["best_top1"], s["final_top1"],
                     paper, (exp.get("source") or "")[:48] or None, s["global_batch"], s["peak_lr"], s["img_per_sec"],
                     s["epochs"], s["wall_s"]])
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    plot(runs, Path(args.out))
    print(f"plot written to {args.out}")
    return 0
