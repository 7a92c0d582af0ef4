"""`trainer.precision=auto` and `trainer.channels_last=auto`: the fastest numerics for the device in hand.

On a GPU the answer is known: bf16 where the card has it (Ampere and later), else fp16 with a
GradScaler; channels_last always (tensor-core convolutions are NHWC).

On a CPU it depends on the CPU, so it is decided by capability, then by measurement:
- Without bf16 instructions (AVX512-BF16, AMX-BF16, Arm BF16), bf16 autocast converts to fp32
  around every kernel and is several times slower than fp32 (8x on an AVX2-only EPYC;
  pytorch/pytorch issues 118499, 86270, 146508). Those CPUs get fp32 without a bf16 probe.
- Where the instructions exist, a short probe times a few forward+backward steps of a small conv
  net in each candidate (fp32/bf16 x NCHW/channels_last) and keeps the fastest. bf16 must beat fp32
  by a margin, since fp32 is the safer arithmetic when the two are close.
The layout is probed on every CPU: channels_last was 10% slower than NCHW in fp32 on the AVX2 EPYC
and faster on the AVX-512 one.

The probe result is cached per CPU model and flags, torch version, ATen/oneDNN ISA limits and
thread count ($XDG_CACHE_HOME/resnet-pipeline/numerics.json, or PIPELINE_NUMERICS_CACHE), so
each job after the first on a machine pays nothing. An explicit setting is never overridden.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config import TrainerConfig

# bf16 must be this much faster than fp32 in the probe to be chosen (probe noise is a few percent).
BF16_MARGIN = 1.10
# NCHW must be this much faster than channels_last to be chosen; closer is a tie, which goes to NHWC
# (the layout of GPU runs and of oneDNN's bf16 kernels).
LAYOUT_MARGIN = 1.05
# CPU flags (/proc/cpuinfo) that mean bf16 arithmetic runs in hardware.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) under which its bf16 kernels are emulated.
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
# What an explicit bf16 costs on a CPU without the instructions (the AVX2 EPYC, docs/benchmarks.md).
MEASURED_BF16_SLOWDOWN = "about 8x slower than fp32 on an AVX2-only EPYC"


@dataclass(frozen=True)
class Numerics:
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    reason: str  # why, in a few words: printed in the start line, stored in environment/summary


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 "flags", Arm "Features"); empty when /proc/cpuinfo is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "CPU part"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_instructions() -> tuple[bool, str]:
    """(True, "") when bf16 runs in hardware for both ATen and oneDNN; else (False, why not)."""
    capability = torch.backends.cpu.get_cpu_capability()  # honours ATEN_CPU_CAPABILITY
    isa_limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    have = cpu_flags() & set(BF16_FLAGS)
    if not have:
        return False, f"no bf16 instructions ({capability})"
    if capability in ("DEFAULT", "NO AVX", "AVX2"):
        return False, f"ATen limited to {capability} (ATEN_CPU_CAPABILITY)"
    if isa_limit in _ONEDNN_NO_BF16:
        return False, f"oneDNN limited to {isa_limit} (ONEDNN_MAX_CPU_ISA)"
    return True, ""


def choose(cfg: TrainerConfig, device: torch.device, announce: bool = True) -> Numerics:
    """Resolve precision and memory format; explicit settings are kept (with a warning if slow)."""
    layout = str(cfg.channels_last).lower()
    if device.type == "cuda":
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        why = "explicit" if cfg.precision != "auto" else ("GPU with bf16" if precision == "bf16" else "GPU without bf16")
        return Numerics(precision, layout != "false", f"{precision}: {why}")
    if cfg.precision == "fp16":
        # The CPU twin of the GPU's fp16 + GradScaler path (tests, the GPU check's dry run): it runs,
        # but no CPU seen here has fp16 convolution kernels, so it is for checking, not for speed.
        if announce:
            print("warning: trainer.precision=fp16 on a CPU runs the GPU's fp16 + GradScaler path for checking; "
                  "it is slower than fp32 here (use trainer.precision=auto)", file=sys.stderr, flush=True)
        return Numerics("fp16", layout == "true", "fp16: explicit (CPU twin of the GPU path)")
    native, why_not = bf16_instructions()
    if cfg.precision == "bf16" and not native and announce:
        print(f"warning: trainer.precision=bf16 on a CPU with {why_not}: bf16 autocast is emulated there, "
              f"{MEASURED_BF16_SLOWDOWN}; set trainer.precision=fp32 (or auto)", file=sys.stderr, flush=True)
    if cfg.precision != "auto" and layout != "auto":
        return Numerics(cfg.precision, layout == "true", f"{cfg.precision}: explicit")
    precisions = [cfg.precision] if cfg.precision != "auto" else (["fp32", "bf16"] if native else ["fp32"])
    layouts = [layout == "true"] if layout != "auto" else [False, True]
    try:
        rates = cached_probe(precisions, layouts)
    except Exception as exc:  # noqa: BLE001 - a probe must never stop a run
        if announce:
            print(f"warning: numerics probe failed ({type(exc).__name__}: {exc}); using fp32", file=sys.stderr, flush=True)
        precision = "fp32" if cfg.precision == "auto" else cfg.precision
        return Numerics(precision, layout == "true", f"{precision}: probe failed")
    return decide(rates, cfg.precision, why_not)


def decide(rates: dict[str, float], requested: str, why_not: str) -> Numerics:
    """Pick from probe rates keyed "fp32/nchw", "bf16/channels_last", ... (images/s)."""
    def best(prec: str) -> tuple[str, float]:
        return max(((k, v) for k, v in rates.items() if k.startswith(prec + "/")), key=lambda kv: kv[1])

    fp32_key, fp32_rate = best("fp32") if any(k.startswith("fp32/") for k in rates) else ("", 0.0)
    if requested == "auto" and any(k.startswith("bf16/") for k in rates):
        bf16_key, bf16_rate = best("bf16")
        ratio = bf16_rate / fp32_rate
        if ratio >= BF16_MARGIN:
            key, reason = bf16_key, f"bf16: {ratio:.2f}x fp32 in the probe"
        else:
            key, reason = fp32_key, f"fp32: bf16 only {ratio:.2f}x fp32 in the probe"
    else:
        key, _ = best(requested if requested != "auto" else "fp32")
        reason = f"{requested}: explicit" if requested != "auto" else f"fp32: {why_not}"
    precision, layout = key.split("/")
    other = {k: v for k, v in rates.items() if k.startswith(precision + "/") and k != key}
    if other:
        (other_key, other_rate), = other.items()
        ratio = rates[key] / other_rate
        if ratio < LAYOUT_MARGIN:  # a tie within the probe's noise: NHWC, as on GPUs
            layout, reason = "channels_last", reason + f"; layouts within {LAYOUT_MARGIN - 1:.0%} in the probe"
        else:
            reason += f"; {layout} {ratio:.2f}x {other_key.split('/')[1]}"
    return Numerics(precision, layout == "channels_last", reason)


def _probe_net() -> nn.Module:
    """Convolutions, BatchNorm and ReLU at ResNet-like widths: the kernels a ResNet step spends its time in."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 32, 2), *block(32, 64, 1), *block(64, 64, 1), *block(64, 128, 2),
                         *block(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def probe(precisions: list[str], layouts: list[bool], batch: int = 16, size: int = 48,
          rounds: int = 3) -> dict[str, float]:
    """Images/s of fwd+bwd+SGD steps for each (precision, layout): one warm-up step each, then
    `rounds` rounds of one step per candidate (interleaved, so drift falls on all alike); best step."""
    rng_state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        candidates = {}
        for precision in precisions:
            for channels_last in layouts:
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                net = _probe_net().to(memory_format=fmt)
                opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, foreach=True)
                x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
                candidates[f"{precision}/{'channels_last' if channels_last else 'nchw'}"] = (net, opt, x, precision)
        y = torch.randint(0, 10, (batch,))
        times: dict[str, list[float]] = {key: [] for key in candidates}
        for round_ in range(rounds + 1):  # round 0 warms up (allocations, oneDNN primitive cache)
            for key, (net, opt, x, precision) in candidates.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if round_:
                    times[key].append(time.perf_counter() - start)
        return {key: batch / min(t) for key, t in times.items()}
    finally:
        torch.set_rng_state(rng_state)  # the probe must not move the run's random stream


