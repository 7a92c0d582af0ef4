"""The node-local cache of shards read from object storage: whole shards, one download per shard
per node, a size limit kept by LRU eviction, and shards fetched ahead of the plan's order.

Layout: `<cache_dir>/s3-shards/<store>/<key>` where <store> hashes the endpoint and bucket, and
<key> is the object's key. Only files this module names are ever deleted there: published shards
(`*.tar`) and its own partial downloads (`.<name>.partial`); eviction never leaves that folder, so
nothing else on the disk can be lost to it (Mosaic streaming's #988).

Every process of the node (ranks, their loader workers, DALI feed workers) goes through `fetch`:
- a published shard is used as it is (its mtime is touched, at most once a second per process,
  for the LRU order);
- otherwise the process takes the shard's flock; the first one downloads it to a partial file whose
  full size is reserved first (posix_fallocate), then renames it into place; every other process
  waiting on the lock finds it published. So a shard is downloaded once per node, however many
  processes want it.
- Before a download, room is made under one cache-wide lock: published shards are evicted oldest
  first until published + reserved bytes + this shard fit `data.cache_limit`. A shard still open
  somewhere keeps its pages until closed (POSIX), so eviction never breaks a reader: at worst that
  shard is downloaded again. The cache therefore holds at most the limit plus the shards in flight.

`ledger.jsonl` in the store folder gets one line per download (key, bytes, seconds, pid): the
node's GETs and bytes, read by the tests and bench/object_store.py.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.data import object_store
from pipeline.data.object_store import ObjectUrl
from pipeline.data.types import DataError

CACHE_DIR_ENV = "PIPELINE_S3_CACHE_DIR"  # data.cache_dir, resolved; the environment reaches spawned workers
CACHE_LIMIT_ENV = "PIPELINE_S3_CACHE_LIMIT"  # data.cache_limit in bytes; 0: no limit
LEDGER = "ledger.jsonl"


def default_cache_dir() -> Path:
    """Node-local disk: Slurm's per-job $SLURM_TMPDIR when set, else the user cache."""
    from pipeline.data.sample_index import cache_dir

    if os.environ.get("SLURM_TMPDIR"):
        return Path(os.environ["SLURM_TMPDIR"]) / "resnet-pipeline"
    return cache_dir()


def configure(cache_dir: str, cache_limit: int, retries: int) -> None:
    """Make the data config's cache settings every process's (set before loader workers start)."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_ENV)  # the variable: the same setting, for launchers
    os.environ[CACHE_DIR_ENV] = str(Path(chosen).resolve()) if chosen else str(default_cache_dir())
    os.environ[CACHE_LIMIT_ENV] = str(int(cache_limit))
    os.environ[object_store.RETRIES_ENV] = str(int(retries))


def store_root(bucket: str) -> Path:
    base = Path(os.environ.get(CACHE_DIR_ENV) or default_cache_dir())
    store = hashlib.sha1(f"{object_store.endpoint()}|{bucket}".encode()).hexdigest()[:12]
    return base / "s3-shards" / f"{bucket}-{store}"


def limit() -> int:
    return int(os.environ.get(CACHE_LIMIT_ENV) or 0)


def local_path(url: str) -> Path:
    parsed = ObjectUrl.parse(url)
    return store_root(parsed.bucket) / parsed.key


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_touched: dict[str, float] = {}
SIZES: dict[str, int] = {}  # url -> bytes, from the split's listing (a spawned worker asks with HEAD)


def fetch(url: str) -> Path:
    """The local copy of a shard, downloaded once per node when absent."""
    path = local_path(url)
    if path.is_file():
        _touch(url, path)
        return path
    with _locked(path.with_name(f".{path.name}.lock")):
        if path.is_file():  # another process of the node downloaded it while we waited
            _touch(url, path)
            return path
        size = SIZES.get(url)
        if size is None:
            info = object_store.head(ObjectUrl.parse(url))
            if info is None:
                raise DataError(f"object not found: {url}")
            size = SIZES[url] = info["size"]
        partial = path.with_name(f".{path.name}.partial")
        _reserve(path.parents[0], partial, size)
        started = time.monotonic()
        try:
            object_store.download(ObjectUrl.parse(url), partial, size)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _record(url, size, time.monotonic() - started)
    return path


def open_local(url: str) -> int:
    """A read-only descriptor on the shard's local copy. Another process may evict it between the
    fetch and the open (a tight limit): then it is fetched again."""
    for attempt in range(3):
        try:
            return os.open(fetch(url), os.O_RDONLY)
        except FileNotFoundError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _touch(url: str, path: Path) -> bool:
    """Mark the shard used (its mtime orders eviction), at most once a second per process; False
    when it is no longer in the cache (evicted: a descriptor still open on it reads the old pages)."""
    now = time.monotonic()
    if now - _touched.get(url, -10.0) < 1.0:
        return True
    _touched[url] = now
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def still_cached(url: str) -> bool:
    """For a reader holding the shard open: still in the cache (and now marked used)?"""
    return _touch(url, local_path(url))


def _record(url: str, size: int, seconds: float) -> None:
    parsed = ObjectUrl.parse(url)
    line = json.dumps({"key": parsed.key, "bytes": size, "s": round(seconds, 3), "pid": os.getpid(),
                       "t": round(time.time(), 3)}) + "\n"
    fd = os.open(store_root(parsed.bucket) / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write under O_APPEND: lines from many processes do not mix
    finally:
        os.close(fd)


def _reserve(folder: Path, partial: Path, size: int) -> None:
    """Make room for `size` bytes (evicting), then reserve them as the partial file's length."""
    root = _root_of(folder)
    with _locked(root / ".cache.lock"):
        cap = limit()
        if cap:
            published, reserved = _usage(root)
            held = sum(shard_size for _, shard_size, _ in published) + reserved
            for _, shard_size, shard in sorted(published):  # oldest-used first
                if held + size <= cap:
                    break
                shard.unlink(missing_ok=True)
                held -= shard_size
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                os.posix_fallocate(fd, 0, max(1, size))
            except OSError as exc:  # a file system without fallocate: the length alone still counts
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)
        except OSError as exc:
            raise DataError(f"no room for shard {partial.name.strip('.').removesuffix('.partial')} "
                            f"({size:,} bytes) in the cache at {root}: {exc.strerror} (data.cache_dir, "
                            f"data.cache_limit)") from None
        finally:
            os.close(fd)


