"""`pipeline bench data`: images/s of each data backend on the same folder, same cores, one run.

Baseline: torchvision ImageFolder + PIL transforms + DataLoader(num_workers=W), the loader most
PyTorch ImageNet scripts use. Each backend's pass ends at normalized float batches in the model's
memory format on `--device` (the baseline's stay on the CPU; with `--device cuda` the project's
backends end on the GPU: DALI's "mixed" decode pipeline alone, the figure to set against what
training consumes). Median of `repeats` full passes after a warm-up pass (page cache warm).
The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def _baseline(root: Path, split: str, batch: int, workers: int, size: int):
    from torchvision import datasets, transforms

    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if split == "train":
        tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), norm])
    else:
        tf = transforms.Compose([transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size),
                                 transforms.ToTensor(), norm])
    ds = datasets.ImageFolder(str(root / split), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=split == "train", num_workers=workers,
                                         persistent_workers=workers > 0)

    def one_pass():
        n = 0
        for images, _ in loader:
            n += len(images)
        return n
    return one_pass


def _project(root: Path, split: str, batch: int, workers: int, size: int, backend: str, device: torch.device,
             overrides: list[str]):
    from pipeline.config import load_config
    from pipeline.data import Placement, build_data

    cfg = load_config(None, [f"data.path={root}", f"data.backend={backend}", f"data.batch_size={batch}",
                             f"data.workers={workers}", f"data.image_size={size}", "data.scale=[0.08,1.0]",
                             "data.make_demo=false", *overrides])
    data = build_data(cfg.data, Placement(device, channels_last=True), seed=0)
    loader = data.train if split == "train" else data.val
    epoch = [0]

    def one_pass():
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        n = 0
        for images, _ in loader:
            n += len(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the pass is done when its last batch is on the device
        return n
    return one_pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="ImageNet-layout folder (make one: pipeline make-demo-data DIR --size 500)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="loader processes / DALI threads (same for all)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="baseline,torchvision,dali")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the project's batches end")
    p.add_argument("--shards", default="", help="the same dataset as WebDataset shards (pipeline prepare shards): "
                                                "each project backend is also measured on it, in the same run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for the project's backends (repeatable), e.g. data.val_view=fast")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.workers))
    root = Path(args.dir)
    rows = []
    sources = [("", root)] + ([("/shards", Path(args.shards))] if args.shards else [])
    for split in ("train", "val"):
        runs = [(backend + suffix, folder) for backend in args.backends.split(",") for suffix, folder in sources
                if not (backend == "baseline" and suffix)]
        for backend, folder in runs:
            if backend == "baseline":
                one_pass = _baseline(root, split, args.batch, args.workers, args.image_size)
            else:
                one_pass = _project(folder, split, args.batch, args.workers, args.image_size, backend.split("/")[0],
                                    torch.device(args.device), args.set)
            one_pass()  # warm-up: page cache, worker start, pipeline build
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                n = one_pass()
                rates.append(n / (time.perf_counter() - start))
            rows.append({"split": split, "backend": backend, "img_per_sec": statistics.median(rates),
                         "min": min(rates), "max": max(rates)})
    print(f"{root}: batch {args.batch}, {args.workers} workers/threads, {args.image_size}px, device {args.device}, "
          f"median of {args.repeats} passes")
    print(f"{'split':<6} {'backend':<18} {'img/s':>8} {'vs baseline':>12}   min..max")
    for r in rows:
        base = next((b for b in rows if b["split"] == r["split"] and b["backend"] == "baseline"), None)
        r["ratio_vs_baseline"] = r["img_per_sec"] / base["img_per_sec"] if base else None
        ratio = f"{r['ratio_vs_baseline']:>11.2f}x" if base else f"{'-':>12}"
        print(f"{r['split']:<6} {r['backend']:<18} {r['img_per_sec']:>8.1f} {ratio}   {r['min']:.0f}..{r['max']:.0f}")
    print(json.dumps({"dir": str(root), "batch": args.batch, "workers": args.workers, "device": args.device,
                      "rows": rows}))
    return 0
