"""What a pass costs DALI to start (pipeline build + first batch) against a batch in the pass, with
progressive resizing (issue 28): a size change rides on the pass's own pipeline build.

  python bench/dali_pass_start.py DATA_DIR [--epochs 4] [--batch 32] [--workers 2]

Sizes 24, 32, 40, 40 over 4 epochs (a ramp in steps of 8); each epoch: the seconds from set_epoch to
the first batch, the median seconds per later batch, and the loader's pipeline count.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pipeline.config import load_config
from pipeline.data import Placement, build_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    cfg = load_config(None, [f"data.path={args.data}", "data.backend=dali", f"data.batch_size={args.batch}",
                             f"data.workers={args.workers}", "data.image_size_start=24", "data.image_size=40",
                             "data.size_ramp=[0,2]", "data.size_step=8"])
    loader = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0).train
    rows = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        loader.set_epoch(epoch)
        batches = iter(loader)
        images, _ = next(batches)
        first = time.perf_counter() - start
        times, last = [], time.perf_counter()
        for _ in batches:
            now = time.perf_counter()
            times.append(now - last)
            last = now
        rows.append({"epoch": epoch, "size": images.shape[-1], "first_batch_s": round(first, 4),
                     "median_batch_s": round(statistics.median(times), 4), "pipelines_built": loader.pipelines_built})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
