"""Depth scaling of a space (EfficientNet, Tan & Le, ICML 2019, §3.3): `space.depth_multiplier`.

EfficientNet scales a network's depth by repeating the layers of each stage:
`round_repeats(n) = ceil(d · n)`. In a TuNAS space a stage is a block, and its repeatable
layers are its inverted bottlenecks and separable convs (the first one and the skippable
ones); the stem conv and the head convs never repeat. `deepen_space(space, d)` gives every
block `ceil(d · n_slots) − n_slots` more skippable slots, appended after its last repeatable
layer, each a copy of that layer at stride 1 with its own decisions (so a deeper space is a
space like the others: searchable, compiled, built). `deepen_indices` maps an architecture of
the base space into it as EfficientNet scales a network: a block with n active layers gets
`ceil(d · n)`, the new ones copying the choices (kernel, expansion, SE) of its last active layer.

A deepened space is named `<space>@depth<d>` (e.g. `proxylessnas@depth1.2`), so an
architecture, its `arch.json` and its checkpoints say which space they belong to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from nascli.space.schema import (
    OP,
    Block,
    InvertedBottleneck,
    OneOf,
    Residual,
    SepConv,
    Zero,
    count_decisions,
)

SEPARATOR = "@depth"


REPEATABLE = (InvertedBottleneck, SepConv)


def scaled_name(name: str, depth_multiplier: float) -> str:
    """The name of `name` deepened by `depth_multiplier` (the name itself at 1)."""
    return name if depth_multiplier == 1 else f"{name}{SEPARATOR}{depth_multiplier:g}"


def split_name(name: str) -> tuple[str, float]:
    """(base space name, depth multiplier) of a possibly deepened space's name."""
    base, found, depth = name.partition(SEPARATOR)
    if not found:
        return name, 1.0
    try:
        value = float(depth)
    except ValueError:
        raise ValueError(f"bad depth multiplier in space name {name!r}") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"space {name!r}: the depth multiplier must be ≥ 1")
    return base, value


def _core(entry: Any) -> Any:
    """The repeatable layer an entry holds (unwrapping a skip and a single layer choice), or
    None when it holds none."""
    if isinstance(entry, Residual):
        entry = entry.layer
    if isinstance(entry, OneOf) and entry.tag == OP and not isinstance(entry.choices[0], int):
        entry = entry.choices[0]
    return entry if isinstance(entry, REPEATABLE) else None


def _is_skippable(entry: Any) -> bool:
    return isinstance(entry, Residual) and isinstance(entry.layer, OneOf)


def _slot(core: Any) -> Residual:
    """A new skippable copy of `core` at stride 1 (its choice 0 is the layer, 1 is Zero)."""
    return Residual(OneOf((replace(core, stride=1), Zero()), OP))


@dataclass(frozen=True)
class _Entry:
    """One entry of a block: where its decisions start in the indices, how many it has."""

    start: int
    size: int
    core: Any  # the repeatable layer (None: not repeatable)
    skippable: bool


def _entries(blocks: tuple[Block, ...]) -> list[tuple[list[_Entry], int]]:
    """Per block, its entries' decision ranges and the position of the block's width decision."""
    position = 0
    found = []
    for block in blocks:
        entries = []
        for entry in block.layers:
            size = count_decisions(entry)
            entries.append(_Entry(position, size, _core(entry), _is_skippable(entry)))
            position += size
        width_size = count_decisions(block.filters)
        found.append((entries, position))
        position += width_size
    return found


def round_repeats(repeats: int, depth_multiplier: float) -> int:
    """EfficientNet's `round_repeats`: ceil(d · repeats) (never round())."""
    return math.ceil(depth_multiplier * repeats - 1e-9)


def extra_slots(block: Block, depth_multiplier: float) -> int:
    """Skippable slots a block gains: ceil(d · n_slots) − n_slots of its repeatable layers."""
    slots = sum(_core(entry) is not None for entry in block.layers)
    return round_repeats(slots, depth_multiplier) - slots if slots else 0


@cache
def deepen_space(space: Any, depth_multiplier: float) -> Any:
    """`space` with every block's repeatable layers scaled to ceil(d · n) slots."""
    from nascli.space.spaces import SearchSpace

    if depth_multiplier == 1:
        return space
    blocks = []
    for block in space.blocks:
        extra = extra_slots(block, depth_multiplier)
        if not extra:
            blocks.append(block)
            continue
        layers = list(block.layers)
        last = max(i for i, entry in enumerate(layers) if _core(entry) is not None)
        layers[last + 1 : last + 1] = [_slot(_core(layers[last]))] * extra
        blocks.append(Block(block.name, tuple(layers), block.filters))
    name = scaled_name(space.name, depth_multiplier)
    title = f"{space.title}, depth ×{depth_multiplier:g}"
    return SearchSpace(name, title, tuple(blocks))


def deepen_indices(
    space: Any, indices: tuple[int, ...], depth_multiplier: float
) -> tuple[int, ...]:
    """An architecture of `space` scaled in depth as EfficientNet scales a network: each block
    with n active repeatable layers gets ceil(d · n), the added ones (the new slots first, then
    the block's skipped ones) copying the choices of its last active layer."""
    deep = deepen_space(space, depth_multiplier)
    if deep is space:
        return tuple(indices)
    out: list[int] = []
    base_blocks = _entries(space.blocks)
    for (entries, width_at), block in zip(base_blocks, space.blocks, strict=True):
        extra = extra_slots(block, depth_multiplier)
        values = [list(indices[e.start : e.start + e.size]) for e in entries]
        repeatable = [i for i, e in enumerate(entries) if e.core is not None]
        active = [i for i in repeatable if not (entries[i].skippable and values[i][-1] == 1)]
        last = repeatable[-1] if repeatable else -1
        new = [None] * extra  # the added slots, after the block's last repeatable entry
        wanted = round_repeats(len(active), depth_multiplier) - len(active)
        if active and wanted:
            copy = _core_values(entries[active[-1]], values[active[-1]])
            skipped = [i for i in repeatable if i not in active and entries[i].skippable]
            targets = [("new", k) for k in range(extra)] + [("old", i) for i in skipped]
            for kind, where in targets[:wanted]:
                if kind == "new":
                    new[where] = [*copy, 0]
                else:
                    values[where] = [*copy, 0]
        for i, entry_values in enumerate(values):
            out += entry_values
            if i == last:
                idle = [*_core_values(entries[last], values[last]), 1]  # a skipped copy
                out += [v for slot in new for v in (slot if slot is not None else idle)]
        out += list(indices[width_at : width_at + _width_size(block)])
    if len(out) != deep.num_decisions:
        raise AssertionError("deepened indices do not match the deepened space")
    return tuple(out)


def _core_values(entry: _Entry, values: list[int]) -> list[int]:
    """The decisions of an entry's repeatable layer (its kernel, expansion, SE), without the
    layer-or-Zero choice and the single-choice node around a fixed layer."""
    size = count_decisions(entry.core)
    return values[:size]


def _width_size(block: Block) -> int:
    return count_decisions(block.filters)
