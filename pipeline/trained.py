"""A trained model out of a run: the network with its weights, its config and its class names, from a
run directory (newest checkpoint) or a checkpoint of either layout. `pipeline export` and `pipeline
predict` start here; `model.pretrained` reads weight files the same way."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.config import RootConfig, load_config
from pipeline.models import build_model


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on the CPU
    cfg: RootConfig  # the config the run trained with
    classes: list[str]  # class names in label order (the training folders' names)
    source: Path  # the checkpoint read
    step: int
    weights: str  # "ema" or "raw"


def load_trained(path: str | Path, raw: bool = False) -> TrainedModel:
    """The EMA weights when the run kept an EMA (unless raw), else the trained ones."""
    source = ckpt.resolve(path)
    state = ckpt.load_checkpoint(source)
    if not isinstance(state.get("config"), dict):
        raise ckpt.CheckpointError(f"checkpoint {source} carries no config: not written by this pipeline")
    cfg = load_config(tree=state["config"], tree_source=f"the config stored in {source}")
    weights, kind = state["model"], "raw"
    if not raw and state.get("ema"):  # timm ModelEmaV3: the copy's keys start with "module."
        weights, kind = {k.removeprefix("module."): v for k, v in state["ema"].items()}, "ema"
    classifier = weights.get("fc.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None else (cfg.model.num_classes or 1000)
    model = build_model(cfg.model, num_classes)
    load_weights_strictly(model, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
                          f"checkpoint {source}", cfg.model.name)
    classes = [str(c) for c in state.get("classes") or range(num_classes)]
    return TrainedModel(model.eval(), cfg, classes, source, int(state["progress"]["global_step"]), kind)


def load_weights_strictly(model: nn.Module, weights: dict, what: str, name: str) -> None:
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ckpt.CheckpointError(f"{what} does not fit model {name}: {len(sizes)} tensors of another shape "
                                   f"({sizes[0] if sizes else str(exc).splitlines()[0]})") from None
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})" if result.missing_keys else "",
                 f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})"
                 if result.unexpected_keys else ""]
        raise ckpt.CheckpointError(f"{what} does not fit model {name}: " + ", ".join(p for p in parts if p))


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from safetensors, or a torch file (torchvision/timm weights, our checkpoints),
    loaded weights-only."""
    path = Path(path)
    if not path.is_file():
        raise ckpt.CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error kinds
            raise ckpt.CheckpointError(f"weights file {path} is not a readable safetensors file: {exc}") from None
    state = ckpt._load_file(path)
    for key in ("model", "state_dict", "module"):  # our checkpoints, common trainer formats
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ckpt.CheckpointError(f"weights file {path} holds no state_dict of tensors")
    return state


def load_pretrained(model: nn.Module, path: str, name: str) -> None:
    """model.pretrained: the trunk strictly; the classifier re-initialized when the class count differs."""
    weights = read_weight_file(path)
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear) and "fc.weight" in weights and weights["fc.weight"].shape != fc.weight.shape:
        print(f"model.pretrained: classifier re-initialized ({weights['fc.weight'].shape[0]} classes in {path}, "
              f"{fc.out_features} here); trunk loaded", file=sys.stderr, flush=True)
        weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        weights.update({f"fc.{k}": v for k, v in fc.state_dict().items()})
    load_weights_strictly(model, weights, f"model.pretrained {path}", name)
