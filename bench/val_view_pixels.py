"""DALI's evaluation views against the torchvision backend's ValTransform, per pixel (issue 43).

    .venv/bin/python bench/val_view_pixels.py DATA_DIR [--size 224] [--batch 32]

For data.val_view = torchvision and fast, and DALI's two CPU resizes (data.dali_resize=auto: torch
finishes the images, the CPU default; dali: DALI's own resize, the GPU graph's CPU twin), the mean
and largest absolute difference from torchvision's batches over the whole val split, in grey levels
(0-255, the normalization undone). The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import load_config  # noqa: E402
from pipeline.data import Placement, build_data  # noqa: E402


def val_images(root: str, size: int, batch: int, *overrides: str) -> torch.Tensor:
    cfg = load_config(None, [f"data.path={root}", f"data.image_size={size}", f"data.batch_size={batch}",
                             "data.workers=2", "data.make_demo=false", *overrides])
    data = build_data(cfg.data, Placement(torch.device("cpu"), True), seed=0)
    data.val.set_epoch(0)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1) * 255
    return torch.cat([x for x, _ in data.val]) * std  # grey levels (the mean cancels in a difference)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    reference = val_images(args.data, args.size, args.batch, "data.backend=torchvision")
    rows = []
    for view in ("torchvision", "fast"):
        for resize in ("auto", "dali"):
            diff = (val_images(args.data, args.size, args.batch, "data.backend=dali", f"data.val_view={view}",
                               f"data.dali_resize={resize}") - reference).abs()
            rows.append({"val_view": view, "dali_resize": resize, "mean": diff.mean().item(), "max": diff.max().item()})
            print(f"val_view={view:<11} dali_resize={resize:<4}  mean {rows[-1]['mean']:.3f}  max {rows[-1]['max']:.1f} "
                  f"grey levels vs torchvision ({len(reference)} images, {args.size} px)")
    print(json.dumps({"images": len(reference), "size": args.size, "rows": rows}))


if __name__ == "__main__":
    main()
