import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.data import DataError, Placement, build_data
from pipeline.data.sampler import ShardPlan
from tests.helpers import FAST, run_cli


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_shards_cover_every_image_exactly_once(world):
    seen = []
    for rank in range(world):
        plan = ShardPlan(130, rank, world, batch_size=16, train=False)
        seen += [i for batch in plan.batches(0) for i, _ in batch]
    assert sorted(seen) == list(range(130))


@pytest.mark.parametrize("world, steps, padded", [(2, 7, 12), (3, 5, 20)])
def test_train_shards_cover_every_image_each_epoch(world, steps, padded):
    """100 images, 8 per rank: ceil(100 / (8 * world)) steps on every rank, the last global batch
    filled by wrapping to the epoch's first images (12 repeats at world 2, 20 at world 3)."""
    plans = [ShardPlan(100, r, world, batch_size=8, train=True, seed=3) for r in range(world)]
    assert [p.steps_per_epoch() for p in plans] == [steps] * world  # DDP needs equal step counts
    for epoch in (0, 1):
        seen = [i for p in plans for batch in p.batches(epoch) for i, _ in batch]
        assert set(seen) == set(range(100))
        assert len(seen) - 100 == padded and all(len(b) == 8 for p in plans for b in p.batches(epoch))
    first = [i for b in plans[0].batches(0) for i, _ in b]
    assert first != [i for b in plans[0].batches(1) for i, _ in b]  # reshuffled per epoch


def test_global_batch_is_independent_of_world_size():
    one = ShardPlan(64, 0, 1, batch_size=8, train=True, seed=1).batches(0)[2]
    two = [ShardPlan(64, r, 2, batch_size=4, train=True, seed=1).batches(0)[2] for r in range(2)]
    assert sorted(one) == sorted(two[0] + two[1])


def test_resume_start_step_skips_exactly(demo_data):
    plan = ShardPlan(400, 0, 1, batch_size=32, train=True, seed=0)
    assert plan.batches(2, start_step=3) == plan.batches(2)[3:]


def test_torchvision_batches(demo_data):
    cfg = load_config(None, [f"data.path={demo_data}", "data.image_size=32", "data.batch_size=16",
                             "data.workers=0", "data.backend=torchvision"])
    data = build_data(cfg.data, Placement(torch.device("cpu"), channels_last=True), seed=0)
    assert data.num_classes == 10 and data.backend == "torchvision"
    assert data.train.num_samples == 400 and data.val.num_samples == 130
    data.val.set_epoch(0)
    images, labels = next(iter(data.val))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert -3 < float(images.mean()) < 3 and float(images.std()) > 0.2  # normalized, not 0..255
    # val/<class> order: the first 13 val images are class 0 ("blob" sorts first).
    assert labels[:13].tolist() == [0] * 13 and labels[13:16].tolist() == [1] * 3
    assert sum(len(lbl) for _, lbl in data.val) == 130


# Unreadable images under fail and skip, in both backends: tests/test_faults.py
# (test_bad_data_through_check_and_training).


