"""DALI fed by its parallel external-source workers (data.dali_feed_workers): the same batches as the
in-process feed, mid-epoch resume, and the bad-image rule, on folders and on shards."""
import shutil

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.factory import build_data
from pipeline.data.types import DataError, Placement

pytest.importorskip("nvidia.dali")


def _loader(path, split: str, feed: int, *extra: str):
    cfg = load_config(None, [f"data.path={path}", "data.backend=dali", "data.image_size=32", "data.batch_size=16",
                             "data.workers=1", f"data.dali_feed_workers={feed}", "data.make_demo=false", *extra])
    return getattr(build_data(cfg.data, Placement(torch.device("cpu"), True), seed=5), split)


def _epoch(loader, epoch: int = 1, start: int = 0) -> list:
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def _equal(a: list, b: list) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


@pytest.mark.parametrize("split", ["train", "val"])
def test_worker_feed_gives_the_in_process_batches(demo_data, split):
    in_process = _epoch(_loader(demo_data, split, 0))
    parallel = _loader(demo_data, split, 2)
    assert _equal(_epoch(parallel), in_process)
    if split == "train":  # a resumed epoch through the workers: the same tail, bit for bit
        assert _equal(_epoch(_loader(demo_data, split, 2), 1, 17), in_process[17:])
        assert _equal(_epoch(parallel, 2), _epoch(_loader(demo_data, split, 0), 2))  # the next epoch too


def test_worker_feed_applies_the_bad_image_rule(demo_data, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(demo_data, root)
    (root / "train" / "blob" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.JPEG"):
        _epoch(_loader(root, "train", 2))
    skipping = _loader(root, "train", 2, "data.on_bad_image=skip")
    batches = _epoch(skipping)
    assert sum(len(y) for _, y in batches) == 416 and skipping.replaced_images == 1


def test_spawned_feed_workers_give_the_same_batches(demo_data, monkeypatch):
    """On a GPU the workers are spawned (a forked CUDA context is unusable): the source must pickle
    and serve the same batches. The CPU twin of that path, with spawn forced."""
    from pipeline.data import dali

    in_process = _epoch(_loader(demo_data, "val", 0))
    monkeypatch.setattr(dali, "_start_method", lambda: "spawn")
    assert _equal(_epoch(_loader(demo_data, "val", 2)), in_process)


@pytest.mark.parametrize("resize", ["auto", "dali"])  # torch finishes the crops (CPU default) / DALI resizes (GPU graph)
def test_a_pass_reuses_the_last_finished_pipeline_with_a_new_ones_batches(demo_data, resize):
    """A pipeline build costs ~2.4 s on an H200 (docs/benchmarks.md, issue 45), paid by every epoch and
    every evaluation: a pass at the size of the last finished one reuses its pipeline, and gets exactly
    the batches a new pipeline gives, whole epochs and a resumed part of one alike."""
    size = f"data.dali_resize={resize}"
    loader = _loader(demo_data, "train", 0, size)
    passes = {(1, 0): _epoch(loader, 1), (2, 0): _epoch(loader, 2), (3, 20): _epoch(loader, 3, 20)}
    assert loader.pipelines_built == 1
    for (epoch, start), batches in passes.items():
        assert _equal(batches, _epoch(_loader(demo_data, "train", 0, size), epoch, start)), (epoch, start)
    loader.set_epoch(4, 0)
    next(iter(loader))  # a pass left midway (a stop signal, max_steps): its pipeline is not reused
    assert _equal(_epoch(loader, 5), _epoch(_loader(demo_data, "train", 0, size), 5))
    assert loader.pipelines_built == 2  # epoch 4 reused the first; epoch 5 had to build
    val = _loader(demo_data, "val", 0, size)
    assert _equal(_epoch(val, 0), _epoch(val, 0)) and val.pipelines_built == 1  # evaluation after evaluation
    parallel = _loader(demo_data, "val", 2, size)  # the workers hold a copy of the source: a build per pass
    assert _equal(_epoch(parallel, 0), _epoch(parallel, 0)) and parallel.pipelines_built == 2
