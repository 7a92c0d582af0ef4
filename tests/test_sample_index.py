"""The sample index as arrays: the same samples in the same order as the old per-sample lists, built
once and mapped after, rebuilt on a change or a corrupt cache, one builder among concurrent ones,
and a forked worker that reads every entry copies (almost) nothing."""
import multiprocessing
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import sample_index, shards
from pipeline.data.folder import read_file_list, scan_folder
from pipeline.data.sample_index import SampleIndex, load_or_build, names_blob
from pipeline.data.types import DataError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sample_index, "STATS", {"built": 0, "mapped": 0})


# The old implementations (lists of (path, label) tuples), kept here as the oracle.
def old_folder(root: Path) -> list[tuple[str, int]]:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    return [(path, label) for label, name in enumerate(classes)
            for path in sorted(f.path for f in os.scandir(root / name) if f.is_file())]


def old_list(path: Path) -> list[tuple[str, int]]:
    rows = [line.strip().rpartition(" ") for line in path.read_text().splitlines() if line.strip()]
    return [(str(path.parent / name.strip()), int(label)) for name, _, label in rows]


def old_shards(split: Path) -> list[tuple[tuple[str, int, int], int]]:
    """(tar, image offset, size) and label per sample, read with tarfile, sorted by (label, key)."""
    keyed = []
    for tar_path in sorted(split.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members: dict[str, dict] = {}
            for m in tar:
                key, ext = shards.sample_key(m.name)
                members.setdefault(key, {})[ext] = m
            for key, parts in members.items():
                label = int(tar.extractfile(parts["cls"]).read())
                image = next(parts[ext] for ext in parts if ext in shards.IMAGE_EXTS)
                keyed.append((label, key, (os.path.abspath(tar_path), image.offset_data, image.size)))
    keyed.sort(key=lambda item: item[:2])
    return [(ref, label) for label, _, ref in keyed]


def test_folder_and_list_give_the_old_samples_in_order(demo_data, tmp_path):
    classes, index = scan_folder(demo_data / "train")
    assert classes == sorted(p.name for p in (demo_data / "train").iterdir())
    assert [(os.path.abspath(p), label) for p, label in old_folder(demo_data / "train")] == list(index)
    assert isinstance(index.labels, np.memmap) and sample_index.STATS == {"built": 1, "mapped": 1}
    listed = tmp_path / "lists" / "train.txt"
    listed.parent.mkdir()
    rows = [f"{os.path.relpath(p, listed.parent)} {label}" for p, label in old_folder(demo_data / "train")]
    listed.write_text("\n".join(rows[::-1]) + "\n")  # any order: a list keeps its own
    _, index = read_file_list(listed)
    assert [(os.path.normpath(p), label) for p, label in index] == [(os.path.normpath(p), label) for p, label in old_list(listed)]
    assert index[-1] == index[len(index) - 1]
    with pytest.raises(IndexError):
        index[len(index)]


def test_shards_give_the_old_samples_in_order(demo_data, tmp_path):
    from pipeline.cli import main as cli_main

    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--shard-mb", "0.05",
                     "--workers", "1"]) == 0
    split = tmp_path / "s" / "train"
    assert len(list(split.glob("*.tar"))) > 3
    (split / "info.json").unlink()  # labels from the .cls members, as for shards from other tools
    classes, index = shards.scan_shards(split)
    got = [((ref.tar, ref.offset, ref.size), label) for ref, label in index]
    assert got == old_shards(split)
    assert index[0][0].name.rpartition(".")[2].lower() in shards.IMAGE_EXTS and classes == [str(i) for i in range(10)]


