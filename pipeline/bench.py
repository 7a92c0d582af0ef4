"""`pipeline bench train`: the project's trainer against a bare PyTorch loop, in one process.

Both run the same model, batch, precision and memory format on device-resident synthetic data, so
the difference is the trainer's own overhead. Each variant runs `repeats` timed windows of `steps`
steps after warm-up; the table shows the median images/s and the window step-time spread. The last
line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from pipeline.config import load_config
from pipeline.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model_name: str, batch: int, image_size: int, precision: str, channels_last: bool,
              device: torch.device, steps: int, repeats: int, warmup: int, compile_mode: str = "") -> list[float]:
    """The baseline: the loop a user would write by hand. Returns seconds per window."""
    from pipeline.config import ModelConfig

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(ModelConfig(name=model_name), 1000).to(device, memory_format=fmt)
    if compile_mode:
        model = torch.compile(model, mode=compile_mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    graphs = device.type == "cuda" and compile_mode in ("reduce-overhead", "max-autotune")

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        windows.append(time.perf_counter() - start)
    return windows


def trainer_loop(model_name: str, batch: int, image_size: int, precision: str, channels_last: bool,
                 device: torch.device, steps: int, repeats: int, warmup: int, compile_mode: str = "") -> list[float]:
    """The project's Trainer, its real train_one_epoch, on synthetic data. Returns seconds per window."""
    from pipeline.distributed import WorldInfo
    from pipeline.metrics import Progress
    from pipeline.runtime import make_runtime
    from pipeline.train import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(None, [f"model.name={model_name}", "model.num_classes=1000", "data.dataset=synthetic",
                                 f"data.batch_size={batch}", f"data.image_size={image_size}",
                                 f"data.synthetic_samples={batch * steps}", f"trainer.precision={precision}",
                                 f"trainer.channels_last={channels_last}", f"trainer.compile={bool(compile_mode)}",
                                 f"trainer.compile_mode={compile_mode or 'default'}",
                                 f"trainer.device={device.type}", f"trainer.run_dir={run_dir}",
                                 f"trainer.log_every={steps}", "trainer.epochs=1000", "logging.progress=none"])
        rt = make_runtime(cfg.trainer, WorldInfo())
        trainer = Trainer(cfg, rt)
        progress = Progress("none", False, 10**9)
        windows = []
        for i in range(repeats + 1):  # window 0 is warm-up (includes compile when on)
            trainer.state.step_in_epoch = 0
            _sync(device)
            start = time.perf_counter()
            trainer.train_one_epoch(progress)
            _sync(device)
            if i > 0 or warmup == 0:
                windows.append(time.perf_counter() - start)
        return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline bench train")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=0, help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=0, help="steps per timed window (default 30 GPU / 3 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of those variants (reduce-overhead: CUDA graphs)")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the naive fp32 eager baseline")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          (args.device if args.device != "auto" else "cpu"))
    gpu = device.type == "cuda"
    batch = args.batch or (256 if gpu else 32)
    steps = args.steps or (30 if gpu else 3)
    best = "bf16" if (not gpu or torch.cuda.is_bf16_supported()) else "fp16"
    variants = [("bare", best, True, ""), ("trainer", best, True, "")]
    if not args.skip_fp32:
        variants.insert(0, ("bare", "fp32", False, ""))
    if args.compile:
        variants += [("bare", best, True, args.compile_mode), ("trainer", best, True, args.compile_mode)]
    rows = []
    for loop, precision, cl, comp in variants:
        fn = bare_loop if loop == "bare" else trainer_loop
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        windows = fn(args.model, batch, args.image_size, precision, cl, device, steps, args.repeats, 1, comp)
        rates = [batch * steps / w for w in windows]
        step_ms = sorted(1000 * w / steps for w in windows)
        rows.append({"loop": loop, "precision": precision, "channels_last": cl, "compile": comp,
                     "img_per_sec": statistics.median(rates), "step_ms_p50": statistics.median(step_ms),
                     "step_ms_min": step_ms[0], "step_ms_max": step_ms[-1],
                     "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None})
    base = next(r for r in rows if r["loop"] == "bare" and r["precision"] == best and not r["compile"])
    naive = next((r for r in rows if r["precision"] == "fp32"), None)
    device_name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.model} batch {batch} {args.image_size}px on {device_name}; {args.repeats} windows x {steps} steps, median")
    print(f"{'loop':<8} {'precision':<9} {'ch_last':<7} {'compile':<15} {'img/s':>9} {'vs bare':>8} {'step ms p50':>11} {'min..max':>14} {'peak GiB':>8}")
    for r in rows:
        r["ratio_vs_bare"] = r["img_per_sec"] / base["img_per_sec"]
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['loop']:<8} {r['precision']:<9} {str(r['channels_last']):<7} {r['compile'] or 'no':<15} "
              f"{r['img_per_sec']:>9.1f} {r['ratio_vs_bare']:>7.3f}x {r['step_ms_p50']:>11.1f} "
              f"{r['step_ms_min']:>6.1f}..{r['step_ms_max']:<7.1f} {mem:>8}")
    trainer = next(r for r in rows if r["loop"] == "trainer" and not r["compile"])
    result = {"model": args.model, "batch": batch, "image_size": args.image_size, "device": device_name,
              "torch": torch.__version__, "rows": rows,
              "trainer_vs_bare": trainer["img_per_sec"] / base["img_per_sec"],
              "default_vs_naive_fp32": trainer["img_per_sec"] / naive["img_per_sec"] if naive else None}
    print(json.dumps(result))
    return 0
