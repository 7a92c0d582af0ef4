"""`pipeline predict --checkpoint RUN_DIR|CHECKPOINT IMAGE|DIR ... [--topk 5] [--json]`

The run's own validation transform (resize, center crop, its normalization), batched as its
validation was (the run's val batch size), on the GPU when there is one, and with the run's
numerics: its trainer.precision and trainer.channels_last, resolved on this machine as training
resolves them (`auto` picks what it picks now; the choice is cached per CPU, so on the machine that
trained it is the run's). So predict counts the same images right as `pipeline eval` does: a bf16
run predicted in fp32 flips close calls. `--precision fp32` asks for fp32 explicitly.
A file that does not decode is reported by name and skipped; the exit code is 1 when any file
failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dataclasses

import torch

from pipeline.data.folder import _DECODE_ERRORS, IMAGE_EXTENSIONS, ValTransform, load_rgb
from pipeline.data.normalize import PixelNormalizer
from pipeline.data.shards import ShardMember, shard_images
from pipeline.numerics import Numerics, choose
from pipeline.trained import load_trained

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory, a step-*.pt file or a ds-step-* folder")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or WebDataset shards (.tar)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="default: the run's validation batch size")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--raw", action="store_true", help="the trained weights even when the run kept an EMA")
    p.add_argument("--precision", default="run", choices=("run", "auto", "fp32", "bf16", "fp16"),
                   help="run: the run's trainer.precision (default); fp32 for plain fp32 arithmetic")


def _files(specs: list[str]) -> list:
    """Image files, and the images inside WebDataset shards (.tar files, read through their index)."""
    files: list = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            for tar in sorted(path.rglob("*.tar")):
                files += shard_images(tar)
        elif path.suffix == ".tar" and path.is_file():
            files += shard_images(path)
        else:
            files.append(path)  # a missing or odd file is reported when it is read
    return files


def numerics_for(trainer_cfg, device: torch.device, precision: str) -> Numerics:
    """The run's numerics on this device, resolved as training resolves them; `precision` other
    than "run" replaces the run's trainer.precision (its layout stays)."""
    if precision != "run":
        trainer_cfg = dataclasses.replace(trainer_cfg, precision=precision)
    return choose(trainer_cfg, device, announce=False)


def main(args: argparse.Namespace) -> int:
    if args.topk < 1 or (args.batch is not None and args.batch < 1):
        raise ValueError(f"--topk and --batch must be >= 1, got {args.topk} and {args.batch}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is visible")
    trained = load_trained(args.checkpoint, raw=args.raw)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    numerics = numerics_for(trained.cfg.trainer, device, args.precision)
    print(f"predict: {trained.source} ({trained.weights} weights) on {device.type}, {numerics.reason}",
          file=sys.stderr, flush=True)
    layout = torch.channels_last if numerics.channels_last else torch.contiguous_format
    model = trained.model.to(device, memory_format=layout)
    amp_dtype = _AMP_DTYPES.get(numerics.precision)
    batch_size = args.batch or trained.cfg.data.val_batch_size or trained.cfg.data.batch_size
    transform, normalize = ValTransform(trained.cfg.data), PixelNormalizer(trained.cfg.data.mean, trained.cfg.data.std)
    k = min(args.topk, len(trained.classes))
    failed, batch, names = 0, [], []

    def flush() -> None:
        images = torch.stack(batch).to(device).contiguous(memory_format=layout)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            probs = model(images).float().softmax(dim=1).cpu()
        top = probs.topk(k, dim=1)
        for name, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
            ranked = [{"class": trained.classes[i], "index": i, "prob": round(v, 5)} for v, i in zip(values, indices)]
            if args.json:
                print(json.dumps({"file": str(name), "top": ranked}))
            else:
                print(f"{name}  " + "  ".join(f"{r['class']} {r['prob']:.3f}" for r in ranked))
        batch.clear()
        names.clear()

    for path in _files(args.images):
        try:
            image = transform(load_rgb(path if isinstance(path, ShardMember) else str(path)), 0)
        except _DECODE_ERRORS as exc:
            print(f"error: cannot read image {path}: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        batch.append(normalize.chw(image))
        names.append(path)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if failed:
        print(f"{failed} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0
