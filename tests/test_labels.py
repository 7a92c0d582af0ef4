"""Train and val labels that mean different classes: refused before training, or warned about while
training when they only show at validation (issue 26)."""
import json
import shutil

import pytest
import torch

from pipeline.config import load_config
from pipeline.data import Placement, build_data
from pipeline.data.folder import split_samples
from pipeline.data.types import DataError
from pipeline.training.guards import val_at_chance
from tests.helpers import FAST, run_cli


def _write_list(path, demo_data, split, label_of, per_class=None):
    classes = sorted(p.name for p in (demo_data / split).iterdir())
    lines = [f"{image} {label_of(label)}" for label, name in enumerate(classes)
             for image in sorted((demo_data / split / name).iterdir())[:per_class]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _data_cfg(demo_data, *overrides):
    return load_config(None, [f"data.path={demo_data}", "data.backend=torchvision", "data.workers=0",
                              *overrides]).data


def test_one_based_train_list_against_zero_based_val_folder_is_refused(tmp_path, demo_data):
    train = _write_list(tmp_path / "train.txt", demo_data, "train", lambda label: label + 1)
    with pytest.raises(DataError) as info:
        split_samples(_data_cfg(demo_data, f"data.train_list={train}"))
    line = str(info.value)
    assert "\n" not in line
    assert f"train (data.train_list {train}) labels run 1..10 (10 classes), expected 0-based" in line
    assert "val labels run 0..9 (10 classes)" in line


def test_a_stray_train_label_is_refused(tmp_path, demo_data):
    train = _write_list(tmp_path / "train.txt", demo_data, "train", lambda label: label)
    lines = train.read_text().splitlines()
    lines[5] = lines[5].rpartition(" ")[0] + " 57"  # one mislabelled image among ten complete classes
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"has labels 57 that no val sample has \(train labels 0\.\.57 \(11 classes\), "
                                        r"val labels 0\.\.9 \(10 classes\)\)"):
        split_samples(_data_cfg(demo_data, f"data.train_list={train}"))


def test_a_val_label_train_does_not_have_is_refused(tmp_path, demo_data):
    val = _write_list(tmp_path / "val.txt", demo_data, "val", lambda label: label + 1)
    with pytest.raises(DataError, match=r"val \(data.val_list .*\) has labels 10 that no train sample has"):
        split_samples(_data_cfg(demo_data, f"data.val_list={val}"))


def test_a_val_list_with_fewer_classes_needs_the_subset_setting(tmp_path, demo_data):
    val = _write_list(tmp_path / "val.txt", demo_data, "val", lambda label: label if label < 4 else 99)
    val.write_text("".join(line + "\n" for line in val.read_text().splitlines() if not line.endswith(" 99")))
    with pytest.raises(DataError, match=r"has labels 4, 5, 6 and 3 more that no val sample has .* "
                                        r"needs data.val_subset=true"):
        split_samples(_data_cfg(demo_data, f"data.val_list={val}"))
    splits = split_samples(_data_cfg(demo_data, f"data.val_list={val}", "data.val_subset=true"))
    assert sorted({label for _, label in splits["val"][1]}) == [0, 1, 2, 3] and len(splits["val"][1]) == 4 * 13


def test_a_val_folder_with_fewer_classes_keeps_train_indices_with_the_subset_setting(tmp_path, demo_data):
    root = tmp_path / "ds"
    shutil.copytree(demo_data, root)
    classes = sorted(p.name for p in (root / "val").iterdir())
    for name in classes[:2]:  # val without the first two classes: the rest must keep train's indices 2..9
        shutil.rmtree(root / "val" / name)
    with pytest.raises(DataError, match=r"0 only in val, 2 only in train .* needs data.val_subset=true"):
        split_samples(_data_cfg(root))
    train_classes, val_samples = split_samples(_data_cfg(root, "data.val_subset=true"))["val"]
    assert train_classes == classes
    assert all(classes[label] in path for path, label in val_samples)
    assert sorted({label for _, label in val_samples}) == list(range(2, 10))


def test_labels_outside_model_num_classes_are_refused(demo_data):
    cfg = load_config(None, [f"data.path={demo_data}", "data.backend=torchvision", "data.workers=0",
                             "model.num_classes=8"])
    with pytest.raises(DataError, match=r"labels up to 9 \(10 classes\) but model.num_classes=8: set "
                                        r"model.num_classes=10 or more"):
        build_data(cfg.data, Placement(torch.device("cpu"), False, 0, 1), 0, cfg.model.num_classes)
    cfg = load_config(None, [f"data.path={demo_data}", "data.backend=torchvision", "data.workers=0",
                             "model.num_classes=12"])  # a wider head is allowed
    assert build_data(cfg.data, Placement(torch.device("cpu"), False, 0, 1), 0, 12).num_classes == 10


def test_the_chance_guard_fires_only_at_chance_with_training_well_above():
    # 10 classes, 130 val images: chance 10%, noise 3 x sqrt(0.1 x 0.9 / 130) = 7.89 points.
    assert val_at_chance(0.0, 60.0, 10, 130).startswith("val top-1 at chance while train top-1 is 60%: "
                                                        "do the labels of the two splits mean the same classes?")
    assert val_at_chance(17.8, 60.0, 10, 130) is not None  # 17.8 <= 17.89
    assert val_at_chance(18.0, 60.0, 10, 130) is None  # above the noise band
    assert val_at_chance(5.0, 27.8, 10, 130) is None  # training not well above chance (needs 27.89)
    assert val_at_chance(5.0, 27.9, 10, 130) is not None
    assert val_at_chance(0.0, 100.0, 1, 130) is None


@pytest.mark.slow
def test_a_permuted_val_list_trains_with_one_warning_and_a_wandb_alert(tmp_path, demo_data):
    """Shifted val labels (label + 1 mod 10) pass the set check, since the sets are equal, but validate at
    chance: one warning line, the alert in the offline W&B run and in summary.json; training goes on."""
    val = _write_list(tmp_path / "val.txt", demo_data, "val", lambda label: (label + 1) % 10)
    run = tmp_path / "run"
    proc = run_cli("train", *FAST, f"data.path={demo_data}", f"data.val_list={val}", f"trainer.run_dir={run}",
                   "trainer.epochs=6", "optim.lr=0.4", "logging.wandb.mode=offline",
                   "trainer.precision=fp32", check=True)  # fp32: the same learning curve on every CPU type
    warnings = [line for line in proc.stderr.splitlines() if "val top-1 at chance" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: val top-1 at chance while train top-1 is ")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 6
    assert summary["alerts"] == [warnings[0].removeprefix("warning: ")]
    from pipeline.tracking.offline import read_offline_run

    (offline,) = (run / "wandb").glob("offline-run-*")
    alerts = read_offline_run(offline).alerts
    assert [(a["title"], a["level"]) for a in alerts] == [("val top-1 at chance", "WARN")]
    assert alerts[0]["text"] == summary["alerts"][0]
