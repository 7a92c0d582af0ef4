import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.metrics import read_metrics
from tests.helpers import FAST, REPO, run_cli

pytestmark = pytest.mark.slow  # every test here runs `pipeline` in a subprocess


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_short_run_learns_and_writes_outputs(tmp_path, demo_data):
    run = tmp_path / "run"
    proc = run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=6", "optim.lr=0.4",
                   "data.image_size=32", check=True)
    summary = _summary(run)
    rows = read_metrics(run)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0] * 0.8
    assert summary["final/val/top1"] > 25  # chance is 10%
    assert summary["alerts"] == [] and "at chance" not in proc.stderr  # the label guard stays quiet
    assert summary["val/samples"] == 130
    assert {"train/loss", "train/lr", "train/img_per_sec", "epoch", "step"} <= set(rows[0])
    assert {"val/top1", "val/top5", "val/loss", "val/samples"} <= set(rows[-1])
    assert (run / "config.yaml").exists() and (run / "environment.json").exists()
    plan = json.loads((run / "environment.json").read_text())["plan"]  # the recipe at this launch size
    assert (plan["global_batch"], plan["images_per_epoch"], plan["steps_per_epoch"]) == (32, 400, 13)
    assert plan["lr"] == summary["peak_lr"] == pytest.approx(0.4 * 32 / 256) and summary["global_batch"] == 32
    assert plan["total_steps"] == summary["steps"] == 6 * 13
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    assert max(lrs) <= plan["lr"] * (1 + 1e-6)  # the peak the plan states is the one trained with
    assert len(list((run / "checkpoints").glob("step-*.pt"))) == 2
    assert f"run directory {run}" in proc.stdout


def _train_rows(run):
    return [(r["step"], r.get("train/loss"), r.get("val/top1"), r.get("train/lr")) for r in read_metrics(run)]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, demo_data):
    """Under progressive resizing (24, 32, 40 px in epochs 1-3): the run is cut at 32 px and the
    resumed part changes size at the next epoch, bit-exact all the same."""
    common = [*FAST, f"data.path={demo_data}", "trainer.epochs=3", "data.batch_size=16", "trainer.log_every=1",
              "data.image_size=40", "data.image_size_start=24", "data.size_ramp=[0,2]", "data.size_step=8"]
    straight = tmp_path / "straight"
    run_cli("train", *common, f"trainer.run_dir={straight}", check=True)

    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *common, f"trainer.run_dir={resumed}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # interrupt in the middle of epoch 2 (25 steps per epoch)
        if (resumed / "metrics.jsonl").exists() and len(read_metrics(resumed)) >= 35:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    interrupted_at = _summary(resumed)["steps"]
    assert 0 < interrupted_at < 75
    run_cli("train", *common, f"trainer.run_dir={resumed}", check=True)
    assert _train_rows(resumed) == _train_rows(straight)  # bit-exact on CPU
    sizes = [r["train/image_size"] for r in read_metrics(resumed) if "train/image_size" in r]
    assert [s for i, s in enumerate(sizes) if i == 0 or sizes[i - 1] != s] == [24, 32, 40]
    assert 25 < interrupted_at < 50  # cut in epoch 2, at 32 px
    assert _summary(resumed)["final/val/top1"] == _summary(straight)["final/val/top1"]


