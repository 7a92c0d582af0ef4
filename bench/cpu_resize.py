"""Where the DALI CPU train pipeline's time goes, per image: ROI decode alone, DALI's resize after it,
and torch's resize after it; and the cost of a fresh 38 MB batch allocation with and without
transparent huge pages. Single process, the DALI threads and torch threads given on the command line.

    python bench/cpu_resize.py /tmp/big2/train --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))


def _pipeline_rate(files: list[str], threads: int, batch: int, size: int, finish: str, passes: int = 3) -> float:
    import torch
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def
    def crops():
        jpegs, _ = fn.readers.file(files=files, random_shuffle=False)
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
        if finish == "dali":
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
        return images

    pipe = crops(batch_size=batch, num_threads=threads, device_id=None, seed=1, prefetch_queue_depth=2, exec_dynamic=True)
    pipe.build()
    staging = torch.empty(batch, size, size, 3, dtype=torch.uint8)
    steps = len(files) // batch
    rates = []
    for k in range(passes + 1):
        start = time.perf_counter()
        for _ in range(steps):
            (images,) = pipe.run()
            if finish == "torch":
                for i in range(len(images)):
                    crop = torch.from_numpy(np.asarray(images[i])).unsqueeze(0).permute(0, 3, 1, 2)
                    out = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
                    staging[i].copy_(out[0].permute(1, 2, 0))
        if k:  # the first pass warms up
            rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def _allocation_ms(thp: bool) -> float:
    code = ("import time, torch; torch.set_num_threads(1); src = torch.zeros(64, 224, 224, 3, dtype=torch.uint8)\n"
            "def f():\n    out = torch.empty(64, 224, 224, 3); out.copy_(src); return out\n"
            "f(); t = time.perf_counter()\nfor _ in range(20): f()\nprint((time.perf_counter() - t) / 20 * 1e3)")
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1" if thp else "0"}
    return float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a folder of JPEGs (e.g. bench/jpeg_folder.py output's train/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    files = _files(args.dir)
    rates = {finish: _pipeline_rate(files, args.threads, args.batch, args.size, finish)
             for finish in ("none", "dali", "torch")}
    cores = args.threads
    # Core-milliseconds per image of each stage, assuming the pipeline keeps `threads` cores busy.
    decode = cores * 1e3 / rates["none"]
    print(f"{len(files)} JPEGs, batch {args.batch}, {args.threads} DALI threads, {args.size}px, median of 3 passes")
    print(f"{'pipeline':<28} {'img/s':>8} {'core-ms/img':>12}")
    for finish, label in (("none", "ROI decode only"), ("dali", "decode + DALI resize"), ("torch", "decode + torch resize")):
        print(f"{label:<28} {rates[finish]:>8.0f} {cores * 1e3 / rates[finish]:>12.3f}")
    dali_resize = cores * 1e3 / rates["dali"] - decode
    torch_resize = cores * 1e3 / rates["torch"] - decode
    print(f"resize cost per image: DALI {dali_resize:.3f} core-ms, torch {torch_resize:.3f} core-ms "
          f"({dali_resize / max(torch_resize, 1e-9):.1f}x)")
    fresh, thp = _allocation_ms(False), _allocation_ms(True)
    print(f"fresh 64x224x224x3 float batch, allocate + fill: {fresh:.1f} ms, with THP {thp:.1f} ms ({fresh / thp:.1f}x)")


if __name__ == "__main__":
    main()
