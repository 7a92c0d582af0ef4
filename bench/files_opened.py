"""Files opened by one training epoch's reads, folder vs shards, both backends (one process).

    python bench/files_opened.py FOLDER SHARDS

Counts Python's `open` audit events (raised by `open()` and `os.open()`) while one train epoch is
read with data.workers=0 (torchvision) or the in-process DALI feed, after the loader is built.
Shards are opened once per process; the count starts with none open.
"""
from __future__ import annotations

import sys

import torch

from pipeline.config import load_config
from pipeline.data.factory import build_data
from pipeline.data.shards import close_shards
from pipeline.data.types import Placement

OPENS = {"n": 0, "on": False}


def _hook(event: str, args) -> None:
    if OPENS["on"] and event == "open" and isinstance(args[0], (str, bytes)) and not str(args[0]).startswith("/proc"):
        OPENS["n"] += 1


def main() -> None:
    sys.addaudithook(_hook)
    for path in sys.argv[1:3]:
        for backend in ("torchvision", "dali"):
            cfg = load_config(None, [f"data.path={path}", f"data.backend={backend}", "data.workers=0",
                                     "data.batch_size=64", "data.image_size=64", "data.make_demo=false"])
            loader = build_data(cfg.data, Placement(torch.device("cpu"), False), seed=0).train
            loader.set_epoch(0)
            close_shards()  # count this epoch's opens, not an earlier run's kept descriptors
            OPENS.update(n=0, on=True)
            images = sum(len(y) for _, y in loader)
            OPENS["on"] = False
            print(f"{path} {backend}: {OPENS['n']} files opened for {images} train images", flush=True)


if __name__ == "__main__":
    main()
