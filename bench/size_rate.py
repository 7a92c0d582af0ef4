"""Training img/s at several image sizes, as ratios in one run (issue 28: progressive resizing).

  python bench/size_rate.py [--models resnet50,resnet18] [--sizes 160,192,224] [--batch 16]
                            [--repeats 5] [--steps 3] [--precision fp32] [--device cpu|cuda]

Each repeat times `--steps` full training steps (forward, loss, backward, SGD step) at every size
in turn, so a drifting machine affects all sizes alike; the median over repeats is reported, with
the ratio to the largest size and the pixel rule's prediction ((largest / size)^2) that
`pipeline plan` uses. Precision and layout are pinned (not `auto`), so the figure does not depend
on what the probe picks on this CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from pipeline.config import load_config
from pipeline.models import build_model


def _cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,resnet18")
    p.add_argument("--sizes", default="160,192,224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sizes = [int(s) for s in args.sizes.split(",")]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    results = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(load_config(None, [f"model.name={name}"]).model, 1000).to(device, memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        batches = {s: (torch.randn(args.batch, 3, s, s, device=device).contiguous(memory_format=fmt),
                       torch.randint(0, 1000, (args.batch,), device=device)) for s in sizes}

        def step(size: int) -> None:
            images, labels = batches[size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for size in sizes:  # warm-up: the allocator and oneDNN's / cuDNN's kernels for each shape
            step(size)
            step(size)
        times: dict[int, list[float]] = {s: [] for s in sizes}
        for _ in range(args.repeats):
            for size in sizes:
                sync()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(size)
                sync()  # a GPU runs ahead of the host: time the kernels, not their launch
                times[size].append(time.perf_counter() - start)
        largest = max(sizes)
        rates = {s: args.batch * args.steps / statistics.median(times[s]) for s in sizes}
        results[name] = {s: {"img_per_sec": round(rates[s], 2), "ratio_to_largest": round(rates[s] / rates[largest], 3),
                             "pixel_rule": round((largest / s) ** 2, 3)} for s in sizes}
        for s in sizes:
            r = results[name][s]
            print(f"{name:9s} {s:4d} px  {r['img_per_sec']:8.2f} img/s  x{r['ratio_to_largest']:.3f} of {largest} px "
                  f"(pixel rule x{r['pixel_rule']:.3f})", flush=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({"machine": machine, "cpu_flags": _cpu_flags(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
                      "precision": args.precision, "channels_last": args.channels_last, "repeats": args.repeats,
                      "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
