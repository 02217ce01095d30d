"""The weight-shared supernet of a search space, running only the sampled child (TuNAS's
`tunas/rematlib/`).

Built from the space's data with the same traversal as the indices, so every choice node knows
its decision position. Weights are sized for the largest choice and *sliced* to the active
channels, which is the function of TuNAS's prefix masks at the child's cost:

* each kernel size has its own depthwise (or stem) conv and its own BN; the 1×1 expand and
  project convs, their BNs and the SE are shared across kernels and expansion ratios
  (operation collapsing); nothing is shared across layers;
* expansion widths are relative to the *sampled* input width, `scale(in, ratio)`;
* BN is stateless: batch statistics in every pass, no running averages, as in TuNAS's search;
* a skipped layer is an identity and costs nothing;
* under op warmup a choice node may be *mixed*: all its branches run and are averaged with
  weight 1/n (a skip node gives x + ½·layer(x)); filter warmup simply samples the largest width.

How the shared weights start is a `SupernetInit` (nascli's addition, off in TuNAS's own
settings): with every switch on, every child starts as the same function. A residual branch
whose last BN has γ = 0 is an identity, so skipping it changes nothing at first; every kernel
size starts as the smallest one zero-padded (with SAME padding the centres align), so the
kernel choice does not change the function either; an SE whose expand conv starts at zero
gates by a constant ½, which the project BN after it normalises away; the channels beyond a
searched width's or expansion's smallest option start silent, so every width starts as the
narrowest (where a ReLU follows them they compute as usual and their readers start at zero
instead: a zero before a ReLU would never get a gradient). Each option keeps its own weights
and grows apart from that common start as training sees it.

`active_decay` lists the kernel slices the last forward pass used, so weight decay reaches only
the active slices and branches, as TuNAS does. `extract(indices)` returns the standalone model of
`nascli build` carrying the supernet's weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nascli.nn.blocks import BN_EPSILON, same_padding
from nascli.nn.builder import MobileNet, build_model, init_conv_kernel, init_weights
from nascli.space.network import (
    NetworkSettings,
    block_width,
    decode,
    make_divisible,
    strides_to_drop,
)
from nascli.space.schema import (
    Activation,
    Block,
    Conv,
    Endpoint,
    GlobalAvgPool,
    InvertedBottleneck,
    Placed,
    Residual,
    SepConv,
    Zero,
)
from nascli.space.spaces import SearchSpace, scale_filters

# In place, as the standalone model's activations: they always follow a BN or a sum.
_ACT = {
    "relu": lambda x: F.relu(x, inplace=True),
    "swish6": lambda x: F.hardswish(x, inplace=True),
    None: lambda x: x,
}
#: activations that pass no gradient at 0: a channel that starts at exactly 0 before one of
#: them never leaves it
_FLAT_AT_ZERO = {"relu"}


@dataclass(frozen=True)
class SupernetInit:
    """How the shared weights start. All False: TuNAS's initialisers for every weight."""

    zero_residual: bool = False  # γ = 0 in the last BN of every residual (skippable) branch
    tied_kernels: bool = False  # every kernel size starts as the smallest, zero-padded
    zero_se: bool = False  # SE's expand conv (weight and bias) starts at 0: a constant ½ gate
    #: channels beyond a searched width's (and expansion's) smallest option start silent (γ = 0
    #: in the BN that ends them, or a zero conv where no BN follows; where a ReLU follows,
    #: zero weights in the conv that reads them), so every width and expansion choice starts
    #: as the smallest one
    zero_width: bool = False


