"""torchvision's V2 recipe and timm's "ResNet strikes back" A1-A3 (issue 33): the configs hold the
publishers' settings and numbers, the plan shows them at launch scale, and each family runs, is
killed and resumes in both backends (shrunk to a CIFAR ResNet on the demo JPEGs)."""
import json

import pytest

from pipeline.config import load_config
from pipeline.metrics import read_metrics
from pipeline.training.plan import make_plan
from tests.helpers import REPO, run_cli

IMAGENET = REPO / "configs" / "imagenet"
TV2 = {50: 80.858, 101: 81.886, 152: 82.284}
RSB = {18: (71.504, 70.634, 68.250), 34: (76.420, 75.520, 72.996), 50: (80.382, 79.828, 78.052),
       101: (81.494, 81.344, 79.836), 152: (81.998, 81.764, 80.548)}


def test_tv2_configs_are_torchvisions_command():
    for depth, top1 in TV2.items():
        cfg = load_config(IMAGENET / f"resnet{depth}_tv2.yaml")
        d, o, t = cfg.data, cfg.optim, cfg.trainer
        assert (cfg.model.name, cfg.expected["value"]) == (f"resnet{depth}", top1)
        assert (d.batch_size, d.image_size, d.val_image_size, round(224 / d.crop_fraction)) == (128, 176, 224, 232)
        assert (d.auto_augment, d.random_erase, d.mixup, d.cutmix, d.repeat_aug, d.interpolation) == (
            "ta_wide", 0.1, 0.2, 1.0, 4, "bilinear")
        assert (o.name, o.lr, o.base_batch, o.weight_decay, o.label_smoothing, o.warmup_epochs, o.warmup_lr) == (
            "sgd", 0.5, 1024, 2e-5, 0.1, 5, 0.005)
        assert (t.epochs, t.ema_decay, t.ema_every, t.ema_torchvision_rule) == (600, 0.99998, 32, True)


@pytest.mark.parametrize("procedure", [1, 2, 3])
def test_rsb_configs_are_the_procedures(procedure):
    settings = {1: (600, 224, 0.005, 0.01, 0.1, 0.2, 3, 0.05, "rand-m7-mstd0.5-inc1"),
                2: (300, 224, 0.005, 0.02, 0.0, 0.1, 3, 0.05, "rand-m7-mstd0.5-inc1"),
                3: (100, 160, 0.008, 0.02, 0.0, 0.1, 1, 0.0, "rand-m6-mstd0.5-inc1")}[procedure]
    for depth, tops in RSB.items():
        cfg = load_config(IMAGENET / f"resnet{depth}_rsb_a{procedure}.yaml")
        d, o = cfg.data, cfg.optim
        assert (cfg.model.name, cfg.expected["value"]) == (f"resnet{depth}", tops[procedure - 1])
        assert (cfg.trainer.epochs, d.image_size, o.lr, o.weight_decay, o.label_smoothing, d.mixup, d.repeat_aug,
                cfg.model.drop_path_rate, d.auto_augment) == settings
        assert (o.name, o.base_batch, d.batch_size * 8, o.loss, o.bce_target_thresh, d.cutmix) == (
            "lamb", 2048, 2048, "bce", 0.2, 1.0)
        assert (d.interpolation, d.val_image_size, round(224 / d.crop_fraction)) == ("bicubic", 224, 236)


def test_plan_at_one_and_four_nodes_says_what_the_lr_does():
    a1 = load_config(IMAGENET / "resnet50_rsb_a1.yaml")
    one, four = make_plan(a1, 8), make_plan(a1, 32)
    assert (one["global_batch"], one["lr"], one["lr_note"]) == (2048, 0.005, "")
    assert (four["global_batch"], four["lr"]) == (8192, 0.02)
    assert "square-root rule of the LAMB paper would give 0.01" in four["lr_note"]
    assert "repeated augmentation x3" in one["recipe"] and "stochastic depth 0.05" in one["recipe"]
    tv2 = make_plan(load_config(IMAGENET / "resnet50_tv2.yaml"), 8)
    assert (tv2["global_batch"], tv2["lr"]) == (1024, 0.5) and "decay 0.998908" in tv2["recipe"]


def _shrunk(demo_data, backend):
    """A recipe's keys on the demo JPEGs: ResNet-20 at 32 px, 8 steps, a checkpoint every 3."""
    return ["model.name=resnet20", "model.num_classes=0", f"data.path={demo_data}", f"data.backend={backend}",
            "data.image_size=32", "data.val_image_size=32", "data.batch_size=16", "data.workers=1",
            "trainer.max_steps=8", "trainer.checkpoint_every=3", "trainer.log_every=1", "trainer.precision=fp32",
            "trainer.channels_last=false", "logging.wandb.mode=disabled", "logging.progress=lines"]


def _losses(run):
    return [(r["step"], r["train/loss"]) for r in read_metrics(run) if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchvision", "dali"])
@pytest.mark.parametrize("recipe", ["resnet50_tv2", "resnet50_rsb_a1", "resnet50_rsb_a3"])
def test_recipe_runs_killed_and_resumed(tmp_path, demo_data, recipe, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    args = ["train", "-c", f"configs/imagenet/{recipe}.yaml", *_shrunk(demo_data, backend)]
    run = tmp_path / "run"
    crashed = run_cli(*args, f"trainer.run_dir={run}", env={"PIPELINE_FAULT_RAISE_AT_STEP": "5"})
    assert crashed.returncode != 0 and "injected fault at step 5" in crashed.stderr
    resumed = run_cli(*args, f"trainer.run_dir={run}", check=True)
    assert "resumed from" in resumed.stdout and "step 3)" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["val/samples"]) == ("completed", 8, 130)
    if (recipe, backend) == ("resnet50_rsb_a1", "dali"):  # the most stateful mix: the trajectory is kept
        straight = tmp_path / "straight"
        run_cli(*args, f"trainer.run_dir={straight}", check=True)
        assert _losses(run) == _losses(straight)
