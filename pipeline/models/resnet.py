"""Residual networks from "Deep Residual Learning" (He 2015) and "Identity Mappings" (He 2016),
the bottleneck's grouped (ResNeXt, Xie 2017) and widened (Wide ResNet, Zagoruyko 2016) 3x3, and the
CIFAR Wide ResNets (pre-activation basic units, widened stages, dropout between the convs).

One block class covers basic (3x3-3x3) and bottleneck (1x1-3x3-1x1) units; the paper ablations
are options of that block, not copied classes:

  shortcut h(x):  identity | scaling | gating | shortcut_gating | conv1x1 | dropout | none (plain)
  activation:     original | bn_after_add | relu_before_add | relu_only_preact | full_preact

With the defaults (original activation, identity shortcut, projection B) module names and
parameter counts are torchvision's, so torchvision state_dicts load strictly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

SHORTCUTS = ("identity", "scaling", "gating", "shortcut_gating", "conv1x1", "dropout", "none")
ACTIVATIONS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
PREACT = ("relu_only_preact", "full_preact")


@dataclass(frozen=True)
class BlockOptions:
    """Options shared by every block of a network."""

    shortcut: str = "identity"
    activation: str = "original"
    projection: str = "B"  # A: zero-pad identity; B: 1x1 conv+BN where shape changes; C: everywhere
    stride_on_3x3: bool = True  # v1.5 (torchvision); False = v1, stride on the first 1x1
    shortcut_scale: float = 0.5
    residual_scale: float = 0.5
    gate_bias_init: float = -6.0
    shortcut_dropout: float = 0.5
    block_dropout: float = 0.0  # dropout between a unit's convs, after the BN-ReLU (Wide ResNets: 0.3)

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut '{self.shortcut}', expected one of {', '.join(SHORTCUTS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{self.activation}', expected one of {', '.join(ACTIVATIONS)}")
        if self.block_dropout and self.activation != "full_preact":
            raise ValueError("model.block_dropout is the pre-activation unit's dropout (Wide ResNets): it needs "
                             f"model.activation=full_preact, not {self.activation}")


class ZeroPadShortcut(nn.Module):
    """Option A: subsample spatially and zero-pad the new channels (parameter-free)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """A basic (expansion 1) or bottleneck (expansion 4) residual unit.

    Convs are conv1..convK and norms bn1..bnK in order of use, so the original unit matches
    torchvision's names. Pre-activation units put bn_i *before* conv_i (bn1 sees the input).
    """

    def __init__(self, in_ch: int, width: int, stride: int, bottleneck: bool, opts: BlockOptions,
                 drop_path: float = 0.0, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.opts = opts
        # Stochastic depth: timm's DropPath on the residual branch (no parameters, no state-dict keys).
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.bottleneck = bottleneck
        out_ch = width * (4 if bottleneck else 1)
        preact = opts.activation == "full_preact"

        # Residual branch F(x): channel plan conv_i: chans[i] -> chans[i+1].
        if bottleneck:
            # ResNeXt (Xie 2017) and Wide ResNets (Zagoruyko 2016) as torchvision builds them: the 3x3
            # is `groups` groups of width * base_width / 64 channels each.
            inner = int(width * (base_width / 64.0)) * groups
            chans = [in_ch, inner, inner, out_ch]
            strides = [1, stride, 1] if opts.stride_on_3x3 else [stride, 1, 1]
            kernels = [1, 3, 1]
        else:
            chans, strides, kernels = [in_ch, width, out_ch], [stride, 1], [3, 3]
        self.num_convs = len(kernels)
        for i, (k, s) in enumerate(zip(kernels, strides), start=1):
            conv = conv3x3(chans[i - 1], chans[i], s, groups) if k == 3 else conv1x1(chans[i - 1], chans[i], s)
            setattr(self, f"conv{i}", conv)
            # full pre-activation normalizes the conv's input; every other unit its output
            # ("bn_after_add" reuses the last norm after the addition, so its width is out_ch too).
            setattr(self, f"bn{i}", nn.BatchNorm2d(chans[i - 1] if preact else chans[i]))
        self.relu = nn.ReLU(inplace=True)

        # Shortcut h(x).
        needs_projection = stride != 1 or in_ch != out_ch
        self.downsample: nn.Module | None = None
        if opts.shortcut == "conv1x1" or (opts.shortcut != "none" and (
                opts.projection == "C" or (needs_projection and opts.projection == "B"))):
            layers: list[nn.Module] = [conv1x1(in_ch, out_ch, stride)]
            if not preact:  # pre-activation projections consume the already normalized input
                layers.append(nn.BatchNorm2d(out_ch))
            self.downsample = nn.Sequential(*layers)
        elif opts.shortcut != "none" and needs_projection:
            self.downsample = ZeroPadShortcut(stride, out_ch - in_ch)
        self.gate: nn.Conv2d | None = None
        if opts.shortcut in ("gating", "shortcut_gating"):
            # g(x) = sigmoid(W_g x + b_g), a 1x1 conv; a negative bias starts g near 0, i.e. near
            # identity (He 2016 Table 1 used b_g = -6).
            self.gate = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True)
            nn.init.constant_(self.gate.bias, opts.gate_bias_init)

    def zero_init_last(self) -> None:
        """Zero the gamma of the BN that ends the residual branch, so the unit starts as identity."""
        if self.opts.activation in ("original", "relu_only_preact"):
            nn.init.zeros_(getattr(self, f"bn{self.num_convs}").weight)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        act = self.opts.activation
        out = x
        for i in range(1, self.num_convs + 1):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            last = i == self.num_convs
            if act == "full_preact":
                if i > 1:  # unit 1's BN-ReLU is done in forward
                    out = self.relu(bn(out))
                    if self.opts.block_dropout > 0:  # WRN: dropout between the convs
                        out = F.dropout(out, self.opts.block_dropout, self.training)
                out = conv(out)
            elif act == "relu_only_preact":
                out = bn(conv(F.relu(out) if i == 1 else out))  # not in place: x is also the shortcut
                out = out if last else self.relu(out)
            else:
                out = conv(out)
                if last and act == "bn_after_add":
                    break
                out = bn(out)
                if not last or act == "relu_before_add":
                    out = self.relu(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        opts = self.opts
        if opts.activation == "full_preact":
            # BN-ReLU of the input feeds the residual branch and, where there is one, the projection.
            x_pre = self.relu(self.bn1(x))
            residual = self._residual(x_pre)
            shortcut_in = x_pre if isinstance(self.downsample, nn.Sequential) else x
        else:
            residual = self._residual(x)
            shortcut_in = x
        residual = self.drop_path(residual)

        if opts.shortcut == "none":
            out = residual
        else:
            shortcut = self.downsample(shortcut_in) if self.downsample is not None else shortcut_in
            if opts.shortcut == "scaling":
                out = opts.shortcut_scale * shortcut + opts.residual_scale * residual
            elif opts.shortcut == "gating":
                gate = torch.sigmoid(self.gate(x))
                out = gate * residual + (1.0 - gate) * shortcut
            elif opts.shortcut == "shortcut_gating":
                out = residual + (1.0 - torch.sigmoid(self.gate(x))) * shortcut
            elif opts.shortcut == "dropout":
                out = residual + F.dropout(shortcut, opts.shortcut_dropout, self.training)
            else:
                out = residual + shortcut

        if opts.activation == "original":
            out = self.relu(out)
        elif opts.activation == "bn_after_add":
            out = self.relu(getattr(self, f"bn{self.num_convs}")(out))
        return out


class ResNet(nn.Module):
    """ResNet trunk for ImageNet (7x7 stem, 4 stages) or CIFAR (3x3 stem, 3 stages)."""

    def __init__(
        self,
        layers: tuple[int, ...],
        bottleneck: bool,
        num_classes: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        cifar_stem: bool = False,
        opts: BlockOptions = BlockOptions(),
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        drop_path_rate: float = 0.0,
        groups: int = 1,
        base_width: int = 64,
        stem_width: int = 0,  # 0: the first stage's width (WRN's stem stays at 16 while the stages widen)
    ) -> None:
        super().__init__()
        if (groups, base_width) != (1, 64) and not bottleneck:
            raise ValueError("groups and base_width widen the bottleneck's 3x3: basic blocks have none")
        if drop_path_rate > 0 and opts.shortcut == "none":
            raise ValueError("model.drop_path_rate needs a shortcut: a plain network has no identity path to keep")
        preact = opts.activation in PREACT
        stem_width = stem_width or widths[0]
        if cifar_stem:
            self.conv1 = conv3x3(3, stem_width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # Kaiming's pre-activation CIFAR nets start with a bare conv: the first unit's BN-ReLU follows.
        self.bn1: nn.Module = nn.Identity() if (preact and cifar_stem) else nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_ch = stem_width
        num_blocks, block_index = sum(layers), 0
        for stage, (width, depth) in enumerate(zip(widths, layers), start=1):
            blocks = []
            for b in range(depth):
                stride = 2 if (stage > 1 and b == 0) else 1
                # timm's rule (resnet.py drop_blocks/make_blocks): the rate grows linearly with depth.
                rate = drop_path_rate * block_index / max(1, num_blocks - 1)
                blocks.append(ResidualBlock(in_ch, width, stride, bottleneck, opts, rate, groups, base_width))
                block_index += 1
                in_ch = width * (4 if bottleneck else 1)
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        # Pre-activation units leave the last sum un-normalized: one BN-ReLU before pooling.
        self.final_norm: nn.Module | None = nn.BatchNorm2d(in_ch) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop_rate = drop_rate
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        if self.final_norm is not None:
            x = self.relu(self.final_norm(x))
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
