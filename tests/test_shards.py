"""WebDataset shards as a data.path: the folder's batches in both backends, shards from other tools,
index files built once (also read-only), one open per shard, and a training run equal to the folder's."""
import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.data import shards
from pipeline.data.factory import build_data
from pipeline.data.labels import display_names
from pipeline.data.types import DataError, Placement
from tests.helpers import FAST, run_cli


def _batches(path: Path, backend: str, split: str, workers: int = 0, extra: tuple = ()) -> tuple[list, list[str]]:
    cfg = load_config(None, [f"data.path={path}", f"data.backend={backend}", "data.batch_size=16",
                             f"data.workers={workers}", "data.image_size=32", "data.make_demo=false", *extra])
    bundle = build_data(cfg.data, Placement(torch.device("cpu"), False), seed=3)
    loader = getattr(bundle, split)
    loader.set_epoch(1, 0)
    return [(x.clone(), y.clone()) for x, y in loader], bundle.classes


def assert_same_batches(folder: Path, sharded: Path, backends=("torchvision", "dali")) -> None:
    for backend in backends:
        for split in ("train", "val"):
            expected, _ = _batches(folder, backend, split)
            got, _ = _batches(sharded, backend, split)
            assert len(got) == len(expected) > 0
            for (xa, ya), (xb, yb) in zip(expected, got):
                assert torch.equal(ya, yb) and torch.equal(xa, xb), (backend, split)


@pytest.fixture(scope="module")
def foreign(demo_data, tmp_path_factory):
    """demo_data written by the `webdataset` library's ShardWriter, no index, mixed image extensions."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("foreign")
    for split in ("train", "val"):
        (root / split).mkdir()
        classes = sorted(p.name for p in (demo_data / split).iterdir())
        files = [(f, label) for label, name in enumerate(classes) for f in sorted((demo_data / split / name).iterdir())]
        files = files[::2] + files[1::2]  # stored out of order
        with wds.ShardWriter(str(root / split / "part-%04d.tar"), maxcount=97, verbose=0) as sink:
            for n, (f, label) in enumerate(files):
                ext = ("jpg", "jpeg")[n % 2]
                sink.write({"__key__": f.stem, ext: f.read_bytes(), "cls": label})
    return root


def test_webdataset_shardwriter_output_reads_as_the_folder_does(demo_data, foreign, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    assert not list(foreign.rglob("*.idx"))
    assert_same_batches(demo_data, foreign)
    indexes = sorted(foreign.rglob("*.idx"))  # built once, beside the tars
    assert len(indexes) == len(list(foreign.rglob("*.tar")))
    first = indexes[0].read_text().splitlines()
    assert first[0] == "v1.2 97" and first[1].split()[0] == "cls" and int(first[1].split()[1]) % 512 == 0
    _, classes = _batches(foreign, "torchvision", "val")
    assert classes == [str(i) for i in range(10)]


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` made read-only: by permissions for a normal user, by a read-only bind mount for root."""
    if os.geteuid() != 0:
        paths = [folder, *folder.rglob("*")]
        for path in paths:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield folder
        finally:
            for path in paths:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        return
    mount = folder.with_name(folder.name + "-ro")
    mount.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(mount)], capture_output=True).returncode:
        pytest.skip("root without permission to bind-mount read-only: cannot make a read-only folder")
    try:
        yield mount
    finally:
        shards.close_shards()  # an open file keeps the mount busy
        subprocess.run(["umount", str(mount)], check=True)


def test_read_only_shards_cache_their_index_in_the_user_cache(foreign, tmp_path, monkeypatch):
    shutil.copytree(foreign, tmp_path / "copy", ignore=shutil.ignore_patterns("*.idx"))
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    with _read_only(tmp_path / "copy") as ro:
        assert not os.access(ro / "train", os.W_OK) or not _writable(ro / "train")
        _batches(ro, "torchvision", "val")
        cached = list((tmp_path / "cache" / "wds-index").glob("*.idx"))
        assert len(cached) == len(list(ro.rglob("*.tar"))) and not list(ro.rglob("*.idx"))
        mtimes = [p.stat().st_mtime_ns for p in cached]
        _batches(ro, "torchvision", "val")  # read again: from the cache, not rebuilt
        assert [p.stat().st_mtime_ns for p in cached] == mtimes


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_one_open_per_shard_not_per_image(demo_data, tmp_path):
    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "1",
                     "--shard-mb", "0.2"]) == 0
    shards._open.clear()
    before = shards.OPENED["shards"]
    batches, _ = _batches(tmp_path / "s", "torchvision", "train", workers=0)
    images = sum(len(y) for _, y in batches)
    opened = shards.OPENED["shards"] - before
    assert opened == len(list((tmp_path / "s" / "train").glob("*.tar"))) and images == 400 > 10 * opened


def test_prepare_shards_converts_a_folder_and_a_file_list(demo_data, tmp_path):
    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "2",
                     "--shard-mb", "0.3"]) == 0
    assert_same_batches(demo_data, tmp_path / "s", backends=("torchvision",))
    info = json.loads((tmp_path / "s" / "train" / "info.json").read_text())
    assert info["samples"] == 400 and len(info["classes"]) == 10 and sum(s["samples"] for s in info["shards"]) == 400
    lines = [f"{p.relative_to(demo_data.parent)} {sorted(q.name for q in (demo_data / 'val').iterdir()).index(p.parent.name)}"
             for p in sorted((demo_data / "val").rglob("*.JPEG"))]
    (demo_data.parent / "val_list.txt").write_text("\n".join(lines) + "\n")
    assert cli_main(["prepare", "shards", str(demo_data), "--val-list", str(demo_data.parent / "val_list.txt"),
                     "--out", str(tmp_path / "l"), "--workers", "1"]) == 0
    assert json.loads((tmp_path / "l" / "val" / "info.json").read_text())["samples"] == 130


