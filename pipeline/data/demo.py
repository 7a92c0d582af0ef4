"""A small, learnable dataset of real JPEG files in the ImageNet layout, made without a download.

Ten classes of procedurally drawn textures (stripes at several angles, checkerboards, rings,
dots, blobs...). Colours, frequency, phase and noise are random per image, so a model has to
learn the pattern, and random-resized crops keep enough of it to stay learnable.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_CLASSES = ("hstripes", "vstripes", "diag_stripes", "checker", "rings",
                "dots", "blob", "cross", "gradient", "noise")


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] field in [0, 1] whose structure identifies the class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = rng.uniform(3, 7)
    phase = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    r = np.hypot(xx - cx, yy - cy)
    if kind == "hstripes":
        field = np.sin(2 * np.pi * freq * yy + phase)
    elif kind == "vstripes":
        field = np.sin(2 * np.pi * freq * xx + phase)
    elif kind == "diag_stripes":
        field = np.sin(2 * np.pi * freq * (xx + yy) / 1.4 + phase)
    elif kind == "checker":
        field = np.sign(np.sin(2 * np.pi * freq * xx + phase) * np.sin(2 * np.pi * freq * yy + phase))
    elif kind == "rings":
        field = np.sin(2 * np.pi * freq * 1.5 * r + phase)
    elif kind == "dots":
        field = (np.sin(2 * np.pi * freq * xx + phase) * np.sin(2 * np.pi * freq * yy) > 0.6) * 2.0 - 1
    elif kind == "blob":
        field = np.exp(-(r**2) / (2 * rng.uniform(0.08, 0.18) ** 2)) * 2 - 1
    elif kind == "cross":
        w = rng.uniform(0.06, 0.12)
        field = ((np.abs(xx - cx) < w) | (np.abs(yy - cy) < w)) * 2.0 - 1
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        field = 2 * ((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5) - 1
    else:  # smooth noise: upsampled coarse random grid
        coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return np.clip((field + 1) / 2, 0, 1)


def _image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    field = _pattern(kind, size, rng)[..., None]
    fg, bg = rng.uniform(0, 255, size=(2, 3))
    pixels = field * fg + (1 - field) * bg + rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_demo_data(root: Path, train_per_class: int = 130, val_per_class: int = 30,
                   size: int = 80, seed: int = 0) -> Path:
    """Write root/train/<class>/*.JPEG and root/val/<class>/*.JPEG; returns root."""
    rng = np.random.default_rng(seed)
    tmp = root.with_name(root.name + ".partial")
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in DEMO_CLASSES:
            folder = tmp / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _image(kind, size, rng).save(folder / f"{kind}_{i:04d}.JPEG", quality=90)
    (tmp / "demo.json").write_text(json.dumps({"classes": DEMO_CLASSES, "train_per_class": train_per_class,
                                               "val_per_class": val_per_class, "size": size, "seed": seed}))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)  # appear complete or not at all
    return root
