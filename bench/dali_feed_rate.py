"""Images/s of the Python side of the DALI source alone (no decoding): what the training process does
per sample before DALI decodes it on a GPU (read the file, check its container, parse its size, draw
its crop window). On a GPU this runs in the training process, so it must outpace the GPU (issue 14:
>= 15,000 img/s per process, against ~6,600 img/s of a compiled ResNet-50 on an H100).

    python bench/dali_feed_rate.py /tmp/big3 [--batch 256] [--passes 3]

Median of `--passes` full train passes after one warm-up pass (page cache warm), one process.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.config import DataConfig
from pipeline.data.encoded import EncodedBatches
from pipeline.data.folder import split_samples
from pipeline.data.sampler import ShardPlan


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    cfg = DataConfig(path=args.dir, make_demo=False, scale=(0.08, 1.0))
    classes, samples = split_samples(cfg)["train"]
    plan = ShardPlan(len(samples), 0, 1, args.batch, True, 0)
    rates, bytes_per_image = [], 0.0
    for epoch in range(args.passes + 1):
        source = EncodedBatches(samples, plan.batches(epoch, 0), cfg, True)
        start, images, nbytes = time.perf_counter(), 0, 0
        while True:
            try:
                data, *_ = source()
            except StopIteration:
                break
            images += len(data)
            nbytes += sum(len(d) for d in data)
        if epoch:
            rates.append(images / (time.perf_counter() - start))
        bytes_per_image = nbytes / max(images, 1)
    print(f"{len(samples)} train files in {len(classes)} classes, {bytes_per_image / 1024:.0f} KiB each, batch "
          f"{args.batch}, torch {torch.__version__}")
    print(f"DALI source, Python side alone: {statistics.median(rates):,.0f} img/s "
          f"(median of {args.passes} passes; min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()