def test_unusual_images_are_converted(tmp_path):
    from pipeline.data.folder import load_rgb

    Image.new("CMYK", (20, 10), (10, 20, 30, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (20, 10), 100).save(tmp_path / "gray.jpg")
    Image.new("I;16", (20, 10), 40000).save(tmp_path / "deep.png")
    Image.new("RGB", (20, 10)).save(tmp_path / "png_named.JPEG", format="PNG")
    for name in ("cmyk.jpg", "gray.jpg", "deep.png", "png_named.JPEG"):
        img = load_rgb(str(tmp_path / name))
        assert img.mode == "RGB" and img.size == (20, 10)
    assert load_rgb(str(tmp_path / "deep.png")).getpixel((0, 0))[0] == 40000 // 256


def test_missing_dataset_and_empty_class(tmp_path):
    proc = run_cli("train", *FAST, f"data.path={tmp_path / 'nope'}", "data.make_demo=false", quick=True)
    assert proc.returncode == 2 and f"dataset folder not found: {tmp_path / 'nope'}" in proc.stderr
    # A mistyped path with the demo job's defaults (make_demo=true) must not get demo images written to it.
    proc = run_cli("train", *FAST, f"data.path={tmp_path / 'imagnet'}", quick=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: dataset folder not found: {tmp_path / 'imagnet'} (data.path; the demo dataset is created only "
        f"at data/demo, or by `pipeline make-demo-data {tmp_path / 'imagnet'}`)"]
    assert not (tmp_path / "imagnet").exists()
    (tmp_path / "ds" / "train").mkdir(parents=True)
    proc = run_cli("train", *FAST, f"data.path={tmp_path / 'ds'}", quick=True)
    assert proc.returncode == 2 and f"no class folders in {tmp_path / 'ds' / 'train'}" in proc.stderr
    shutil.rmtree(tmp_path / "ds")
    for split in ("train", "val"):
        (tmp_path / "ds" / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ds" / split / "a" / "x.jpg")
        (tmp_path / "ds" / split / "empty").mkdir()
    proc = run_cli("train", *FAST, f"data.path={tmp_path / 'ds'}", quick=True)
    assert proc.returncode == 2 and "has no images" in proc.stderr and "empty" in proc.stderr


def test_cifar10_python_format(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        (folder / name).write_bytes(pickle.dumps(batch))
    cfg = load_config(None, [f"data.path={tmp_path}", "data.dataset=cifar10", "data.image_size=32",
                             "data.batch_size=10", "data.workers=0", "data.cifar_holdout=10"])
    data = build_data(cfg.data, Placement(torch.device("cpu"), channels_last=False), seed=0)
    assert (data.train.num_samples, data.val.num_samples, data.num_classes) == (90, 10, 10)
    data.train.set_epoch(0)
    images, labels = next(iter(data.train))
    assert images.shape == (10, 3, 32, 32)


def test_dali_cpu_pipeline_batches_and_exact_validation(demo_data):
    pytest.importorskip("nvidia.dali")
    for world in (1, 2, 3):
        total, labels_seen = 0, []
        for rank in range(world):
            cfg = load_config(None, [f"data.path={demo_data}", "data.image_size=32", "data.batch_size=16",
                                     "data.backend=dali", "data.workers=1"])
            data = build_data(cfg.data, Placement(torch.device("cpu"), True, rank, world), seed=0)
            assert data.backend == "dali"
            data.val.set_epoch(0)
            for images, labels in data.val:
                assert images.shape[1:] == (3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)
                total += len(labels)
                labels_seen += labels.tolist()
        assert total == 130  # no padded repeats, no dropped tail
        assert sorted(labels_seen) == sorted([c for c in range(10) for _ in range(13)])


def test_dali_and_torchvision_cut_the_same_crops(demo_data):
    """Same files, same windows, same flips at a given epoch and step: the two backends' train
    batches differ only by decoder and resize rounding."""
    pytest.importorskip("nvidia.dali")
    batches = {}
    for backend in ("torchvision", "dali"):
        cfg = load_config(None, [f"data.path={demo_data}", "data.image_size=32", "data.batch_size=16",
                                 f"data.backend={backend}", "data.workers=1"])
        data = build_data(cfg.data, Placement(torch.device("cpu"), True), 0)
        data.train.set_epoch(1, start_step=2)
        batches[backend] = next(iter(data.train))
    # Measured: mean 0.0008, 99th percentile 0.018; the same batch mirrored differs by a mean of
    # 0.47, so any other window or flip would show.
    _assert_same_images(batches["torchvision"], batches["dali"])


def _assert_same_images(first, second):
    """Same labels, pixels equal up to resize/decoder rounding (one uint8 level is 0.017 here)."""
    assert first[1].tolist() == second[1].tolist()
    difference = (first[0] - second[0]).abs()
    assert float(difference.mean()) < 0.01 and float(difference.quantile(0.99)) < 0.05


def test_dali_resume_gives_identical_batches(demo_data):
    """Under progressive resizing too: epoch 1 of a 24 -> 40 px ramp is 32 px."""
    pytest.importorskip("nvidia.dali")
    cfg = load_config(None, [f"data.path={demo_data}", "data.image_size=40", "data.batch_size=16",
                             "data.backend=dali", "data.workers=2", "data.image_size_start=24", "data.size_ramp=[0,2]",
                             "data.size_step=8"])
    loader = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0).train
    loader.set_epoch(1)
    whole = list(loader)
    resumed = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0).train
    resumed.set_epoch(1, start_step=20)
    tail = list(resumed)
    assert len(tail) == len(whole) - 20 == 5 and whole[0][0].shape[-1] == 32
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[20:], tail))


