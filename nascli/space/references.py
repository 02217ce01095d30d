"""Published reference networks, written in TuNAS's `mobile_model_archive` form and encoded
into each space's indices by the same decision paths everything else uses."""

from __future__ import annotations

from dataclasses import dataclass

from nascli.space.schema import Zero
from nascli.space.spaces import KERNELS, SearchSpace


@dataclass(frozen=True)
class ReferenceNetwork:
    """A network as TuNAS archives it: 9 block widths and the non-collapsed op list.

    `ops[0]` is the block-1 SepConv kernel index; each of the 21 IBN entries is
    3·(0 for ×3, 1 for ×6) + kernel index, and 6 means Zero.
    """

    name: str
    title: str
    filters: tuple[int, ...]
    ops: tuple[int, ...]
    citation: str


REFERENCES = {
    ref.name: ref
    for ref in (
        ReferenceNetwork(
            "proxylessnas_mobile",
            "ProxylessNAS-Mobile",
            (32, 16, 32, 40, 80, 96, 192, 320, 1280),
            (0, 1, 0, 6, 6, 2, 0, 1, 1, 5, 1, 1, 1, 4, 1, 1, 1, 5, 5, 2, 2, 5),
            "Cai, Zhu, Han. ProxylessNAS, ICLR 2019",
        ),
        ReferenceNetwork(
            "mobilenet_v2",
            "MobileNetV2",
            (32, 16, 24, 32, 64, 96, 160, 320, 1280),
            (0, 3, 3, 6, 6, 3, 3, 3, 6, 3, 3, 3, 3, 3, 3, 3, 6, 3, 3, 3, 6, 3),
            "Sandler et al. MobileNetV2, CVPR 2018",
        ),
        ReferenceNetwork(
            "mnasnet_b1",
            "MnasNet-B1",
            (32, 16, 24, 40, 80, 96, 192, 320, 1280),
            (0, 0, 0, 0, 6, 1, 1, 1, 6, 4, 4, 4, 6, 3, 3, 6, 6, 4, 4, 4, 4, 3),
            "Tan et al. MnasNet, CVPR 2019",
        ),
    )
}

_PROXYLESS_IBN_LAYERS = [f"b{b}.{i}" for b in range(2, 7) for i in range(4)] + ["b7.0"]
_PROXYLESS_BLOCKS = ("stem", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "head")


def _archive_values(ref: ReferenceNetwork) -> dict[str, object]:
    """Decision path -> chosen value, for the ProxylessNAS-style spaces."""
    values: dict[str, object] = {"b1.0.kernel": KERNELS[ref.ops[0]]}
    for layer, op in zip(_PROXYLESS_IBN_LAYERS, ref.ops[1:], strict=True):
        if op == 6:
            values[f"{layer}.op"] = Zero()
            continue
        values[f"{layer}.kernel"] = KERNELS[op % 3]
        values[f"{layer}.expansion"] = (3, 6)[op // 3]
    for block, width in zip(_PROXYLESS_BLOCKS, ref.filters, strict=True):
        values[f"{block}.filters"] = width
    return values


def encode_values(space: SearchSpace, values: dict[str, object]) -> tuple[int, ...] | None:
    """Indices selecting `values` (path -> choice); unnamed decisions take choice 0.

    Returns None when a value is not among the choices of its decision (the network is not in
    the space).
    """
    known = {d.path for d in space.decisions}
    unknown = set(values) - known
    if unknown:
        raise KeyError(f"no decisions {sorted(unknown)} in space {space.name}")
    indices = []
    for decision in space.decisions:
        if decision.path not in values:
            indices.append(0)
        elif values[decision.path] in decision.choices:
            indices.append(decision.choices.index(values[decision.path]))
        else:
            return None
    return tuple(indices)


def references_in(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """The reference networks that lie exactly in `space`, with their indices (in a deepened
    space: deepened as EfficientNet deepens a network)."""
    from nascli.space.arch import get_space
    from nascli.space.depth import deepen_indices, split_name

    base_name, depth = split_name(space.name)
    if depth != 1:
        base = get_space(base_name)
        return {n: deepen_indices(base, i, depth) for n, i in references_in(base).items()}
    paths = {d.path for d in space.decisions}
    found = {}
    for ref in REFERENCES.values():
        values = _archive_values(ref)
        if not set(values) <= paths:
            continue
        indices = encode_values(space, values)
        if indices is not None:
            found[ref.name] = indices
    return found
