"""One ResNet-20 training step (32 px, batch 4, one thread) under fp16 autocast, bf16 autocast and fp32,
NCHW and channels_last: why the GPU check's fp16 twin is tiny on CPU. Median of 3 steps after one warm-up.

    .venv/bin/python bench/fp16_cpu_probe.py
"""
import statistics
import time

import torch

from pipeline.config import load_config
from pipeline.models import build_model


def step_seconds(dtype: torch.dtype | None, channels_last: bool) -> float:
    model = build_model(load_config(None, ["model.name=resnet20"]).model, 1000)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


if __name__ == "__main__":
    torch.set_num_threads(1)
    for dtype in (torch.float16, torch.bfloat16, None):
        for channels_last in (False, True):
            name = str(dtype).replace("torch.", "") if dtype else "fp32"
            print(f"{name:9} {'channels_last' if channels_last else 'nchw':13} "
                  f"{step_seconds(dtype, channels_last) * 1000:8.1f} ms/step", flush=True)
