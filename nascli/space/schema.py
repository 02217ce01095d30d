"""The search-space schema: frozen layer specs whose fields may be `OneOf` choice nodes.

A search space is plain data built from these classes. One depth-first traversal, in TuNAS
order, defines the decision list and therefore the `indices` encoding:

* children come before their parent (a `OneOf` is visited after everything inside its choices),
* the fields of a spec are visited in declaration order (an IBN: kernel, expansion, SE),
* a block's `filters` node comes after the block's layers,
* single-choice nodes are decisions too (they always take index 0).

`place()` below is that traversal: it returns the tree with every choice node replaced by a
`Placed` (position, path, enclosing choices) and the list of them. Everything else (the
decision list, sampling, the policy's hierarchy, the supernet, the Pixel-1 features) reads it;
`resolve()` decodes indices in the same order.
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


@dataclass(frozen=True)
class Placed:
    """A choice node at its place in the indices string, as `place` leaves it in the tree: its
    position, readable path and tag, its choices (their own choice nodes placed too), the
    (position, option) of every choice node that encloses it (innermost first: it counts only
    when each of those selects that option), and the `OneOf` it stands for."""

    position: int
    path: str
    tag: str
    choices: tuple
    enclosing: tuple[tuple[int, int], ...]
    node: OneOf


def count_decisions(node: Any) -> int:
    """How many choice nodes (decisions) `node` holds, itself included."""
    if isinstance(node, OneOf):
        return 1 + sum(count_decisions(choice) for choice in node.choices)
    if isinstance(node, tuple):
        return sum(count_decisions(item) for item in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return sum(count_decisions(getattr(node, f.name)) for f in dataclasses.fields(node))
    return 0


def place(node: Any, path: str = "") -> tuple[Any, list[Placed]]:
    """The one traversal of a space's tree, in indices order: `node` with every `OneOf`
    replaced by its `Placed`, and the `Placed` nodes by position. The decision list, the
    policy's hierarchy, the supernet builder and the Pixel-1 features all read it."""
    found: list[Placed] = []

    def visit(node: Any, path: str, enclosing: tuple[tuple[int, int], ...], start: int):
        """`node` placed from position `start` on, and the next free position."""
        if isinstance(node, OneOf):
            position = start + sum(
                count_decisions(choice) for choice in node.choices
            )  # children first
            choices, next_free = [], start
            for option, choice in enumerate(node.choices):
                placed, next_free = visit(choice, path, ((position, option), *enclosing), next_free)
                choices.append(placed)
            # A layer-level choice (layer vs Zero) is named `<block>.<i>.op`.
            is_layer_choice = not any(isinstance(c, (int, float, bool, str)) for c in node.choices)
            name = f"{path}.op" if is_layer_choice else path
            placed = Placed(position, name, node.tag, tuple(choices), enclosing, node)
            found.append(placed)
            return placed, position + 1
        if isinstance(node, Block):
            layers = []
            for i, layer in enumerate(node.layers):
                placed, start = visit(layer, f"{node.name}.{i}", enclosing, start)
                layers.append(placed)
            filters, start = visit(node.filters, f"{node.name}.filters", enclosing, start)
            return Block(node.name, tuple(layers), filters), start
        if isinstance(node, Residual):
            layer, start = visit(node.layer, path, enclosing, start)
            return Residual(layer), start
        if isinstance(node, tuple):
            items = []
            for i, item in enumerate(node):
                placed, start = visit(item, f"{path}.{i}", enclosing, start)
                items.append(placed)
            return tuple(items), start
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            changes = {}
            for field in dataclasses.fields(node):
                value = getattr(node, field.name)
                placed, start = visit(value, f"{path}.{field.name}", enclosing, start)
                if placed is not value:
                    changes[field.name] = placed
            return (dataclasses.replace(node, **changes) if changes else node), start
        return node, start

    placed, _ = visit(node, path, (), 0)
    return placed, found


def resolve(node: Any, indices: Iterator[int]) -> Any:
    """Replace every `OneOf` under `node` by its selected choice, consuming `indices` in order.

    The indices of all choices' children are consumed before the node's own index (children
    before parents), exactly as `place` numbers them.
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
