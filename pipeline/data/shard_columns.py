"""A shard split's SampleIndex, assembled from each shard's index entries without holding every
sample as Python objects: each shard is reduced to compact columns as soon as its `.idx` is read
(its image members' names as one byte blob, their keys as a fixed-width byte array, offsets, sizes,
labels), and only those are kept until the split is sorted. At ImageNet-21k size (12 M samples in
10,000 shards) the per-sample tuples of every index at once took 11.6 GB in the one process that
builds a node's index (docs/benchmarks.md); the columns are a few hundred bytes a sample less.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.sample_index import SampleIndex
from pipeline.data.types import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INFO_FILE = "info.json"


def sample_key(member_name: str) -> tuple[str, str]:
    """(key, extension) by the WebDataset rule: the key ends at the first dot of the last component."""
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclass
class ShardColumns:
    blob: bytes  # the image members' names, concatenated
    lengths: np.ndarray  # int64 byte length of each name
    keys: np.ndarray  # bytes ('S'): each sample's WebDataset key, for the (label, key) order
    offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64
    labels: np.ndarray  # int32


def compact(tar: str, samples: list, labels: list[int]) -> ShardColumns:
    """One shard's samples (the index's entries per sample) as columns: its image member each."""
    names, keys, offsets, sizes = [], [], [], []
    for parts in samples:
        image = next((p for p in parts if p[0] in IMAGE_EXTS), None)
        if image is None:
            raise DataError(f"shard {tar}: sample {sample_key(parts[0][3])[0]} has no image "
                            f"(expected one of .{', .'.join(IMAGE_EXTS)})")
        _, offset, size, name = image
        names.append(name.encode())
        keys.append(sample_key(name)[0].encode())
        offsets.append(offset)
        sizes.append(size)
    return ShardColumns(b"".join(names), np.fromiter(map(len, names), dtype=np.int64, count=len(names)),
                        np.array(keys, dtype=bytes) if keys else np.array([], dtype="S1"),
                        np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64),
                        np.array(labels, dtype=np.int32)[: len(names)])


def assemble_index(where: str, shard_paths: list[str], columns: list[ShardColumns], info: dict) -> SampleIndex:
    """The split's SampleIndex, ordered by (label, key) like the folder layout, local or remote alike."""
    total = sum(len(c.lengths) for c in columns)
    if not total:
        raise DataError(f"the shards in {where} hold no samples")
    labels = np.concatenate([c.labels for c in columns])
    order = np.lexsort((np.concatenate([c.keys for c in columns]), labels.astype(np.int64)))
    labels_sorted = labels[order]
    classes = info.get("classes") or [str(i) for i in range(int(labels_sorted.max()) + 1)]
    if int(labels_sorted.max()) >= len(classes):
        raise DataError(f"{where}/{INFO_FILE} names {len(classes)} classes but a sample has label "
                        f"{int(labels_sorted.max())}")
    lengths = np.concatenate([c.lengths for c in columns])
    starts = np.zeros(total, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    blob = b"".join(c.blob for c in columns)
    sorted_lengths = lengths[order]
    ends = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(sorted_lengths, out=ends[1:])
    names = np.frombuffer(b"".join([blob[s:s + n] for s, n in zip(starts[order].tolist(), sorted_lengths.tolist())]),
                          dtype=np.uint8)
    shard = np.repeat(np.arange(len(columns), dtype=np.int32), [len(c.lengths) for c in columns])
    return SampleIndex(list(classes), names, ends, labels_sorted, shard_paths=shard_paths, shard=shard[order],
                       offset=np.concatenate([c.offsets for c in columns])[order],
                       size=np.concatenate([c.sizes for c in columns])[order])
