"""ResNet-18 fwd+bwd+SGD img/s in fp32/bf16 x NCHW/channels_last: the bare grid the issue-13 report used.

    python bench/cpu_numerics_grid.py [--size 64] [--steps 6]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/cpu_numerics_grid.py   # AVX2 emulation

Same settings as the report from the AVX2-only EPYC (batch 32, 2 threads, 64 px) so the two can be
set side by side. One warm-up step per variant, then the mean of `--steps` steps.
"""
import argparse
import time

import torch
import torchvision

parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--steps", type=int, default=6)
args = parser.parse_args()
torch.set_num_threads(2)
print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, 2 threads, "
      f"ResNet-18 batch 32 {args.size} px")
for precision in ("fp32", "bf16"):
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
        x = torch.randn(32, 3, args.size, args.size).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (32,))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        rate = 32 * args.steps / (time.perf_counter() - start)
        print(f"{precision} {'channels_last' if channels_last else 'nchw':<13} {rate:7.1f} img/s", flush=True)