def test_mapped_on_the_next_start_and_rebuilt_when_the_source_changes(demo_data, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(demo_data / "train", root)
    _, first = scan_folder(root)
    _, again = scan_folder(root)
    assert sample_index.STATS == {"built": 1, "mapped": 2} and list(first) == list(again)
    assert capsys.readouterr().err == ""
    shutil.copy(root / "blob" / sorted(os.listdir(root / "blob"))[0], root / "blob" / "zzz_new.JPEG")
    _, grown = scan_folder(root)
    assert sample_index.STATS["built"] == 2 and len(grown) == len(first) + 1
    assert grown[int((first.labels == 0).sum())][0].endswith("zzz_new.JPEG")  # the last of class 0 (blob)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {root} changed since its sample index was built: rebuilding it"]
    assert len([p for p in (tmp_path / "cache" / "sample-index").iterdir() if p.is_dir()]) == 1  # the stale one is gone
    listed = tmp_path / "l.txt"
    listed.write_text("a.jpg 0\nb.jpg 1\n")
    assert len(read_file_list(listed)[1]) == 2
    listed.write_text("a.jpg 0\nb.jpg 1\nc.jpg 1\n")
    assert len(read_file_list(listed)[1]) == 3


@pytest.mark.parametrize("damage", ["flipped label", "truncated array", "meta not json", "names shortened"])
def test_a_corrupt_cache_is_rebuilt_never_trusted(demo_data, tmp_path, capsys, damage):
    _, index = scan_folder(demo_data / "val")
    expected = list(index)
    (folder,) = [p for p in (tmp_path / "cache" / "sample-index").iterdir() if p.is_dir()]
    if damage == "flipped label":
        data = bytearray((folder / "labels.npy").read_bytes())
        data[-1] ^= 1
        (folder / "labels.npy").write_bytes(bytes(data))
    elif damage == "truncated array":
        (folder / "ends.npy").write_bytes((folder / "ends.npy").read_bytes()[:-8])
    elif damage == "meta not json":
        (folder / "meta.json").write_text("{")
    else:
        np.save(folder / "names.npy", np.load(folder / "names.npy")[:-3])
    _, rebuilt = scan_folder(demo_data / "val")
    assert list(rebuilt) == expected and sample_index.STATS["built"] == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: sample index cache {folder} is unusable (") and line.endswith("rebuilding it")


def _build_slowly(source: str, log: str, queue) -> None:
    def build() -> SampleIndex:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        blob, ends = names_blob([f"img{i}.jpg" for i in range(1000)])
        return SampleIndex(["a", "b"], blob, ends, (np.arange(1000) % 2).astype(np.int32), prefix="/x")

    index = load_or_build(Path(source), "list", [Path(source)], build)
    queue.put((index.labels.sum().item(), index[999][0], bool(index.cache)))


def test_two_concurrent_builders_build_once(tmp_path):
    source, log = tmp_path / "list.txt", tmp_path / "builds.log"
    source.write_text("x 0\n")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_build_slowly, args=(str(source), str(log), queue)) for _ in range(3)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert len(log.read_text().split()) == 1  # one built; the others waited and mapped its result
    assert results == [(500, "/x/img999.jpg", True)] * 3


def test_unwritable_cache_still_trains_on_its_own_copy(demo_data, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(blocked))  # a file: no folder can be made under it
    _, index = scan_folder(demo_data / "val")
    assert len(index) == 130 and not index.cache and sample_index.STATS == {"built": 1, "mapped": 0}


def test_a_spawned_worker_maps_the_cache_instead_of_unpickling_copies(demo_data):
    import pickle

    _, index = scan_folder(demo_data / "train")
    data = pickle.dumps(index)
    assert len(data) < 2000  # the folder's path and the classes, not the arrays
    assert list(pickle.loads(data)) == list(index)


def test_truncated_shard_names_its_file(demo_data, tmp_path):
    from pipeline.cli import main as cli_main

    assert cli_main(["prepare", "shards", str(demo_data), "--out", str(tmp_path / "s"), "--workers", "1"]) == 0
    tar = sorted((tmp_path / "s" / "train").glob("*.tar"))[-1]
    (tmp_path / "s" / "train" / "info.json").unlink()
    tar.with_suffix(".idx").unlink(missing_ok=True)
    index_text = shards.index_text(shards.scan_tar(tar))
    os.truncate(tar, tar.stat().st_size // 2)
    tar.with_suffix(".idx").write_text(index_text)  # an index that promises more than the tar holds
    with pytest.raises(DataError, match=rf"^shard {tar} ends inside \S+\.cls \(read 0 of \d+ bytes\)$"):
        shards.scan_shards(tmp_path / "s" / "train")


def _private_dirty_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise AssertionError("no Private_Dirty in smaps_rollup")


def _worker_growth(samples, queue) -> None:
    before = _private_dirty_kb()
    for i in range(len(samples)):
        path, label = samples[i]
    queue.put((_private_dirty_kb() - before) / 1024)


def _growth_of_a_forked_reader(samples) -> float:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_worker_growth, args=(samples, queue))
    worker.start()
    growth = queue.get(timeout=120)
    worker.join(timeout=60)
    return growth


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux smaps_rollup")
def test_a_forked_worker_reading_200k_entries_copies_almost_nothing(tmp_path):
    listed = tmp_path / "big.txt"
    listed.write_text("".join(f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG {i % 1000}\n" for i in range(200_000)))
    _, index = read_file_list(listed)
    assert len(index) == 200_000 and index[123_456] == (str(tmp_path / "n00000456" / "n00000456_123456.JPEG"), 456)
    mapped = _growth_of_a_forked_reader(index)
    # The old form, for scale: a forked reader's refcount updates copy the pages of every tuple.
    tuples = [(str(listed.parent / f"n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG"), i % 1000) for i in range(200_000)]
    copied = _growth_of_a_forked_reader(tuples)
    assert mapped < 2.0 and copied > 15.0, (mapped, copied)
