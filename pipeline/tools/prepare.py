"""`pipeline prepare`: ImageNet from the official archives (or Kaggle's copy), and any dataset as shards.

  pipeline prepare imagenet SRC --out DST [--format folder|shards] [--workers N] [--md5]
  pipeline prepare shards SRC --out DST [--train-list F --val-list F]   (DST may be s3://bucket/prefix)

`imagenet` reads the archives in place (pipeline/data/archives.py), checks the labels and counts,
and writes DST/train + DST/val as class folders or as WebDataset shards, plus DST/classes.txt
("<wnid> <words>" per class). `shards` converts a folder or file-list dataset. Both are resumable:
run the same command again after any interruption (pipeline/data/writers.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from pipeline.data import archives, writers
from pipeline.data.archives import Dataset, Item
from pipeline.data import object_store, upload
from pipeline.data.object_store import ObjectUrl, is_remote
from pipeline.data.shards import INFO_FILE, ShardMember, write_atomic
from pipeline.data.types import DataError

DEFAULT_SHARD_MB = 512
FOLDER_UNIT = 500  # images per folder-layout work unit


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_subparsers(dest="what", required=True, metavar="{imagenet,shards}")
    imagenet = what.add_parser("imagenet", help="the official ILSVRC2012 archives or Kaggle's copy -> DST")
    imagenet.add_argument("src", help="folder with ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
                                      "ILSVRC2012_devkit_t12.tar.gz, or Kaggle's folder (ILSVRC/, LOC_*.csv/txt)")
    imagenet.add_argument("--format", choices=("folder", "shards"), default="folder")
    imagenet.add_argument("--md5", action="store_true", help="check the archives against the published MD5s first")
    shards = what.add_parser("shards", help="a folder (train/<class>/, val/<class>/) or file-list dataset -> shards")
    shards.add_argument("src", help="dataset root (train/ and val/ class folders)")
    shards.add_argument("--train-list", default="", help="train split as a file list ('<path> <label>' lines)")
    shards.add_argument("--val-list", default="", help="val split as a file list")
    for sub in (imagenet, shards):
        sub.add_argument("--out", required=True, help="output folder, or s3://bucket/prefix for shards (created; a rerun resumes and uploads only what is missing or changed)")
        sub.add_argument("--workers", type=int, default=0, help="writer processes (default: all cores)")
        sub.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB,
                         help=f"shard size in MB (default {DEFAULT_SHARD_MB}: ImageNet train in ~275 shards)")


def main(args: argparse.Namespace) -> int:
    if args.shard_mb <= 0:
        raise DataError(f"--shard-mb must be positive, got {args.shard_mb}")
    if args.what == "imagenet":
        if args.md5:
            check_md5(Path(args.src))
        data = archives.read_dataset(Path(args.src))
        archives.check_counts(data)
        fmt = args.format
    else:
        data, fmt = dataset_from_folder(Path(args.src), args.train_list, args.val_list), "shards"
    counts = {split: len(items) for split, items in data.splits.items()}
    print(f"{data.layout}: {len(data.classes)} classes, {counts['train']:,} train / {counts['val']:,} val images; "
          f"writing {fmt} to {args.out}", file=sys.stderr, flush=True)
    remote = is_remote(args.out)
    if remote and fmt != "shards":
        raise DataError(f"--out {args.out}: object storage takes shards (--format shards), not class folders")
    if remote:  # the endpoint and credentials are checked before any image is written
        object_store.ensure_bucket(ObjectUrl.parse(args.out))
    out = upload.staging_folder(args.out) if remote else Path(args.out)
    written, fixed = prepare(data, out, fmt, args.workers or os.cpu_count() or 1, int(args.shard_mb * (1 << 20)))
    if remote:
        upload.upload_tree(out, args.out)
    print(json.dumps({"out": args.out, "format": fmt, "classes": len(data.classes), **counts,
                      "written": written, "reencoded": fixed}))
    return 0


def check_md5(src: Path) -> None:
    for name, expected in archives.OFFICIAL_MD5.items():
        digest = hashlib.md5()
        with open(src / name, "rb") as fh, tqdm(total=(src / name).stat().st_size, unit="B", unit_scale=True,
                                                desc=f"md5 {name}", file=sys.stderr) as bar:
            while chunk := fh.read(16 << 20):
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise DataError(f"{src / name}: MD5 {digest.hexdigest()}, the published one is {expected} "
                            "(a damaged or different download)")


def _key(path: str) -> str:
    """A WebDataset key (no dots, no slashes) from the class folder and file name."""
    p = Path(path)
    return f"{p.parent.name}_{p.name.rpartition('.')[0] or p.name}".replace(".", "_").replace(" ", "_")


def dataset_from_folder(src: Path, train_list: str, val_list: str) -> Dataset:
    from pipeline.config import DataConfig
    from pipeline.data.folder import split_samples

    splits = split_samples(DataConfig(path=str(src), train_list=train_list, val_list=val_list))
    classes = splits["train"][0]
    words = read_class_words(src) or {}
    items = {}
    for split, (_, samples) in splits.items():
        seen: dict[str, int] = {}
        items[split] = []
        for ref, label in samples:
            key = _key(str(ref))
            seen[key] = seen.get(key, 0) + 1
            items[split].append(Item(ref, key if seen[key] == 1 else f"{key}_{seen[key]}", label))
    return Dataset(classes, words, items, "folder" if not (train_list or val_list) else "file lists")


def read_class_words(root: Path) -> dict[str, str]:
    path = root / "classes.txt"
    if not path.is_file():
        return {}
    return dict(line.partition(" ")[::2] for line in path.read_text().splitlines() if line.strip())


def _size(ref) -> int:
    return ref.size if isinstance(ref, ShardMember) else os.path.getsize(ref)


def prepare(data: Dataset, out: Path, fmt: str, workers: int, shard_bytes: int) -> tuple[int, int]:
    """Write what is not written yet; (images written now, images re-encoded now)."""
    out.mkdir(parents=True, exist_ok=True)
    removed = writers.clean_partials(out)
    if removed:
        print(f"resuming: removed {removed} half-written file(s) of an interrupted prepare", file=sys.stderr)
    write_atomic(out / "classes.txt", "".join(f"{c} {data.words.get(c, '')}".rstrip() + "\n" for c in data.classes))
    if fmt == "folder":
        units = [writers.FolderUnit(split, items[i:i + FOLDER_UNIT])
                 for split, items in data.splits.items() for i in range(0, len(items), FOLDER_UNIT)]
        missing = {id(u): sum(not writers.folder_path(out, u.split, data.classes[it.label], it.key).exists()
                              for it in u.items) for u in units}
        work = (writers.write_folder_unit, out, data.classes)
    else:
        units = [u for split, items in data.splits.items()
                 for u in writers.plan_shards(split, items, [_size(it.ref) for it in items], shard_bytes)]
        missing = {id(u): 0 if writers.shard_done(out, u) else len(u.items) for u in units}
        work = (writers.write_shard, out)
    todo = [u for u in units if missing[id(u)]]
    written, fixed = _run(work, todo, [missing[id(u)] for u in todo], sum(len(u.items) for u in units), workers)
    if fmt == "shards":
        for split in data.splits:
            _write_info(out / split, split, data.classes, [u for u in units if u.split == split])
    return written, fixed


def _run(work: tuple, todo: list, todo_images: list[int], total: int, workers: int) -> tuple[int, int]:
    """Write the units in `todo` (todo_images: images each still lacks) over `workers` processes."""
    done_before = total - sum(todo_images)
    written = fixed = 0
    start = time.monotonic()
    function, *fixed_args = work
    with tqdm(total=total, initial=done_before, unit="img", file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 30,
              desc="prepare") as bar, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(function, *fixed_args, unit): n for unit, n in zip(todo, todo_images)}
        for future in as_completed(futures):
            n, f = future.result()
            written, fixed = written + n, fixed + f
            bar.update(futures[future])
    seconds = time.monotonic() - start
    print(f"prepare: {written:,} images in {seconds:.1f} s ({written / max(seconds, 1e-9):,.0f} img/s), "
          f"{fixed} re-encoded to RGB JPEG, {done_before:,} already done", file=sys.stderr, flush=True)
    return written, fixed


def _write_info(split_dir: Path, split: str, classes: list[str], units: list) -> None:
    shards = [{"name": f"{u.name}.tar", "bytes": (split_dir / f"{u.name}.tar").stat().st_size,
               "samples": len(u.items), "labels": [it.label for it in u.items]} for u in units]
    info = {"format": "webdataset", "split": split, "samples": sum(s["samples"] for s in shards),
            "classes": classes, "shuffle_seed": writers.SHUFFLE_SEED, "index": "DALI wds2idx v1.2, <shard>.idx",
            "components": {"jpg": "original JPEG bytes (non-RGB images re-encoded as RGB JPEG)", "cls": "class index"},
            "shards": shards}
    # Readable top matter; one line per shard (its labels list would otherwise take a line per image).
    head = json.dumps({k: v for k, v in info.items() if k != "shards"}, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(s) for s in shards)
    write_atomic(split_dir / INFO_FILE, f'{head},\n "shards": [\n{body}\n ]\n}}\n')
