"""Model registry: every paper variant is registered by name from its architecture table (depths,
block type, shortcut and activation), in loops over the papers' tables rather than one function each.

`build_model(cfg)` builds a registry model, or any timm model as `timm/<name>`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.resnet import BlockOptions, ResNet
from pipeline.suggest import did_you_mean


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    family: str  # imagenet | cifar
    default_classes: int
    paper: str


_REGISTRY: dict[str, ModelSpec] = {}


def _register(name: str, family: str, paper: str, **arch) -> None:
    cifar = family == "cifar"
    defaults = dict(shortcut=arch.pop("shortcut", "identity"), activation=arch.pop("activation", "original"),
                    projection=arch.pop("projection", "A" if cifar else "B"))

    def build(num_classes: int, **opts) -> nn.Module:
        drop_rate = opts.pop("drop_rate", 0.0)
        zero_init_last = opts.pop("zero_init_last", False)
        drop_path_rate = opts.pop("drop_path_rate", 0.0)
        merged = {**defaults, **{k: v for k, v in opts.items() if v not in ("", None)}}
        return ResNet(num_classes=num_classes, opts=BlockOptions(**merged), cifar_stem=cifar,
                      drop_rate=drop_rate, zero_init_last=zero_init_last, drop_path_rate=drop_path_rate, **arch)

    _REGISTRY[name] = ModelSpec(name, build, family, 10 if cifar else 1000, paper)


# ImageNet ResNets, He 2015 Table 1 (v1.5 stride placement by default, as torchvision).
_IMAGENET = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
             101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True), 200: ((3, 24, 36, 3), True)}
for _depth, (_layers, _bottleneck) in _IMAGENET.items():
    if _depth != 200:
        _register(f"resnet{_depth}", "imagenet", "He 2015", layers=_layers, bottleneck=_bottleneck)
    if _depth in (18, 34):  # the plain twins of Table 2 / Figure 4
        _register(f"plain{_depth}", "imagenet", "He 2015 (plain)", layers=_layers, bottleneck=False,
                  shortcut="none")
    if _depth >= 50:  # He 2016 Table 5: pre-activation ImageNet models
        _register(f"preact_resnet{_depth}", "imagenet", "He 2016 (pre-act)", layers=_layers,
                  bottleneck=True, activation="full_preact")

# ResNeXt (Xie 2017, Table 1: cardinality x bottleneck width) and Wide ResNets (Zagoruyko 2016: the
# bottleneck's inner width doubled), ImageNet trunks as torchvision names and builds them.
for _name, (_layers, _groups, _base) in {"resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
                                         "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
                                         "resnext101_64x4d": ((3, 4, 23, 3), 64, 4),
                                         "wide_resnet50_2": ((3, 4, 6, 3), 1, 128),
                                         "wide_resnet101_2": ((3, 4, 23, 3), 1, 128)}.items():
    _register(_name, "imagenet", "Xie 2017" if _name.startswith("resnext") else "Zagoruyko 2016",
              layers=_layers, bottleneck=True, groups=_groups, base_width=_base)

# CIFAR Wide ResNets WRN-d-k (Zagoruyko 2016; the authors' models/wide-resnet.lua): a 16-channel conv,
# then three stages of (d - 4) / 6 pre-activation basic units at 16k, 32k, 64k channels, a 1x1
# projection where the shape changes, BN-ReLU before pooling; model.block_dropout adds their dropout.
for _depth, _k in ((28, 10), (40, 4), (16, 8)):
    _register(f"wrn{_depth}_{_k}", "cifar", "Zagoruyko 2016", layers=((_depth - 4) // 6,) * 3, bottleneck=False,
              widths=(16 * _k, 32 * _k, 64 * _k), stem_width=16, activation="full_preact", projection="B")

# CIFAR ResNets 6n+2, 16/32/64 channels, option A (He 2015 Table 6), and their plain twins.
_CIFAR = (16, 32, 64)
for _depth in (20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    _register(f"resnet{_depth}", "cifar", "He 2015", layers=(_n,) * 3, bottleneck=False, widths=_CIFAR)
    if _depth <= 110:
        _register(f"plain{_depth}", "cifar", "He 2015 (plain)", layers=(_n,) * 3, bottleneck=False,
                  widths=_CIFAR, shortcut="none")
# Pre-activation CIFAR nets (He 2016): 110 basic (6n+2), 164 and 1001 bottleneck (9n+2), projection B
# where dimensions change, as in the authors' code.
_register("preact_resnet110", "cifar", "He 2016 (pre-act)", layers=(18,) * 3, bottleneck=False,
          widths=_CIFAR, activation="full_preact", projection="B")
for _depth in (164, 1001):
    _register(f"preact_resnet{_depth}", "cifar", "He 2016 (pre-act)", layers=((_depth - 2) // 9,) * 3,
              bottleneck=True, widths=_CIFAR, activation="full_preact", projection="B")
# The identity-mapping ablations run on ResNet-110 / ResNet-164 with the original unit as a base;
# ResNet-164 with original units is registered for Table 2.
_register("resnet164", "cifar", "He 2016", layers=(18,) * 3, bottleneck=True, widths=_CIFAR, projection="B")


def model_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY) or " (see `pipeline models`, or use timm/<name>)"
        raise ValueError(f"unknown model '{name}'{hint}")
    return _REGISTRY[name]


def build_model(cfg: ModelConfig, num_classes: int | None = None) -> nn.Module:
    """Build the model named by cfg.name with cfg's block options; num_classes overrides cfg's."""
    model = _build(cfg, num_classes or cfg.num_classes)
    if cfg.blurpool:
        from pipeline.models.blurpool import apply_blurpool

        apply_blurpool(model)
    return model


def _build(cfg: ModelConfig, classes: int) -> nn.Module:
    if cfg.name.startswith("timm/"):
        import timm

        try:
            return timm.create_model(cfg.name[5:], pretrained=False, num_classes=classes or 1000,
                                     drop_rate=cfg.drop_rate, **({"drop_path_rate": cfg.drop_path_rate}
                                                                 if cfg.drop_path_rate > 0 else {}))
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ValueError(f"unknown timm model '{cfg.name[5:]}': {exc}") from None
    spec = get_spec(cfg.name)
    opts = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(BlockOptions) if hasattr(cfg, f.name)}
    opts["stride_on_3x3"] = cfg.variant == "v1.5"
    return spec.build(classes or spec.default_classes, drop_rate=cfg.drop_rate,
                      zero_init_last=cfg.zero_init_last, drop_path_rate=cfg.drop_path_rate, **opts)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
