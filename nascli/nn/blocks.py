"""Building blocks of the standalone networks, in TuNAS's conventions.

TF "SAME" padding (asymmetric at stride 2 on even inputs), BN ε = 1e-3 and momentum 0.99 in TF
terms (0.01 in PyTorch's), no conv bias before a BN, h-swish for TuNAS's `swish6`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.01  # PyTorch's convention for TF's decay of 0.99

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "swish6": nn.Hardswish}


def same_padding(kernel: int, stride: int, resolution: int) -> tuple[int, int]:
    """(before, after) padding of a TF "SAME" convolution on a `resolution`-wide input."""
    out = math.ceil(resolution / stride)
    total = max((out - 1) * stride + kernel - resolution, 0)
    return total // 2, total - total // 2


class ConvBNAct(nn.Sequential):
    """[pad] → conv → [BN] → [activation]; the conv has a bias only without BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int],
        *,
        resolution: int,
        stride: int = 1,
        groups: int = 1,
        bn: bool = True,
        act: str | None = None,
    ) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        top, bottom = same_padding(kh, stride, resolution)
        left, right = same_padding(kw, stride, resolution)
        layers: list[nn.Module] = []
        padding: tuple[int, int] = (top, left)
        if (top, left) != (bottom, right):
            layers.append(nn.ZeroPad2d((left, right, top, bottom)))
            padding = (0, 0)
        conv = nn.Conv2d(
            in_channels, out_channels, (kh, kw), stride, padding, groups=groups, bias=not bn
        )
        layers.append(conv)
        if bn:
            layers.append(nn.BatchNorm2d(out_channels, eps=BN_EPSILON, momentum=BN_MOMENTUM))
        if act is not None:
            layers.append(ACTIVATIONS[act](inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """GAP → 1×1 conv (bias) → ReLU → 1×1 conv (bias) → sigmoid, multiplied into the input."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.expand(self.act(self.reduce(gate))))
        return x * gate


class SeparableConv(nn.Module):
    """Depthwise k×k + BN + act, then 1×1 + BN (no final activation)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, act: str,
        resolution: int, residual: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.residual = residual
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel, resolution=resolution, stride=stride,
            groups=in_channels, act=act,
        )  # fmt: skip
        out_resolution = math.ceil(resolution / stride)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, resolution=out_resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return y + x if self.residual else y


class InvertedBottleneck(nn.Module):
    """1×1 expand + BN + act, depthwise k×k + BN + act, [SE], 1×1 project + BN, [+ x]."""

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, kernel: int, stride: int,
        act: str, se_channels: int, resolution: int, residual: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.residual = residual
        out_resolution = math.ceil(resolution / stride)
        self.expand = ConvBNAct(in_channels, mid_channels, 1, resolution=resolution, act=act)
        self.depthwise = ConvBNAct(
            mid_channels, mid_channels, kernel, resolution=resolution, stride=stride,
            groups=mid_channels, act=act,
        )  # fmt: skip
        self.se = SqueezeExcite(mid_channels, se_channels) if se_channels else nn.Identity()
        self.project = ConvBNAct(mid_channels, out_channels, 1, resolution=out_resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return y + x if self.residual else y
