"""The papers' experiment configs: they load, build, run, and carry the published numbers."""
import re

import pytest
import torch

from pipeline.config import load_config
from pipeline.models import build_model
from tests.helpers import REPO, run_cli

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("_"))
ABLATIONS = sorted((REPO / "configs" / "ablations" / "identity_mappings").glob("*.yaml"))
TARGETS = REPO.parent / "shared" / "reference" / "targets.md"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_loads_and_builds(path):
    """Every shipped config (bases included, through the configs that use them) loads, and its model
    is built with the config's class count."""
    cfg = load_config(path)
    classes = cfg.model.num_classes or 10
    model = build_model(cfg.model, classes)
    assert model.fc.out_features == classes


def test_the_tables_are_complete():
    names = {p.stem for p in ABLATIONS}
    assert len([n for n in names if n.startswith("t1_")]) == 8  # every Table 1 row
    assert len([n for n in names if n.startswith("t2_")]) == 10  # 5 units x ResNet-110/164
    cifar = {p.stem for p in (REPO / "configs" / "cifar10").glob("*.yaml")}
    assert {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} <= cifar
    assert {f"plain{d}" for d in (20, 32, 44, 56, 110)} <= cifar
    imagenet = {p.stem for p in (REPO / "configs" / "imagenet").glob("*.yaml")}
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
            "resnet50_large_batch", "resnet50_modern", "preact_resnet152", "preact_resnet200"} <= imagenet


def test_cifar_recipe_is_the_papers():
    cfg = load_config(REPO / "configs" / "cifar10" / "resnet110.yaml")
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert (cfg.optim.milestones, cfg.optim.milestones_in, cfg.trainer.max_steps) == ((32000, 48000), "steps", 64000)
    assert (cfg.optim.warmup_lr, cfg.optim.warmup_steps, cfg.data.cifar_holdout) == (0.01, 400, 5000)


@pytest.mark.skipif(not TARGETS.exists(), reason="shared/reference/targets.md not beside the checkout")
def test_expected_numbers_match_the_papers_tables():
    text = TARGETS.read_text()
    numbers = set(re.findall(r"\d+\.\d+", text))
    checked = 0
    for path in CONFIGS:
        if any(k in path.name for k in ("_fast_", "_tv2", "_rsb_", "wrn", "resnext", "wide_resnet")):
            continue  # FFCV's, torchvision's, timm's, the WRN authors': test_fast_recipes.py, test_modern_recipes.py, below
        expected = load_config(path).expected
        value = expected.get("value")
        if isinstance(value, float):
            assert any(n.startswith(f"{value:g}") or n == f"{value}" for n in numbers), (path, value)
            checked += 1
    assert checked >= 30


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_runs_a_few_steps_on_synthetic_data(path, tmp_path):
    cfg = load_config(path, ["data.dataset=synthetic", "data.batch_size=8", "data.synthetic_samples=16",
                             "trainer.max_steps=2", "trainer.epochs=1", f"trainer.run_dir={tmp_path}",
                             "trainer.log_every=1", "logging.progress=none"])
    from pipeline.world import WorldInfo
    from pipeline.runtime import make_runtime
    from pipeline.training.trainer import Trainer

    torch.set_num_threads(2)
    trainer = Trainer(cfg, make_runtime(cfg.trainer, WorldInfo()))
    summary = trainer.fit()
    assert summary["steps"] == 2 and summary["final/val/top1"] is not None


