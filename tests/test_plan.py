"""Recipes at the scale they are launched at (issue 17): the plan, and the LR curve the trainer runs."""
import json
import math
import os
import subprocess

import pytest
import torch

from pipeline.config import load_config
from pipeline.optim import LRSchedule
from pipeline.training.plan import IMAGENET_TRAIN_IMAGES, make_plan
from tests.helpers import REPO, run_cli

# The papers' recipes; FFCV's fast ones and the modern ones (torchvision V2, timm RSB) have their own
# batch and LR rule (tests/test_fast_recipes.py, tests/test_modern_recipes.py).
IMAGENET = sorted(p for p in (REPO / "configs" / "imagenet").glob("*.yaml")
                  if not p.name.startswith("_") and not any(k in p.name for k in ("_fast_", "_tv2", "_rsb_", "resnext")))  # ResNeXt: its own V1/V2 schedules, tests/test_experiments.py


def _schedule(cfg, plan) -> LRSchedule:
    """The trainer's own schedule object on a one-parameter optimizer, at the plan's peak LR."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plan["lr"])
    return LRSchedule(optimizer, cfg.optim, plan["steps_per_epoch"], cfg.trainer.epochs, plan["warmup_epochs"])


def _lr(schedule: LRSchedule, step: int) -> float:
    schedule.set_step(step)
    return schedule.current_lr()


@pytest.mark.parametrize("world", [1, 16, 256])
@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_lr_curve_follows_the_rule(path, world):
    cfg = load_config(path)
    plan = make_plan(cfg, world)
    per_gpu = 256 if path.stem == "resnet50_modern" else 32  # NVIDIA-style vs He 2015 / Goyal per-GPU batch
    global_batch = per_gpu * world
    assert (plan["per_gpu_batch"], plan["global_batch"]) == (per_gpu, global_batch)
    assert plan["lr"] == pytest.approx(0.1 * global_batch / 256)  # linear scaling from 0.1 per 256
    assert plan["images_per_epoch"] == IMAGENET_TRAIN_IMAGES
    assert plan["steps_per_epoch"] == -(-IMAGENET_TRAIN_IMAGES // global_batch)
    # Warmup: the config's own (the modern and large-batch recipes set 5 epochs), else Goyal's 5 epochs
    # exactly when the global batch is above the recipe's 256, else none.
    own = cfg.optim.warmup_epochs
    warmup = own if own > 0 else (5.0 if global_batch > 256 else 0.0)
    assert plan["warmup_epochs"] == warmup and plan["warmup_steps"] == int(warmup * plan["steps_per_epoch"])
    schedule, peak, w = _schedule(cfg, plan), plan["lr"], plan["warmup_steps"]
    if w:
        assert _lr(schedule, 0) == pytest.approx(0.0, abs=1e-12)  # linear from 0
        assert _lr(schedule, w // 2) == pytest.approx(peak * (w // 2) / w)
        assert _lr(schedule, w - 1) < peak
    last = plan["total_steps"] - 1
    # The peak after the warmup; a cosine counts from step 0 (warmup included), as timm's does.
    at_w = peak if cfg.optim.schedule == "multistep" else peak * 0.5 * (1 + math.cos(math.pi * w / plan["total_steps"]))
    assert _lr(schedule, w) == pytest.approx(at_w)
    if cfg.optim.schedule == "multistep":  # /10 at epochs 30 and 60, in steps of this launch size
        first, second = (30 * plan["steps_per_epoch"], 60 * plan["steps_per_epoch"])
        assert [d["step"] for d in plan["decay"]] == [first, second]
        assert _lr(schedule, first - 1) == pytest.approx(peak)
        assert _lr(schedule, first) == pytest.approx(peak * 0.1)
        assert _lr(schedule, second) == pytest.approx(peak * 0.01)
        assert _lr(schedule, last) == pytest.approx(peak * 0.01)
    else:  # cosine to min_lr at the end
        assert plan["decay"] == [] and _lr(schedule, last) < peak * 0.001


@pytest.mark.parametrize("name, warmup_steps", [("resnet20", 0), ("resnet110", 400), ("resnet1202", 400)])
def test_cifar_schedule_is_the_papers(name, warmup_steps):
    """He 2015 Sec. 4.2: lr 0.1, /10 at 32k and 48k iterations, stop at 64k; ResNet-110/1202 hold
    0.01 until ~400 iterations. Batch 128 on one GPU; the LR is not scaled (base_batch 0)."""
    cfg = load_config(REPO / "configs" / "cifar10" / f"{name}.yaml")
    plan = make_plan(cfg, 1)
    assert (plan["global_batch"], plan["lr"], plan["warmup_epochs"]) == (128, 0.1, 0.0)
    assert plan["images_per_epoch"] == 45_000 and plan["total_steps"] == 64_000
    assert [(d["step"], pytest.approx(d["lr"])) for d in plan["decay"]] == [(32_000, 0.01), (48_000, 0.001)]
    schedule = _schedule(cfg, plan)
    if warmup_steps:
        assert _lr(schedule, 0) == _lr(schedule, warmup_steps - 1) == pytest.approx(0.01)  # constant 0.01
    assert _lr(schedule, warmup_steps) == pytest.approx(0.1)
    assert _lr(schedule, 31_999) == pytest.approx(0.1) and _lr(schedule, 32_000) == pytest.approx(0.01)
    assert _lr(schedule, 48_000) == pytest.approx(0.001) and _lr(schedule, 63_999) == pytest.approx(0.001)


def test_explicit_warmup_and_switch_off_win_over_the_rule():
    cfg = load_config(REPO / "configs" / "imagenet" / "resnet152.yaml", ["optim.warmup_epochs=2"])
    assert make_plan(cfg, 64)["warmup_epochs"] == 2.0
    cfg = load_config(REPO / "configs" / "imagenet" / "resnet152.yaml", ["optim.auto_warmup_epochs=0"])
    assert make_plan(cfg, 64)["warmup_epochs"] == 0.0


def test_slurm_dry_run_prints_the_same_plan_as_pipeline_plan():
    """DRY_RUN=1 outside an allocation reads the #SBATCH lines (2 nodes x 8 GPUs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    dry = subprocess.run(["bash", "slurm/resnet152.sh"], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**env, "DRY_RUN": "1"}, check=True).stdout.strip().splitlines()
    assert "nodes=2 tasks/node=8" in dry[1] and dry[2].startswith("srun --ntasks-per-node=8")
    plan = run_cli("plan", "--config", "configs/imagenet/resnet152.yaml", "--nodes", "2", "--gpus-per-node", "8",
                   quick=True, check=True).stdout.strip().splitlines()
    assert dry[3:] == plan
    printed = json.loads(plan[-1])
    assert (printed["world_size"], printed["global_batch"], printed["lr"], printed["warmup_epochs"]) == (16, 512, 0.2, 5.0)
    assert "512 is inside" in printed["expected"]


