"""Writing a prepared dataset: the folder layout or WebDataset shards, one resumable unit at a time.

Every output appears complete or not at all: a file or shard is written under a `.partial` name
and renamed, so a prepare killed at any point (kill -9 included) leaves finished outputs and
partial ones, and a rerun removes the partial ones, keeps the finished ones and writes the rest.
Outputs are byte-identical run to run (fixed tar metadata, deterministic shuffle and shard plan),
so a resumed prepare equals an uninterrupted one.

Images are copied as their original bytes, except files that a decoder would not turn into the
same RGB pixels: anything that is not a baseline RGB or grayscale JPEG (ImageNet train has one
PNG named .JPEG and 22 CMYK JPEGs). Those are decoded with PIL (CMYK -> RGB) and re-encoded as RGB
JPEG at quality 95 with full chroma, so PIL and DALI (libjpeg-turbo, nvJPEG) decode the same image.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import faults
from pipeline.data.archives import Item
from pipeline.data.shards import index_text, read_bytes, scan_tar, write_atomic

SHUFFLE_SEED = 0  # the shards' global order; recorded in info.json
FIX_QUALITY = 95


def normalized_image(data: bytes) -> tuple[bytes, bool]:
    """(bytes to store, whether they were re-encoded): RGB or grayscale JPEGs pass through as they are."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return data, False
            rgb = image.convert("RGB")  # PIL inverts Adobe CMYK as its JPEG decoder reports it
    except Exception:  # noqa: BLE001 - an undecodable image is stored as it is; check-data and training report it
        return data, False
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=FIX_QUALITY, subsampling=0)
    return out.getvalue(), True


def clean_partials(root: Path) -> int:
    """Remove what a killed prepare left half-written; returns how many."""
    removed = 0
    for path in root.rglob("*.partial"):
        path.unlink()
        removed += 1
    return removed


# -- the folder layout ------------------------------------------------------------------------

@dataclass
class FolderUnit:
    """Images of one split written as split/<wnid>/<key>.JPEG."""

    split: str
    items: list[Item]


def folder_path(out: Path, split: str, wnid: str, key: str) -> Path:
    return out / split / wnid / f"{key}.JPEG"


def write_folder_unit(out: Path, classes: list[str], unit: FolderUnit) -> tuple[int, int]:
    """(images written, images re-encoded); images already there are kept."""
    written = fixed = 0
    for item in unit.items:
        target = folder_path(out, unit.split, classes[item.label], item.key)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data, was_fixed = normalized_image(read_bytes(item.ref))
        tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        tmp.write_bytes(data)
        faults.prepare_image()
        os.replace(tmp, target)
        written += 1
        fixed += was_fixed
    return written, fixed


# -- WebDataset shards ------------------------------------------------------------------------

@dataclass
class ShardUnit:
    split: str
    name: str  # train-000000
    items: list[Item]


def plan_shards(split: str, items: list[Item], sizes: list[int], shard_bytes: int) -> list[ShardUnit]:
    """Shuffle the split globally (DALI's own reader only shuffles inside a buffer), then cut it into
    equal shards of about shard_bytes."""
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(items))
    count = max(1, -(-sum(sizes) // shard_bytes))
    return [ShardUnit(split, f"{split}-{n:06d}", [items[i] for i in chunk])
            for n, chunk in enumerate(np.array_split(order, count)) if len(chunk)]


def shard_done(out: Path, unit: ShardUnit) -> bool:
    base = out / unit.split / unit.name
    return base.with_suffix(".tar").is_file() and base.with_suffix(".idx").is_file()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def write_shard(out: Path, unit: ShardUnit) -> tuple[int, int]:
    """Write split/<name>.tar (KEY.cls then KEY.jpg per sample, the sorted-extension order
    WebDataset's writer uses) and its DALI index; (images written, re-encoded)."""
    base = out / unit.split / unit.name
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.with_name(f".{unit.name}.tar.{os.getpid()}.partial")
    fixed = 0
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for item in unit.items:
            data, was_fixed = normalized_image(read_bytes(item.ref))
            fixed += was_fixed
            faults.prepare_image()
            label = str(item.label).encode()
            tar.addfile(_member(f"{item.key}.cls", len(label)), io.BytesIO(label))
            tar.addfile(_member(f"{item.key}.jpg", len(data)), io.BytesIO(data))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    # The tar is renamed first: "done" is the tar and its index both in place.
    index = index_text(scan_tar(tmp))
    os.replace(tmp, base.with_suffix(".tar"))
    write_atomic(base.with_suffix(".idx"), index)
    return len(unit.items), fixed