@pytest.mark.slow
def test_dali_training_beats_chance(tmp_path, demo_data):
    pytest.importorskip("nvidia.dali")
    import json

    run = tmp_path / "run"
    run_cli("train", *FAST, "data.backend=dali", f"data.path={demo_data}", f"trainer.run_dir={run}",
            "trainer.epochs=6", "optim.lr=0.4", check=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data_backend"] == "dali" and summary["final/val/top1"] > 25


def test_check_data_reports_problems(tmp_path, demo_data):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(demo_data, root)
    proc = run_cli("check-data", str(root), "--workers", "2", quick=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok")
    assert "train: 10 classes, 400 images" in proc.stdout and "val: 10 classes, 130 images" in proc.stdout
    (root / "train" / "blob" / "zero.JPEG").write_bytes(b"")
    (root / "train" / "blob" / "random.JPEG").write_bytes(os.urandom(500))
    (root / "val" / "empty_class").mkdir()
    proc = run_cli("check-data", str(root), "--workers", "2", quick=True)
    assert proc.returncode == 1
    assert "zero.JPEG" in proc.stdout and "random.JPEG" in proc.stdout
    assert f"empty class folder: {root / 'val' / 'empty_class'}" in proc.stdout
    assert "class in only one split: empty_class" in proc.stdout
    assert proc.stdout.strip().endswith("4 problem(s) found")


def _two_tone_dataset(root: Path) -> Path:
    """Square PNGs (lossless): left half one colour, right half another, two classes of four."""
    import numpy as np

    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32], image[:, 32:] = (40, 80, 120), (200, 160, 100)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for k in range(4):
                Image.fromarray(image).save(root / split / name / f"{k}.png")
    return root


@pytest.mark.parametrize("resize", ["torch", "dali"])
def test_dali_batches_values_flip_and_layout(tmp_path, resize):
    """Both ways of finishing DALI's crops (torch on CPU; DALI's own ops, the GPU graph's CPU twin)
    give normalized float32 in the asked layout, labels from folder order, and flip when asked."""
    pytest.importorskip("nvidia.dali")
    root = _two_tone_dataset(tmp_path / "ds")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    left = ((torch.tensor([40, 80, 120]) / 255 - mean) / std).view(1, 3, 1, 1)
    right = ((torch.tensor([200, 160, 100]) / 255 - mean) / std).view(1, 3, 1, 1)

    def first_batch(split, channels_last, *overrides):
        cfg = load_config(None, [f"data.path={root}", "data.backend=dali", "data.image_size=32", "data.batch_size=8",
                                 "data.workers=1", "data.crop_fraction=1.0", f"data.dali_resize={resize}", *overrides])
        data = build_data(cfg.data, Placement(torch.device("cpu"), channels_last), seed=0)
        loader = data.val if split == "val" else data.train
        loader.set_epoch(0)
        return next(iter(loader))

    images, labels = first_batch("val", True)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last) and labels.tolist() == [0] * 4 + [1] * 4
    assert torch.allclose(images[:, :, :, :14], left.expand(8, 3, 32, 14), atol=0.03)
    assert torch.allclose(images[:, :, :, 18:], right.expand(8, 3, 32, 14), atol=0.03)

    whole = ["data.scale=[1.0,1.0]", "data.ratio=[1.0,1.0]"]  # the random crop is the whole image
    images, _ = first_batch("train", False, *whole, "data.hflip=0.0")
    assert images.is_contiguous() and torch.allclose(images[:, :, :, :14], left.expand(8, 3, 32, 14), atol=0.03)
    images, _ = first_batch("train", True, *whole, "data.hflip=1.0")
    assert torch.allclose(images[:, :, :, :14], right.expand(8, 3, 32, 14), atol=0.03)  # mirrored


