"""Images/s of the Python side of the DALI source alone (no decoding): what the training process does
per sample before DALI decodes it on a GPU (read the file, check its container, parse its size, draw
its crop window). On a GPU this runs in the training process, so it must outpace the GPU (issue 14:
>= 15,000 img/s per process, against ~6,600 img/s of a compiled ResNet-50 on an H100).

    python bench/dali_feed_rate.py /tmp/big3 [--batch 256] [--passes 3] [--workers 0,1,2]

Median of `--passes` full train passes after one warm-up pass (page cache warm). First the source
called alone in a loop (its Python work, nothing else); then through a DALI pipeline that holds only
the source, so DALI's hand-over is included: workers 0 calls it in this process before each
iteration (DALI's default external source), N > 0 in DALI's N parallel Python worker processes
(`data.dali_feed_workers=N`), which pass each batch through shared memory.
The folder may also be a shard folder (train/*.tar).
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


def _in_process(source) -> tuple[int, float]:
    images, iteration, start = 0, 0, time.perf_counter()
    while True:
        try:
            data, *_ = source(iteration)
        except StopIteration:
            return images, time.perf_counter() - start
        images += len(data)
        iteration += 1


def _through_workers(source, batch: int, workers: int) -> tuple[int, float]:
    """(images, seconds) of one pass, timed from the first batch request: the workers' start and
    the pipeline build (once per pass, ~0.1 s with fork) are left out, as a long epoch amortizes them."""
    from nvidia.dali import pipeline_def, types

    from pipeline.data.dali_graph import file_source

    feed = {"py_num_workers": workers, "py_start_method": "fork"} if workers else {}

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=2, **feed)
    def feed_only():
        jpegs, labels, *_ = file_source(
            source, [types.UINT8, types.INT64, types.INT32, types.INT32, types.INT32, types.INT32], parallel=workers > 0)
        return jpegs, labels

    pipe = feed_only()
    if workers:
        pipe.start_py_workers()
    pipe.build()
    images, start = 0, time.perf_counter()
    while True:
        try:
            images += len(pipe.run()[1])
        except StopIteration:
            return images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated feed worker counts (0: in process)")
    args = parser.parse_args()
    cfg = DataConfig(path=args.dir, make_demo=False, scale=(0.08, 1.0))
    classes, samples = split_samples(cfg)["train"]
    plan = ShardPlan(len(samples), 0, 1, args.batch, True, 0)
    print(f"{len(samples)} train images in {len(classes)} classes, batch {args.batch}, torch {torch.__version__}")
    for workers in [-1, *map(int, args.workers.split(","))]:
        rates = []
        for epoch in range(args.passes + 1):
            source = EncodedBatches(samples, plan.batches(epoch, 0), cfg, True)
            images, seconds = _in_process(source) if workers < 0 else _through_workers(source, args.batch, workers)
            if epoch:  # the first pass warms the page cache
                rates.append(images / seconds)
        where = {-1: "Python side alone", 0: "through DALI, in process"}.get(workers, f"through DALI, {workers} feed worker(s)")
        print(f"DALI source, {where}: {statistics.median(rates):,.0f} img/s "
              f"(median of {args.passes} passes; min {min(rates):,.0f}, max {max(rates):,.0f})", flush=True)


if __name__ == "__main__":
    main()