@dataclass
class Sample:
    """One child: an index per decision, and which op nodes run mixed (op warmup).

    `weights` relaxes decisions for the gradient strategies: position -> a (C,) tensor of
    option weights (differentiable). A relaxed op decision runs every option and sums their
    outputs times their weights; a relaxed width decision runs at its largest width and
    multiplies the output channels by Σ_b w_b·1[c < width_b] (FBNetV2's channel masks)."""

    indices: list[int]
    mixed: list[bool]
    weights: dict[int, torch.Tensor] | None = None
    #: relaxed decisions whose other options are not computed (ProxylessNAS's two paths)
    run: dict[int, list[int]] | None = None

    @classmethod
    def of(cls, indices) -> Sample:
        indices = [int(i) for i in indices]
        return cls(indices, [False] * len(indices))


class Choice:
    """A decision position and its options (from a `Placed` node of the space's walk); a plain
    field is a one-option choice."""

    def __init__(self, node):
        if isinstance(node, Placed):
            self.options = tuple(node.choices)
            self.position: int | None = node.position
        else:
            self.options, self.position = (node,), None

    def branches(self, s: Sample) -> tuple[list[int], float]:
        """The option numbers that run and the weight each output gets."""
        if self.position is None:
            return [0], 1.0
        if s.mixed[self.position]:
            return list(range(len(self.options))), 1.0 / len(self.options)
        return [s.indices[self.position]], 1.0

    def value(self, s: Sample):
        return self.options[0 if self.position is None else s.indices[self.position]]

    def relaxed(self, s: Sample) -> torch.Tensor | None:
        """This decision's option weights when `s` relaxes it, else None."""
        if self.position is None or not s.weights:
            return None
        return s.weights.get(self.position)

    def computed(self, s: Sample) -> list[int]:
        """The options a relaxed pass computes: all, or the ones `s.run` names."""
        if s.run and self.position in s.run:
            return s.run[self.position]
        return list(range(len(self.options)))


