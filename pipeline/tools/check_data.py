"""`pipeline check-data DIR` (or s3://bucket/prefix): scan a dataset before a long job.

Reports classes, images per class and split, empty class folders, class folders missing from one
split, and files that do not decode (class folders, or WebDataset shards read through their index) (decoded in parallel with PIL, the torchvision backend's
decoder). Exit code 1 when anything would stop or silently change a training run.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.folder import IMAGE_EXTENSIONS, class_folders, load_rgb
from pipeline.data.object_store import is_remote
from pipeline.data.remote_shards import list_split, scan_remote_shards
from pipeline.data.shards import is_shard_split, scan_shards
from pipeline.data.types import DataError


@dataclass
class SplitReport:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    other_files: int = 0


def _decode_problem(path: str) -> str:
    try:
        load_rgb(path)
        return ""
    except Exception as exc:  # noqa: BLE001 - any failure is a finding
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def _scan_shard_split(root: Path, report: SplitReport) -> list:
    """Counts per class of a shard split (classes from info.json, else the label numbers)."""
    return _report_shards(*scan_shards(root), report)


def _report_shards(classes: list[str], samples, report: SplitReport) -> list:
    report.counts = dict(zip(classes, np.bincount(samples.labels, minlength=len(classes)).tolist()))
    report.empty_classes = [c for c, n in report.counts.items() if n == 0]
    return [ref for ref, _ in samples]


def scan_remote_split(url: str, workers: int) -> SplitReport:
    """A shard split in object storage: counted from its indexes, decoded through the node's cache."""
    report = SplitReport(url.rstrip("/").rsplit("/", 1)[-1])
    return _decode_all(_report_shards(*scan_remote_shards(url), report), workers, report)


def scan_split(root: Path, workers: int) -> SplitReport:
    report = SplitReport(root.name)
    files: list = _scan_shard_split(root, report) if is_shard_split(root) else []
    for name in class_folders(root) if not files else []:  # the training's class folders (hidden ones are not)
        images = []
        for f in os.scandir(root / name):
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(f.path)
            elif f.is_file():
                report.other_files += 1
        report.counts[name] = len(images)
        if not images:
            report.empty_classes.append(name)
        files += images
    return _decode_all(files, workers, report)


def _decode_all(files: list, workers: int, report: SplitReport) -> SplitReport:
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, problem in zip(files, pool.map(_decode_problem, files, chunksize=64)):
            if problem:
                report.bad_files.append((path, problem))
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--workers", type=int, default=0, help="decode processes (default: all cores)")


def main(args: argparse.Namespace) -> int:
    return check_data(args.dir if is_remote(args.dir) else Path(args.dir), args.workers)


def _remote_splits(url: str) -> list[str]:
    """The splits (train/, val/, or the URL itself) that hold shards, after one reachability check."""
    from pipeline.data import object_store, shard_cache

    shard_cache.configure("", 0, object_store.DEFAULT_RETRIES)
    object_store.check_reachable(object_store.ObjectUrl.parse(url))
    found = []
    for split in (f"{url.rstrip('/')}/train", f"{url.rstrip('/')}/val"):
        try:
            list_split(split)
            found.append(split)
        except DataError:
            continue
    return found or [url]


def check_data(root: Path | str, workers: int = 0) -> int:
    workers = workers or os.cpu_count() or 1
    remote = is_remote(root)
    if not remote and not root.is_dir():
        print(f"error: dataset folder not found: {root}")
        return 1
    if remote:
        splits = _remote_splits(str(root))
    else:
        splits = [root / s for s in ("train", "val") if (root / s).is_dir()] or [root]
    problems = 0
    reports = []
    for split in splits:
        r = scan_remote_split(split, workers) if remote else scan_split(split, workers)
        reports.append(r)
        total = sum(r.counts.values())
        sizes = sorted(r.counts.values())
        print(f"{r.name}: {len(r.counts)} classes, {total} images "
              f"(per class min {sizes[0] if sizes else 0}, median {sizes[len(sizes) // 2] if sizes else 0}, "
              f"max {sizes[-1] if sizes else 0}), {len(r.bad_files)} undecodable, {len(r.empty_classes)} empty classes"
              + (f", {r.other_files} non-image files ignored" if r.other_files else ""))
        for name in r.empty_classes:
            print(f"  empty class: {name} in {split}" if remote else f"  empty class folder: {split / name}")
        for path, problem in r.bad_files:
            print(f"  undecodable: {path} ({problem})")
        problems += len(r.bad_files) + len(r.empty_classes)
    if len(reports) == 2:
        missing = sorted(set(reports[0].counts) ^ set(reports[1].counts))
        for name in missing:
            print(f"  class in only one split: {name}")
        problems += len(missing)
    print("ok" if problems == 0 else f"{problems} problem(s) found")
    return 0 if problems == 0 else 1