def test_bad_shards_are_one_line_errors(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(DataError, match="cannot read shard"):
        shards.scan_shards(tmp_path / "train")
    (tmp_path / "train" / "a.idx").write_text("v1.2 3\ncls 512 1 a.cls\n")
    with pytest.raises(DataError, match="lists 1 samples, its header says 3"):
        shards.scan_shards(tmp_path / "train")


def test_class_words_name_the_classes(tmp_path):
    (tmp_path / "classes.txt").write_text("n01 tench, Tinca tinca\nn02 crane\nn03 crane\nn04 goldfish\n")
    assert display_names(tmp_path, ["n01", "n02", "n03", "n04"]) == ["tench", "crane (n02)", "crane (n03)", "goldfish"]
    assert display_names(tmp_path, ["n01", "n09"]) == ["n01", "n09"]  # not every class named: keep the folders'


@pytest.mark.slow
def test_training_on_prepared_shards_equals_the_hand_built_folder(demo_data, tmp_path):
    """Same samples, same batches: the same run on shards and on the folder gives the same top-1,
    and predict on the val shards names classes by their words."""
    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "1",
                     "--shard-mb", "0.25"]) == 0
    (tmp_path / "s" / "classes.txt").write_text("".join(f"{c} {c.replace('_', ' ')} pattern\n"
                                                        for c in sorted(p.name for p in (demo_data / "train").iterdir())))
    results = {}
    for name, path in (("folder", demo_data), ("shards", tmp_path / "s")):
        run = tmp_path / f"run-{name}"
        run_cli("train", *FAST, "trainer.epochs=1", "trainer.precision=fp32", f"data.path={path}",
                "data.make_demo=false", f"trainer.run_dir={run}", check=True)
        results[name] = json.loads((run / "summary.json").read_text())
    assert results["shards"]["final/val/top1"] == results["folder"]["final/val/top1"]
    assert results["shards"]["val/samples"] == 130
    pred = run_cli("predict", "--checkpoint", str(tmp_path / "run-shards"), str(tmp_path / "s" / "val"), "--json",
                   "--topk", "1", check=True)
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    assert len(rows) == 130 and rows[0]["file"].startswith(str(tmp_path / "s" / "val"))
    assert all(r["top"][0]["class"].endswith(" pattern") for r in rows)
    assert "pattern" in (tmp_path / "run-shards" / "MODEL_CARD.md").read_text()
    check = run_cli("check-data", str(tmp_path / "s"), quick=True)
    assert check.returncode == 0 and "val: 10 classes, 130 images" in check.stdout


def test_shards_resume_mid_epoch_and_split_validation_like_the_folder(demo_data, tmp_path):
    """Resume at step 9 of an epoch, and validation over 2 and 3 ranks: the folder's batches exactly."""
    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "1",
                     "--shard-mb", "0.3"]) == 0

    def loader(path, split, rank=0, world=1):
        cfg = load_config(None, [f"data.path={path}", "data.backend=dali", "data.batch_size=16", "data.workers=1",
                                 "data.image_size=32", "data.make_demo=false"])
        return getattr(build_data(cfg.data, Placement(torch.device("cpu"), False, rank, world), seed=3), split)

    whole, resumed = loader(demo_data, "train"), loader(tmp_path / "s", "train")
    whole.set_epoch(2)
    resumed.set_epoch(2, 9)
    expected = list(whole)[9:]
    got = list(resumed)
    assert len(got) == len(expected) == 16
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))
    for world in (2, 3):
        labels = {"folder": [], "shards": []}
        for rank in range(world):
            for name, path in (("folder", demo_data), ("shards", tmp_path / "s")):
                val = loader(path, "val", rank, world)
                val.set_epoch(0)
                labels[name] += [int(y) for _, batch in val for y in batch]
        assert labels["shards"] == labels["folder"] and len(labels["shards"]) == 130


def test_dalis_own_webdataset_reader_reads_prepared_shards_with_their_index(demo_data, tmp_path):
    """The shards and `.idx` files are in DALI's format: `fn.readers.webdataset` reads every sample."""
    from nvidia.dali import fn, pipeline_def

    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "1",
                     "--shard-mb", "0.3"]) == 0
    tars = sorted((tmp_path / "s" / "train").glob("*.tar"))

    @pipeline_def(batch_size=50, num_threads=1, device_id=None)
    def read():
        jpg, cls = fn.readers.webdataset(paths=[str(t) for t in tars], index_paths=[str(t.with_suffix(".idx")) for t in tars],
                                         ext=["jpg", "cls"], random_shuffle=False, name="reader")
        return jpg, cls

    pipe = read()
    pipe.build()
    labels = []
    for _ in range(400 // 50):
        jpg, cls = pipe.run()
        labels += [int(bytes(cls.at(i)).decode()) for i in range(len(cls))]
        assert all(bytes(jpg.at(i)[:2]) == b"\xff\xd8" for i in range(len(jpg)))
    assert pipe.reader_meta("reader")["epoch_size"] == 400
    assert sorted(labels) == sorted(label for _, label in shards.scan_shards(tmp_path / "s" / "train")[1])
