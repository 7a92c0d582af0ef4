"""Do the train and val labels mean the same classes? Checked before any training.

The classic ImageNet mistake is a split numbered another way: the devkit's 1-based ground-truth IDs
(or any list off by one) against 0-based folders. It trains without an error, with a head one class
too wide, and validates at 0%. So the two splits must use the same set of class indices, from 0,
and every label must fit `model.num_classes` when it is set. A val split that deliberately holds
fewer classes than train passes only with `data.val_subset=true`.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data.types import DataError

SUBSET_SETTING = "data.val_subset=true"


def _span(labels: set[int]) -> str:
    return f"{min(labels)}..{max(labels)} ({len(labels)} classes)"


def _few(labels: set[int]) -> str:
    shown = sorted(labels)[:3]
    return ", ".join(map(str, shown)) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def check_split_labels(train: set[int], val: set[int], sources: dict[str, str], val_subset: bool) -> None:
    """Refuse (one DataError line) when the splits' label sets are not the same classes from 0.
    sources: where each split came from ("data.train_list x.txt", "folder data/x/val")."""
    where = {split: f"{split} ({sources[split]})" for split in ("train", "val")}
    for split, labels in (("train", train), ("val", val)):
        if labels and min(labels) < 0:
            raise DataError(f"{where[split]} has negative label {min(labels)}: labels are class indices 0..N-1")
    if min(train) != 0:
        raise DataError(f"{where['train']} labels run {_span(train)}, expected 0-based class indices from 0 "
                        f"(val labels run {_span(val)}); 1-based lists, such as the ImageNet devkit's IDs, "
                        "need 1 subtracted")
    only_val, only_train = val - train, train - val
    if only_val:
        raise DataError(f"{where['val']} has labels {_few(only_val)} that no train sample has "
                        f"(train labels {_span(train)}, val labels {_span(val)}): do the two splits number the "
                        "same classes?")
    if only_train and not val_subset:
        raise DataError(f"{where['train']} has labels {_few(only_train)} that no val sample has "
                        f"(train labels {_span(train)}, val labels {_span(val)}): do the two splits number the "
                        f"same classes? A val split with fewer classes on purpose needs {SUBSET_SETTING}")


def check_num_classes(class_count: int, num_classes: int) -> None:
    """model.num_classes, when set, must hold every train label (val labels are train's, checked above)."""
    if num_classes and class_count > num_classes:
        raise DataError(f"the train split has labels up to {class_count - 1} ({class_count} classes) but "
                        f"model.num_classes={num_classes}: set model.num_classes={class_count} or more, or 0 to "
                        "take the count from the data")


CLASS_WORDS_FILE = "classes.txt"  # "<wnid> <words>" per class, written by `pipeline prepare`


def display_names(root: Path, classes: list[str]) -> list[str]:
    """Readable class names for checkpoints, predict, the model card and export: "tench" for
    n01440764 when root/classes.txt gives words for every class (its first synonym; a name two
    classes share, such as ImageNet's two "crane"s, keeps its WNID: "crane (n02012849)")."""
    path = root / CLASS_WORDS_FILE
    if not path.is_file():
        return classes
    words = {}
    for line in path.read_text().splitlines():
        wnid, _, text = line.strip().partition(" ")
        if text.strip():
            words[wnid] = text.split(",")[0].strip()
    if not all(c in words for c in classes):
        return classes
    names = [words[c] for c in classes]
    return [f"{name} ({c})" if names.count(name) > 1 else name for name, c in zip(names, classes)]
