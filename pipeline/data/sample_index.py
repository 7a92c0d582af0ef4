"""A split's samples as numpy arrays, built once per source and then memory-mapped by every process.

ImageNet's train split has 1,281,167 samples and a node runs 8 ranks, each with its loader workers.
Held as Python (path, label) tuples the index costs ~460 bytes a sample in every process, and a
forked worker copies the pages it reads (a refcount update dirties the page), so 64 processes hold
~17 GB of what fits in ~100 MB. Here a split is a few flat arrays (names as one byte blob with
offsets, labels, and for shards the shard number, byte offset and size); a sample becomes a
(path or ShardMember, label) pair only when it is read.

The first process to need an index builds it and writes it to a cache folder keyed by its source
(the folder and its class folders, the list file, or the shards and info.json, with sizes and
mtimes); every other rank, worker and later start maps that folder read-only (`np.load(...,
mmap_mode="r")`): the pages are the page cache's, shared by all. One builder per cache folder at a
time (an flock); the others wait, then map its result. A cache that fails its checks (format,
shapes, checksums) is never trusted: one warning line, and it is rebuilt.

Where: `$PIPELINE_CACHE_DIR/sample-index` when set, else `.index` beside the data when writable,
else ~/.cache/resnet-pipeline/sample-index.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.data.types import ShardMember

FORMAT = 1  # bump when the arrays' meaning changes: older caches then no longer match their key
ARRAYS = ("names", "ends", "labels", "shard", "offset", "size")  # the last three for shard splits only
BESIDE_DATA = ".index"
STATS = {"built": 0, "mapped": 0}  # this process's builds and maps (tests and the bench read them)


@dataclass
class SampleIndex:
    """(ref, label) samples of one split. ref: `prefix/name` (a file), or for shards a ShardMember of
    shard_paths[shard[i]] at offset[i], size[i] named name. Arrays may be np.memmap (shared pages)."""

    classes: list[str]
    names: np.ndarray  # uint8: every sample's name (relative path or tar member), concatenated
    ends: np.ndarray  # int64, len N + 1: name i is names[ends[i]:ends[i + 1]]
    labels: np.ndarray  # int32
    prefix: str = ""  # joined before each name of a file sample ("" for shards)
    shard_paths: list[str] = field(default_factory=list)
    shard: np.ndarray | None = None  # int32 shard number per sample
    offset: np.ndarray | None = None  # int64 byte offset of the image in its shard
    size: np.ndarray | None = None  # int64 byte size of the image
    cache: str = ""  # the cache folder these arrays map, if any (pickling re-maps it)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return self.names[self.ends[i]:self.ends[i + 1]].tobytes().decode()

    def ref(self, i: int) -> str | ShardMember:
        if self.shard is None:
            return os.path.join(self.prefix, self.name(i))
        return ShardMember(self.shard_paths[self.shard[i]], int(self.offset[i]), int(self.size[i]), self.name(i))

    def __getitem__(self, i: int) -> tuple[str | ShardMember, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        i = i % len(self)
        return self.ref(i), int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[str | ShardMember, int]]:
        return (self[i] for i in range(len(self)))

    def label_set(self) -> set[int]:
        return set(np.unique(self.labels).tolist())

    def __getstate__(self) -> dict:
        # A spawned worker gets the cache folder and maps it, not a pickled copy of every array.
        state = dict(vars(self))
        if self.cache:
            for key in ARRAYS:
                if isinstance(state[key], np.memmap):
                    state[key] = None
        return state

    def __setstate__(self, state: dict) -> None:
        if missing := [key for key in ARRAYS if state["cache"] and state[key] is None]:
            mapped = _map(Path(state["cache"]))
            state.update({key: mapped.get(key) for key in missing})
        vars(self).update(state)


def names_blob(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(blob, ends) for a list of names."""
    encoded = [name.encode() for name in names]
    ends = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=ends[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


# ---------------------------------------------------------------------------------------------
# The cache: one folder of .npy files per (source, key), published by an atomic rename.


def source_key(files: list[Path]) -> str:
    """What identifies a source's contents cheaply: each path with its size and mtime."""
    parts = [f"format {FORMAT}"]
    for path in files:
        stat = path.stat()
        parts.append(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def cache_dir() -> Path:
    """The user cache: `PIPELINE_CACHE_DIR`, default ~/.cache/resnet-pipeline (also the shard indexes')."""
    return Path(os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "resnet-pipeline")


def cache_base(source: Path) -> list[Path]:
    """Candidate cache folders for a source, best first: a set PIPELINE_CACHE_DIR is the only one."""
    beside = [] if os.environ.get("PIPELINE_CACHE_DIR") else [source.resolve().parent / BESIDE_DATA]
    return [*beside, cache_dir() / "sample-index"]


def load_or_build(source: Path, kind: str, key_files: list[Path], build: Callable[[], SampleIndex]) -> SampleIndex:
    """The source's index: mapped from its cache, else built (by one process at a time) and cached.
    source: the split folder or list file; key_files: what its key covers (sizes and mtimes)."""
    stem = f"{kind}-{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]}"
    entry = f"{stem}-{source_key(key_files)}"
    for base in cache_base(source):
        folder = base / entry
        if (index := _try_map(folder)) is not None:
            return index
        try:
            base.mkdir(parents=True, exist_ok=True)
            lock = open(base / f"{entry}.lock", "a+")  # noqa: SIM115 - held across the build below
        except OSError:  # not writable here: the next candidate
            continue
        with lock:
            _lock_exclusive(lock)  # one builder at a time; the others wait here, then map its result
            if (index := _try_map(folder)) is not None:
                return index
            _note_stale(base, stem, entry, source)
            index = build()
            STATS["built"] += 1
            try:
                _publish(index, folder)
            except OSError as exc:  # e.g. the disk filled up: train on this process's own copy
                print(f"warning: cannot cache the sample index in {base}: {exc}", file=sys.stderr, flush=True)
                return index
        return _try_map(folder) or index
    index = build()  # nowhere writable: this process keeps its own copy
    STATS["built"] += 1
    return index


def _lock_exclusive(handle) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # a filesystem without locks: build anyway (the publish is still atomic)
        pass


def _note_stale(base: Path, stem: str, entry: str, source: Path) -> None:
    """Indexes of an earlier state of the same source: say so once, and remove them."""
    stale = [p for p in base.glob(f"{stem}-*") if p.is_dir() and p.name != entry]
    if stale:
        print(f"warning: {source} changed since its sample index was built: rebuilding it", file=sys.stderr, flush=True)
    for path in stale:
        _discard(path)


def _discard(folder: Path) -> None:
    """Remove a cache folder; processes that mapped it keep their (unlinked) pages."""
    trash = folder.with_name(f".{folder.name}.{os.getpid()}.trash")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _publish(index: SampleIndex, folder: Path) -> None:
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    meta = {"format": FORMAT, "count": len(index), "classes": index.classes, "prefix": index.prefix,
            "shard_paths": index.shard_paths, "arrays": {}}
    for key in ARRAYS:
        array = getattr(index, key)
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        np.save(partial / f"{key}.npy", array)
        meta["arrays"][key] = {"dtype": array.dtype.str, "length": len(array), "crc32": zlib.crc32(array.data)}
    (partial / "meta.json").write_text(json.dumps(meta))  # written last: a folder without it is not an index
    try:
        os.rename(partial, folder)
    except OSError:  # published meanwhile by a process that did not take the lock
        shutil.rmtree(partial, ignore_errors=True)


def _map(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {meta.get('format')}, expected {FORMAT}")
    arrays = {}
    for key, spec in meta["arrays"].items():
        array = np.load(folder / f"{key}.npy", mmap_mode="r", allow_pickle=False)
        if array.dtype.str != spec["dtype"] or len(array) != spec["length"] or array.ndim != 1:
            raise ValueError(f"{key}.npy holds {array.dtype.str}[{len(array)}], expected {spec['dtype']}[{spec['length']}]")
        if zlib.crc32(array) != spec["crc32"]:
            raise ValueError(f"{key}.npy fails its checksum")
        arrays[key] = array
    count = meta["count"]
    if len(arrays["labels"]) != count or len(arrays["ends"]) != count + 1 or \
            int(arrays["ends"][-1]) != len(arrays["names"]):
        raise ValueError("array lengths disagree")
    return {**arrays, "classes": meta["classes"], "prefix": meta["prefix"], "shard_paths": meta["shard_paths"]}


def _try_map(folder: Path) -> SampleIndex | None:
    """The cached index in folder, or None when absent; a corrupt one is removed with one warning."""
    if not folder.is_dir():
        return None
    try:
        mapped = _map(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"warning: sample index cache {folder} is unusable ({str(exc)[:120]}): rebuilding it",
              file=sys.stderr, flush=True)
        _discard(folder)
        return None
    STATS["mapped"] += 1
    return SampleIndex(**mapped, cache=str(folder))

