"""The three TuNAS search spaces, as data.

Structure, choice order and widths follow TuNAS (`mobile_search_space_v3`): see the README's
"Search spaces" section. Activation, endpoint and pooling entries are kept as real entries, as
in TuNAS, because the Pixel-1 cost model's features walk over them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

from nascli.space.schema import (
    FILTERS,
    INPUT,
    OP,
    Activation,
    Block,
    Conv,
    Decision,
    Endpoint,
    GlobalAvgPool,
    GraphConv,
    GraphOutput,
    InvertedBottleneck,
    OneOf,
    Placed,
    Residual,
    SepConv,
    Zero,
    place,
    resolve,
)

#: Width multipliers of the width-searched spaces.
WIDTH_MULTIPLIERS = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)
KERNELS = (3, 5, 7)


def scale_filters(filters: int, multiplier: float) -> int:
    """TuNAS width rounding: the nearest multiple of 8 of `filters·multiplier`, at least 8."""
    return max(8, 8 * math.floor(filters * multiplier / 8 + 0.5))


def width_choice(base: int) -> OneOf:
    """The searched output width of a block: scaled `base`, deduplicated, ascending."""
    return OneOf(tuple(sorted({scale_filters(base, m) for m in WIDTH_MULTIPLIERS})), FILTERS)


def fixed_width(filters: int) -> OneOf:
    """An unsearched width is still a (single-choice) decision, as in TuNAS."""
    return OneOf((filters,), FILTERS)


@dataclass(frozen=True)
class SearchSpace:
    """A named tree of blocks; its decision list defines the `indices` encoding."""

    name: str
    title: str
    blocks: tuple[Block, ...]

    @cached_property
    def placed(self) -> tuple[tuple[Block, ...], tuple[Placed, ...]]:
        """The blocks with every choice node `Placed`, and the placed nodes by position: the
        one walk of the space (`nascli.space.schema.place`)."""
        blocks, found = place(self.blocks)
        return blocks, tuple(found)

    @cached_property
    def decisions(self) -> tuple[Decision, ...]:
        return tuple(Decision(p.position, p.path, p.tag, p.node.choices) for p in self.placed[1])

    @cached_property
    def downsampling_strides(self) -> tuple[int, ...]:
        """Strides > 1 in network order (no choice changes them: they sit on unskippable
        layers)."""
        resolved = resolve(self.blocks, iter([0] * self.num_decisions))
        layers = [layer for block in resolved for layer in block.layers]
        return tuple(s for layer in layers if (s := getattr(layer, "stride", 1)) > 1)

    @cached_property
    def graph_layers(self) -> int:
        """How many NAS-RL layers (`GraphConv`) the space has; 0 for the TuNAS spaces."""
        return sum(isinstance(layer, GraphConv) for block in self.blocks for layer in block.layers)

    @property
    def graph(self) -> bool:
        """Whether layers take concatenations of earlier layers (NAS-RL's space): such a space
        has no weight-sharing supernet and no per-block compiled costs."""
        return self.graph_layers > 0

    @property
    def num_decisions(self) -> int:
        """Indices length: every choice node, single-choice ones included."""
        return len(self.decisions)

    @property
    def num_searched(self) -> int:
        """Decisions with more than one choice."""
        return sum(d.num_choices > 1 for d in self.decisions)

    @property
    def log10_size(self) -> float:
        """log10 of the product of all decision sizes (TuNAS's "≈10^21" etc.)."""
        return sum(math.log10(d.num_choices) for d in self.decisions)


# --- ProxylessNAS and ProxylessNAS-Enlarged -------------------------------------------------

_PROXYLESS_STRIDES = (2, 1, 2, 2, 2, 1, 2, 1, 1)  # stem, b1..b7, head
_PROXYLESS_MOBILE_FILTERS = (32, 16, 32, 40, 80, 96, 192, 320, 1280)
_VGG_FILTERS = (16, 16, 16, 32, 64, 128, 256, 512, 1024)


def _proxyless_ibn(stride: int) -> InvertedBottleneck:
    return InvertedBottleneck(
        kernel=OneOf(KERNELS, OP), expansion=OneOf((3, 6), FILTERS), stride=stride, act="relu"
    )


def _proxyless_blocks(widths: list[OneOf]) -> tuple[Block, ...]:
    stem, b1, *mid, b7, head = widths
    blocks = [
        Block("stem", (Conv(kernel=3, stride=2), Activation("relu")), stem),
        Block("b1", (SepConv(kernel=OneOf(KERNELS, OP), stride=1, act="relu"), Endpoint()), b1),
    ]
    for number, (width, stride) in enumerate(
        zip(mid, _PROXYLESS_STRIDES[2:7], strict=True), start=2
    ):
        layers = [OneOf((_proxyless_ibn(stride),), OP)]
        layers += [Residual(OneOf((_proxyless_ibn(1), Zero()), OP)) for _ in range(3)]
        if number != 4:  # TuNAS has no endpoint after block 4 (stride-16 features follow b5)
            layers.append(Endpoint())
        blocks.append(Block(f"b{number}", tuple(layers), width))
    blocks.append(Block("b7", (OneOf((_proxyless_ibn(1),), OP), Endpoint()), b7))
    blocks.append(Block("head", (Conv(kernel=1), Activation("relu"), GlobalAvgPool()), head))
    return tuple(blocks)


def proxylessnas() -> SearchSpace:
    widths = [fixed_width(f) for f in _PROXYLESS_MOBILE_FILTERS]
    return SearchSpace("proxylessnas", "ProxylessNAS", _proxyless_blocks(widths))


def proxylessnas_enlarged() -> SearchSpace:
    widths = [width_choice(f) for f in _VGG_FILTERS]
    return SearchSpace("proxylessnas_enlarged", "ProxylessNAS-Enlarged", _proxyless_blocks(widths))


# --- MobileNetV3-like -------------------------------------------------------------------------

_V3_BLOCKS = (  # name, base filters, stride, activation
    ("b1", 16, 2, "relu"),
    ("b2", 32, 2, "relu"),
    ("b3", 64, 2, "swish6"),
    ("b4", 128, 1, "swish6"),
    ("b5", 256, 2, "swish6"),
)


def _v3_ibn(stride: int, act: str) -> InvertedBottleneck:
    return InvertedBottleneck(
        kernel=OneOf(KERNELS, OP),
        expansion=OneOf((1, 2, 3, 4, 5, 6), FILTERS),
        se=OneOf((False, True), OP),
        stride=stride,
        act=act,
    )


def mnv3() -> SearchSpace:
    optional_sepconv = Residual(OneOf((SepConv(kernel=OneOf(KERNELS, OP), act="relu"), Zero()), OP))
    blocks = [
        Block(
            "stem",
            (
                Conv(kernel=OneOf((3, 5), OP), stride=2),
                Activation("swish6"),
                optional_sepconv,
                Endpoint(),
            ),
            width_choice(16),
        )
    ]
    for name, base, stride, act in _V3_BLOCKS:
        layers = [_v3_ibn(stride, act)]
        layers += [Residual(OneOf((_v3_ibn(1, act), Zero()), OP)) for _ in range(3)]
        if name != "b3":  # TuNAS has no endpoint after block 3
            layers.append(Endpoint())
        blocks.append(Block(name, tuple(layers), width_choice(base)))
    blocks.append(
        Block("head1", (Conv(kernel=1), Activation("swish6"), GlobalAvgPool()), width_choice(512))
    )
    blocks.append(
        Block("head2", (Conv(kernel=1, bn=False), Activation("swish6")), width_choice(1024))
    )
    return SearchSpace("mnv3", "MobileNetV3-like", tuple(blocks))


# --- NAS-RL's CIFAR-10 space ------------------------------------------------------------------

NASRL_KERNELS = (1, 3, 5, 7)
NASRL_FILTERS = (24, 36, 48, 64)
NASRL_STRIDES = (1, 2, 3)
#: NAS-RL's search starts at 6 layers (§4.1); `space.layers` sets another depth.
NASRL_LAYERS = 6


@functools.cache  # one object per depth: its derived tables are computed once
def nasrl(layers: int = NASRL_LAYERS, predict_strides: bool = False) -> SearchSpace:
    """NAS-RL's CIFAR-10 space (Zoph & Le 2017, §4.1): `layers` conv layers, each choosing its
    filter height and width in {1, 3, 5, 7}, its number of filters in {24, 36, 48, 64}, its
    stride (fixed to 1, or predicted in {1, 2, 3}) and, with one decision per earlier layer,
    which earlier layers are its inputs (§3.3). Per layer the decisions come in the paper's
    token order: height, width, stride, filters, then the skip connections. The layers' unused
    outputs are concatenated, globally pooled and classified."""
    if layers < 1:
        raise ValueError("a NAS-RL space needs at least one layer")
    stride = OneOf(NASRL_STRIDES if predict_strides else (1,), OP)
    blocks = []
    for i in range(layers):
        layer = GraphConv(
            kernel_height=OneOf(NASRL_KERNELS, OP),
            kernel_width=OneOf(NASRL_KERNELS, OP),
            stride=stride,
            filters=OneOf(NASRL_FILTERS, FILTERS),
            inputs=tuple(OneOf((False, True), INPUT) for _ in range(i)),
        )
        blocks.append(Block(f"layer{i + 1}", (layer,), None))
    blocks.append(Block("head", (GraphOutput(), GlobalAvgPool()), None))
    base = "nasrl_strides" if predict_strides else "nasrl"
    name = base if layers == NASRL_LAYERS else f"{base}@layers{layers}"
    title = f"NAS-RL, {layers} layers" + (", predicted strides" if predict_strides else "")
    return SearchSpace(name, title, tuple(blocks))


SPACES = {
    "proxylessnas": proxylessnas(),
    "proxylessnas_enlarged": proxylessnas_enlarged(),
    "mnv3": mnv3(),
}
#: Multi-trial spaces: no weight-sharing supernet, no TuNAS cost model (`SearchSpace.graph`).
GRAPH_SPACES = {
    "nasrl": nasrl(NASRL_LAYERS, predict_strides=False),
    "nasrl_strides": nasrl(NASRL_LAYERS, predict_strides=True),
}
#: Every space by base name.
ALL_SPACES = {**SPACES, **GRAPH_SPACES}
