"""Costs compiled once into tables over the few decisions each layer depends on.

Every layer of a decoded network is produced by one entry of one block of the space (an
activation entry only changes the layer before it, so it joins that layer's group). What that
layer is — its kind, widths, kernel, expansion, SE — depends only on

* the decisions inside its own entries,
* its block's width decision, and
* the incoming width: the previous block's width decision for a block's first entry (the
  network's input channels for the first block), the block's own width for the others.

Resolutions and strides are fixed by the space and the network settings (strides sit on
unskippable layers), so they are part of the table, not of the key. A `Term` enumerates the
product of its decisions' choices once, decodes each combination's layers with the same decoder
`decode()` uses, and stores one number per combination. A batch of architectures then costs a
gather per term and a sum (a max for peak memory); an additive cost also has an exact
expectation under independent categoricals, differentiable in the probabilities.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nascli.space.network import (
    LayerArgs,
    NetworkSettings,
    _Decoder,
    block_width,
    strides_to_drop,
)
from nascli.space.schema import Activation, Block, count_decisions, resolve
from nascli.space.spaces import SearchSpace

#: What a compiled cost stores per combination: a number from the layers an entry group emits.
LayerValue = Callable[[Sequence[LayerArgs]], float]


@dataclass(frozen=True)
class Group:
    """Consecutive entries of one block that together emit their layers (an emitting entry and
    the activation entries after it), with what the decoder needs to emit them on their own."""

    block: Block
    first: int  # index of the first entry in the block
    entries: tuple
    own: tuple[int, ...]  # decision positions inside the entries, in indices order
    width: int  # position of the block's width decision
    incoming: int | None  # position of the incoming width decision (None: the input image)
    resolution: int  # input resolution of the first entry
    drop_strides: int  # stride-2 layers the stride policy still turns into stride 1

    @property
    def positions(self) -> tuple[int, ...]:
        """The decisions the group's layers depend on, each once."""
        incoming = () if self.incoming in (None, self.width) else (self.incoming,)
        return (*self.own, self.width, *incoming)


def entry_groups(space: SearchSpace, settings: NetworkSettings) -> tuple[list[Group], int]:
    """The space's entries grouped by the layers they emit, in network order, and the
    resolution after the last block (the classifier's, which is not among the groups: it
    depends on the last block's width only)."""
    groups: list[Group] = []
    position = 0
    incoming: int | None = None
    tracker = _Decoder(settings, strides_to_drop(space, settings))
    for block in space.blocks:
        counts = [count_decisions(entry) for entry in block.layers]
        starts = [position + sum(counts[:i]) for i in range(len(counts))]
        width = position + sum(counts)
        i = 0
        while i < len(block.layers):
            j = i + 1
            while j < len(block.layers) and isinstance(block.layers[j], Activation):
                j += 1
            own = tuple(range(starts[i], starts[i] + sum(counts[i:j])))
            groups.append(
                Group(
                    block=block,
                    first=i,
                    entries=tuple(block.layers[i:j]),
                    own=own,
                    width=width,
                    incoming=incoming if i == 0 else width,
                    resolution=tracker.resolution,
                    drop_strides=tracker.drop_strides,
                )
            )
            # Advance the resolution and the stride policy with the entries' first choices:
            # strides never depend on a choice, so any choice moves them the same way.
            resolved = [
                resolve(e, iter([0] * c))
                for e, c in zip(groups[-1].entries, counts[i:j], strict=True)
            ]
            tracker.channels = 8
            for k, entry in enumerate(resolved):
                tracker.layer(f"{block.name}.{i + k}", entry, 8)
            i = j
        position, incoming = width + 1, width
    if position != space.num_decisions:
        raise AssertionError(f"{space.name}: the entry walk did not consume every decision")
    return groups, tracker.resolution


def _width(space: SearchSpace, position: int, value: int, settings: NetworkSettings) -> int:
    return block_width(space.decisions[position].choices[value], settings)


def group_layers(
    space: SearchSpace, settings: NetworkSettings, group: Group, values: Sequence[int]
) -> list[LayerArgs]:
    """The layers `group` emits when its decisions (in `group.positions` order) take `values`."""
    chosen = dict(zip(group.positions, values, strict=True))
    decoder = _Decoder(settings, group.drop_strides)
    decoder.resolution = group.resolution
    if group.incoming is None:
        decoder.channels = settings.in_channels
    else:
        decoder.channels = _width(space, group.incoming, chosen[group.incoming], settings)
    width = _width(space, group.width, chosen[group.width], settings)
    resolved = _resolved(group.entries, tuple(chosen[p] for p in group.own))
    for k, entry in enumerate(resolved):
        decoder.layer(f"{group.block.name}.{group.first + k}", entry, width)
    return decoder.layers


_RESOLVED: dict[tuple, tuple[Sequence, list]] = {}


def _resolved(entries: Sequence, values: tuple[int, ...]) -> list:
    """The group's entries with their own decisions taken. They depend on neither the width
    nor the resolution, so compiling one space at many settings resolves each once. Keyed by
    the entries' identities (hashing the nodes would cost what resolving does); the cache
    holds the entries themselves, so no identity is reused while it is cached."""
    key = (tuple(id(entry) for entry in entries), values)
    found = _RESOLVED.get(key)
    if found is None:
        own = iter(values)
        found = _RESOLVED[key] = (tuple(entries), [resolve(entry, own) for entry in entries])
    return found[1]


