"""A shard split in object storage (`s3://bucket/prefix/train`): the same tars, DALI indexes and
info.json that `pipeline prepare` writes, indexed without downloading the shards.

The listing (each object's key, size and ETag) is written to a small local file, `listing.json`,
in the node's cache; it is the sample index's source (`sample_index.load_or_build`), so the index
is built once per node from the `.idx` objects and info.json's labels, and mapped by every rank and
worker after that, until the listing changes. Shards themselves are read later, through the cache
(`shard_cache.fetch`), in the order the plan reads them.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.data import object_store, shard_cache
from pipeline.data.object_store import ObjectUrl
from pipeline.data.sample_index import SampleIndex, load_or_build
from pipeline.data.shard_columns import INFO_FILE, assemble_index, compact
from pipeline.data.shards import _labels, parse_index, scan_tar
from pipeline.data.types import DataError


INDEX_READERS = 16  # parallel GETs of the .idx objects while the split's index is built


def meta_folder(split: ObjectUrl) -> Path:
    return shard_cache.store_root(split.bucket) / ".meta" / split.key


def list_split(url: str) -> tuple[ObjectUrl, list[object_store.ObjectInfo], dict[str, object_store.ObjectInfo]]:
    """(split, its tars, every object of the split by name), or one line when there are none."""
    split = ObjectUrl.parse(url.rstrip("/"))
    objects = object_store.list_objects(split)
    prefix = f"{split.key}/" if split.key else ""
    by_name = {o.key[len(prefix):]: o for o in objects if "/" not in o.key[len(prefix):]}
    tars = [o for name, o in sorted(by_name.items()) if name.endswith(".tar")]
    if not tars:
        raise DataError(f"no shards (*.tar) under {url} (found {len(objects)} object(s); write them with "
                        f"`pipeline prepare shards SRC --out s3://...`)")
    return split, tars, by_name


def scan_remote_shards(url: str) -> tuple[list[str], SampleIndex]:
    """(classes, samples) of a remote shard split, ordered by (label, key) as a local one is."""
    split, tars, by_name = list_split(url)
    for tar in tars:
        shard_cache.SIZES[f"{object_store.SCHEME}{split.bucket}/{tar.key}"] = tar.size
    folder = meta_folder(split)
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "listing.json"
    text = json.dumps({"url": str(split), "endpoint": object_store.endpoint(),
                       "objects": [[name, o.size, o.etag] for name, o in sorted(by_name.items())]}, indent=0)
    if not listing.is_file() or listing.read_text() != text:  # rewritten only when the listing changed
        tmp = listing.with_name(f".listing.{os.getpid()}.partial")
        tmp.write_text(text)
        tmp.replace(listing)
    index = load_or_build(listing, "s3shards", [listing], lambda: _build(split, tars, by_name))
    return index.classes, index


def _build(split: ObjectUrl, tars, by_name) -> SampleIndex:
    info = {}
    if INFO_FILE in by_name:
        try:
            info = json.loads(object_store.read_object(split.child(INFO_FILE)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{split.child(INFO_FILE)} is not valid JSON: {exc}") from None
    listed = {entry["name"]: entry for entry in info.get("shards", [])}

    def one(tar) -> tuple:
        name = tar.key.rsplit("/", 1)[-1]
        url = f"{object_store.SCHEME}{split.bucket}/{tar.key}"
        idx_name = name[: -len(".tar")] + ".idx"
        if idx_name in by_name:
            where = split.child(idx_name)
            samples = parse_index(object_store.read_object(where).decode(), where)
        else:  # no index object: read the tar's headers from the cached copy
            samples = scan_tar(shard_cache.fetch(url))
        return url, compact(url, samples, _labels(url, tar.size, samples, listed.get(name)))

    # The indexes' GETs in parallel: each waits a round trip (10,000 shards in series at 20 ms: 200 s).
    with ThreadPoolExecutor(max_workers=INDEX_READERS) as pool:
        built = list(pool.map(one, tars))
    return assemble_index(str(split), [url for url, _ in built], [part for _, part in built], info)


def shard_sizes(index: SampleIndex) -> list[int]:
    return [shard_cache.SIZES.get(url) or 0 for url in index.shard_paths]


def remote_classes_file(url: str) -> Path:
    """A local folder holding the dataset's classes.txt (class words), fetched when it exists."""
    from pipeline.data.labels import CLASS_WORDS_FILE

    root = ObjectUrl.parse(url.rstrip("/"))
    folder = meta_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    if object_store.head(root.child(CLASS_WORDS_FILE)) is not None:
        target = folder / CLASS_WORDS_FILE
        tmp = folder / f".{CLASS_WORDS_FILE}.{os.getpid()}.partial"  # ranks of a node write it at once
        tmp.write_bytes(object_store.read_object(root.child(CLASS_WORDS_FILE)))
        tmp.replace(target)
    return folder
