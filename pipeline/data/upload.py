"""`pipeline prepare ... --out s3://bucket/prefix`: the dataset is written to a local staging folder
(resumable, as any prepare), then each file is uploaded unless the store already holds it with the
same size and sha256 (kept in the object's metadata): a rerun uploads only what is missing or
different. The shards go first and info.json last, so a reader never sees an info.json that
describes shards not there yet.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from pipeline.data import object_store, shard_cache
from pipeline.data.object_store import ObjectUrl

LAST = ("info.json", "classes.txt")  # the files that describe the others


def staging_folder(url: str) -> Path:
    """Where the dataset for `url` is written before upload (kept: a rerun resumes from it)."""
    digest = hashlib.sha1(f"{object_store.endpoint()}|{url.rstrip('/')}".encode()).hexdigest()[:12]
    return shard_cache.default_cache_dir() / "prepare-staging" / digest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def upload_tree(local: Path, url: str) -> tuple[int, int]:
    """Upload every file under `local` to `url`/<relative path>; (uploaded, already there)."""
    root = ObjectUrl.parse(url.rstrip("/"))
    object_store.ensure_bucket(root)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.name in LAST)  # describing files last (stable otherwise)
    uploaded = kept = 0
    for path in files:
        target = root.child(path.relative_to(local).as_posix())
        digest = sha256_of(path)
        there = object_store.head(target)
        if there and there["size"] == path.stat().st_size and there["sha256"] == digest:
            kept += 1
            continue
        object_store.upload(path, target, digest)
        uploaded += 1
    print(f"upload: {uploaded} file(s) uploaded to {url}, {kept} already there", file=sys.stderr, flush=True)
    return uploaded, kept