def test_eval_command_reproduces_final_accuracy(tmp_path, demo_data):
    run = tmp_path / "run"
    run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=1", check=True)
    proc = run_cli("eval", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["val/samples"] == 130
    assert result["val/top1"] == pytest.approx(_summary(run)["final/val/top1"])
    # The same checkpoint at its own evaluation size with flip TTA (issue 28): every image once.
    proc = run_cli("eval", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "data.val_image_size=40",
                   "trainer.tta_flip=true", check=True)
    tta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tta["val/samples"] == 130 and tta["val/loss"] != pytest.approx(result["val/loss"])
    # Every command that takes a checkpoint takes the run directory too (its newest checkpoint), and
    # names what it looked for where there is none.
    proc = run_cli("eval", *FAST, f"data.path={demo_data}", "--checkpoint", str(run), check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["val/top1"] == result["val/top1"]
    parity = run_cli("eval-parity", *FAST, f"data.path={demo_data}", "--checkpoint", str(run))
    assert parity.returncode in (0, 1) and f"checkpoint {run / 'checkpoints'}/step-" in parity.stdout, parity.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("eval", *FAST, f"data.path={demo_data}", "--checkpoint", str(tmp_path / "empty"), quick=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: no checkpoint in run directory {tmp_path / 'empty'} (looked for step-*.pt files and ds-step-*/ "
        f"folders in {tmp_path / 'empty' / 'checkpoints'})")


@pytest.mark.parametrize("options", [
    ["data.mixup=0.2", "data.cutmix=1.0", "trainer.ema_decay=0.9", "optim.label_smoothing=0.1"],
    ["optim.accumulation=2", "optim.nesterov=true", "optim.grad_clip=1.0", "optim.schedule=multistep",
     "optim.milestones=[1]"],
    ["optim.name=lamb", "optim.lr=0.002", "optim.schedule=step", "optim.step_size=1"],
    ["optim.name=lars", "trainer.precision=fp32", "trainer.channels_last=false", "model.zero_init_last=true"],
])
def test_training_options_run(tmp_path, demo_data, options):
    run = tmp_path / "run"
    run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=2",
            "data.batch_size=16", *options, check=True)
    rows = read_metrics(run)
    assert all(r["train/loss"] == r["train/loss"] for r in rows if "train/loss" in r)  # no NaN
    summary = _summary(run)
    # an epoch is whole global batches, the last one wrapped: ceil(400 / (16 x accumulation)) steps
    assert summary["steps"] == 2 * -(-400 // (16 * (2 if "optim.accumulation=2" in options else 1)))
    if "trainer.ema_decay=0.9" in options:
        assert "val_ema/top1" in rows[-1]


def test_data_wait_fraction_sees_a_starved_loader(tmp_path):
    """The injected 0.3 s per batch shows up as waited seconds, whatever the machine's step time."""
    common = [*FAST, "data.backend=synthetic", "data.synthetic_samples=256", "trainer.max_steps=6", "trainer.epochs=1"]
    run_cli("train", *common, f"trainer.run_dir={tmp_path / 'fed'}", check=True)
    run_cli("train", *common, f"trainer.run_dir={tmp_path / 'starved'}", check=True,
            env={"PIPELINE_FAULT_SLOW_BATCH": "0.3"})
    assert _summary(tmp_path / "fed")["train/data_wait"] < 0.05  # batches resident in memory: no wait
    windows = [r for r in read_metrics(tmp_path / "starved") if "train/data_wait" in r]
    assert len(windows) == 3  # 6 steps, a log line every 2
    for r in windows:
        assert 0 < r["train/data_wait"] <= 1
        seconds = 2 * 32 / r["train/img_per_sec"]  # the window's wall time: 2 steps of 32 images
        waited_per_step = r["train/data_wait"] * seconds / 2
        assert waited_per_step >= 0.29  # each next() slept 0.3 s (a little slack for rounding of the rate)


def test_compiled_step_matches_eager(tmp_path, demo_data):
    """trainer.compile with reduce-overhead (CUDA graphs on a GPU; compiled kernels alone on CPU)
    follows the eager run's losses step by step."""
    common = [*FAST, f"data.path={demo_data}", "trainer.epochs=1", "trainer.max_steps=4", "trainer.log_every=1",
              "trainer.precision=fp32", "data.batch_size=16"]
    run_cli("train", *common, f"trainer.run_dir={tmp_path / 'eager'}", check=True)
    run_cli("train", *common, "trainer.compile=true", "trainer.compile_mode=reduce-overhead",
            f"trainer.compile_cache_dir={tmp_path / 'inductor'}", f"trainer.run_dir={tmp_path / 'compiled'}", check=True)
    eager, compiled = ([r["train/loss"] for r in read_metrics(tmp_path / run) if "train/loss" in r]
                       for run in ("eager", "compiled"))
    assert len(eager) == 4 and compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model.name=resnext50_32x4d", "model.name=wrn16_8 model.block_dropout=0.3"])
def test_resnext_and_wide_resnet_killed_and_resumed_equal_the_straight_run(tmp_path, demo_data, model):
    """A ResNeXt (grouped convolutions) and a CIFAR WRN with its dropout between the convolutions
    (random draws that must resume too), on the demo JPEGs through DALI: kill -9 after the step-4
    checkpoint, resume, and every loss and the final top-1 equal the straight run's, bit for bit."""
    pytest.importorskip("nvidia.dali")
    common = [*FAST, *model.split(), f"data.path={demo_data}", "data.backend=dali", "data.batch_size=8",
              "data.image_size=32", "trainer.epochs=1", "trainer.max_steps=8", "trainer.log_every=1",
              "trainer.checkpoint_every=4", "trainer.eval_every=1000", "logging.wandb.mode=disabled"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_cli("train", *common, f"trainer.run_dir={straight}", check=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PIPELINE_FAULT_STALL_AT_STEP": "6"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *common, f"trainer.run_dir={killed}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stalled before step 7: steps 1-6 logged
        if (killed / "metrics.jsonl").exists() and sum("train/loss" in r for r in read_metrics(killed)) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli("train", *common, f"trainer.run_dir={killed}", check=True)
    assert "resumed from" in resumed.stdout + resumed.stderr
    losses = {run: [r["train/loss"] for r in read_metrics(run) if "train/loss" in r] for run in (straight, killed)}
    assert len(losses[straight]) == 8 and losses[killed][-4:] == losses[straight][-4:]
    assert _summary(killed)["final/val/top1"] == _summary(straight)["final/val/top1"]


@pytest.mark.slow
def test_eval_parity_of_the_default_view_within_one_image_at_32_and_224_px(tmp_path, demo_data):
    """data.val_view=torchvision (the default): DALI's validation counts the images torchvision's
    transforms count, within one image and 0.1 points, at 32 px on the demo images and at 224 px on
    ImageNet-sized JPEGs (500x375 and 375x500, bench/jpeg_folder.py); the fast view is the old gap."""
    pytest.importorskip("nvidia.dali")
    run = tmp_path / "run"
    run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=2", "optim.lr=0.4",
            check=True)
    large = tmp_path / "large"
    subprocess.run([sys.executable, str(REPO / "bench" / "jpeg_folder.py"), str(large), "--train-per-class", "1",
                    "--val-per-class", "6"], check=True, capture_output=True, cwd=REPO)
    results = {}
    for name, overrides in {"32": [f"data.path={demo_data}"],
                            "224": [f"data.path={large}", "data.image_size=224", "data.batch_size=20"]}.items():
        proc = run_cli("eval-parity", *FAST, *overrides, "--checkpoint", str(run), "--max-gap", "0.1")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert proc.returncode == 0 and results[name]["passed"], proc.stdout
    assert results["32"]["images"] == 130 and results["224"]["images"] == 60
    assert results["32"]["argmax_agreement"] >= 100 - 100 / 130  # at most one image's class differs
    fast = run_cli("eval-parity", *FAST, f"data.path={demo_data}", "data.val_view=fast", "--checkpoint", str(run))
    assert json.loads(fast.stdout.strip().splitlines()[-1])["mean_abs_logit_diff"] > \
        3 * results["32"]["mean_abs_logit_diff"]  # the region-decode view is another view