def test_dali_torch_resize_matches_dali_resize(demo_data):
    """The CPU default (DALI decode, torch resize) gives the images DALI's own resize gives."""
    pytest.importorskip("nvidia.dali")
    batches = {}
    for resize in ("torch", "dali"):
        cfg = load_config(None, [f"data.path={demo_data}", "data.backend=dali", "data.image_size=32",
                                 "data.batch_size=32", "data.workers=1", f"data.dali_resize={resize}"])
        data = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0)
        data.val.set_epoch(0)
        batches[resize] = next(iter(data.val))
    # Both are antialiased bilinear and differ in rounding only (measured: mean 0.003, 99th
    # percentile 0.018). A one-pixel shift gives a mean of 0.19, a flip 0.42.
    _assert_same_images(batches["torch"], batches["dali"])


def test_dali_torch_resize_is_cpu_only(demo_data):
    pytest.importorskip("nvidia.dali")
    from pipeline.data.dali import _resize_in_torch

    cfg = load_config(None, ["data.dali_resize=torch"]).data
    assert _resize_in_torch(cfg, torch.device("cpu"), True)
    with pytest.raises(DataError, match="CPU only"):
        _resize_in_torch(cfg, torch.device("cuda"), True)
    auto = load_config(None, []).data
    assert _resize_in_torch(auto, torch.device("cpu"), True) and not _resize_in_torch(auto, torch.device("cuda"), True)
    # An augmentation policy runs in the DALI graph after DALI's resize; validation keeps torch's.
    policy = load_config(None, ["data.auto_augment=ta_wide"]).data
    assert not _resize_in_torch(policy, torch.device("cpu"), True) and _resize_in_torch(policy, torch.device("cpu"), False)
    with pytest.raises(DataError, match="dali_resize=auto or dali"):
        _resize_in_torch(load_config(None, ["data.auto_augment=ta_wide", "data.dali_resize=torch"]).data,
                         torch.device("cpu"), True)


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_file_lists_replace_the_folders(tmp_path, demo_data, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    # Lists in DALI's file_list format, relative to the list's folder: two classes, relabelled.
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("".join(f"{demo_data}/train/{name}/{name}_{i:04d}.JPEG {label}\n"
                                             for label, name in enumerate(("rings", "dots")) for i in range(12)))
    (lists / "images").symlink_to(demo_data / "val")
    (lists / "val.txt").write_text("# relative paths\n" + "".join(f"images/{name}/{name}_{i:04d}.JPEG {label}\n"
                                                               for label, name in enumerate(("rings", "dots")) for i in range(5)))
    cfg = load_config(None, ["data.path=/nonexistent", f"data.train_list={lists / 'train.txt'}",
                             f"data.val_list={lists / 'val.txt'}", f"data.backend={backend}", "data.image_size=32",
                             "data.batch_size=4", "data.workers=1"])
    data = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0)
    assert (data.num_classes, data.train.num_samples, data.val.num_samples) == (2, 24, 10)
    data.val.set_epoch(0)
    assert [int(x) for _, labels in data.val for x in labels] == [0] * 5 + [1] * 5
    data.train.set_epoch(0)
    assert sum(len(labels) for _, labels in data.train) == 24

    (lists / "bad.txt").write_text("images/rings/rings_0000.JPEG 0\nimages/dots/dots_0000.JPEG one\n")
    bad = load_config(None, [f"data.train_list={lists / 'bad.txt'}", f"data.val_list={lists / 'val.txt'}",
                             f"data.backend={backend}"])
    with pytest.raises(DataError, match="bad.txt line 2: expected"):
        build_data(bad.data, Placement(torch.device("cpu"), True), seed=0)


def test_dali_device_id_is_explicit_for_a_bare_cuda_device(monkeypatch):
    """torch.device("cuda") has no index; DALI reads device_id=None as "CPU only" and could not build
    the mixed decoder, so the loader passes the current CUDA device instead."""
    pytest.importorskip("nvidia.dali")
    from pipeline.data import dali

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert dali._dali_device_id(torch.device("cpu")) is None
    assert dali._dali_device_id(torch.device("cuda")) == 3
    assert dali._dali_device_id(torch.device("cuda", 1)) == 1
