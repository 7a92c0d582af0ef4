"""An ImageNet-sized JPEG folder for data-loader benchmarks, reproducible from one command.

The demo classes rendered at 500 px, then stored as 500x375 or 375x500 (ImageNet's two commonest
shapes), quality 90, in the ImageNet layout. `--links K` adds K-1 hard links per train image so an
epoch is long enough for a fast GPU pipeline to reach steady state without K times the render time
(the decoder still reads and decodes every file name).

    python bench/jpeg_folder.py /tmp/big2 --train-per-class 200 --val-per-class 60   # CPU record
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from PIL import Image

# Run as a script from anywhere, the package installed or not (the GPU image has it only on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.data.demo import make_demo_data  # noqa: E402

IMAGENET_SHAPES = ((500, 375), (375, 500))  # (width, height)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=60)
    p.add_argument("--links", type=int, default=1, help="hard links per train image (>= 1)")
    args = p.parse_args()
    if args.dir.exists():
        raise SystemExit(f"{args.dir} exists; remove it or pick another folder")
    square = make_demo_data(args.dir.with_name(args.dir.name + ".square"), args.train_per_class,
                            args.val_per_class, size=500)
    for n, path in enumerate(sorted(square.rglob("*.JPEG"))):
        target = args.dir / path.relative_to(square)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.resize(IMAGENET_SHAPES[n % 2], Image.BICUBIC).save(target, quality=90)
        if target.parts[-3] == "train":
            for k in range(1, args.links):
                os.link(target, target.with_name(f"{target.stem}_link{k}{target.suffix}"))
    shutil.rmtree(square)
    print(f"{args.dir}: {sum(1 for _ in (args.dir / 'train').rglob('*.JPEG'))} train, "
          f"{sum(1 for _ in (args.dir / 'val').rglob('*.JPEG'))} val JPEGs")


if __name__ == "__main__":
    main()
