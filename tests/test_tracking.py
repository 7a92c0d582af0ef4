"""W&B with the real wandb library in offline mode, and `pipeline compare`."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.metrics import read_metrics
from pipeline.tracking.offline import read_offline_run
from tests.helpers import FAST, REPO, run_cli

pytestmark = pytest.mark.slow  # every test here runs `pipeline` in a subprocess

FAKE_KEY = "local0fake0key0" + "9" * 25
WB = [*FAST, "logging.wandb.mode=offline", "logging.wandb.group=exp1", "trainer.epochs=2"]


def _offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_two_runs_in_a_group_and_compare(tmp_path, demo_data):
    for name, model in (("a", "resnet20"), ("b", "resnet32")):
        proc = run_cli("train", *WB, f"model.name={model}", f"data.path={demo_data}", f"trainer.run_dir={tmp_path / name}",
                       env={"WANDB_API_KEY": FAKE_KEY}, check=True)
        _assert_key_never_written(proc, tmp_path / name)
    runs = [read_offline_run(_offline_runs(tmp_path / n)[0]) for n in ("a", "b")]
    for run in runs:
        assert run.group == "exp1"
        keys = set().union(*run.history)
        assert {"train/loss", "train/lr", "train/img_per_sec", "val/top1", "val/top5", "val/loss", "val/samples",
                "epoch", "step"} <= keys
        assert run.summary["val/top1"]["max"] >= 0 and "best/val/top1" in run.summary
    assert runs[0].run_id != runs[1].run_id
    png = tmp_path / "cmp.png"
    proc = run_cli("compare", str(_offline_runs(tmp_path / "a")[0]), str(tmp_path / "b"), "--out", str(png), check=True)
    lines = proc.stdout.strip().splitlines()
    assert "model.name" not in lines[0] and "best_top1" in lines[0]
    assert any("resnet20" in line for line in lines) and any("resnet32" in line for line in lines)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def _assert_key_never_written(proc, run) -> None:
    """The API key is in neither the output nor any file of the run."""
    assert FAKE_KEY not in proc.stdout + proc.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_unreachable_service_falls_back_to_offline_quickly(tmp_path, demo_data, mode):
    """A W&B key in the environment but no route to the service (this machine has none; the test
    points WANDB_BASE_URL at a closed local port to be sure): the run trains, logging offline."""
    run = tmp_path / "run"
    start = time.time()
    proc = run_cli("train", *FAST, f"logging.wandb.mode={mode}", "trainer.epochs=1", f"data.path={demo_data}",
                   f"trainer.run_dir={run}", env={"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": "http://127.0.0.1:9"},
                   check=True)
    assert time.time() - start < 120  # the reported hang was 2m12s before dying
    warnings = [line for line in proc.stderr.splitlines() if "W&B is unreachable" in line]
    assert len(warnings) == 1 and f"wandb sync {run / 'wandb'}/offline-run-*" in warnings[0]
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    (offline,) = _offline_runs(run)
    assert offline.name.endswith(run_id) and read_offline_run(offline).run_id == run_id
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_disabled_writes_nothing(tmp_path, demo_data):
    run = tmp_path / "run"
    run_cli("train", *FAST, "logging.wandb.mode=disabled", "trainer.epochs=1", f"data.path={demo_data}",
            f"trainer.run_dir={run}", check=True)
    assert not (run / "wandb").exists() and not (run / "wandb_run_id.txt").exists()


def test_killed_and_resumed_run_keeps_its_wandb_id(tmp_path, demo_data):
    run = tmp_path / "run"
    args = [*WB, "trainer.epochs=3", "data.batch_size=16", f"data.path={demo_data}", f"trainer.run_dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not ((run / "checkpoints").exists() and any((run / "checkpoints").glob("step-*"))):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=60)
    first_id = (run / "wandb_run_id.txt").read_text().strip()
    run_cli("train", *args, check=True)
    ids = {read_offline_run(p).run_id for p in _offline_runs(run)}
    assert ids == {first_id}
    assert json.loads((run / "summary.json").read_text())["wandb_run_id"] == first_id
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(steps)  # rows after the checkpoint were dropped, then logged again once
