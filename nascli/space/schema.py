"""The search-space schema: frozen layer specs whose fields may be `OneOf` choice nodes.

A search space is plain data built from these classes. One depth-first traversal, in TuNAS
order, defines the decision list and therefore the `indices` encoding:

* children come before their parent (a `OneOf` is visited after everything inside its choices),
* the fields of a spec are visited in declaration order (an IBN: kernel, expansion, SE),
* a block's `filters` node comes after the block's layers,
* single-choice nodes are decisions too (they always take index 0).

Everything else (sampling, validation, decoding to concrete layers, the policy's shape, cost
features) derives from `decisions()` and `resolve()` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Tag of choices between operations (kernel size, SE on/off, layer vs Zero).
OP = "op"
#: Tag of choices between widths (expansion ratios, block output widths).
FILTERS = "filters"
#: Tag of NAS-RL's skip connections: "is layer j an input of layer i" (False / True).
INPUT = "input"


@dataclass(frozen=True)
class OneOf:
    """A choice node: exactly one of `choices` is selected by an integer index."""

    choices: tuple
    tag: str

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("OneOf needs at least one choice")
        if self.tag not in (OP, FILTERS, INPUT):
            raise ValueError(f"unknown OneOf tag {self.tag!r}")


@dataclass(frozen=True)
class Conv:
    """k×k convolution, optional BN, no activation (an `Activation` entry may follow)."""

    kernel: Any
    stride: int = 1
    bn: bool = True


@dataclass(frozen=True)
class SepConv:
    """Depthwise k×k (stride s) + BN + act, then 1×1 conv + BN, no final activation."""

    kernel: Any
    stride: int = 1
    act: str = "relu"


@dataclass(frozen=True)
class InvertedBottleneck:
    """1×1 expand + BN + act, depthwise k×k + BN + act, optional SE, 1×1 project + BN.

    `expansion` is a ratio relative to the layer's actual input width; the expand conv exists
    even at ratio 1.
    """

    kernel: Any
    expansion: Any
    se: Any = False
    stride: int = 1
    act: str = "relu"


@dataclass(frozen=True)
class Activation:
    """A stand-alone activation entry (`relu` or `swish6`, i.e. h-swish)."""

    name: str


@dataclass(frozen=True)
class GraphConv:
    """A NAS-RL layer (Zoph & Le 2017, §3.1 and §3.3): a `kernel_height`×`kernel_width` conv
    with `filters` outputs and `stride`, then BN and ReLU. Its input is the channel
    concatenation of the earlier layers its `inputs` select (one False/True decision per earlier
    layer, in layer order; smaller maps zero-padded to the largest), or the image when none is
    selected."""

    kernel_height: Any
    kernel_width: Any
    stride: Any
    filters: Any
    inputs: tuple = ()


@dataclass(frozen=True)
class GraphOutput:
    """NAS-RL's final layer (§3.3): the concatenation of every layer output that no layer took
    as an input, zero-padded to the largest map."""


@dataclass(frozen=True)
class Zero:
    """Outputs zeros; inside a `Residual` the layer becomes an identity (a skip)."""


@dataclass(frozen=True)
class Residual:
    """output = layer(x) + x; only where stride is 1 and widths match."""

    layer: Any


@dataclass(frozen=True)
class Endpoint:
    """A feature-map marker (TuNAS detection endpoint); computes nothing."""


@dataclass(frozen=True)
class GlobalAvgPool:
    """Global average pooling to 1×1."""


@dataclass(frozen=True)
class Block:
    """Layers sharing one output width `filters` (an int or a `OneOf` of ints)."""

    name: str
    layers: tuple
    filters: Any


@dataclass(frozen=True)
class Decision:
    """One entry of the indices string: where it is, what it chooses between."""

    position: int
    path: str
    tag: str
    choices: tuple

    @property
    def num_choices(self) -> int:
        return len(self.choices)


def _children(node: Any, path: str) -> Iterator[tuple[Any, str]]:
    """The sub-nodes of `node` in traversal order, with their readable paths."""
    if isinstance(node, Block):
        for i, layer in enumerate(node.layers):
            yield layer, f"{node.name}.{i}"
        yield node.filters, f"{node.name}.filters"
    elif isinstance(node, Residual):
        yield node.layer, path
    elif dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            yield getattr(node, field.name), f"{path}.{field.name}"
    elif isinstance(node, tuple):
        for i, item in enumerate(node):
            yield item, f"{path}.{i}"


def iter_decisions(node: Any, path: str = "") -> Iterator[tuple[str, OneOf]]:
    """Yield `(path, OneOf)` for every choice node, children before parents."""
    if isinstance(node, OneOf):
        for choice in node.choices:
            yield from iter_decisions(choice, path)
        # A layer-level choice (layer vs Zero) is named `<block>.<i>.op`.
        is_layer_choice = not any(isinstance(c, (int, float, bool, str)) for c in node.choices)
        yield (f"{path}.op" if is_layer_choice else path), node
        return
    for child, child_path in _children(node, path):
        yield from iter_decisions(child, child_path)


def resolve(node: Any, indices: Iterator[int]) -> Any:
    """Replace every `OneOf` under `node` by its selected choice, consuming `indices` in order.

    The indices of all choices' children are consumed before the node's own index (children
    before parents), exactly as `iter_decisions` enumerates them.
    """
    if isinstance(node, OneOf):
        resolved = [resolve(choice, indices) for choice in node.choices]
        return resolved[next(indices)]
    if isinstance(node, Block):
        layers = tuple(resolve(layer, indices) for layer in node.layers)
        return Block(node.name, layers, resolve(node.filters, indices))
    if isinstance(node, tuple):
        return tuple(resolve(item, indices) for item in node)
    if dataclasses.is_dataclass(node):
        changes = {}
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            new = resolve(value, indices)
            if new is not value:
                changes[field.name] = new
        return dataclasses.replace(node, **changes) if changes else node
    return node
