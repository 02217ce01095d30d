"""Build a plain `torch.nn.Module` from decoded layers. No search code is needed at inference."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from nascli.nn.blocks import ConvBNAct, InvertedBottleneck, SeparableConv
from nascli.space.network import LayerArgs, Network

# TF's truncated normal keeps draws within 2σ; this factor restores the intended variance.
_TRUNCATED_STD_CORRECTION = 0.87962566103423978


class MobileNet(nn.Module):
    """features (stem, blocks, head, global pooling) → flatten → dropout → linear classifier."""

    def __init__(self, features: nn.Sequential, classifier: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.classifier(self.dropout(x))


class GraphFeatures(nn.Module):
    """NAS-RL's layers (Zoph & Le 2017, §3.3): each takes the channel concatenation of the
    outputs its `LayerArgs.inputs` name (-1: the image), smaller maps zero-padded at the bottom
    and right to the largest; without inputs it takes the previous layer's output."""

    def __init__(self, layers: list[nn.Module], inputs: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.inputs: list[list[int]] = [list(sources) for sources in inputs]
        # No residual adds to switch off (Zen-NAS drops those): skip connections here are
        # concatenations, which the proxies keep.
        self.residual = False

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        x = image
        for i, layer in enumerate(self.layers):  # a loop TorchScript can compile
            sources = self.inputs[i]
            if len(sources) > 0:
                picked: list[torch.Tensor] = []
                for s in sources:
                    picked.append(image if s < 0 else outputs[s])
                x = concat(picked)
            x = layer(x)
            outputs.append(x)
        return x


def concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Channel concatenation, each map zero-padded at the bottom and right to the largest."""
    if len(tensors) == 1:
        return tensors[0]
    height = max([t.shape[2] for t in tensors])
    width = max([t.shape[3] for t in tensors])
    padded: list[torch.Tensor] = []
    for t in tensors:
        padded.append(F.pad(t, [0, width - t.shape[3], 0, height - t.shape[2]]))
    return torch.cat(padded, dim=1)


def build_layer(layer: LayerArgs) -> nn.Module:
    common = {"resolution": layer.in_resolution}
    if layer.kind == "conv":
        return ConvBNAct(
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
            bn=layer.bn, act=layer.act, **common,
        )  # fmt: skip
    if layer.kind == "concat":
        return nn.Identity()
    if layer.kind == "sepconv":
        return SeparableConv(
            layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.act,
            residual=layer.residual, **common,
        )  # fmt: skip
    if layer.kind == "ibn":
        return InvertedBottleneck(
            layer.in_channels, layer.mid_channels, layer.out_channels, layer.kernel,
            layer.stride, layer.act, layer.se_channels, residual=layer.residual, **common,
        )  # fmt: skip
    if layer.kind == "gap":
        return nn.AdaptiveAvgPool2d(1)
    raise ValueError(f"cannot build a {layer.kind!r} layer")


def layer_modules(model: MobileNet) -> list[nn.Module]:
    """The modules of a `build_model` model that compute its network's layers, in order (the
    classifier without the flatten and dropout before it)."""
    return [*model.features.children(), model.classifier]


def before_pooling(model: MobileNet) -> nn.Sequential:
    """The part of `model.features` before its global average pool."""
    modules = list(model.features.children())
    pool = next(i for i, m in enumerate(modules) if isinstance(m, nn.AdaptiveAvgPool2d))
    return model.features[:pool]


def init_conv_kernel(weight: torch.Tensor, fan_in: int) -> None:
    """TuNAS's truncated He-normal: std √(2/fan_in), truncated at 2σ, variance restored."""
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STD_CORRECTION
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_weights(model: nn.Module) -> None:
    """TuNAS initialisers: truncated He-normal (fan-in) convs, depthwise fan-in k², classifier
    N(0, 0.01), zero biases, BN γ = 1 and β = 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            fan_in = kh * kw * module.in_channels // module.groups
            init_conv_kernel(module.weight, fan_in)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def build_model(network: Network, init: bool = True) -> MobileNet:
    """The standalone model of a decoded network, freshly initialised (TuNAS's initialisers
    unless `init=False`, for callers that initialise it themselves)."""
    *body, classifier = network.layers
    if any(layer.inputs for layer in body):  # a NAS-RL graph, then global pooling
        pool = [layer.kind for layer in body].index("gap")
        graph = GraphFeatures(
            [build_layer(layer) for layer in body[:pool]], [layer.inputs for layer in body[:pool]]
        )
        tail = [build_layer(layer) for layer in body[pool:]]
        features = nn.Sequential(graph, *tail)
    else:
        features = nn.Sequential(
            OrderedDict((layer.name.replace(".", "_"), build_layer(layer)) for layer in body)
        )
    model = MobileNet(
        features,
        nn.Linear(classifier.in_channels, classifier.out_channels),
        network.settings.dropout,
    )
    if init:
        init_weights(model)
    return model
