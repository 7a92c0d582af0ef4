"""The GPU check: every GPU path of the project run once, each step PASS / FAIL / SKIPPED with its figure.

    python3 bench/gpu_check.py --out OUT          # on a GPU machine (bench/gpu_check.sh installs bundles first)
    GPU_CHECK_DRY=1 python3 bench/gpu_check.py    # the same steps' CPU twins, small (tests run this)

Each step runs the real CLI (`pipeline train / eval / bench`) in a subprocess, keeps its whole output
in OUT/<step>.txt, checks what the step exists to prove (loss finite and falling, resumed == straight,
graphed == eager...) and records one figure line. A failing step never stops the others. At the end
one table is printed and written with every figure to OUT/summary.json; the exit code is 1 when any
step failed. A step whose requirement is absent (no DALI, no DeepSpeed, a GPU-only feature in the dry
run) is SKIPPED with the reason; on a GPU machine the check is complete only when nothing is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gpu_check_base import CheckBase, Failed, Skip
from gpu_check_data import DataSteps
from gpu_check_training import TrainingSteps


@dataclass
class Check(CheckBase, TrainingSteps, DataSteps):
    """The steps in their order; each is a method step_<name> of the mixins."""

    # Compilation last: its minutes are the likeliest to run past the lease, and its figure was
    # measured once already (docs/gpu-runs), while the DALI paths never ran on a GPU before.
    STEPS = ("environment", "bench_train", "fp16_gradscaler", "syncbn_one_process_nccl", "deepspeed_zero1",
             "deepspeed_zero2", "checkpoint_kill_resume_eval", "dali_pipeline_alone", "dali_vs_synthetic",
             "dali_shards_and_feed", "dali_s3_shards", "eval_parity", "recipe_augmentation", "progressive_resizing",
             "torchvision_gpu_decode", "bench_train_compiled", "cuda_graphs_match_eager")

    def run(self, only: list[str]) -> int:
        for name in self.STEPS:
            if only and name not in only:
                continue
            start = time.perf_counter()
            self.current = name
            try:
                status, figure = "PASS", getattr(self, f"step_{name}")()
            except Skip as why:
                status, figure = "SKIPPED", str(why)
            except Failed as why:
                status, figure = "FAIL", str(why)
            except Exception as exc:  # noqa: BLE001 - a broken step is a failed step, the others still run
                status, figure = "FAIL", f"{type(exc).__name__}: {exc}"[:300]
            seconds = round(time.perf_counter() - start, 1)
            self.results.append({"step": name, "status": status, "seconds": seconds, "figure": figure})
            print(f"[{status}] {name} ({seconds:.0f} s): {figure}", flush=True)
        return self.report()

    def report(self) -> int:
        width = max(len(r["step"]) for r in self.results)
        lines = [f"{'step':<{width}}  {'status':<7}  {'seconds':>7}  figure"]
        lines += [f"{r['step']:<{width}}  {r['status']:<7}  {r['seconds']:>7.1f}  {r['figure']}" for r in self.results]
        counts = {s: sum(r["status"] == s for r in self.results) for s in ("PASS", "FAIL", "SKIPPED")}
        lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIPPED']} skipped")
        print("\n".join(lines))
        (self.out / "summary.json").write_text(json.dumps(
            {"dry": self.dry, "steps": self.results, **{k.lower(): v for k, v in counts.items()}}, indent=2))
        return 1 if counts["FAIL"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--dry", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1",
                        help="run the CPU twins (also GPU_CHECK_DRY=1)")
    parser.add_argument("--only", default="", help="comma-separated step names")
    parser.add_argument("--fail-step", default="", help="rehearse a failure: inject a training fault into this step")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return Check(out, args.dry, work, fail_step=args.fail_step).run([s for s in args.only.split(",") if s])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