def test_a_node_range_is_planned_for_its_largest_size(capsys):
    """`pipeline plan --nodes 1-4` (issue 35): the global batch planned for 4 x 8 ranks, the
    accumulation at each size of the range, and 3 nodes (24 ranks, not a divisor of 32) refused
    unless the run may rescale."""
    from pipeline.cli import main

    args = ["plan", "--config", "configs/imagenet/resnet50.yaml", "--gpus-per-node", "8", "--nodes", "1-4"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "node range 1-4 x 8 GPU(s): global batch 1024 planned for 32 processes (trainer.plan_world_size)",
        "    1 node(s), world    8: accumulation 4, global batch 1024",
        "    2 node(s), world   16: accumulation 2, global batch 1024",
        "    3 node(s), world   24: refused: no whole accumulation (set trainer.elastic=rescale, or a plan size that it "
        "divides)",
        "    4 node(s), world   32: accumulation 1, global batch 1024"]
    plan = json.loads(lines[-1])
    assert (plan["world_size"], plan["accumulation"], plan["global_batch"], plan["lr"]) == (32, 1, 1024, 0.4)
    assert main([*args, "trainer.elastic=rescale"]) == 0
    assert ("3 node(s), world   24: outside the plan: trainer.elastic=rescale re-plans the global batch to 768 "
            "(linear LR rule)") in capsys.readouterr().out
    # one node of the range, with the plan size given: the accumulation that keeps the planned batch
    assert main([*args[:-1], "1", "trainer.plan_world_size=32"]) == 0
    plan = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (plan["world_size"], plan["accumulation"], plan["global_batch"]) == (8, 4, 1024)
