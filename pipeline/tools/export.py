"""`pipeline export RUN_DIR|CHECKPOINT --format safetensors|torchscript|onnx [--out F] [--raw]`

The network leaves the pipeline: EMA weights when the run kept an EMA (--raw for the trained ones),
from a plain or a DeepSpeed checkpoint. Every export is read back and run on a fixed batch; the line
printed gives the largest difference from the eager model (it must stay under 1e-4). The file is
written under a temporary name and renamed only then, so a failed export overwrites nothing.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from pipeline.config import to_dict
from pipeline.data.resolution import val_size
from pipeline.trained import TrainedModel, load_trained

FORMATS = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
TOLERANCE = 1e-4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a run directory (its newest checkpoint), a step-*.pt file or a ds-step-* folder")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--out", help="output file (default: <run dir>/export/model<ext>)")
    p.add_argument("--raw", action="store_true", help="the trained weights even when the run kept an EMA")


def _example(trained: TrainedModel) -> torch.Tensor:
    size = val_size(trained.cfg.data)  # the size the run evaluates at
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def write(trained: TrainedModel, fmt: str, out: Path) -> float:
    """Export to `out`; returns the largest |exported - eager| on a fixed batch."""
    model, example = trained.model, _example(trained)
    with torch.no_grad():
        expected = model(example)
    if fmt == "safetensors":
        from safetensors.torch import load_file, save_file

        metadata = {"model": trained.cfg.model.name, "num_classes": str(len(trained.classes)),
                    "classes": json.dumps(trained.classes), "config": json.dumps(to_dict(trained.cfg)),
                    "step": str(trained.step), "weights": trained.weights, "source": str(trained.source)}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out), metadata=metadata)
        reloaded = load_trained_copy(trained, load_file(str(out)))
        with torch.no_grad():
            got = reloaded(example)
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(out))
        with torch.no_grad():
            got = torch.jit.load(str(out))(example)
    else:
        import onnxruntime

        # torch.export-based exporter (the default since torch 2.9; needs onnxscript), batch size free.
        torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamo=True, dynamic_shapes=({0: "batch"},), verbose=False, external_data=False)
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": example.numpy()})[0])
    return float((got - expected).abs().max())


def load_trained_copy(trained: TrainedModel, weights: dict) -> torch.nn.Module:
    from pipeline.models import build_model

    model = build_model(trained.cfg.model, len(trained.classes))
    model.load_state_dict(weights)  # strict: the file must hold exactly the network's keys
    return model.eval()


def main(args: argparse.Namespace) -> int:
    trained = load_trained(args.checkpoint, raw=args.raw)
    run_dir = trained.source.parent.parent  # <run>/checkpoints/<checkpoint>
    out = Path(args.out) if args.out else run_dir / "export" / f"model{FORMATS[args.format]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        diff = write(trained, args.format, tmp)
        if not diff <= TOLERANCE:
            raise RuntimeError(f"the exported {args.format} model differs from the eager one by {diff:.2e} "
                               f"(> {TOLERANCE}); {out} left untouched")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {trained.cfg.model.name} ({trained.weights} weights, step {trained.step}, "
          f"{len(trained.classes)} classes) from {trained.source} to {out} as {args.format}; "
          f"max |exported - eager| on a fixed batch: {diff:.2e}")
    return 0
