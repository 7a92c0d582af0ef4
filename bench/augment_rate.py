"""Loader img/s with the recipes' augmentations, per backend and size (issue 33): the price of each piece.

  python bench/jpeg_folder.py /tmp/big --train-per-class 40 --val-per-class 4     # ImageNet-sized JPEGs
  python bench/augment_rate.py /tmp/big [--sizes 176,224] [--batch 32] [--workers 2] [--batches 12]
                               [--repeats 3] [--backends torchvision,dali]

For each backend, size and setting (none, ta_wide, rand-m7-mstd0.5-inc1, the same + random erasing
0.25; for DALI also none with DALI's own resize, which every policy uses) it builds the real train
loader (`build_data`) and times `--batches` batches after one warm-up batch; the median over repeats
is reported, with the ratio to the backend's plain setting at that size. The train order is the
same for every setting, so every setting decodes the same files.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from pipeline.config import load_config
from pipeline.data import Placement, build_data

SETTINGS = {"none": [], "ta_wide": ["data.auto_augment=ta_wide"],
            "rand-m7": ["data.auto_augment=rand-m7-mstd0.5-inc1"],
            "rand-m7+erase": ["data.auto_augment=rand-m7-mstd0.5-inc1", "data.random_erase=0.25"]}


def rate(path: str, backend: str, size: int, extra: list[str], args) -> float:
    cfg = load_config(None, [f"data.path={path}", f"data.backend={backend}", f"data.image_size={size}",
                             f"data.batch_size={args.batch}", f"data.workers={args.workers}",
                             "data.scale=[0.08,1.0]", *extra])
    data = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0)
    rates = []
    for repeat in range(args.repeats):
        data.train.set_epoch(repeat)
        batches = iter(data.train)
        next(batches)  # warm-up: workers started, DALI's graph built
        start = time.perf_counter()
        for _ in range(args.batches):
            next(batches)
        rates.append(args.batches * args.batch / (time.perf_counter() - start))
        del batches
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--sizes", default="176,224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="torchvision,dali")
    args = p.parse_args()
    rows = []
    for backend in args.backends.split(","):
        settings = dict(SETTINGS)
        if backend == "dali":
            settings = {"none": [], "none (DALI resize)": ["data.dali_resize=dali"], **{
                k: v for k, v in SETTINGS.items() if k != "none"}}
        for size in (int(s) for s in args.sizes.split(",")):
            base = None
            for name, extra in settings.items():
                img_s = rate(args.path, backend, size, extra, args)
                base = base or img_s
                rows.append({"backend": backend, "size": size, "setting": name, "img_per_sec": round(img_s, 1),
                             "ratio": round(img_s / base, 3), "ms_per_image": round(1000 / img_s, 2)})
                print(f"{backend:12} {size:4} px  {name:20} {img_s:8.1f} img/s  x{img_s / base:.3f}", flush=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "batch": args.batch,
                      "workers": args.workers, "batches": args.batches, "repeats": args.repeats, "rows": rows}))


if __name__ == "__main__":
    main()
