"""WebDataset shards read by random access: `train/*.tar` and `val/*.tar`, each with a DALI index.

A sample is the run of tar members sharing a key (WebDataset's rule: the member name up to the
first dot of its last component); it needs an image (`.jpg`, `.jpeg`, `.png`, `.webp`) and a `.cls`
(the class index as ASCII digits). The index of each tar is in DALI's `wds2idx` format (`v1.2 N`,
then per sample `<ext> <data offset> <size> <member>` for each component). A missing index is built
once from the tar headers and written beside the tar, or, when the folder is read-only, to the
user cache (`PIPELINE_CACHE_DIR`, default ~/.cache/resnet-pipeline).

Images are read with `os.pread` at the index's offsets through one descriptor per shard and
process: one open per shard, not per image, and no shared file position between loader threads.
Samples are ordered by (label, key) whatever order the tars hold them in, which is the folder
layout's order (class folders sorted, files sorted): the same samples give the same batches.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from pipeline.data import shard_cache
from pipeline.data.object_store import is_remote
from pipeline.data.shard_columns import IMAGE_EXTS, INFO_FILE, assemble_index, compact, sample_key  # noqa: F401 - re-exported
from pipeline.data.sample_index import SampleIndex, cache_dir, load_or_build
from pipeline.data.types import DataError, ShardMember

INDEX_VERSION = "v1.2"
MAX_OPEN_SHARDS = 768  # below the usual 1,024 descriptors per process, with room for the rest


_open: dict[str, int] = {}
OPENED = {"shards": 0}  # shard files opened by this process (tests check: one per shard)
# Shards from object storage are read from the node's cache (`shard_cache`), which may evict one
# this process still has open: its pages stay until the descriptor closes. So few stay open, and an
# open one is checked (at most once a second) and re-fetched once evicted.
MAX_OPEN_REMOTE = 8


def _shard_fd(tar: str) -> int:
    fd = _open.get(tar)
    if fd is not None and is_remote(tar) and not shard_cache.still_cached(tar):
        os.close(_open.pop(tar))
        fd = None
    if fd is None:
        if len(_open) >= MAX_OPEN_SHARDS:  # more shards than descriptors: close the oldest
            os.close(_open.pop(next(iter(_open))))
        if is_remote(tar):
            remote = [name for name in _open if is_remote(name)]
            if len(remote) >= MAX_OPEN_REMOTE:
                os.close(_open.pop(remote[0]))
            fd = _open[tar] = shard_cache.open_local(tar)
        else:
            fd = _open[tar] = os.open(tar, os.O_RDONLY)
        OPENED["shards"] += 1
    return fd


def close_shards() -> None:
    """Close the descriptors this process keeps open on shards."""
    while _open:
        os.close(_open.popitem()[1])


def read_array(ref: str | ShardMember) -> np.ndarray:
    """The encoded bytes of a sample as a writable uint8 array (what DALI's external_source takes):
    a whole file, or a member of a shard read by offset straight into the array."""
    if not isinstance(ref, ShardMember):
        return np.fromfile(ref, dtype=np.uint8)
    data = np.empty(ref.size, dtype=np.uint8)
    got = os.preadv(_shard_fd(ref.tar), [data], ref.offset)
    if got != ref.size:
        raise OSError(truncated(ref, got))
    return data


def truncated(ref: ShardMember, got: int) -> str:
    return f"shard {ref.tar} ends inside {ref.name} (read {got} of {ref.size} bytes)"


def read_bytes(ref: str | ShardMember) -> bytes:
    if not isinstance(ref, ShardMember):
        with open(ref, "rb") as fh:
            return fh.read()
    data = os.pread(_shard_fd(ref.tar), ref.size, ref.offset)
    if len(data) != ref.size:
        raise OSError(truncated(ref, len(data)))
    return data


def scan_tar(tar_path: Path) -> list[list[tuple[str, int, int, str]]]:
    """Samples of a tar from its headers: per sample, its components (ext, data offset, size, name)."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last_key = None
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = sample_key(member.name)
                if key != last_key:
                    samples.append([])
                    last_key = key
                samples[-1].append((ext, member.offset_data, member.size, member.name))
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read shard {tar_path}: {exc}") from None
    return samples


def index_text(samples: list[list[tuple[str, int, int, str]]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in parts) for parts in samples]
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: Path) -> list[list[tuple[str, int, int, str]]]:
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] not in ("v1.1", "v1.2") or not head[1].isdigit():
        raise DataError(f"index {where} is not a DALI webdataset index (first line {lines[:1]!r})")
    samples = []
    for number, line in enumerate(lines[1:], 2):
        words = line.split()
        if len(words) % 4 or not words:
            raise DataError(f"index {where} line {number}: expected '<ext> <offset> <size> <name>' groups")
        samples.append([(words[i], int(words[i + 1]), int(words[i + 2]), words[i + 3]) for i in range(0, len(words), 4)])
    if len(samples) != int(head[1]):
        raise DataError(f"index {where} lists {len(samples)} samples, its header says {head[1]}")
    return samples