def _cache_path() -> Path:
    if os.environ.get("PIPELINE_NUMERICS_CACHE"):
        return Path(os.environ["PIPELINE_NUMERICS_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "resnet-pipeline" / "numerics.json"


def _cache_key(precisions: list[str], layouts: list[bool]) -> str:
    facts = [cpu_model(), " ".join(sorted(cpu_flags())), torch.__version__, str(torch.get_num_threads()),
             torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             os.environ.get("DNNL_MAX_CPU_ISA", ""), ",".join(precisions), ",".join(map(str, layouts))]
    return hashlib.sha256("|".join(facts).encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached_probe(precisions: list[str], layouts: list[bool]) -> dict[str, float]:
    if len(precisions) * len(layouts) == 1:
        return {f"{precisions[0]}/{'channels_last' if layouts[0] else 'nchw'}": 1.0}
    path, key = _cache_path(), _cache_key(precisions, layouts)
    cached = _read_cache(path).get(key)
    if isinstance(cached, dict):
        return cached
    rates = probe(precisions, layouts)
    try:  # a cache we cannot write only costs the next job its probe
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # First writer wins: jobs that probed at the same time (two test workers, two jobs on a
            # node) all take the rates already written, so every process on the machine decides alike.
            cache = _read_cache(path)
            if isinstance(cache.get(key), dict):
                return cache[key]
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cache, key: rates}, indent=1))
            tmp.replace(path)
    except OSError:
        pass
    return rates
