"""Check `pipeline plan`'s scaling model against the two multi-process runs a 2-core CPU allows
(issue 28): DDP over gloo with 1 and 2 processes, one thread each.

  python bench/scaling_check.py [--model resnet18] [--size 64] [--batch 32] [--steps 24] [--repeats 3]

1. The gloo all-reduce bus bandwidth between 2 processes on this machine, for a buffer the size of
   the model's fp32 gradients (2(n-1)/n x bytes / time, NCCL's busbw definition), median of 7.
2. `pipeline train` on synthetic data with 1 process, then through torchrun with 2 (DDP, gloo),
   each pinned to fp32, NCHW and one thread: the trainer's median img/s (all ranks together).
3. Two independent 1-process runs at the same time: what sharing the 2 cores' caches and memory
   costs without any communication (a GPU node has no such term: each GPU has its own memory).
4. The model's prediction for 2 ranks from the measured 1-process rate (alone, and side by side)
   and bus bandwidth, with full overlap and with none, against the measured 2-process rate.
Every run is repeated `--repeats` times, interleaved; medians are reported with the raw values.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _allreduce_worker(numel: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    buffer = torch.ones(numel)
    for _ in range(2):
        dist.all_reduce(buffer)
    times = []
    for _ in range(7):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    n = dist.get_world_size()
    if dist.get_rank() == 0:
        seconds = statistics.median(times)
        print(json.dumps({"allreduce_s": seconds, "busbw_gbps": 2 * (n - 1) / n * numel * 4 * 8 / seconds / 1e9}))
    dist.destroy_process_group()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _train_rate(nproc: int, overrides: list[str], run_dir: Path, side_by_side: bool = False) -> float:
    """The trainer's median img/s: one process, `nproc` through torchrun, or (side_by_side) two
    independent single processes at once (their mean)."""
    command = ([sys.executable, "-m", "pipeline", "train"] if nproc == 1 else _torchrun(nproc, "-m", "pipeline", "train"))
    dirs = [run_dir / "a", run_dir / "b"] if side_by_side else [run_dir]
    procs = [subprocess.Popen([*command, *overrides, f"trainer.run_dir={d}"], cwd=REPO, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for d in dirs]
    for proc in procs:
        _, err = proc.communicate(timeout=1200)
        if proc.returncode != 0:
            raise SystemExit(f"training with {nproc} process(es) failed:\n{err[-2000:]}")
    return statistics.mean(json.loads((d / "summary.json").read_text())["train/img_per_sec"] for d in dirs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--allreduce-worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.allreduce_worker:
        _allreduce_worker(args.allreduce_worker)
        return

    import torch

    from pipeline.config import load_config
    from pipeline.models import build_model
    from pipeline.training import scaling

    cfg = load_config(None, [f"model.name={args.model}"])
    with torch.device("meta"):
        numel = sum(p.numel() for p in build_model(cfg.model, 1000).parameters())
    overrides = [f"model.name={args.model}", "model.num_classes=1000", "data.backend=synthetic",
                 f"data.image_size={args.size}", f"data.batch_size={args.batch}",
                 f"data.synthetic_samples={args.batch * args.steps}", "trainer.epochs=1", "trainer.precision=fp32",
                 "trainer.channels_last=false", "trainer.threads=1", "trainer.log_every=4", "logging.progress=none",
                 "trainer.engine=auto", "trainer.resume=never"]
    busbw, rates, side = [], {1: [], 2: []}, []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            out = subprocess.run(_torchrun(2, str(Path(__file__).resolve()), "--allreduce-worker", str(numel)),
                                 cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise SystemExit(f"all-reduce measurement failed:\n{out.stderr[-2000:]}")
            busbw.append(json.loads(out.stdout.strip().splitlines()[-1])["busbw_gbps"])
            for nproc in (1, 2):
                rates[nproc].append(_train_rate(nproc, overrides, Path(tmp) / f"r{repeat}-n{nproc}"))
            side.append(_train_rate(1, overrides, Path(tmp) / f"r{repeat}-side", side_by_side=True))
            print(f"repeat {repeat + 1}: busbw {busbw[-1]:.2f} Gbit/s, 1 process {rates[1][-1]:.1f} img/s "
                  f"({side[-1]:.1f} each side by side), DDP 2 processes {rates[2][-1]:.1f} img/s", flush=True)
    bw, two = statistics.median(busbw), statistics.median(rates[2])
    predicted = {}
    for base, one in (("alone", statistics.median(rates[1])), ("side_by_side", statistics.median(side))):
        for overlap in (1.0, 0.0):
            fabric = scaling.Fabric(interconnect_gbps=bw, nvlink_gbps=bw, overlap=overlap)
            step = scaling.step_seconds(args.batch, one, numel * 4, 2, 1, fabric)
            pred = {"img_per_sec": 2 * args.batch / step["step_s"], "per_process_rate": one, "overlap": overlap, **step}
            predicted[f"{base}_overlap{overlap:g}"] = pred
            print(f"predicted DDP 2-process img/s from the 1-process rate {base} ({one:.1f}), overlap {overlap:g}: "
                  f"{pred['img_per_sec']:.1f} (compute {step['compute_s'] * 1e3:.0f} ms, all-reduce "
                  f"{step['allreduce_s'] * 1e3:.0f} ms, exposed {step['exposed_s'] * 1e3:.0f} ms); measured {two:.1f}: "
                  f"model/measured = {pred['img_per_sec'] / two:.3f}")
    print(json.dumps({"model": args.model, "size": args.size, "batch": args.batch, "gradient_mb": numel * 4 / 2**20,
                      "busbw_gbps": busbw, "rate_1proc": rates[1], "rate_1proc_side_by_side": side,
                      "rate_2proc": rates[2], "measured_efficiency": two / (2 * statistics.median(rates[1])),
                      "predicted": predicted}))


if __name__ == "__main__":
    main()