def _root_of(folder: Path) -> Path:
    base = Path(os.environ.get(CACHE_DIR_ENV) or default_cache_dir()) / "s3-shards"
    while folder.parent != base and folder != folder.parent:
        folder = folder.parent
    return folder


def _usage(root: Path) -> tuple[list[tuple[float, int, Path]], int]:
    """(mtime, size, path) of each published shard, and the bytes reserved by downloads in flight."""
    published, reserved = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if name.endswith(".tar") and not name.startswith("."):
                published.append((stat.st_mtime, stat.st_size, path))
            elif name.endswith(".partial") and name.startswith("."):
                reserved += stat.st_size
    return published, reserved


def cached_bytes(bucket: str) -> int:
    """Published plus reserved bytes of a store (tests check the limit with it)."""
    published, reserved = _usage(store_root(bucket))
    return sum(size for _, size, _ in published) + reserved


def smallest_limit(shard_sizes: list[int], window: int, blocks: bool) -> int:
    """The least cache that holds what a node reads at once: the whole split under a global shuffle,
    a window of shards plus the one fetched next under the streaming order."""
    if not blocks:
        return sum(shard_sizes)
    largest = sorted(shard_sizes, reverse=True)
    return sum(largest[: window + 1])


class Prefetcher:
    """Downloads the shards of one pass in first-use order, ahead of the reader by up to `ahead`
    shards, in a thread of the rank's main process (its downloads count for the whole node)."""

    def __init__(self, shard_urls: list[str], shard_of, ahead: int) -> None:
        self.urls, self.shard_of, self.ahead = shard_urls, shard_of, ahead
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._batch = 0

    def start(self, batches: list[list[tuple[int, int]]]) -> None:
        self.stop()
        first_use: dict[int, int] = {}  # shard -> first batch that reads it
        for number, batch in enumerate(batches):
            for index, *_ in batch:
                first_use.setdefault(int(self.shard_of[index]), number)
        order = sorted(first_use.items(), key=lambda item: item[1])
        if self.ahead <= 0 or not order:
            return
        self._stop = threading.Event()
        self._batch = 0
        self._thread = threading.Thread(target=self._run, args=(order,), name="shard-prefetch", daemon=True)
        self._thread.start()

    def advance(self, batch: int) -> None:
        with self._progress:
            self._batch = batch
            self._progress.notify_all()

    def _run(self, order: list[tuple[int, int]]) -> None:
        try:
            for position, (shard, _) in enumerate(order):
                # Wait until the reader has reached the shard `ahead` places before this one.
                gate = order[max(0, position - self.ahead)][1]
                with self._progress:
                    while self._batch < gate and not self._stop.is_set():
                        self._progress.wait(0.2)
                if self._stop.is_set():
                    return
                fetch(self.urls[shard])
        except BaseException:  # noqa: BLE001 - the reader meets the same failure and reports it
            return

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            with self._progress:
                self._progress.notify_all()
            self._thread.join()
            self._thread = None


def followed(items, prefetch: Prefetcher, batches: list, lead: int = 0):
    """`items` (one per batch of `batches`, from its first), with the prefetcher fetching the
    batches' shards ahead and told how far the reader has got; `lead`: batches the reader has
    already asked for beyond the one it yields (DALI's prefetch depth)."""
    prefetch.start(batches)
    try:
        for number, item in enumerate(items):
            prefetch.advance(number + lead)
            yield item
    finally:
        prefetch.stop()