@pytest.mark.slow
def test_sweep_dry_run_and_compare_shows_paper_numbers(tmp_path, demo_data):
    proc = run_cli("sweep", "configs/ablations/identity_mappings", "--seeds", "0,1", "--group", "t", "--dry-run")
    assert proc.returncode == 0 and proc.stdout.count("(dry run)") == 36
    # Two tiny real runs of Table 1 configs on the demo data, then compare shows the paper's numbers.
    tiny = ["data.dataset=imagefolder", f"data.path={demo_data}", "data.cifar_holdout=0", "data.batch_size=32",
            "trainer.max_steps=3", "trainer.epochs=1", "data.workers=0", "logging.progress=none",
            "model.num_classes=10", "data.backend=torchvision"]
    proc = run_cli("sweep", "configs/ablations/identity_mappings/t1_original.yaml",
                   "configs/ablations/identity_mappings/t1_constant_scaling.yaml", "--group", "t", "--root",
                   str(tmp_path), *tiny)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = run_cli("compare", str(tmp_path / "t" / "t1_original-s0"), str(tmp_path / "t" / "t1_constant_scaling-s0"),
                  "--out", str(tmp_path / "c.png"), check=True).stdout
    assert "6.61" in out and "12.35" in out  # the paper's test errors beside the runs
    assert "model.shortcut" in out.splitlines()[0]


# The authors' README (szagoruyko/wide-residual-networks): test error %, meanstd, median of 5 runs.
WRN_README = {("cifar10", "wrn28_10"): 4.00, ("cifar10", "wrn28_10_dropout"): 3.89,
              ("cifar100", "wrn28_10"): 19.25, ("cifar100", "wrn28_10_dropout"): 18.85}


def test_wide_resnet_configs_carry_the_authors_recipe_and_numbers():
    for (dataset, name), error in WRN_README.items():
        cfg = load_config(REPO / "configs" / dataset / f"{name}.yaml")
        assert cfg.expected["value"] == error and cfg.data.dataset == dataset
        assert cfg.model.block_dropout == (0.3 if name.endswith("dropout") else 0.0)
        o = cfg.optim
        assert (cfg.data.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay, o.decay_norm_and_bias) == \
            (128, 0.1, 0.9, True, 5e-4, True)
        assert (o.milestones, o.milestones_in, o.gamma, cfg.trainer.epochs, cfg.data.cifar_holdout) == \
            ((60, 120, 160), "epochs", 0.2, 200, 0)


TORCHVISION_WEIGHTS = {  # config -> the torchvision weights whose meta gives its number
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights.IMAGENET1K_V1", "resnext50_32x4d_tv2": "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights.IMAGENET1K_V1",
    "resnext101_32x8d_tv2": "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights.IMAGENET1K_V1",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights.IMAGENET1K_V1", "wide_resnet50_2_tv2": "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights.IMAGENET1K_V1", "wide_resnet101_2_tv2": "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_resnext_and_wide_resnet_configs_carry_torchvisions_numbers_and_recipe(name):
    """The number is the installed weights' meta acc@1, the model the weights' own (same parameter
    count); V1: ResNeXt's `--epochs 100` with train.py's StepLR(30), WRN the ResNet recipe; V2 (and
    resnext101_64x4d, trained only with it): 176 px train, 232 -> 224 val, as the weights' transforms say."""
    from torchvision import models

    enum, member = TORCHVISION_WEIGHTS[name].split(".")
    weights = getattr(getattr(models, enum), member)
    cfg = load_config(REPO / "configs" / "imagenet" / f"{name}.yaml")
    assert cfg.expected["value"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    model = build_model(cfg.model, 1000)
    assert sum(p.numel() for p in model.parameters()) == weights.meta["num_params"]
    preset = weights.transforms()
    if "tv2" in name or name == "resnext101_64x4d":
        assert (cfg.data.image_size, cfg.trainer.epochs, cfg.optim.lr, cfg.data.batch_size) == (176, 600, 0.5, 128)
        assert (round(cfg.data.val_image_size / cfg.data.crop_fraction), cfg.data.val_image_size) == \
            (preset.resize_size[0], preset.crop_size[0])
    else:
        assert (cfg.data.image_size, cfg.optim.lr, cfg.data.batch_size, cfg.optim.schedule) == (224, 0.1, 32, "multistep")
        epochs, milestones = (100, (30, 60, 90)) if "resnext" in name else (90, (30, 60))
        assert (cfg.trainer.epochs, tuple(cfg.optim.milestones)) == (epochs, milestones)
        assert (preset.resize_size[0], preset.crop_size[0]) == (256, 224)
