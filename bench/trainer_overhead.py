"""Where the trainer's step differs from the bare loop's, on CPU (issue 22, item 4).

    python bench/trainer_overhead.py [--model resnet18 --image-size 96 --batch 32 --steps 5 --rounds 7]

Two measurements, both on `pipeline bench train`'s own BareLoop and TrainerLoop (same model, numerics,
optimizer and device-resident synthetic batch):
1. torch.profiler over `--steps` steps of each: self CPU time per operator, summed, and the operators
   (or their counts) that only the trainer runs; the wall time not spent in any operator is Python.
2. Interleaved timing of the two loops, `--rounds` rounds, order alternating: the median step time of
   each and their ratio, as `pipeline bench train` reports it.
The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.tools.bench_train import BareLoop, TrainerLoop


def op_table(loop, steps: int) -> tuple[dict[str, tuple[int, float]], float]:
    """{op name: (calls, self CPU µs)} over `steps` steps, and the wall µs of those steps."""
    loop.run(steps)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        loop.run(steps)
        wall = (time.perf_counter() - start) * 1e6
    table = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.key_averages():
        table[event.key][0] += event.count
        table[event.key][1] += event.self_cpu_time_total
    return {k: (c, t) for k, (c, t) in table.items()}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    device = torch.device("cpu")
    trainer = TrainerLoop(args.model, args.batch, args.image_size, "auto", "auto", device, args.steps)
    rt = trainer.rt
    bare = BareLoop(args.model, args.batch, args.image_size, rt.precision, rt.channels_last, device)
    print(f"{args.model} batch {args.batch} {args.image_size}px, {rt.precision}"
          f"{' channels_last' if rt.channels_last else ''} ({rt.numerics_reason}), {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")

    tables = {name: op_table(loop, args.steps) for name, loop in (("bare", bare), ("trainer", trainer))}
    result = {"model": args.model, "batch": args.batch, "image_size": args.image_size, "precision": rt.precision,
              "channels_last": rt.channels_last, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "profile": {}}
    for name, (table, wall) in tables.items():
        in_ops = sum(t for _, t in table.values())
        result["profile"][name] = {"wall_ms_per_step": wall / args.steps / 1e3,
                                   "op_ms_per_step": in_ops / args.steps / 1e3}
    (bare_ops, _), (trainer_ops, _) = tables["bare"], tables["trainer"]
    extra = []
    for key, (calls, us) in trainer_ops.items():
        base_calls, base_us = bare_ops.get(key, (0, 0.0))
        if calls != base_calls:
            extra.append({"op": key, "calls_per_step": (calls - base_calls) / args.steps,
                          "self_us_per_step": (us - base_us) / args.steps})
    extra.sort(key=lambda row: -row["self_us_per_step"])
    result["ops_only_in_trainer"] = extra
    print(f"{'':8} {'wall ms/step':>12} {'in ops':>8}")
    for name, row in result["profile"].items():
        print(f"{name:8} {row['wall_ms_per_step']:>12.2f} {row['op_ms_per_step']:>8.2f}")
    print("operators the trainer calls more often than the bare loop (per step):")
    for row in extra:
        print(f"  {row['op']:<40} {row['calls_per_step']:+6.1f} calls {row['self_us_per_step']:+9.1f} µs")

    windows = {"bare": [], "trainer": []}
    for round_ in range(args.rounds):
        order = [("bare", bare), ("trainer", trainer)]
        for name, loop in order if round_ % 2 == 0 else reversed(order):
            start = time.perf_counter()
            loop.run(args.steps)
            windows[name].append((time.perf_counter() - start) / args.steps * 1e3)
    medians = {name: statistics.median(w) for name, w in windows.items()}
    # Paired by round (the two windows of a round run back to back): drift cancels in the pair.
    paired = sorted(b / t for b, t in zip(windows["bare"], windows["trainer"]))
    quartiles = statistics.quantiles(paired, n=4) if len(paired) >= 2 else [paired[0]] * 3
    result["timed_ms_per_step"] = {name: [round(x, 2) for x in w] for name, w in windows.items()}
    result["median_ms_per_step"] = medians
    result["trainer_vs_bare"] = medians["bare"] / medians["trainer"]
    result["paired_ratio_median"], result["paired_ratio_iqr"] = quartiles[1], [quartiles[0], quartiles[2]]
    print(f"interleaved, {args.rounds} rounds x {args.steps} steps: bare {medians['bare']:.2f} ms, trainer "
          f"{medians['trainer']:.2f} ms per step: trainer at {result['trainer_vs_bare']:.3f}x the bare loop's rate; "
          f"per-round ratio median {quartiles[1]:.3f}x (quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
