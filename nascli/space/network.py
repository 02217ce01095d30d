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
    GraphConv,
    GraphOutput,
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
    kind: str  # conv | sepconv | ibn | gap | linear | concat
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
    kernel_width: int = 0  # a conv's kernel width when it is not square (0: `kernel`)
    #: positions in the layer list whose outputs, channel-concatenated (smaller maps
    #: zero-padded to the largest), are this layer's input; -1 is the image; empty: the
    #: previous layer's output
    inputs: tuple[int, ...] = ()
    #: elements of other activations alive while this layer runs (earlier outputs a later
    #: layer still reads), beyond the layer's own input and output
    kept: int = 0

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.kernel, self.kernel_width or self.kernel

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
        self.graph: list[int] = []  # positions of the graph layers' outputs, in layer order
        self.used: set[int] = set()  # graph outputs some later layer takes as an input

    def stride(self, stride: int) -> int:
        if stride > 1 and self.drop_strides > 0:
            self.drop_strides -= 1
            return 1
        return stride

    def gather(self, sources: list[int]) -> tuple[int, ...]:
        """Make `sources` (layer positions, -1 the image) the next layer's input: sets the
        incoming channels (their sum) and resolution (the largest, after zero-padding)."""
        if sources == [-1]:
            self.channels, self.resolution = self.settings.in_channels, self.settings.resolution
        else:
            picked = [self.layers[p] for p in sources]
            self.channels = sum(layer.out_channels for layer in picked)
            self.resolution = max(layer.out_resolution for layer in picked)
        return tuple(sources)

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
        # NAS-RL's layers carry their own widths (their blocks have none)
        width = None if block.filters is None else block_width(block.filters, self.settings)
        for i, layer in enumerate(block.layers):
            self.layer(f"{block.name}.{i}", layer, width)

    def layer(self, name: str, layer, width: int | None, residual: bool = False) -> None:
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
        elif isinstance(layer, GraphConv):
            chosen = [j for j, taken in enumerate(layer.inputs) if taken]
            self.used.update(chosen)
            sources = [self.graph[j] for j in chosen] or [-1]  # rule 1: no input, the image
            inputs = self.gather(sources)
            width = max(1, round(layer.filters * self.settings.width_multiplier))
            kw = {"kernel": layer.kernel_height, "kernel_width": layer.kernel_width}
            kw |= {"act": "relu", "inputs": inputs}
            self.emit(name, "conv", width, layer.stride, **kw)
            self.graph.append(len(self.layers) - 1)
        elif isinstance(layer, GraphOutput):  # rule 2: every unused output reaches the end
            unused = [p for i, p in enumerate(self.graph) if i not in self.used]
            inputs = self.gather(unused)
            self.emit(name, "concat", self.channels, bn=False, inputs=inputs)
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
    layers = decoder.layers
    if decoder.graph:
        layers = _with_kept(layers)
    return Network(space.name, tuple(indices), settings, tuple(layers))


def _elements(layer: LayerArgs) -> int:
    return layer.out_channels * layer.out_resolution**2


def _with_kept(layers: list[LayerArgs]) -> list[LayerArgs]:
    """Each layer's `kept`: the outputs of earlier layers that a later layer still reads (not
    counting the layer's input when it is one of them, unconcatenated and unpadded)."""
    last_read: dict[int, int] = {}
    for position, layer in enumerate(layers):
        sources = layer.inputs or ((position - 1,) if position else ())
        for source in sources:
            if source >= 0:
                last_read[source] = position
    out = []
    for position, layer in enumerate(layers):
        alive = [s for s, last in last_read.items() if s < position < last]
        sole = layer.inputs[0] if len(layer.inputs) == 1 else None
        kept = sum(_elements(layers[s]) for s in alive if s != sole)
        out.append(replace(layer, kept=kept))
    return out
