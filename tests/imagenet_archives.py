"""Small ImageNet archives with the exact official structure, built from a class-folder dataset.

- ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (struct array `synsets` with the official fields in
  order; leaf synsets with ILSVRC2012_IDs that are NOT in sorted-WNID order, plus internal synsets
  with num_children > 0 and IDs after the leaves) and data/ILSVRC2012_validation_ground_truth.txt;
- ILSVRC2012_img_train.tar: a tar of per-class tars `<wnid>.tar` holding `<wnid>_<n>.JPEG`, n not
  consecutive;
- ILSVRC2012_img_val.tar: flat `ILSVRC2012_val_%08d.JPEG`, classes interleaved;
- Kaggle's layout of the same images.
`expected_folder` is the hand-built ImageFolder that a correct prepare must equal.
"""
from __future__ import annotations

import io
import random
import shutil
import tarfile
from pathlib import Path

import numpy as np


def wnids_for(classes: list[str]) -> dict[str, str]:
    return {name: f"n{1000 + 7 * i:08d}" for i, name in enumerate(classes)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files:
            _add(tar, name, data)
    return buf.getvalue()


def _meta_mat(wnids: list[str], ids: dict[str, int], train_counts: dict[str, int]) -> bytes:
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(ids[w], w, f"{w[1:].lstrip('0')} thing, thingy", "a gloss", 0, np.zeros((0,)), 0, train_counts[w])
            for w in sorted(wnids, key=ids.get)]
    n = len(wnids)
    rows.append((n + 1, "n00001740", "entity", "the root", 2, np.array([n + 2, 1]), 5, 0))
    rows.append((n + 2, "n00002684", "object", "a thing", n - 1, np.arange(2, n + 1), 4, 0))
    synsets = np.zeros((len(rows),), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def build(folder: Path, out: Path, seed: int = 0, train_counts_off: dict[str, int] | None = None) -> dict:
    """Official archives under out/official, Kaggle's layout under out/kaggle, the expected
    ImageFolder under out/expected; returns {"wnids": class -> wnid, "ids": wnid -> ID}."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in (folder / "train").iterdir())
    wnid = wnids_for(classes)
    order = list(wnid.values())
    rng.shuffle(order)
    ids = {w: i + 1 for i, w in enumerate(order)}  # devkit IDs: not the sorted-WNID order
    official, kaggle, expected = out / "official", out / "kaggle", out / "expected"
    for root in (official, kaggle / "ILSVRC/Data/CLS-LOC/val", expected):
        root.mkdir(parents=True)
    class_tars, counts = [], {}
    for name in classes:
        files = sorted((folder / "train" / name).iterdir())
        numbers = sorted(rng.sample(range(1, 40 * len(files)), len(files)))
        members = [(f"{wnid[name]}_{n}.JPEG", f.read_bytes()) for n, f in zip(numbers, files)]
        class_tars.append((f"{wnid[name]}.tar", _tar_bytes(members)))
        counts[wnid[name]] = len(members) + (train_counts_off or {}).get(wnid[name], 0)
        for member, data in members:
            for root in (kaggle / "ILSVRC/Data/CLS-LOC/train" / wnid[name], expected / "train" / wnid[name]):
                root.mkdir(parents=True, exist_ok=True)
                (root / member).write_bytes(data)
    (official / "ILSVRC2012_img_train.tar").write_bytes(_tar_bytes(class_tars))
    val = [(name, f) for name in classes for f in sorted((folder / "val" / name).iterdir())]
    rng.shuffle(val)
    val_files, truth, solution = [], [], ["ImageId,PredictionString"]
    for n, (name, f) in enumerate(val, 1):
        member = f"ILSVRC2012_val_{n:08d}.JPEG"
        val_files.append((member, f.read_bytes()))
        truth.append(str(ids[wnid[name]]))
        solution.append(f"{member[:-5]},{wnid[name]} 1 2 30 40 {wnid[name]} 3 4 20 25")
        (expected / "val" / wnid[name]).mkdir(parents=True, exist_ok=True)
        (expected / "val" / wnid[name] / member).write_bytes(f.read_bytes())
        (kaggle / "ILSVRC/Data/CLS-LOC/val" / member).write_bytes(f.read_bytes())
    (official / "ILSVRC2012_img_val.tar").write_bytes(_tar_bytes(val_files))
    devkit = [("ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat(list(wnid.values()), ids, counts)),
              ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ("\n".join(truth) + "\n").encode()),
              ("ILSVRC2012_devkit_t12/readme.txt", b"devkit\n")]
    with tarfile.open(official / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in devkit:
            _add(tar, name, data)
    header, rows = solution[0], solution[1:]
    rng.shuffle(rows)  # Kaggle's CSV is not in file order: keyed by ImageId
    (kaggle / "LOC_val_solution.csv").write_text("\n".join([header, *rows]) + "\n")
    (kaggle / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {w[1:].lstrip('0')} thing, thingy\n" for w in sorted(wnid.values())))
    return {"wnids": wnid, "ids": ids}


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
