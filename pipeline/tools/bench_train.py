"""`pipeline bench train`: the project's trainer against a bare PyTorch loop, in one process.

Both run the same model, batch and numerics on device-resident synthetic data and build their
optimizer with the same function (fused SGD on GPU, foreach on CPU), so the difference is the
trainer's own overhead. The bare loop is timed in every precision x layout the device offers and
the trainer at its defaults (`precision=auto`, `channels_last=auto`), so the table answers "are the
defaults as fast as the fastest hand-written loop here?".

Fairness: every variant is built first, then each gets the same warm-up window, then the timed
windows go round the variants, in reverse order on every other round so that no variant always
runs first or last (turbo, thermal and cache drift fall on all of them alike). The table shows the
median images/s; the last line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from pipeline.config import ModelConfig, OptimConfig, load_config
from pipeline.engines import compile_model
from pipeline.models import build_model
from pipeline.optim import build_optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The baseline: the loop a user would write by hand."""

    def __init__(self, model_name: str, batch: int, image_size: int, precision: str, channels_last: bool,
                 device: torch.device, compile_mode: str = "") -> None:
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(ModelConfig(name=model_name), 1000).to(device, memory_format=fmt)
        if compile_mode:
            self.model = compile_model(self.model, compile_mode, device)
        self.opt = build_optimizer(self.model, OptimConfig(), 0.1, device)  # exactly the trainer's optimizer
        self.x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 1000, (batch,), device=device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.device = device
        self.graphs = device.type == "cuda" and compile_mode in ("reduce-overhead", "max-autotune")

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)


class TrainerLoop:
    """The project's Trainer, its real train_one_epoch, on synthetic data (one epoch = one window)."""

    def __init__(self, model_name: str, batch: int, image_size: int, precision: str, channels_last: str,
                 device: torch.device, steps: int, compile_mode: str = "") -> None:
        from pipeline.world import WorldInfo
        from pipeline.metrics import Progress
        from pipeline.runtime import make_runtime
        from pipeline.training.trainer import Trainer

        self._run_dir = tempfile.TemporaryDirectory()
        cfg = load_config(None, [f"model.name={model_name}", "model.num_classes=1000", "data.dataset=synthetic",
                                 f"data.batch_size={batch}", f"data.image_size={image_size}",
                                 f"data.synthetic_samples={batch * steps}", f"trainer.precision={precision}",
                                 f"trainer.channels_last={channels_last}", f"trainer.compile={bool(compile_mode)}",
                                 f"trainer.compile_mode={compile_mode or 'default'}",
                                 f"trainer.device={device.type}", f"trainer.run_dir={self._run_dir.name}",
                                 f"trainer.log_every={steps}", "trainer.epochs=1000", "logging.progress=none"])
        self.rt = make_runtime(cfg.trainer, WorldInfo())
        self.trainer = Trainer(cfg, self.rt)
        self.progress = Progress("none", False, 10**9)

    def run(self, steps: int) -> None:  # noqa: ARG002 - an epoch is `steps` steps by construction
        self.trainer.state.step_in_epoch = 0
        self.trainer.train_one_epoch(self.progress)


@dataclass
class Variant:
    loop: str  # bare | trainer
    precision: str
    channels_last: bool
    compile: str
    runner: BareLoop | TrainerLoop
    windows: list[float] = field(default_factory=list)
    peak_mem_gib: float | None = None


def time_variants(variants: list[Variant], device: torch.device, steps: int, repeats: int) -> None:
    """One warm-up window each, then `repeats` rounds of one timed window per variant, alternating order."""
    for v in variants:
        v.runner.run(steps)
        _sync(device)
    for round_ in range(repeats):
        for v in variants if round_ % 2 == 0 else reversed(variants):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            v.runner.run(steps)
            _sync(device)
            v.windows.append(time.perf_counter() - start)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                v.peak_mem_gib = max(v.peak_mem_gib or 0.0, peak)


def bare_numerics(device: torch.device, all_variants: bool, skip_fp32: bool) -> tuple[list[tuple[str, bool]], str]:
    """The (precision, channels_last) pairs to time the bare loop in, and a note on what was left out."""
    from pipeline.numerics import bf16_instructions

    if device.type == "cuda":
        best = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return ([] if skip_fp32 else [("fp32", False)]) + [(best, True)], ""
    native, why_not = bf16_instructions()
    precisions = ["fp32", "bf16"] if (native or all_variants) else ["fp32"]
    note = "" if len(precisions) == 2 else f"bf16 rows skipped ({why_not}; --all-variants times them)"
    return [(p, cl) for p in precisions for cl in (False, True)], note


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=0, help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=0, help="steps per timed window (default 30 GPU / 3 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of those variants (reduce-overhead: CUDA graphs)")
    parser.add_argument("--skip-fp32", action="store_true", help="GPU: skip the naive fp32 eager baseline")
    parser.add_argument("--all-variants", action="store_true",
                        help="CPU: also time bf16 where the CPU has no bf16 instructions (slow)")


