"""BlurPool on the strided convolutions (Zhang 2019, "Making Convolutional Networks Shift-Invariant
Again"), placed as FFCV's ImageNet recipe places it: the input of every convolution with stride > 1
and at least 16 input channels is low-pass filtered by a 3x3 binomial kernel first, then the
convolution runs with its own stride. The stem (3 input channels) is left alone.

The filter is timm's `BlurPool2d` at stride 1 (its buffer is not persistent), and the blurred
convolution stays an `nn.Conv2d` with the same parameters: a state dict has exactly the keys of
the plain model, so torchvision or timm weights load strictly into a blurred model and back. timm's
filter pads by reflection, FFCV's by zeros: the border pixels differ, the recipe does not.
"""
from __future__ import annotations

import torch
from timm.layers import BlurPool2d
from torch import nn

MIN_CHANNELS = 16  # FFCV's rule: no blur on the 3-channel stem


class BlurConv2d(nn.Conv2d):
    """A strided convolution whose input is blurred first; its parameters are the original conv's."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        self.weight, self.bias = conv.weight, conv.bias  # the same Parameters: nothing re-initialized
        self.blur = BlurPool2d(conv.in_channels, filt_size=3, stride=1).to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.blur(x))


def apply_blurpool(model: nn.Module) -> int:
    """Replace every strided convolution of >= 16 input channels with its blurred twin, in place;
    returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Conv2d and max(child.stride) > 1 and child.in_channels >= MIN_CHANNELS):
                setattr(parent, name, BlurConv2d(child))
                replaced += 1
    return replaced
