"""One run directory, one live job (pipeline/runlock.py, issue 27)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import runlock
from pipeline.metrics import read_metrics
from pipeline.runlock import LOCK_NAME, RunDirInUse, RunLock
from tests.helpers import FAST, REPO, run_cli


def _write_lock(run_dir, age_s=0.0, **fields):
    holder = {"host": "gpu07", "pid": 311, "pid_start": "", "slurm_job_id": "4242", "slurm_restart_count": "0",
              "since": time.time() - age_s, **fields}
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return holder


def test_a_live_holder_on_another_host_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = _write_lock(tmp_path, age_s=30)
    with pytest.raises(RunDirInUse) as info:
        RunLock(tmp_path).acquire()
    since = time.strftime("%H:%M", time.localtime(holder["since"]))
    assert str(info.value) == (f"run directory {tmp_path} is in use by job 4242 on gpu07 (pid 311, since {since}); "
                               "pass another trainer.run_dir")
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == holder  # untouched


def test_a_stale_heartbeat_from_another_host_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    _write_lock(tmp_path, age_s=runlock.STALE_AFTER_S + 60)
    lock = RunLock(tmp_path)
    message = lock.acquire()
    assert message.startswith(f"run directory {tmp_path}: took over the lock of job 4242 on gpu07 (pid 311, since ")
    assert message.endswith("its heartbeat is 11 minutes old (limit 10)")
    mine = json.loads((tmp_path / LOCK_NAME).read_text())
    assert mine["pid"] == os.getpid() and mine["host"] == lock.me["host"]
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left: no lock, no private or stale file


def test_a_dead_pid_on_this_host_is_taken_over_and_a_live_one_is_not(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    host = RunLock(tmp_path).me["host"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, host=host, pid=sleeper.pid, pid_start=runlock._pid_start(sleeper.pid), slurm_job_id="")
        with pytest.raises(RunDirInUse, match=rf"in use by pid {sleeper.pid} on {host} \(since"):
            RunLock(tmp_path).acquire()
        _write_lock(tmp_path, host=host, pid=sleeper.pid, pid_start="1", slurm_job_id="")  # pid reused
        assert RunLock(tmp_path).acquire().endswith(f"pid {sleeper.pid} is now another process")
    finally:
        sleeper.kill()
        sleeper.wait()
    _write_lock(tmp_path, host=host, pid=sleeper.pid, slurm_job_id="")
    assert RunLock(tmp_path).acquire().endswith(f"pid {sleeper.pid} is no longer running")


def test_a_requeued_slurm_job_takes_its_own_lock_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_lock(tmp_path, age_s=5)  # fresh heartbeat, another host: only the requeue rule lets it go
    assert RunLock(tmp_path).acquire().endswith("Slurm requeued job 4242 (restart 1)")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same attempt twice (two sruns): refused
    _write_lock(tmp_path, age_s=5)
    with pytest.raises(RunDirInUse):
        RunLock(tmp_path).acquire()


def test_the_heartbeat_refreshes_the_lock_and_release_keeps_another_jobs_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path)
    assert lock.acquire() == ""
    path = tmp_path / LOCK_NAME
    os.utime(path, (time.time() - 100, time.time() - 100))
    deadline = time.time() + 5
    while time.time() - path.stat().st_mtime > 50 and time.time() < deadline:
        time.sleep(0.02)
    assert time.time() - path.stat().st_mtime < 5  # beaten again
    holder = _write_lock(tmp_path)  # someone took it meanwhile (say, after our heartbeat stalled)
    lock.release()
    assert json.loads(path.read_text()) == holder  # not ours: left alone


@pytest.mark.slow
def test_a_second_job_on_a_run_directory_in_use_is_refused_and_the_first_finishes_intact(tmp_path, demo_data):
    run = tmp_path / "run"
    args = [*FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=2"]
    # 0.6 s per batch keeps the first job training for 16 s, well past the second's start-up and refusal
    # even with another test worker on the same cores.
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_FAULT_SLOW_BATCH": "0.6"})
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        second = run_cli("train", *args)
        assert first.poll() is None  # the second ended while the first still trains
    finally:
        out, err = first.communicate(timeout=300)
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: run directory {run} is in use by pid {first.pid} on ")
    assert lines[0].endswith("; pass another trainer.run_dir")
    assert first.returncode == 0, err[-2000:]
    steps = json.loads((run / "summary.json").read_text())["steps"]
    assert steps == 26  # 2 epochs of 13 steps (400 images, batch 32)
    # One job's rows, not two: a train row every 2 steps and at each epoch's end, a validation per epoch.
    assert [r["step"] for r in read_metrics(run) if "train/loss" in r] == [2, 4, 6, 8, 10, 12, 13, *range(14, 27, 2)]
    assert len([r for r in read_metrics(run) if "val/top1" in r]) == 2
    assert not (run / LOCK_NAME).exists()  # released at exit


@pytest.mark.slow
def test_a_job_killed_with_sigkill_is_rerun_and_resumes(tmp_path, demo_data):
    run = tmp_path / "run"
    args = [*FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=2",
            "trainer.checkpoint_every=4"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_FAULT_STALL_AT_STEP": "6"})
    deadline = time.time() + 120
    while not any(r.get("step") == 6 for r in read_metrics(run)):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind, stale
    rerun = run_cli("train", *args, check=True)
    assert f"took over the lock of pid {proc.pid} on " in rerun.stdout
    assert f"pid {proc.pid} is no longer running" in rerun.stdout
    assert "resumed from" in rerun.stdout and not (run / LOCK_NAME).exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
