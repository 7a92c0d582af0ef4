"""Training straight from object storage, against a real S3 server (SeaweedFS, tests/s3_server.py):
`prepare --out s3://` and its resumable upload, an s3:// run equal to the same shards on local disk in
both backends, the streaming order (world-independent, resumed at the same and at another size), the
bounded node cache (limit kept, one download per shard per node), and bad input and a dying server."""
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.data import shard_cache
from pipeline.data.factory import build_data
from pipeline.data.sampler import ShardPlan, blocks_order
from pipeline.data.types import Placement
from pipeline.metrics import read_metrics
from tests.helpers import FAST, REPO, run_cli
from tests.s3_server import SeaweedS3
from tests.test_distributed import torchrun

URL = "s3://pipeline-data/demo"
SHARDS = 10  # train shards; the val split gets 4


# -- the streaming order, without a server ------------------------------------------------------


def _steps(shard_of, world: int, batch: int, epoch: int, acc: int = 1) -> list[list[int]]:
    """Per optimizer step, the sorted samples all ranks use."""
    plans = [ShardPlan(len(shard_of), r, world, batch, True, seed=5, accumulation=acc, shard_of=shard_of, window=4)
             for r in range(world)]
    per_rank = [p.batches(epoch) for p in plans]
    steps = len(per_rank[0]) // acc
    return [sorted(i for r in range(world) for micro in per_rank[r][s * acc:(s + 1) * acc] for i, _ in micro)
            for s in range(steps)]


def test_blocks_order_is_the_same_stream_at_every_world_size_and_reads_few_shards_at_once():
    shard_of = np.repeat(np.arange(12), [40] * 11 + [23])  # 12 shards, the last one short
    stream = _steps(shard_of, 1, 24, epoch=3)
    assert _steps(shard_of, 2, 12, epoch=3) == stream == _steps(shard_of, 4, 6, epoch=3) == _steps(shard_of, 2, 6, 3, 2)
    used = [i for step in stream for i in step]
    assert sorted(set(used)) == list(range(len(shard_of)))  # every sample, padding only at the end
    assert len(used) - len(shard_of) < 24 and _steps(shard_of, 1, 24, epoch=4) != stream
    # Each window of 4 shards is read before the next one starts, and at world 2 each rank reads 2 of them.
    gen = torch.Generator().manual_seed(5 * 10_007 + 3)
    order = blocks_order(shard_of, 4, gen)
    window_of = np.empty(12, dtype=int)
    window_of[torch.randperm(12, generator=torch.Generator().manual_seed(5 * 10_007 + 3)).numpy()] = np.arange(12) // 4
    assert np.all(np.diff(window_of[shard_of[order]]) >= 0) and sorted(order.tolist()) == list(range(len(shard_of)))
    rank0 = ShardPlan(len(shard_of), 0, 2, 12, True, seed=5, shard_of=shard_of, window=4).indices(3)
    assert len(set(shard_of[rank0[:80]].tolist())) == 2


def test_validation_goes_shard_by_shard_and_sees_every_image_once():
    shard_of = np.array([3, 0, 2, 1, 0, 3, 2, 1, 1, 0])
    seen = [ShardPlan(10, r, 3, 2, False, shard_of=shard_of, window=2).indices(0) for r in range(3)]
    assert sorted(i for part in seen for i in part) == list(range(10))
    assert [int(shard_of[i]) for i in seen[0]] == sorted(int(shard_of[i]) for i in seen[0])


# -- a real server ------------------------------------------------------------------------------


def _shard_mb(demo_data: Path) -> str:
    """The shard size that cuts the demo's train split into SHARDS shards."""
    train_bytes = sum(f.stat().st_size for f in (demo_data / "train").rglob("*.JPEG"))
    return f"{train_bytes / SHARDS / 2**20 * 1.0001:.6f}"