@dataclass(frozen=True)
class Term:
    """One number per combination of `positions`' choices (row-major, first position slowest)."""

    positions: tuple[int, ...]
    sizes: tuple[int, ...]
    table: torch.Tensor  # float64, (prod(sizes),)

    def strides(self) -> torch.Tensor:
        out = [math.prod(self.sizes[k + 1 :]) for k in range(len(self.sizes))]
        return torch.tensor(out, dtype=torch.long)


def layer_terms(space: SearchSpace, settings: NetworkSettings, value: LayerValue) -> list[Term]:
    """`value` of every group's layers for every combination of the group's decisions, and of
    the classifier for every width of the last block."""
    return layer_terms_many(space, settings, [value])[0]


def layer_terms_many(
    space: SearchSpace, settings: NetworkSettings, values: Sequence[LayerValue]
) -> list[list[Term]]:
    """`layer_terms` of several values at once: each combination is decoded once."""
    sizes = [d.num_choices for d in space.decisions]
    terms: list[list[Term]] = [[] for _ in values]
    groups, final_resolution = entry_groups(space, settings)
    for group in groups:
        shape = tuple(sizes[p] for p in group.positions)
        tables: list[list[float]] = [[] for _ in values]
        for combo in itertools.product(*(range(n) for n in shape)):
            layers = group_layers(space, settings, group, combo)
            for table, value in zip(tables, values, strict=True):
                table.append(value(layers))
        for out, table in zip(terms, tables, strict=True):
            out.append(Term(group.positions, shape, torch.tensor(table, dtype=torch.float64)))
    last = len(space.decisions) - 1  # the last block's width is the last decision
    classifiers = []
    for v in range(sizes[last]):
        decoder = _Decoder(settings, 0)
        decoder.channels = _width(space, last, v, settings)
        decoder.resolution = final_resolution
        classifiers.append([decoder.classifier()])
    for out, value in zip(terms, values, strict=True):
        table = torch.tensor([value(layers) for layers in classifiers], dtype=torch.float64)
        out.append(Term((last,), (sizes[last],), table))
    return terms


class CompiledCost:
    """A cost as terms over decisions: `__call__` over a batch of indices (the terms' values
    summed, or their maximum), `expected` under independent categoricals (sums only)."""

    def __init__(
        self, num_decisions: int, terms: Sequence[Term], reduce: str = "sum", offset: float = 0.0
    ):
        if reduce not in ("sum", "max"):
            raise ValueError(f"reduce must be sum or max, got {reduce!r}")
        self.reduce, self.offset = reduce, offset
        self.terms = [t for t in terms if t.table.abs().max() > 0 or reduce == "max"]
        # One gather for the whole batch: every term's table laid end to end, and the row of
        # each term as one product of the indices with a (decisions, terms) matrix of strides.
        self._table = torch.cat([t.table for t in self.terms])
        self._rows = torch.zeros(num_decisions, len(self.terms), dtype=torch.float64)
        start = 0
        self._starts = torch.zeros(len(self.terms), dtype=torch.float64)
        for k, term in enumerate(self.terms):
            self._rows[list(term.positions), k] = term.strides().double()
            self._starts[k] = start
            start += len(term.table)

    @classmethod
    def of_layers(
        cls,
        space: SearchSpace,
        settings: NetworkSettings,
        value: LayerValue,
        reduce: str = "sum",
        offset: float = 0.0,
    ) -> CompiledCost:
        """A cost that is `value` of each layer group, summed (or maxed) over the network."""
        return cls(space.num_decisions, layer_terms(space, settings, value), reduce, offset)

    @property
    def additive(self) -> bool:
        return self.reduce == "sum"

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) float64 costs of a (B, D) long tensor of indices."""
        # Exact in float64: rows stay far below 2**53.
        rows = torch.addmm(self._starts, indices.to(torch.float64), self._rows).long()
        values = self._table[rows]
        if self.reduce == "max":
            return values.max(dim=1).values + self.offset
        return values.sum(dim=1) + self.offset

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[cost] when decision d takes choice c with probability `probabilities[d][c]`,
        independently; exact, and differentiable in the probabilities."""
        if not self.additive:
            raise ValueError("a maximum over layers has no per-layer expectation")
        total = torch.zeros((), dtype=torch.float64) + self.offset
        for term in self.terms:
            value = term.table.view(term.sizes)
            for position in reversed(term.positions):  # contract the fastest axis first
                value = value @ probabilities[position].to(torch.float64)
            total = total + value
        return total


class DecodedCost:
    """The `CompiledCost` interface for a space whose layer costs do not factor over a few
    decisions (NAS-RL's, where a layer's input width is a sum over every earlier layer it
    takes): each architecture is decoded and its layers' values summed (or maxed)."""

    def __init__(
        self,
        space: SearchSpace,
        settings: NetworkSettings,
        value: LayerValue,
        reduce: str = "sum",
    ):
        if reduce not in ("sum", "max"):
            raise ValueError(f"reduce must be sum or max, got {reduce!r}")
        self.space, self.settings, self.value, self.reduce = space, settings, value, reduce

    @property
    def additive(self) -> bool:
        return False  # no exact expectation under independent categoricals

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        from nascli.space.network import decode

        values = []
        for row in indices.tolist():
            layers = decode(self.space, tuple(row), self.settings).layers
            per_layer = [self.value([layer]) for layer in layers]
            values.append(max(per_layer) if self.reduce == "max" else sum(per_layer))
        return torch.tensor(values, dtype=torch.float64)

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        raise ValueError(f"{self.space.name}: costs here have no per-decision expectation")
