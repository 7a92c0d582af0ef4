"""ImageNet as users download it, read in place: the three official ILSVRC2012 archives or Kaggle's copy.

Nothing is extracted. The train archive is a tar of 1,000 per-class tars; its headers (outer and
inner) give each JPEG's byte range in the 138 GB file, so an image is read later with one `pread`
(`shards.ShardMember`). Validation labels go ground-truth ID -> WNID -> index through meta.mat's
leaf synsets (`num_children == 0`): the devkit's ID order is not the sorted-WNID order that
ImageFolder and torchvision's weights use, so `ID - 1` would be a silent label permutation.
Facts and sources: ../shared/reference/imagenet-data.md.
"""
from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.shards import ShardMember
from pipeline.data.types import DataError

TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
# torchvision's ARCHIVE_META (torchvision/datasets/imagenet.py)
OFFICIAL_MD5 = {TRAIN_TAR: "1d675b47d978889d74fa0da5fadfb00e", VAL_TAR: "29b22e2961454d5413ddabcf34fc5622",
                DEVKIT: "fa75699e90414af021442c21a62c3abf"}
# ILSVRC2012 as published (devkit readme); checked when the data has its 1,000 classes
OFFICIAL_COUNTS = {"train": 1_281_167, "val": 50_000}
OFFICIAL_CLASSES = 1000
KAGGLE_ROOT = Path("ILSVRC/Data/CLS-LOC")


@dataclass
class Item:
    """One image to write: where its bytes are, its output key (no dots) and its class index."""

    ref: str | ShardMember
    key: str
    label: int


@dataclass
class Dataset:
    classes: list[str]  # WNIDs, sorted: class index = position
    words: dict[str, str]  # WNID -> "tench, Tinca tinca"
    splits: dict[str, list[Item]]
    layout: str  # "official archives" or "kaggle"
    expected_per_class: dict[str, int] = field(default_factory=dict)  # train images per WNID (meta.mat)


def detect(src: Path) -> str:
    if not src.is_dir():
        raise DataError(f"source folder not found: {src}")
    if (src / TRAIN_TAR).is_file() or (src / VAL_TAR).is_file() or (src / DEVKIT).is_file():
        missing = [name for name in (TRAIN_TAR, VAL_TAR, DEVKIT) if not (src / name).is_file()]
        if missing:
            raise DataError(f"{src} has some of the official archives but not {', '.join(missing)}")
        return "official archives"
    if (src / KAGGLE_ROOT).is_dir():
        return "kaggle"
    raise DataError(f"{src} holds neither the official archives ({TRAIN_TAR}, {VAL_TAR}, {DEVKIT}) nor Kaggle's "
                    f"layout ({KAGGLE_ROOT}/train, {KAGGLE_ROOT}/val, LOC_val_solution.csv, LOC_synset_mapping.txt)")


def read_dataset(src: Path) -> Dataset:
    layout = detect(src)
    return read_official(src) if layout == "official archives" else read_kaggle(src)


