"""bench/gpu_check.sh in its dry mode: the GPU check's own steps, as CPU twins, before a GPU ever runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # every step trains in a subprocess

CPU_TWINS = {"environment", "bench_train", "fp16_gradscaler", "checkpoint_kill_resume_eval", "deepspeed_zero2",
             "dali_pipeline_alone", "dali_vs_synthetic", "dali_shards_and_feed", "dali_s3_shards", "progressive_resizing",
             "recipe_augmentation", "eval_parity"}
# deepspeed_zero1 is the zero2 twin's code at stage 1: skipped dry, it runs on the GPU
GPU_ONLY = {"bench_train_compiled", "cuda_graphs_match_eager", "syncbn_one_process_nccl", "torchvision_gpu_decode",
            "deepspeed_zero1"}


def _check(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900, input="")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole dry check, run once for this module: each CPU twin at its dry size."""
    out = tmp_path_factory.mktemp("gpu_check")
    return out, _check(out, "--out", str(out))


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_dry_run_passes_every_cpu_twin(dry_run):
    out, proc = dry_run
    summary = _summary(out)
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert set(status) == CPU_TWINS | GPU_ONLY
    assert {s for s, v in status.items() if v == "PASS"} == CPU_TWINS, status
    assert summary["dry"] is True and summary["fail"] == 0
    assert proc.stdout.strip().splitlines()[-1] == f"{len(CPU_TWINS)} passed, 0 failed, {len(GPU_ONLY)} skipped"
    fp16 = next(s for s in summary["steps"] if s["step"] == "fp16_gradscaler")["figure"]
    assert "GradScaler skipped" in fp16


def test_dry_run_names_each_skip_and_keeps_each_steps_output(dry_run):
    out, _ = dry_run
    summary = _summary(out)
    assert {s["step"] for s in summary["steps"] if s["status"] == "SKIPPED"} == GPU_ONLY
    assert all(s["figure"] for s in summary["steps"])  # every skip says why, every pass its figure
    for step in CPU_TWINS - {"environment"}:
        assert (out / f"{step}.txt").stat().st_size > 0  # the raw output of each step is kept


def test_a_failing_step_fails_the_check_and_the_others_still_run(tmp_path):
    """--fail-step injects a training fault (PIPELINE_FAULT_RAISE_AT_STEP=0) into one step's runs: that
    step is FAIL, the exit code is 1, and the steps after it still run. The failing step ends at its
    first training step and the one after it is the smallest twin, so this costs seconds, not a
    second dry run."""
    proc = _check(tmp_path, "--out", str(tmp_path), "--only", "environment,fp16_gradscaler,dali_pipeline_alone",
                  "--fail-step", "fp16_gradscaler")
    summary = _summary(tmp_path)
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 1
    assert status == {"environment": "PASS", "fp16_gradscaler": "FAIL", "dali_pipeline_alone": "PASS"}, status
    assert "injected fault at step 0" in next(s["figure"] for s in summary["steps"] if s["status"] == "FAIL")
    assert "FAIL" in proc.stdout and "1 failed" in proc.stdout.strip().splitlines()[-1]