@contextlib.contextmanager
def _environ(env: dict):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def s3(tmp_path_factory, demo_data):
    """SeaweedFS with the demo data prepared straight into it (10 train shards), and the same shards
    on local disk (the staging copy `prepare` uploaded from)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        env = {**server.env(), "PIPELINE_CACHE_DIR": str(tmp_path_factory.mktemp("user-cache"))}
        with _environ(env):
            assert cli_main(["prepare", "shards", str(demo_data), "--out", URL, "--workers", "1",
                             "--shard-mb", _shard_mb(demo_data)]) == 0
            from pipeline.data.upload import staging_folder

            local = staging_folder(URL)
        assert len(list((local / "train").glob("*.tar"))) == SHARDS
        yield {"server": server, "env": env, "local": local, "runs": {}}
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    for key, value in s3["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PIPELINE_S3_CACHE_DIR", str(tmp_path / "node-cache"))
    if s3["server"].proc is None:
        s3["server"].start()
    return s3


def _batches(path, backend: str, split: str, extra=()) -> list:
    cfg = load_config(None, [f"data.path={path}", f"data.backend={backend}", "data.batch_size=16", "data.workers=0",
                             "data.image_size=32", "data.make_demo=false", "data.shuffle_window=2", *extra])
    loader = getattr(build_data(cfg.data, Placement(torch.device("cpu"), False), seed=3), split)
    loader.set_epoch(1, 0)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_an_s3_run_reads_the_same_batches_as_its_shards_on_local_disk_in_both_backends(s3_env, tmp_path):
    for backend in ("torchvision", "dali"):
        for split in ("train", "val"):
            expected = _batches(s3_env["local"], backend, split, ["data.shuffle=blocks"])
            got = _batches(URL, backend, split)  # data.shuffle=auto streams (blocks) from s3://
            assert len(got) == len(expected) == {"train": 25, "val": 9}[split]
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got)), (backend, split)
    ledger = [json.loads(line) for line in next((tmp_path / "node-cache").rglob("ledger.jsonl")).read_text().splitlines()]
    assert len(ledger) == len({row["key"] for row in ledger}) == SHARDS + 4  # both backends: one download each


def test_prepare_reruns_upload_only_what_is_missing_or_different(s3_env, demo_data):
    from pipeline.data import object_store
    from pipeline.data.object_store import ObjectUrl

    args = ["prepare", "shards", str(demo_data), "--out", URL, "--workers", "1",
            "--shard-mb", _shard_mb(demo_data)]
    target = ObjectUrl.parse(f"{URL}/train/train-000003.idx")
    object_store.client().put_object(Bucket=target.bucket, Key=target.key, Body=b"damaged")
    object_store.client().delete_object(Bucket=target.bucket, Key=f"{URL[len('s3://pipeline-data/'):]}/val/val-000001.tar")
    proc = run_cli(*args, env=s3_env["env"], quick=True)
    assert proc.returncode == 0, proc.stderr
    files = sum(1 for p in s3_env["local"].rglob("*") if p.is_file() and not p.name.startswith("."))
    assert f"upload: 2 file(s) uploaded to {URL}, {files - 2} already there" in proc.stderr
    assert object_store.read_object(target) == (s3_env["local"] / "train" / "train-000003.idx").read_bytes()


@pytest.mark.slow
def test_a_cache_limit_of_three_shards_finishes_and_holds_the_limit(s3_env, tmp_path):
    sizes = sorted((f.stat().st_size for f in (s3_env["local"] / "train").glob("*.tar")), reverse=True)
    need = sum(sizes[:3])  # a window of 2 shards plus the next
    cache = tmp_path / "node-cache"
    small = run_cli("train", *FAST, f"data.path={URL}", "data.shuffle_window=2", f"data.cache_limit={need - 1}",
                    f"trainer.run_dir={tmp_path / 'refused'}", quick=True)
    assert small.returncode == 2 and small.stderr.strip().splitlines()[-1] == (
        f"error: data.cache_limit={need - 1} bytes cannot hold what a node reads at once (a window of 2 shards, "
        f"0 more the loader reads ahead, and the next): the smallest limit that works is {need} bytes "
        f"({need / 2**30:.2f} GiB)")
    ahead = run_cli("train", *FAST, "data.workers=2", f"data.path={URL}", "data.shuffle_window=2",
                    f"data.cache_limit={need}", f"trainer.run_dir={tmp_path / 'refused'}", quick=True)
    assert ahead.returncode == 2 and "a window of 2 shards, 7 more the loader reads ahead" in ahead.stderr  # 8 x 32 / 40
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            for root in (cache / "s3-shards").glob("pipeline-data-*") if (cache / "s3-shards").is_dir() else []:
                published, reserved = shard_cache._usage(root)
                peak[0] = max(peak[0], sum(s for _, s, _ in published) + reserved)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = run_cli("train", *FAST, f"data.path={URL}", "data.shuffle_window=2",
                       f"data.cache_limit={need}", "trainer.epochs=2", f"trainer.run_dir={tmp_path / 'run'}",
                       env={"PIPELINE_S3_CACHE_DIR": str(cache)})
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["val/samples"] == 130
    # The limit, plus a shard in flight per thread that may download (the reader and the prefetcher)
    # when every cached shard is in use: the reservation is made before the bytes arrive.
    assert 0 < peak[0] <= need + 2 * sizes[0], (peak[0], need)
    ledger = [json.loads(line) for line in next(cache.rglob("ledger.jsonl")).read_text().splitlines()]
    print(f"downloads for 2 epochs of {SHARDS} train shards (+4 val) at a limit of 3: {len(ledger)}")


def _common(s3_env, run: Path, workers: int = 0) -> list[str]:
    return [*FAST, f"data.path={URL}", f"data.workers={workers}", "data.shuffle_window=2", "trainer.precision=fp32",
            "model.frozen_bn=true", "trainer.epochs=2", "trainer.max_steps=12", "data.batch_size=16",
            "trainer.log_every=1", "trainer.checkpoint_every=5", "trainer.keep_checkpoints=10",
            "trainer.plan_world_size=2", f"trainer.run_dir={run}"]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run) if "train/loss" in r}


def _straight(s3_env, tmp_path_factory, world: int) -> Path:
    """The run that never stopped at this world size (2 ranks x 2 loader workers at world 2)."""
    if world not in s3_env["runs"]:
        run = tmp_path_factory.mktemp(f"s3-straight-{world}")
        cache = run.parent / f"{run.name}-cache"
        common = _common(s3_env, run, workers=2 if world == 2 else 0)
        env = {"PIPELINE_S3_CACHE_DIR": str(cache)}
        proc = torchrun(2, "train", *common, env=env) if world == 2 else run_cli("train", *common, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        s3_env["runs"][world] = (run, cache)
    return s3_env["runs"][world][0]


@pytest.mark.slow
def test_two_ranks_with_two_workers_download_each_shard_once_per_node(s3_env, tmp_path_factory):
    _straight(s3_env, tmp_path_factory, 2)
    cache = s3_env["runs"][2][1]
    ledger = [json.loads(line) for line in next(cache.rglob("ledger.jsonl")).read_text().splitlines()]
    counts = Counter(row["key"] for row in ledger)
    assert len(counts) == SHARDS + 4 and set(counts.values()) == {1}, counts
    assert len({row["pid"] for row in ledger}) >= 2  # downloads came from more than one process
    # No secret in what the run kept: config, metrics, logs, checkpoints, model card, W&B's offline files.
    run = s3_env["runs"][2][0]
    secret = s3_env["env"]["AWS_SECRET_ACCESS_KEY"].encode()
    kept = [p for p in run.rglob("*") if p.is_file()]
    assert len(kept) > 5 and not [p for p in kept if secret in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_the_streaming_order_resumes_at_another_world_size(s3_env, tmp_path_factory, tmp_path, first, second):
    """A crash at step 7 (checkpoint at 5) at one size, resumed at the other: the losses of the run
    that never stopped at the second size (fp32, frozen BN; tolerances as in tests/test_elastic.py)."""
    straight = _straight(s3_env, tmp_path_factory, second)
    moved = tmp_path / "moved"
    env = {"PIPELINE_S3_CACHE_DIR": str(tmp_path / "cache")}
    launch = (lambda world, *a, **k: torchrun(2, *a, **k) if world == 2 else run_cli(*a, **k))
    crash = launch(first, "train", *_common(s3_env, moved), env={**env, "PIPELINE_FAULT_RAISE_AT_STEP": "7"})
    assert crash.returncode != 0
    proc = launch(second, "train", *_common(s3_env, moved, workers=2 if second == 2 else 0), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at world" in proc.stdout
    a, b = _losses(straight), _losses(moved)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for k in range(6, 13):
        assert abs(a[k] - b[k]) <= (2e-5 if k <= 8 else 1e-3) * abs(a[k]), (k, a[k], b[k])


def _one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_bad_store_input_is_one_line_and_exit_2_before_training(s3_env, tmp_path):
    from tests.s3_server import _free_ports

    cases = [
        ("s3://no-such-bucket-here/demo", {}, "bucket not found: no-such-bucket-here"),
        ("s3://pipeline-data/nothing-here", {}, "no shards (*.tar) under s3://pipeline-data/nothing-here/train"),
        (URL, {"AWS_SECRET_ACCESS_KEY": "wrong"}, "S3 refused the credentials for s3://pipeline-data/demo"),
        (URL, {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_ports(1)[0]}"}, "does not answer"),
    ]
    for path, env, expected in cases:
        proc = run_cli("train", *FAST, f"data.path={path}", f"trainer.run_dir={tmp_path / 'run'}",
                       env={"PIPELINE_S3_CACHE_DIR": str(tmp_path / "c"), **env}, quick=True, timeout=120)
        assert proc.returncode == 2 and expected in _one_line_error(proc), (path, proc.stderr[-1500:])
        assert "wrong" not in proc.stderr and "pipeline-test-secret" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_truncated_object_is_named_as_a_truncated_local_shard_is(s3_env, tmp_path):
    """The same shards under another prefix, one train tar cut short after upload: the run stops with
    one line naming the s3:// shard and the member it ends inside (exit 2, not requeued)."""
    from pipeline.data import object_store

    client, bucket = object_store.client(), "pipeline-data"
    for path in sorted(s3_env["local"].rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            if path.name == "train-000004.tar":
                body = body[: len(body) // 2]
            client.put_object(Bucket=bucket, Key=f"cut/{path.relative_to(s3_env['local']).as_posix()}", Body=body)
    proc = run_cli("train", *FAST, "data.path=s3://pipeline-data/cut", f"trainer.run_dir={tmp_path / 'run'}",
                   env={"PIPELINE_S3_CACHE_DIR": str(tmp_path / "c")}, quick=True, timeout=120)
    line = _one_line_error(proc)
    assert proc.returncode == 2 and "shard s3://pipeline-data/cut/train/train-000004.tar ends inside" in line, line


def test_slurm_passes_an_s3_data_path_and_the_cache_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    dry = subprocess.run(["bash", "slurm/resnet50.sh"], capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
                         env={**env, "DRY_RUN": "1", "DATA_PATH": "s3://datasets/imagenet", "CACHE_DIR": "/scratch/c",
                              "CACHE_LIMIT": "100000000000"}).stdout
    assert "data.path=s3://datasets/imagenet data.cache_dir=/scratch/c data.cache_limit=100000000000" in dry


@pytest.mark.slow
def test_a_server_that_dies_mid_run_stops_it_with_exit_1_and_a_rerun_resumes_to_the_same_numbers(
        s3_env, tmp_path_factory, tmp_path):
    straight = _straight(s3_env, tmp_path_factory, 1)
    run = tmp_path / "run"
    common = [*_common(s3_env, run), "trainer.checkpoint_every=2"]
    env = {**os.environ, **s3_env["env"], "PIPELINE_S3_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PIPELINE_FAULT_SLOW_BATCH": "0.3"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", *common, "data.remote_retries=2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    s3_env["server"].kill()
    out, err = proc.communicate(timeout=300)
    s3_env["server"].start()
    assert proc.returncode == 1, err[-3000:]
    line = _one_line_error(subprocess.CompletedProcess([], 1, out, err))
    assert "S3 download of s3://pipeline-data/demo/" in line and "failed 2 times" in line, line
    from pipeline import checkpoint as ckpt

    saved = [ckpt._step_of(p) for p in ckpt.list_checkpoints(run)]
    assert saved and max(saved) < 12
    again = run_cli("train", *common, env={"PIPELINE_S3_CACHE_DIR": str(tmp_path / "cache")})
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = _losses(straight), _losses(run)
    assert sorted(b) == list(range(1, 13)) and all(a[k] == b[k] for k in range(1, 13)), (a, b)
    assert json.loads((run / "summary.json").read_text())["final/val/top1"] == \
        json.loads((straight / "summary.json").read_text())["final/val/top1"]


def test_imagenet_archives_prepared_into_the_store_and_checked_there(s3_env, demo_data, tmp_path):
    """`prepare imagenet --format shards --out s3://` from the official archives' layout, then
    `check-data s3://`: the classes and images counted from the indexes, every image decoded through
    the cache; a folder format into the store is refused in one line."""
    from tests import imagenet_archives

    imagenet_archives.build(demo_data, tmp_path / "archives")
    target = "s3://pipeline-data/imagenet"
    proc = run_cli("prepare", "imagenet", str(tmp_path / "archives" / "official"), "--out", target, "--format",
                   "shards", "--shard-mb", "0.3", "--workers", "1", quick=True)
    assert proc.returncode == 0 and "file(s) uploaded to s3://pipeline-data/imagenet, 0 already there" in proc.stderr
    check = run_cli("check-data", target, "--workers", "1", quick=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "train: 10 classes, 400 images" in check.stdout and "val: 10 classes, 130 images" in check.stdout
    assert check.stdout.strip().endswith("ok")
    folder = run_cli("prepare", "imagenet", str(tmp_path / "archives" / "official"), "--out", target, quick=True)
    assert folder.returncode == 2 and _one_line_error(folder).endswith("not class folders")
