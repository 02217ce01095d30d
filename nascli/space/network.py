"""Decoding an architecture into concrete layers ("block arguments"), before any module exists.

`decode()` is the single place where an `(space, indices)` pair plus the network settings
(resolution, width multiplier, stride policy, classes) become a flat list of `LayerArgs` with
every channel count and resolution fixed. The standalone builder, the analytic cost metrics and
the per-layer table all read this list; parsing and building never mix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from nascli.space.schema import (
    Activation,
    Block,
    Conv,
    Endpoint,
    GlobalAvgPool,
    InvertedBottleneck,
    Residual,
    SepConv,
    Zero,
    resolve,
)
from nascli.space.spaces import SearchSpace, scale_filters

STRIDE_POLICIES = ("keep", "auto")
#: tunas: nearest multiple of 8, at least 8 (TuNAS). efficientnet: the same with EfficientNet's
#: `round_filters` guard, + 8 when the rounding lost more than 10%.
WIDTH_ROUNDINGS = ("tunas", "efficientnet")


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV3 rounding: nearest multiple of `divisor`, at least `divisor`, and never more
    than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class NetworkSettings:
    """How an architecture is instantiated. The defaults are TuNAS's ImageNet setting except for
    the class count (1000 rather than TF's legacy 1001; set `num_classes=1001` for parity)."""

    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3
    width_multiplier: float = 1.0
    #: "keep": TuNAS strides. "auto": drop the earliest stride-2 layers (as CIFAR variants of
    #: MobileNet do) until the last feature map is at least `min_final_resolution` wide. At 224
    #: nothing is dropped.
    stride_policy: str = "auto"
    min_final_resolution: int = 2
    dropout: float = 0.0
    width_rounding: str = "tunas"

    def __post_init__(self) -> None:
        if self.width_rounding not in WIDTH_ROUNDINGS:
            raise ValueError(f"width_rounding must be one of {', '.join(WIDTH_ROUNDINGS)}")
        if self.stride_policy not in STRIDE_POLICIES:
            raise ValueError(
                f"stride_policy must be one of {', '.join(STRIDE_POLICIES)}, "
                f"got {self.stride_policy!r}"
            )
        if self.resolution < 1 or self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("resolution, num_classes and in_channels must be positive")
        if self.width_multiplier <= 0:
            raise ValueError("width_multiplier must be positive")


def block_width(filters: int, settings: NetworkSettings) -> int:
    """A block's width `filters` scaled by the width multiplier, rounded per the settings."""
    if settings.width_rounding == "efficientnet":
        return make_divisible(filters * settings.width_multiplier)
    return scale_filters(filters, settings.width_multiplier)


@dataclass(frozen=True)
class LayerArgs:
    """One concrete layer of a standalone network."""

    name: str
    kind: str  # conv | sepconv | ibn | gap | linear
    in_channels: int
    out_channels: int
    in_resolution: int
    out_resolution: int
    kernel: int = 1
    stride: int = 1
    expansion: float = 0.0
    mid_channels: int = 0  # expanded width of an IBN (0 otherwise)
    se_channels: int = 0  # SE hidden width (0 = no SE)
    act: str | None = None
    bn: bool = True
    residual: bool = False

    @property
    def bias(self) -> bool:
        """Convs have a bias only where no BN follows; the classifier always has one."""
        return self.kind == "linear" or (self.kind == "conv" and not self.bn)


@dataclass(frozen=True)
class Network:
    """An architecture with every width and resolution decided."""

    space: str
    indices: tuple[int, ...]
    settings: NetworkSettings
    layers: tuple[LayerArgs, ...] = field(repr=False)


def _spatial_out(resolution: int, stride: int) -> int:
    """Output size of a TF "SAME" convolution."""
    return math.ceil(resolution / stride)


def strides_to_drop(space: SearchSpace, settings: NetworkSettings) -> int:
    """How many leading stride-2 layers the stride policy turns into stride 1."""
    if settings.stride_policy == "keep":
        return 0
    strides = space.downsampling_strides
    for dropped in range(len(strides) + 1):
        resolution = settings.resolution
        for stride in strides[dropped:]:
            resolution = _spatial_out(resolution, stride)
        if resolution >= settings.min_final_resolution:
            return dropped
    return len(strides)


class _Decoder:
    """Walks a resolved spec, tracking width and resolution, emitting `LayerArgs`."""

    def __init__(self, settings: NetworkSettings, drop_strides: int) -> None:
        self.settings = settings
        self.drop_strides = drop_strides
        self.channels = settings.in_channels
        self.resolution = settings.resolution
        self.layers: list[LayerArgs] = []

    def stride(self, stride: int) -> int:
        if stride > 1 and self.drop_strides > 0:
            self.drop_strides -= 1
            return 1
        return stride

    def emit(self, name: str, kind: str, out_channels: int, stride: int = 1, **kw) -> LayerArgs:
        out_resolution = 1 if kind == "gap" else _spatial_out(self.resolution, stride)
        args = LayerArgs(
            name=name,
            kind=kind,
            in_channels=self.channels,
            out_channels=out_channels,
            in_resolution=self.resolution,
            out_resolution=out_resolution,
            stride=stride,
            **kw,
        )
        self.layers.append(args)
        self.channels, self.resolution = out_channels, out_resolution
        return args

    def classifier(self) -> LayerArgs:
        return self.emit("classifier", "linear", self.settings.num_classes, bn=False)

    def block(self, block: Block) -> None:
        width = block_width(block.filters, self.settings)
        for i, layer in enumerate(block.layers):
            self.layer(f"{block.name}.{i}", layer, width)

    def layer(self, name: str, layer, width: int, residual: bool = False) -> None:
        if isinstance(layer, Residual):
            if isinstance(layer.layer, Zero):
                return  # a skipped layer is an identity
            self.layer(name, layer.layer, width, residual=True)
            if self.layers[-1].stride != 1 or self.layers[-1].in_channels != width:
                raise ValueError(f"{name}: a residual needs stride 1 and equal widths")
        elif isinstance(layer, Conv):
            stride = self.stride(layer.stride)
            self.emit(name, "conv", width, stride, kernel=layer.kernel, bn=layer.bn)
        elif isinstance(layer, SepConv):
            stride = self.stride(layer.stride)
            kw = {"kernel": layer.kernel, "act": layer.act, "residual": residual}
            self.emit(name, "sepconv", width, stride, **kw)
        elif isinstance(layer, InvertedBottleneck):
            stride = self.stride(layer.stride)
            mid = scale_filters(self.channels, layer.expansion)
            se = make_divisible(0.25 * mid) if layer.se else 0
            kw = {"kernel": layer.kernel, "expansion": layer.expansion, "act": layer.act}
            kw |= {"mid_channels": mid, "se_channels": se, "residual": residual}
            self.emit(name, "ibn", width, stride, **kw)
        elif isinstance(layer, Activation):
            previous = self.layers[-1]
            if previous.kind != "conv" or previous.act is not None:
                raise ValueError(f"{name}: a stand-alone activation must follow a plain conv")
            self.layers[-1] = replace(previous, act=layer.name)
        elif isinstance(layer, GlobalAvgPool):
            self.emit(name, "gap", self.channels, bn=False)
        elif isinstance(layer, Endpoint):
            return
        else:
            raise ValueError(f"{name}: cannot build {layer!r}")


def decode(space: SearchSpace, indices: tuple[int, ...], settings: NetworkSettings) -> Network:
    """Concrete layers of `indices` in `space` (indices must already be validated)."""
    resolved = resolve(space.blocks, iter(indices))
    decoder = _Decoder(settings, strides_to_drop(space, settings))
    for block in resolved:
        decoder.block(block)
    decoder.classifier()
    return Network(space.name, tuple(indices), settings, tuple(decoder.layers))