def _cached_name(tar_path: Path, suffix: str) -> Path:
    """A cache file for a read-only shard, keyed by its absolute path, size and mtime."""
    stat = tar_path.stat()
    key = hashlib.sha1(f"{tar_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_dir() / "wds-index" / f"{tar_path.stem}-{key}{suffix}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def shard_index(tar_path: Path) -> list[list[tuple[str, int, int, str]]]:
    """The tar's index: `<name>.idx` beside it, else a cached one, else built once and saved."""
    beside = tar_path.with_suffix(".idx")
    if beside.is_file():
        return parse_index(beside.read_text(), beside)
    cached = _cached_name(tar_path, ".idx")
    if cached.is_file():
        return parse_index(cached.read_text(), cached)
    samples = scan_tar(tar_path)
    text = index_text(samples)
    for target in (beside, cached):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, text)
            break
        except OSError:  # a read-only data folder: fall back to the user cache
            continue
    return samples


def shard_images(tar_path: Path) -> list[ShardMember]:
    """The image of each sample of one shard, in tar order (for predict on shards)."""
    members = []
    for parts in shard_index(tar_path):
        members += [ShardMember(str(tar_path), offset, size, name) for ext, offset, size, name in parts
                    if ext in IMAGE_EXTS][:1]
    return members


def read_info(split_dir: Path) -> dict:
    path = split_dir / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None


def is_shard_split(split_dir: Path) -> bool:
    return split_dir.is_dir() and any(split_dir.glob("*.tar"))


def _labels(tar_path: Path | str, size: int, samples, listed: dict | None) -> list[int]:
    """Each sample's class: from info.json's entry when it describes this very tar (its size), else
    its `.cls` member. tar_path: a file, or an s3:// URL read through the node's cache."""
    if listed and listed.get("bytes") == size and len(listed.get("labels", [])) == len(samples):
        return [int(label) for label in listed["labels"]]
    labels = []
    for parts in samples:
        cls = [p for p in parts if p[0] == "cls"]
        if not cls:
            raise DataError(f"shard {tar_path}: sample {sample_key(parts[0][3])[0]} has no .cls member")
        try:
            text = read_bytes(ShardMember(str(tar_path), cls[0][1], cls[0][2], cls[0][3])).strip()
        except OSError as exc:  # a truncated shard: bad input, named by its file
            raise DataError(str(exc)) from None
        if not text.isdigit():
            raise DataError(f"shard {tar_path}: {cls[0][3]} holds {text[:20]!r}, not a class index")
        labels.append(int(text))
    return labels


def scan_shards(split_dir: Path) -> tuple[list[str], SampleIndex]:
    """(classes, samples) of a shard split, samples ordered by (label, key); mapped from the node's
    index cache when the tars and info.json are unchanged (`sample_index`)."""
    tars = sorted(split_dir.glob("*.tar"))
    if not tars:
        raise DataError(f"no shards (*.tar) in {split_dir}")
    info = [split_dir / INFO_FILE] if (split_dir / INFO_FILE).is_file() else []
    index = load_or_build(split_dir, "shards", [*tars, *info], lambda: build_shard_index(split_dir, tars))
    return index.classes, index


def build_shard_index(split_dir: Path, tars: list[Path]) -> SampleIndex:
    info = read_info(split_dir)
    listed = {entry["name"]: entry for entry in info.get("shards", [])}
    columns = []
    for tar_path in tars:
        samples = shard_index(tar_path)
        labels = _labels(tar_path, tar_path.stat().st_size, samples, listed.get(tar_path.name))
        columns.append(compact(str(tar_path), samples, labels))
    return assemble_index(str(split_dir), [os.path.abspath(t) for t in tars], columns, info)