def tar_files(path: Path, start: int = 0, length: int | None = None) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file of the tar at byte `start` of `path` (a tar
    inside a tar: offsets stay absolute in `path`), headers only."""
    out = []
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for member in tar:
                    if length is not None and member.offset >= start + length:
                        break  # an inner tar without its end blocks: do not read the outer one's next header
                    if member.isfile():
                        out.append((member.name, member.offset_data, member.size))
    except tarfile.TarError as exc:
        raise DataError(f"cannot read {path}{f' at byte {start}' if start else ''} as a tar: {exc}") from None
    return out


def _stem(name: str) -> str:
    return Path(name).name.partition(".")[0]


def read_devkit(devkit: Path) -> tuple[dict[int, str], dict[str, str], dict[str, int], list[int]]:
    """(ID -> WNID, WNID -> words, WNID -> train images, ground-truth IDs) from the devkit, leaves only."""
    import scipy.io  # only prepare needs it

    wanted = {"meta.mat": None, "ILSVRC2012_validation_ground_truth.txt": None}
    try:
        with tarfile.open(devkit, "r:gz") as tar:
            for member in tar:
                base = Path(member.name).name
                if base in wanted and member.isfile():
                    wanted[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {devkit}: {exc}") from None
    missing = [name for name, data in wanted.items() if data is None]
    if missing:
        raise DataError(f"{devkit} has no data/{missing[0]}")
    synsets = scipy.io.loadmat(io.BytesIO(wanted["meta.mat"]), squeeze_me=True)["synsets"]
    id_to_wnid, words, train_counts = {}, {}, {}
    for row in synsets:
        if int(row["num_children"]) != 0:
            continue  # an ancestor synset (ID > 1000), not a class
        wnid = str(row["WNID"])
        id_to_wnid[int(row["ILSVRC2012_ID"])] = wnid
        words[wnid] = str(row["words"])
        if "num_train_images" in synsets.dtype.names:
            train_counts[wnid] = int(row["num_train_images"])
    truth = [int(line) for line in wanted["ILSVRC2012_validation_ground_truth.txt"].decode().split()]
    return id_to_wnid, words, train_counts, truth


def read_official(src: Path) -> Dataset:
    id_to_wnid, words, train_counts, truth = read_devkit(src / DEVKIT)
    classes = sorted(id_to_wnid.values())
    index = {wnid: i for i, wnid in enumerate(classes)}
    train: list[Item] = []
    train_tar = src / TRAIN_TAR
    for name, offset, size in tar_files(train_tar):
        wnid = _stem(name)
        if wnid not in index:
            raise DataError(f"{train_tar} holds {name}, which is not a class of the devkit's meta.mat")
        for inner, inner_offset, inner_size in tar_files(train_tar, offset, size):
            train.append(Item(ShardMember(str(train_tar), inner_offset, inner_size, inner), _stem(inner), index[wnid]))
    val_tar = src / VAL_TAR
    files = sorted(tar_files(val_tar))
    if len(files) != len(truth):
        raise DataError(f"{val_tar} holds {len(files)} images but the devkit's ground truth lists {len(truth)}")
    val = []
    for (name, offset, size), class_id in zip(files, truth):
        if class_id not in id_to_wnid:
            raise DataError(f"ground truth gives {name} class ID {class_id}, which is no leaf synset of meta.mat")
        val.append(Item(ShardMember(str(val_tar), offset, size, name), _stem(name), index[id_to_wnid[class_id]]))
    return Dataset(classes, words, {"train": train, "val": val}, "official archives", train_counts)


def read_kaggle(src: Path) -> Dataset:
    mapping, solution = src / "LOC_synset_mapping.txt", src / "LOC_val_solution.csv"
    for path in (mapping, solution):
        if not path.is_file():
            raise DataError(f"Kaggle layout without {path.name} in {src}")
    words = {}
    for line in mapping.read_text().splitlines():
        if line.strip():
            wnid, _, text = line.strip().partition(" ")
            words[wnid] = text
    classes = sorted(words)
    index = {wnid: i for i, wnid in enumerate(classes)}
    train = []
    for wnid in classes:
        folder = src / KAGGLE_ROOT / "train" / wnid
        if not folder.is_dir():
            raise DataError(f"no train folder for class {wnid}: {folder}")
        train += [Item(str(p), _stem(p.name), index[wnid]) for p in sorted(folder.iterdir()) if p.is_file()]
    labels = {}
    with open(solution, newline="") as fh:
        for row in csv.DictReader(fh):  # keyed by ImageId, never by row order
            labels[row["ImageId"]] = row["PredictionString"].split()[0]
    val = []
    for path in sorted((src / KAGGLE_ROOT / "val").iterdir()):
        wnid = labels.get(_stem(path.name))
        if wnid is None or wnid not in index:
            raise DataError(f"{solution.name} gives no known class for {path.name}")
        val.append(Item(str(path), _stem(path.name), index[wnid]))
    return Dataset(classes, words, {"train": train, "val": val}, "kaggle")


def check_counts(data: Dataset) -> None:
    """Per-class train counts against meta.mat, and the totals of the real dataset when it has
    its 1,000 classes; a mismatch names the classes that differ."""
    found: dict[str, int] = {}
    for item in data.splits["train"]:
        found[data.classes[item.label]] = found.get(data.classes[item.label], 0) + 1
    empty = [wnid for wnid in data.classes if wnid not in found]
    differ = [f"{wnid} ({found.get(wnid, 0)} found, {n} expected)" for wnid, n in sorted(data.expected_per_class.items())
              if n and found.get(wnid, 0) != n]
    if empty or differ:
        listed = differ or [f"{wnid} (no images)" for wnid in empty]
        raise DataError(f"train images per class differ from the devkit's in {len(listed)} classes: "
                        + ", ".join(listed[:5]) + (" ..." if len(listed) > 5 else ""))
    if len(data.classes) == OFFICIAL_CLASSES:
        for split, expected in OFFICIAL_COUNTS.items():
            if len(data.splits[split]) != expected:
                raise DataError(f"{split}: {len(data.splits[split]):,} images, ILSVRC2012 has {expected:,} "
                                f"({data.layout})")