def weighted_sum(outputs: list[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor | None:
    """Σ_b w_b · output_b over the options that produce an output (None: Zero)."""
    total = None
    for out, w in zip(outputs, weights, strict=True):
        if out is not None:
            total = out * w if total is None else total + out * w
    return total


def channel_mask(widths: list[int], weights: torch.Tensor, device) -> torch.Tensor:
    """(1, max width, 1, 1): Σ_b w_b · 1[c < width_b] (each width keeps its first channels)."""
    channels = torch.arange(max(widths), device=device)
    keep = torch.stack([(channels < w).to(weights.dtype) for w in widths])  # (B, C)
    return (weights.to(device) @ keep).view(1, -1, 1, 1)


class Trace:
    """What a forward pass used: kernel slices for masked weight decay."""

    def __init__(self) -> None:
        self.decay: dict[int, tuple[nn.Parameter, tuple[slice, ...]]] = {}

    def kernel(self, weight: nn.Parameter, *sizes: int) -> torch.Tensor:
        index = tuple(slice(0, n) for n in sizes)
        self.decay[id(weight)] = (weight, index)
        return weight[index]


class SuperBN(nn.Module):
    """Affine BN over the first c channels, normalised with the batch's own statistics."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.batch_norm(x, None, None, self.weight[:c], self.bias[:c], True, 0.0, BN_EPSILON)


class SuperConv(nn.Module):
    """A k×k conv (groups=1 or depthwise) with TF "SAME" padding on a fixed input resolution."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, resolution: int,
        depthwise: bool = False, bias: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.depthwise = depthwise
        shape = (c_out, 1 if depthwise else c_in, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.stride = stride
        before, after = same_padding(kernel, stride, resolution)
        self.pad = (before, after, before, after) if before != after else None
        self.padding = 0 if before != after else before

    def forward(self, x: torch.Tensor, c_out: int, trace: Trace) -> torch.Tensor:
        c_in = x.shape[1]
        if self.depthwise:
            weight, groups = trace.kernel(self.weight, c_in), c_in
        else:
            weight, groups = trace.kernel(self.weight, c_out, c_in), 1
        bias = None if self.bias is None else self.bias[:c_out]
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, groups)


class ConvBN(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, resolution, depthwise=False, bn=True):
        super().__init__()
        self.conv = SuperConv(c_in, c_out, kernel, stride, resolution, depthwise, bias=not bn)
        self.bn = SuperBN(c_out) if bn else None

    def forward(self, x: torch.Tensor, c_out: int, trace: Trace) -> torch.Tensor:
        y = self.conv(x, c_out, trace)
        return y if self.bn is None else self.bn(y)


class KernelSwitch(nn.Module):
    """One ConvBN per kernel size (no weight sharing between kernels, as in TuNAS)."""

    def __init__(self, choice: Choice, c_in, c_out, stride, resolution, depthwise, bn=True):
        super().__init__()
        self.choice = choice
        self.convs = nn.ModuleList(
            ConvBN(c_in, c_out, k, stride, resolution, depthwise, bn) for k in choice.options
        )

    def forward(self, x: torch.Tensor, c_out: int, s: Sample, trace: Trace) -> torch.Tensor:
        relaxed = self.choice.relaxed(s)
        if relaxed is not None:
            run = self.choice.computed(s)
            outputs = [
                conv(x, c_out, trace) if b in run else None for b, conv in enumerate(self.convs)
            ]
            return weighted_sum(outputs, relaxed)
        branches, weight = self.choice.branches(s)
        y = self.convs[branches[0]](x, c_out, trace)
        for b in branches[1:]:
            y = y + self.convs[b](x, c_out, trace)
        return y * weight if weight != 1.0 else y


class SuperSE(nn.Module):
    """SE over the active width c, hidden = make_divisible(c/4) (a prefix of the largest)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = make_divisible(0.25 * channels)
        self.reduce = nn.Parameter(torch.empty(hidden, channels, 1, 1))
        self.reduce_bias = nn.Parameter(torch.zeros(hidden))
        self.expand = nn.Parameter(torch.empty(channels, hidden, 1, 1))
        self.expand_bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        c = x.shape[1]
        h = make_divisible(0.25 * c)
        gate = x.mean((2, 3), keepdim=True)
        gate = F.relu(F.conv2d(gate, trace.kernel(self.reduce, h, c), self.reduce_bias[:h]))
        gate = torch.sigmoid(F.conv2d(gate, trace.kernel(self.expand, c, h), self.expand_bias[:c]))
        return x * gate


class Layer(nn.Module):
    """Base of the super layers: forward(x, width of this block, sample, trace). `min_in` and
    `min_out` are the smallest widths its input and output can have (set by the builder)."""

    min_in: int = 0
    min_out: int = 0

    def forward(self, x, width: int, s: Sample, trace: Trace) -> torch.Tensor:
        raise NotImplementedError


class SuperStemConv(Layer):
    """Conv (kernel may be searched: one conv + BN per kernel), optional BN, activation."""

    def __init__(self, spec: Conv, c_in, c_out, stride, resolution):
        super().__init__()
        self.kernel = Choice(spec.kernel)
        self.convs = KernelSwitch(self.kernel, c_in, c_out, stride, resolution, False, spec.bn)
        self.act: str | None = None  # set by a following Activation entry

    def forward(self, x, width, s, trace):
        return _ACT[self.act](self.convs(x, width, s, trace))


class SuperSepConv(Layer):
    def __init__(self, spec: SepConv, c_in, c_out, stride, resolution):
        super().__init__()
        self.kernel = Choice(spec.kernel)
        self.depthwise = KernelSwitch(self.kernel, c_in, c_in, stride, resolution, True)
        out_resolution = math.ceil(resolution / stride)
        self.pointwise = ConvBN(c_in, c_out, 1, 1, out_resolution)
        self.act = spec.act

    def forward(self, x, width, s, trace):
        y = _ACT[self.act](self.depthwise(x, x.shape[1], s, trace))
        return self.pointwise(y, width, trace)


class SuperIBN(Layer):
    def __init__(self, spec: InvertedBottleneck, c_in, c_out, stride, resolution):
        super().__init__()
        self.kernel = Choice(spec.kernel)
        self.expansion = Choice(spec.expansion)
        self.se = Choice(spec.se)
        mid = scale_filters(c_in, max(self.expansion.options))
        self.expand = ConvBN(c_in, mid, 1, 1, resolution)
        self.depthwise = KernelSwitch(self.kernel, mid, mid, stride, resolution, True)
        self.squeeze = SuperSE(mid) if any(self.se.options) else None
        out_resolution = math.ceil(resolution / stride)
        self.project = ConvBN(mid, c_out, 1, 1, out_resolution)
        self.act = spec.act

    def forward(self, x, width, s, trace):
        relaxed = self.expansion.relaxed(s)
        if relaxed is None:
            mid, mask = scale_filters(x.shape[1], self.expansion.value(s)), None
        else:  # every expansion of the actual input width, as channel masks of the largest
            mids = [scale_filters(x.shape[1], ratio) for ratio in self.expansion.options]
            mid, mask = max(mids), channel_mask(mids, relaxed, x.device)
        act = _ACT[self.act]
        y = act(self.expand(x, mid, trace))
        if mask is not None:
            y = y * mask
        y = act(self.depthwise(y, mid, s, trace))
        if mask is not None:
            y = y * mask
        relaxed_se = self.se.relaxed(s)
        branches, weight = self.se.branches(s)
        if relaxed_se is not None:
            run = self.se.computed(s)
            outputs = [
                (self.squeeze(y, trace) if on else y) if b in run else None
                for b, on in enumerate(self.se.options)
            ]
            y = weighted_sum(outputs, relaxed_se)
        elif len(branches) > 1:  # op warmup: ½·y + ½·SE(y)
            y = weight * (y + self.squeeze(y, trace))
        elif self.se.options[branches[0]]:
            y = self.squeeze(y, trace)
        return self.project(y, width, trace)


class SuperGAP(Layer):
    def forward(self, x, width, s, trace):
        return x.mean((2, 3), keepdim=True)


class OpChoice(Layer):
    """A choice between layers (or a layer and Zero); inside a residual, Zero is a skip."""

    def __init__(self, layers: list[Layer | None], choice: Choice, residual: bool):
        super().__init__()
        self.layers = nn.ModuleList(layer or nn.Identity() for layer in layers)
        self.is_zero = [layer is None for layer in layers]
        self.choice = choice
        self.residual = residual

    def forward(self, x, width, s, trace):
        relaxed = self.choice.relaxed(s)
        if relaxed is not None:
            run = self.choice.computed(s)
            outputs = [
                None if zero or b not in run else layer(x, width, s, trace)
                for b, (layer, zero) in enumerate(zip(self.layers, self.is_zero, strict=True))
            ]
            y = weighted_sum(outputs, relaxed)
            if self.residual:
                return x if y is None else x + y
            return torch.zeros_like(x) if y is None else y
        branches, weight = self.choice.branches(s)
        y = None
        for b in branches:
            if self.is_zero[b]:
                continue
            out = self.layers[b](x, width, s, trace)
            y = out if y is None else y + out
        if y is not None and weight != 1.0:
            y = y * weight
        if self.residual:
            return x if y is None else x + y
        return torch.zeros_like(x) if y is None else y


class SuperBlock(nn.Module):
    def __init__(self, name: str, layers: list[Layer], width: Choice, settings: NetworkSettings):
        super().__init__()
        self.name = name
        self.layers = nn.ModuleList(layers)
        self.width = width
        self.widths = [block_width(w, settings) for w in width.options]

    def forward(self, x, s: Sample, trace: Trace) -> torch.Tensor:
        relaxed = self.width.relaxed(s)
        if relaxed is not None:  # the largest width, its channels masked after every layer
            mask = channel_mask(self.widths, relaxed, x.device)
            for layer in self.layers:
                x = layer(x, max(self.widths), s, trace) * mask
            return x
        width = self.widths[s_index(self.width, s)]
        for layer in self.layers:
            x = layer(x, width, s, trace)
        return x


class _Builder:
    """Walks the space's placed blocks, creating super layers with max-size weights."""

    def __init__(self, space: SearchSpace, settings: NetworkSettings):
        self.settings = settings
        self.drop = strides_to_drop(space, settings)
        self.channels = settings.in_channels  # the largest width the next layer can receive
        self.min_channels = settings.in_channels  # and the smallest
        self.min_width = settings.in_channels  # the smallest width of the block being built
        self.resolution = settings.resolution

    def stride(self, stride: int) -> int:
        if stride > 1 and self.drop > 0:
            self.drop -= 1
            return 1
        return stride

    def block(self, block: Block) -> SuperBlock:
        # Weights need the block's largest width before its layers are built.
        filters = block.filters.choices if isinstance(block.filters, Placed) else (block.filters,)
        max_width = max(block_width(f, self.settings) for f in filters)
        self.min_width = min(block_width(f, self.settings) for f in filters)
        layers: list[Layer] = []
        for entry in block.layers:
            layer = self.layer(entry, max_width)
            if isinstance(entry, Activation):
                layers[-1].act = entry.name
            elif layer is not None:
                layers.append(layer)
        width = Choice(block.filters)
        return SuperBlock(block.name, layers, width, self.settings)

    def layer(self, entry, max_width: int, residual: bool = False) -> Layer | None:
        if isinstance(entry, Residual):
            return self.layer(entry.layer, max_width, residual=True)
        if isinstance(entry, Placed):
            layers = [
                None if isinstance(c, Zero) else self.layer(c, max_width) for c in entry.choices
            ]
            return OpChoice(layers, Choice(entry), residual)
        if isinstance(entry, (Activation, Endpoint)):
            return None
        if isinstance(entry, GlobalAvgPool):
            self.resolution = 1
            return SuperGAP()
        kinds = {Conv: SuperStemConv, SepConv: SuperSepConv, InvertedBottleneck: SuperIBN}
        stride = self.stride(entry.stride)
        layer = kinds[type(entry)](entry, self.channels, max_width, stride, self.resolution)
        layer.min_in, layer.min_out = self.min_channels, self.min_width
        self.channels, self.resolution = max_width, math.ceil(self.resolution / stride)
        self.min_channels = self.min_width
        return layer


class Supernet(nn.Module):
    """All children of `space` at `settings`, sharing weights; forward(x, sample) runs one."""

    def __init__(
        self, space: SearchSpace, settings: NetworkSettings, init: SupernetInit | None = None
    ):
        super().__init__()
        self.space, self.settings = space, settings
        builder = _Builder(space, settings)
        self.blocks = nn.ModuleList(builder.block(block) for block in space.placed[0])
        self.classifier = nn.Linear(builder.channels, settings.num_classes)
        self.dropout = settings.dropout
        self.trace = Trace()
        init_weights(self)
        for module in self.modules():  # the parameters init_weights does not know
            if isinstance(module, SuperConv):
                _init_conv(module.weight, module.depthwise)
            elif isinstance(module, SuperSE):
                _init_conv(module.reduce, False)
                _init_conv(module.expand, False)
        self._same_start(init or SupernetInit())

    @torch.no_grad()
    def _same_start(self, init: SupernetInit) -> None:
        for module in self.modules():
            if init.zero_residual and isinstance(module, OpChoice) and module.residual:
                for layer in module.layers:
                    last = _last_bn(layer)
                    if last is not None:
                        last.weight.zero_()
            elif init.tied_kernels and isinstance(module, KernelSwitch):
                first = module.convs[0].conv.weight
                k = first.shape[-1]
                for conv in module.convs[1:]:
                    weight = conv.conv.weight
                    offset = (weight.shape[-1] - k) // 2
                    weight.zero_()
                    weight[..., offset : offset + k, offset : offset + k] = first
            elif init.zero_se and isinstance(module, SuperSE):
                module.expand.zero_()
                module.expand_bias.zero_()
        if init.zero_width:  # after the kernels are tied: every kernel's extra channels
            self._zero_width()

    def _zero_width(self) -> None:
        """Channels beyond each searched width's smallest option start silent. Where no
        activation follows the conv that makes them, its BN's γ = 0 does it (γ still gets a
        gradient). Where a ReLU follows, a zero output would be a saddle the channels never
        leave (the ReLU passes no gradient at 0: the extra channels of an expansion or a stem
        would stay dead for good, and every wider option would equal the narrowest at a higher
        cost), so the channels compute as usual and their *readers* start at zero instead:
        the input columns of the next conv that mixes channels (and of the classifier)."""
        layers = [layer for block in self.blocks for layer in block.layers]
        for position, layer in enumerate(layers):
            if isinstance(layer, OpChoice):  # a choice's options share their position
                options = [option for option in layer.layers if isinstance(option, Layer)]
            else:
                options = [layer]
            for option in options:
                if isinstance(option, SuperIBN):
                    start = scale_filters(option.min_in, min(option.expansion.options))
                    if option.act in _FLAT_AT_ZERO:
                        _zero_readers(option, start, within=True)
                    else:
                        _zero_channels(option.expand, start)
                    _zero_channels(option.project, option.min_out)
                elif isinstance(option, SuperSepConv):
                    _zero_channels(option.pointwise, option.min_out)
                elif isinstance(option, SuperStemConv) and option.act in _FLAT_AT_ZERO:
                    self._zero_next_readers(layers[position + 1 :], option.min_out)
                elif isinstance(option, SuperStemConv):
                    for conv in option.convs.convs:
                        _zero_channels(conv, option.min_out)

    def _zero_next_readers(self, following: list[Layer], start: int) -> None:
        for layer in following:
            if isinstance(layer, SuperGAP):
                continue  # pooling keeps channels apart: the reader comes after it
            _zero_readers(layer, start)
            return
        self.classifier.weight[:, start:] = 0

    def forward(self, x: torch.Tensor, sample: Sample) -> torch.Tensor:
        self.trace = trace = Trace()
        for block in self.blocks:
            x = block(x, sample, trace)
        x = torch.flatten(x, 1)
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout)
        return F.linear(x, self.classifier.weight[:, : x.shape[1]], self.classifier.bias)

    def active_decay(self) -> list[tuple[nn.Parameter, tuple[slice, ...]]]:
        """The kernel slices (convs, depthwise, SE) the last forward used; never BN, biases or
        the classifier."""
        return list(self.trace.decay.values())

    @torch.no_grad()
    def extract(self, indices) -> MobileNet:
        """The standalone model of `indices`, carrying this supernet's weights."""
        network = decode(self.space, tuple(int(i) for i in indices), self.settings)
        model = build_model(network)
        sample = Sample.of(indices)
        targets = iter(model.features)
        for block in self.blocks:
            width = block.widths[s_index(block.width, sample)]
            for layer in block.layers:
                _copy_layer(layer, sample, targets, width)
        classifier = model.classifier
        classifier.weight.copy_(self.classifier.weight[:, : classifier.in_features])
        classifier.bias.copy_(self.classifier.bias)
        return model


def _last_bn(layer: nn.Module) -> SuperBN | None:
    """The BN that ends a residual branch's layer (its output before the sum)."""
    if isinstance(layer, SuperIBN):
        return layer.project.bn
    if isinstance(layer, SuperSepConv):
        return layer.pointwise.bn
    return None


def _zero_readers(layer: Layer, start: int, within: bool = False) -> None:
    """Input channels from `start` on start with zero weight wherever `layer` mixes channels:
    its input (depthwise convs keep channels apart, so for a separable conv that is the
    pointwise conv), or with `within` an inverted bottleneck's own expanded channels (the
    project conv and the SE, whose gate then also ignores its extra hidden units)."""
    if isinstance(layer, OpChoice):
        if layer.residual and any(layer.is_zero):
            raise AssertionError("a skippable layer cannot hide its input's extra channels")
        for option, zero in zip(layer.layers, layer.is_zero, strict=True):
            if not zero:
                _zero_readers(option, start, within)
    elif within and isinstance(layer, SuperIBN):
        layer.project.conv.weight[:, start:] = 0
        if layer.squeeze is not None:
            layer.squeeze.reduce[:, start:] = 0
            layer.squeeze.expand[:, make_divisible(0.25 * start) :] = 0
    elif isinstance(layer, SuperIBN):
        layer.expand.conv.weight[:, start:] = 0
    elif isinstance(layer, SuperSepConv):
        layer.pointwise.conv.weight[:, start:] = 0
    elif isinstance(layer, SuperStemConv):
        for conv in layer.convs.convs:
            conv.conv.weight[:, start:] = 0
    else:
        raise AssertionError(f"no reader of channels in {type(layer).__name__}")


def _zero_channels(end: ConvBN, start: int) -> None:
    """Output channels from `start` on produce 0: γ = 0 (β is 0), or a zero conv without BN."""
    if end.bn is not None:
        end.bn.weight[start:] = 0
    else:
        end.conv.weight[start:] = 0
        end.conv.bias[start:] = 0


def _init_conv(weight: torch.Tensor, depthwise: bool) -> None:
    """TuNAS's conv initialiser over the fan-in (k² for depthwise kernels)."""
    _, c_in, kh, kw = weight.shape
    init_conv_kernel(weight, kh * kw * (1 if depthwise else c_in))


def _convs_and_bns(module: nn.Module) -> tuple[list[nn.Conv2d], list[nn.BatchNorm2d]]:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return convs, bns


def _copy_conv(source: ConvBN, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> None:
    out, c_in = conv.weight.shape[:2]
    conv.weight.copy_(source.conv.weight[:out, :c_in])
    if conv.bias is not None:
        conv.bias.copy_(source.conv.bias[:out])
    if bn is not None:
        bn.weight.copy_(source.bn.weight[:out])
        bn.bias.copy_(source.bn.bias[:out])


def _copy_layer(layer: Layer, s: Sample, targets: Iterator[nn.Module], width: int) -> None:
    if isinstance(layer, OpChoice):
        index = s_index(layer.choice, s)
        if layer.is_zero[index]:
            return  # a skipped layer does not exist in the standalone model
        _copy_layer(layer.layers[index], s, targets, width)
        return
    target = next(targets)
    convs, bns = _convs_and_bns(target)
    if isinstance(layer, SuperGAP):
        return
    if isinstance(layer, SuperStemConv):
        _copy_conv(layer.convs.convs[s_index(layer.kernel, s)], convs[0], bns[0] if bns else None)
    elif isinstance(layer, SuperSepConv):
        _copy_conv(layer.depthwise.convs[s_index(layer.kernel, s)], convs[0], bns[0])
        _copy_conv(layer.pointwise, convs[1], bns[1])
    elif isinstance(layer, SuperIBN):
        _copy_conv(layer.expand, convs[0], bns[0])
        _copy_conv(layer.depthwise.convs[s_index(layer.kernel, s)], convs[1], bns[1])
        if len(convs) == 5:  # expand, depthwise, SE reduce, SE expand, project
            se = layer.squeeze
            hidden, mid = convs[2].weight.shape[:2]
            convs[2].weight.copy_(se.reduce[:hidden, :mid])
            convs[2].bias.copy_(se.reduce_bias[:hidden])
            convs[3].weight.copy_(se.expand[:mid, :hidden])
            convs[3].bias.copy_(se.expand_bias[:mid])
        _copy_conv(layer.project, convs[-1], bns[-1])
    else:
        raise AssertionError(f"cannot extract {type(layer).__name__}")


def s_index(choice: Choice, s: Sample) -> int:
    return 0 if choice.position is None else s.indices[choice.position]