def main(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          (args.device if args.device != "auto" else "cpu"))
    gpu = device.type == "cuda"
    batch = args.batch or (256 if gpu else 32)
    steps = args.steps or (30 if gpu else 3)
    pairs, note = bare_numerics(device, args.all_variants, args.skip_fp32)

    trainer = TrainerLoop(args.model, batch, args.image_size, "auto", "auto", device, steps)
    rt = trainer.rt
    variants = [Variant("bare", p, cl, "", BareLoop(args.model, batch, args.image_size, p, cl, device))
                for p, cl in pairs]
    variants.append(Variant("trainer", rt.precision, rt.channels_last, "", trainer))
    if args.compile:
        variants.append(Variant("bare", rt.precision, rt.channels_last, args.compile_mode,
                                BareLoop(args.model, batch, args.image_size, rt.precision, rt.channels_last,
                                         device, args.compile_mode)))
        variants.append(Variant("trainer", rt.precision, rt.channels_last, args.compile_mode,
                                TrainerLoop(args.model, batch, args.image_size, "auto", "auto", device, steps,
                                            args.compile_mode)))
    time_variants(variants, device, steps, args.repeats)

    rows = []
    for v in variants:
        step_ms = sorted(1000 * w / steps for w in v.windows)
        rows.append({"loop": v.loop, "precision": v.precision, "channels_last": v.channels_last, "compile": v.compile,
                     "img_per_sec": statistics.median(batch * steps / w for w in v.windows),
                     "step_ms_p50": statistics.median(step_ms), "step_ms_min": step_ms[0], "step_ms_max": step_ms[-1],
                     "windows_s": [round(w, 4) for w in v.windows], "peak_mem_gib": v.peak_mem_gib})
    eager_bare = [r for r in rows if r["loop"] == "bare" and not r["compile"]]
    fastest = max(eager_bare, key=lambda r: r["img_per_sec"])
    same = next((r for r in eager_bare if (r["precision"], r["channels_last"]) == (rt.precision, rt.channels_last)),
                None)
    naive = next((r for r in eager_bare if r["precision"] == "fp32" and not r["channels_last"]), None)
    default = next(r for r in rows if r["loop"] == "trainer" and not r["compile"])

    device_name = (torch.cuda.get_device_name(device) if gpu else
                   f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})")
    print(f"{args.model} batch {batch} {args.image_size}px on {device_name}; {args.repeats} windows x {steps} steps "
          "per variant, order alternating, median")
    print(f"trainer defaults: {rt.precision}{' channels_last' if rt.channels_last else ''} ({rt.numerics_reason})")
    if note:
        print(note)
    print(f"{'loop':<8} {'precision':<9} {'ch_last':<7} {'compile':<15} {'img/s':>9} {'vs fastest':>10} "
          f"{'step ms p50':>11} {'min..max':>14} {'peak GiB':>8}")
    for r in rows:
        r["ratio_vs_fastest_bare"] = r["img_per_sec"] / fastest["img_per_sec"]
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['loop']:<8} {r['precision']:<9} {str(r['channels_last']):<7} {r['compile'] or 'no':<15} "
              f"{r['img_per_sec']:>9.1f} {r['ratio_vs_fastest_bare']:>9.3f}x {r['step_ms_p50']:>11.1f} "
              f"{r['step_ms_min']:>6.1f}..{r['step_ms_max']:<7.1f} {mem:>8}")
    result = {"model": args.model, "batch": batch, "image_size": args.image_size, "device": device_name,
              "torch": torch.__version__, "numerics_reason": rt.numerics_reason, "rows": rows,
              "fastest_bare": {k: fastest[k] for k in ("precision", "channels_last")},
              "default_vs_fastest_bare": default["img_per_sec"] / fastest["img_per_sec"],
              "trainer_vs_bare": default["img_per_sec"] / same["img_per_sec"] if same else None,
              "default_vs_naive_fp32": default["img_per_sec"] / naive["img_per_sec"] if naive else None}
    print(f"trainer at defaults vs the fastest bare loop ({fastest['precision']}"
          f"{' channels_last' if fastest['channels_last'] else ''}): {result['default_vs_fastest_bare']:.3f}x")
    print(json.dumps(result))
    return 0
