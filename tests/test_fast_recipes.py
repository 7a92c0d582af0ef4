"""FFCV's fast ImageNet recipes (issue 28): the configs, their LR and size schedules, the plan's
size-aware estimate and its multi-node scaling model."""
import json

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data.resolution import train_sizes
from pipeline.optim import LRSchedule
from pipeline.training import scaling
from pipeline.training.plan import IMAGENET_TRAIN_IMAGES, make_plan
from tests.helpers import REPO, run_cli

# FFCV's README table (libffcv/ffcv-imagenet): epochs -> (top-1 %, top-5 %, minutes), and the
# (start_ramp, end_ramp) of its configs, the same for ResNet-50 and ResNet-18.
FFCV_RN50 = {88: (78.4, 94.1, 77.2), 56: (78.0, 93.7, 49.4), 40: (77.2, 93.2, 35.6), 32: (76.6, 92.7, 28.7),
             24: (75.6, 92.1, 21.7), 16: (73.8, 90.8, 14.9)}
FFCV_RN18 = {88: (72.4, 90.3, 187.3), 56: (71.3, 89.9, 119.4), 40: (70.6, 89.4, 85.5), 32: (70.0, 88.9, 68.9),
             24: (68.8, 88.1, 51.6), 16: (66.9, 86.8, 35.0)}
FFCV_RAMPS = {88: (65, 76), 56: (41, 48), 40: (29, 34), 32: (23, 27), 24: (17, 20), 16: (11, 13)}


def _ffcv_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """FFCV's get_resolution, with numpy as they wrote it: the reference the schedule must match."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


def _config(model, epochs):
    return REPO / "configs" / "imagenet" / f"{model}_fast_{epochs}ep.yaml"


@pytest.mark.parametrize("model, table", [("resnet50", FFCV_RN50), ("resnet18", FFCV_RN18)])
@pytest.mark.parametrize("epochs", sorted(FFCV_RAMPS))
def test_fast_configs_are_ffcvs_recipe(model, table, epochs):
    cfg = load_config(_config(model, epochs))
    start, end = FFCV_RAMPS[epochs]
    assert train_sizes(cfg.data, epochs) == [_ffcv_resolution(e, 160, 192, end, start) for e in range(epochs)]
    assert (cfg.data.val_image_size, cfg.trainer.tta_flip, cfg.model.blurpool, cfg.optim.label_smoothing) == \
        (256, True, True, 0.1)
    assert (cfg.optim.schedule, cfg.optim.warmup_epochs, cfg.optim.decay_norm_and_bias) == ("triangular", 2, False)
    top1, top5, minutes = table[epochs]
    assert (cfg.expected["value"], cfg.expected["top5"], cfg.expected["minutes"]) == (top1, top5, minutes)
    assert "FFCV" in cfg.expected["source"]
    # At FFCV's own launch size the rule gives FFCV's LR and batch exactly.
    gpus, lr, wd = (8, 1.7, 1e-4) if model == "resnet50" else (1, 0.5, 5e-5)
    plan = make_plan(cfg, gpus)
    assert (plan["global_batch"], plan["lr"], cfg.optim.weight_decay) == (4096 if gpus == 8 else 1024, lr, wd)
    assert plan["steps_per_epoch"] == -(-IMAGENET_TRAIN_IMAGES // plan["global_batch"])
    # Twice the GPUs: twice the global batch and the LR, as the linear rule says.
    assert make_plan(cfg, 2 * gpus)["lr"] == pytest.approx(2 * lr)


def test_triangular_lr_is_ffcvs_cyclic_schedule():
    """FFCV: np.interp(epoch, [0, peak, epochs], [1e-4 x lr, lr, 0]), per iteration within epochs."""
    cfg = load_config(_config("resnet50", 16))
    steps = 100
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.7)
    schedule = LRSchedule(optimizer, cfg.optim, steps, 16, cfg.optim.warmup_epochs)
    for step in (0, 37, 150, 199, 200, 201, 900, 1234, 1599):
        schedule.set_step(step)
        ffcv = np.interp(step / steps, [0, 2, 16], [1.7e-4, 1.7, 0])
        assert schedule.current_lr() == pytest.approx(ffcv, rel=1e-9, abs=1e-12), step


def test_plan_estimate_follows_the_sizes():
    """Compute scales with pixels: 71 epochs at 160 px and 17 at 192 against 88 at 192."""
    cfg = load_config(_config("resnet50", 88))
    plan = make_plan(cfg, 8, rate=(1000.0, 224, "test"))
    assert plan["image_sizes"] == [[0, 70, 160], [71, 87, 192]]
    assert plan["size_effect"] == pytest.approx((71 * 160**2 + 17 * 192**2) / (88 * 192**2), abs=1e-3)
    seconds = plan["steps_per_epoch"] * 4096 * (71 / (1000 * (224 / 160) ** 2) + 17 / (1000 * (224 / 192) ** 2)) / 8
    assert plan["wall_hours"] == pytest.approx(seconds / 3600, abs=0.01)


def test_ring_allreduce_model():
    """The bandwidth terms alone (no latency, no slowest-rank wait): tests/test_scaling_model.py has those."""
    gradient = 100e6  # bytes
    assert scaling.allreduce_seconds(gradient, 1, 100) == 0
    # 2(n-1)/n x bytes over the bus bandwidth: 16 ranks at 100 Gbit/s = 12.5 GB/s
    assert scaling.allreduce_seconds(gradient, 16, 100) == pytest.approx(2 * 15 / 16 * 100e6 / 12.5e9)
    bare = {"jitter": 0.0, "hop_latency_us": 0.0, "nvlink_hop_latency_us": 0.0}
    fabric = scaling.Fabric(interconnect_gbps=100, nvlink_gbps=2400, overlap=1.0, bucket_mb=25, **bare)
    step = scaling.step_seconds(256, 1000.0, gradient, 2, 8, fabric)
    compute, comm = 0.256, 2 * 15 / 16 * 100e6 / 12.5e9
    assert step["exposed_s"] == pytest.approx(max(comm - 2 / 3 * compute, 2 * 15 / 16 * 25 * 2**20 / 12.5e9))
    no_overlap = scaling.step_seconds(256, 1000.0, gradient, 2, 8, scaling.Fabric(100, 2400, 0.0, **bare))
    assert no_overlap["step_s"] == pytest.approx(compute + comm)
    rows = scaling.scaling_table(256, 1000.0, gradient, 8, [1, 2, 4], 1_000_000, fabric)
    assert [r["gpus"] for r in rows] == [8, 16, 32] and rows[0]["efficiency"] > rows[1]["efficiency"]
    assert rows[1]["img_per_sec"] == pytest.approx(16 * 256 / step["step_s"], rel=1e-4)


def test_plan_command_prints_the_scaling_table():
    proc = run_cli("plan", "--config", str(_config("resnet50", 16)), "--nodes", "2", "--gpus-per-node", "8",
                   "--interconnect-gbps", "100", quick=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["nodes"] for r in plan["scaling"]] == [1, 2, 4, 8, 16]
    assert all(r["image_size"] == 160 for r in plan["scaling"])
    assert plan["scaling"][0]["efficiency"] > plan["scaling"][1]["efficiency"]  # NVLink in one node, 100G across
    assert "train 160 px epochs 1-12, 192 px epochs 13-16; val shorter side to 293, center crop 256, flip TTA" in proc.stdout
    assert "scaling efficiency" in plan["estimate"]
    bad = run_cli("plan", "--config", str(_config("resnet50", 16)), "--overlap", "2", quick=True)
    assert bad.returncode == 2 and "--overlap" in bad.stderr
