"""TuNAS's linear latency model of a simulated Pixel-1 (milliseconds), for all three spaces.

cost = bias + kernel · features(architecture). The features are built from the space's own data
(the same traversal as the indices): walking every block and every entry of its layer list
(activations, endpoints and pooling included), each entry contributes the piece
out-width ⊗ in-width ⊗ op-features, where op-features are the concatenation over a choice's
options and the Kronecker product over a layer's fields; pieces of length ≤ 1 are dropped. With
one-hot choices each piece has exactly one 1, so the cost is a sum of one kernel entry per piece,
which is computed for a whole batch of architectures at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from typing import Any

import numpy as np
import torch

from nascli.cost.compiled import CompiledCost, Term
from nascli.errors import NascliError
from nascli.space.schema import Block, Placed, Residual
from nascli.space.spaces import SearchSpace

# A function of the (B, D) indices tensor giving each architecture's hot position in a piece.
HotIndex = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class OpFeatures:
    length: int
    hot: HotIndex
    positions: tuple[int, ...] = ()  # the decisions `hot` reads


def _constant(indices: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(indices), dtype=torch.long, device=indices.device)


def op_features(node: Any) -> OpFeatures:
    """Length and hot position of a placed layer entry's op features (`SearchSpace.placed`)."""
    if isinstance(node, Placed):
        options = [op_features(choice) for choice in node.choices]
        position = node.position
        starts = np.cumsum([0] + [o.length for o in options])[:-1].tolist()

        def hot(indices: torch.Tensor) -> torch.Tensor:
            each = torch.stack([s + o.hot(indices) for s, o in zip(starts, options, strict=True)])
            return each.gather(0, indices[:, position].unsqueeze(0)).squeeze(0)

        used = tuple(sorted({p for o in options for p in o.positions} | {position}))
        return OpFeatures(sum(o.length for o in options), hot, used)
    if isinstance(node, Residual):
        return op_features(node.layer)
    if dataclasses.is_dataclass(node):
        fields = [op_features(getattr(node, f.name)) for f in dataclasses.fields(node)]
        fields = [f for f in fields if f.length > 1]  # constant fields multiply by [1]
        if not fields:
            return OpFeatures(1, _constant)

        def hot_kron(indices: torch.Tensor) -> torch.Tensor:
            index = fields[0].hot(indices)
            for f in fields[1:]:  # the first field varies slowest
                index = index * f.length + f.hot(indices)
            return index

        used = tuple(sorted({p for f in fields for p in f.positions}))
        return OpFeatures(int(np.prod([f.length for f in fields])), hot_kron, used)
    return OpFeatures(1, _constant)  # ints, strings, bools


@dataclass(frozen=True)
class Piece:
    """One entry's slice of the feature vector: offset + (o·n_in + i)·L + op."""

    name: str
    offset: int
    length: int
    out_position: int
    in_position: int | None
    n_in: int
    op: OpFeatures


def feature_pieces(space: SearchSpace) -> tuple[list[Piece], int]:
    """The pieces of `space`'s feature vector in walk order, and the feature dimension."""
    pieces: list[Piece] = []
    offset = 0
    previous: tuple[int, int] | None = None  # (position, number of choices) of the last width
    for block in space.placed[0]:
        assert isinstance(block, Block) and isinstance(block.filters, Placed)
        ops = [op_features(layer) for layer in block.layers]
        width_position, n_out = block.filters.position, len(block.filters.choices)
        for i, op in enumerate(ops):
            incoming = previous if i == 0 else (width_position, n_out)
            n_in = incoming[1] if incoming else 1
            size = n_out * n_in * op.length
            if size > 1:
                pieces.append(
                    Piece(
                        name=f"{block.name}.{i}",
                        offset=offset,
                        length=size,
                        out_position=width_position,
                        in_position=incoming[0] if incoming else None,
                        n_in=n_in,
                        op=op,
                    )
                )
                offset += size
            previous = (width_position, n_out)
    return pieces, offset


@cache
def _published(space_name: str) -> tuple[torch.Tensor, float]:
    source = resources.files("nascli.cost").joinpath("data", "tunas_pixel1_cost_model.json")
    data = json.loads(source.read_text())[space_name]
    kernel = np.asarray(data["kernel"], dtype=np.float32)
    digest = hashlib.sha256(kernel.astype(">f4").tobytes()).hexdigest()
    if digest != data["kernel_float32_be_sha256"] or len(kernel) != data["feature_dim"]:
        raise NascliError(f"the packaged Pixel-1 weights of {space_name} are corrupt")
    return torch.from_numpy(kernel), float(np.float32(data["bias"]))


class Pixel1Model:
    """cost(indices) in ms under TuNAS's Pixel-1 model of `space` (its architectures only)."""

    def __init__(self, space: SearchSpace):
        from nascli.space.depth import split_name

        if space.graph or split_name(space.name)[1] != 1:
            others = (
                "cost=macs, cost=params or cost=measured"
                if space.graph  # no latency table either (cost/models.py)
                else "cost=macs, cost=lut or cost=measured with space.depth_multiplier"
            )
            raise NascliError(
                f"cost=tunas_pixel1 models TuNAS's three spaces only, not {space.name}: use "
                + others
            )
        self.space = space
        self.pieces, dim = feature_pieces(space)
        self.kernel, self.bias = _published(space.name)
        if dim != len(self.kernel):
            raise AssertionError(f"{space.name}: {dim} features, the model has {len(self.kernel)}")

    def hot_features(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, pieces) positions of the features that are 1."""
        columns = []
        for piece in self.pieces:
            o = indices[:, piece.out_position]
            i = indices[:, piece.in_position] if piece.in_position is not None else 0
            columns.append(
                piece.offset + (o * piece.n_in + i) * piece.op.length + piece.op.hot(indices)
            )
        return torch.stack(columns, dim=1)

    def features(self, indices: torch.Tensor) -> torch.Tensor:
        """The (B, feature_dim) 0/1 feature matrix, as TuNAS builds it for one-hot masks."""
        out = torch.zeros(len(indices), len(self.kernel))
        return out.scatter_(1, self.hot_features(indices), 1.0)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """Milliseconds, float32 as in TuNAS, for a (B, D) long tensor of indices."""
        return self.kernel[self.hot_features(indices)].sum(dim=1) + self.bias

    @cached_property
    def compiled(self) -> CompiledCost:
        """The same model as terms over the decisions each piece reads (float64), for
        `expected`."""
        sizes = [d.num_choices for d in self.space.decisions]
        terms = []
        for piece in self.pieces:
            read = (*piece.op.positions, piece.out_position, piece.in_position)
            positions = tuple(dict.fromkeys(p for p in read if p is not None))
            shape = tuple(sizes[p] for p in positions)
            combos = torch.tensor(list(itertools.product(*(range(n) for n in shape))))
            indices = torch.zeros(len(combos), len(sizes), dtype=torch.long)
            indices[:, list(positions)] = combos
            o = indices[:, piece.out_position]
            i = indices[:, piece.in_position] if piece.in_position is not None else 0
            hot = piece.offset + (o * piece.n_in + i) * piece.op.length + piece.op.hot(indices)
            terms.append(Term(positions, shape, self.kernel[hot].double()))
        return CompiledCost(len(sizes), terms, offset=self.bias)
