"""Where the DALI and torchvision evaluation views part (issue 36): one checkpoint run on four views
of the same val images, each differing from the next in one thing.

  torchvision  PIL decode, resize the shorter side to round(size / crop_fraction) with PIL's
               antialiasing filter, center crop `size` (the torchvision backend's ValTransform)
  crop-first   PIL decode, center crop shorter x size / resize_shorter (DALI's decoded region, as
               dali_graph.center_crops asks for it), then the same PIL resize to size x size
  torch-resize the crop-first region resized by torch's antialiased interpolate instead of PIL
               (what DALI on a CPU does: data.dali_resize=auto -> TorchResize)
  dali         the DALI backend's own val loader (its decoder and crop, TorchResize on a CPU)

Reported per pair: the share of images with the same top-1 class, the top-1 of each, the mean
absolute logit difference. `pipeline eval-parity` reports the end-to-end pair (dali vs torchvision).

    .venv/bin/python bench/eval_views.py RUN_DIR DATA_PATH key=value ...   (the run's model overrides)
    .venv/bin/python bench/eval_views.py none DATA_PATH data.image_size=224   (pixel differences only)
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from pipeline import checkpoint as ckpt  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data import Placement, build_data  # noqa: E402
from pipeline.data.folder import scan_folder  # noqa: E402
from pipeline.data.resolution import val_resize_shorter, val_size  # noqa: E402
from pipeline.models import build_model  # noqa: E402


def main() -> int:
    run, data, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    with_model = str(run) != "none"
    cfg = load_config(None, [f"data.path={data}", f"trainer.run_dir={run}", "trainer.precision=fp32",
                             "trainer.channels_last=false", *overrides])
    size, shorter = val_size(cfg.data), val_resize_shorter(cfg.data)
    classes, samples = scan_folder(data / "val")
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1) * 255
    to_tensor = v2.PILToTensor()
    views: dict[str, list[torch.Tensor]] = {"torchvision": [], "crop-first": [], "torch-resize": []}
    labels = []
    tv = v2.Compose([v2.Resize(shorter, antialias=True), v2.CenterCrop(size)])
    for i in range(len(samples)):
        path, label = samples[i]
        img = Image.open(path).convert("RGB")
        labels.append(label)
        views["torchvision"].append(to_tensor(tv(img)))
        side = min(img.size) * size / shorter  # dali_graph.center_crops: shorter x val_size / resize_shorter
        region = v2.CenterCrop(round(side))(img)
        views["crop-first"].append(to_tensor(region.resize((size, size), Image.BILINEAR, reducing_gap=None)))
        crop = to_tensor(region).unsqueeze(0)
        views["torch-resize"].append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                                     antialias=True).round().clamp(0, 255)[0])
    pixels = {name: torch.stack(images).float() for name, images in views.items()}
    for a, b in zip(list(pixels), list(pixels)[1:]):
        d = (pixels[a] - pixels[b]).abs()
        print(f"  {a:12s} -> {b:12s}: mean |pixel difference| {d.mean().item():.2f} of 255 (largest {d.max().item():.0f})")
    if not with_model:
        return 0
    _, state = ckpt.load_latest(run)
    model = build_model(cfg.model, len(classes))
    model.load_state_dict(state["model"])
    model.eval()
    logits = {}
    with torch.no_grad():
        for name, images in views.items():
            batch = (torch.stack(images).float() - mean) / std
            logits[name] = model(batch)
        placement = Placement(torch.device("cpu"), False)
        loader = build_data(dataclasses.replace(cfg.data, backend="dali"), placement, 0, 0).val
        loader.set_epoch(0)
        out, dali_labels = [], []
        for images, target in loader:
            out.append(model(images.contiguous()))
            dali_labels.append(target)
        logits["dali"] = torch.cat(out)
    target = torch.tensor(labels)
    assert torch.equal(torch.cat(dali_labels), target), "the DALI loader gave another order"
    top1 = {k: 100.0 * (v.argmax(1) == target).double().mean().item() for k, v in logits.items()}
    names = list(logits)
    print(f"{len(target)} val images, view {size} px from shorter side {shorter}; top-1: "
          + ", ".join(f"{k} {v:.2f}%" for k, v in top1.items()))
    rows = []
    for a, b in zip(names, names[1:]):
        agree = 100.0 * (logits[a].argmax(1) == logits[b].argmax(1)).double().mean().item()
        diff = (logits[a] - logits[b]).abs().mean().item()
        rows.append({"pair": f"{a} -> {b}", "same_top1_class": agree, "mean_abs_logit_diff": diff})
        print(f"  {a:12s} -> {b:12s}: same top-1 class {agree:6.2f}%, mean |logit difference| {diff:.4f}")
    print(json.dumps({"top1": top1, "pairs": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
