"""Architectures: `(space, indices)`, their canonical text, validation, sampling and loading."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nascli.errors import NascliError
from nascli.space.depth import deepen_indices, deepen_space, split_name
from nascli.space.references import references_in
from nascli.space.schema import Zero
from nascli.space.spaces import ALL_SPACES, GRAPH_SPACES, SPACES, SearchSpace, nasrl

LAYERS_SEPARATOR = "@layers"
#: The most layers a NAS-RL space may have (the paper's largest network has 39).
MAX_LAYERS = 200


def _graph_space(name: str, layers: int | None) -> SearchSpace:
    """`nasrl` / `nasrl_strides`, or `<one of them>@layers<N>`, at `layers` layers if given."""
    base, found, count = name.partition(LAYERS_SEPARATOR)
    if found:
        if not count.isdigit() or not 1 <= int(count) <= MAX_LAYERS:
            raise NascliError(f"space {name!r}: the layer count must be 1–{MAX_LAYERS}")
        if layers is not None and layers != int(count):
            raise NascliError(f"space {name!r} has {count} layers, not space.layers={layers}")
        layers = int(count)
    if layers is None:
        return GRAPH_SPACES[base]
    if not 1 <= layers <= MAX_LAYERS:
        raise NascliError(f"space.layers={layers}: must be 1–{MAX_LAYERS}")
    return nasrl(layers, predict_strides=base == "nasrl_strides")


def graph_prefix_space(space: SearchSpace, length: int) -> SearchSpace:
    """The NAS-RL space whose indices are the first `length` of `space`'s: the same space with
    fewer layers (a layer's decisions never depend on the layers after it)."""
    if length == space.num_decisions:
        return space
    base = space.name.partition(LAYERS_SEPARATOR)[0]
    for layers in range(1, MAX_LAYERS + 1):
        shallower = _graph_space(base, layers)
        if shallower.num_decisions == length:
            return shallower
        if shallower.num_decisions > length:
            break
    raise NascliError(f"{length} indices are no depth of space {space.name}")


def graph_prefix_space_of_depth(space: SearchSpace, layers: int) -> SearchSpace:
    """`space` (a NAS-RL space) at `layers` layers."""
    if layers == space.graph_layers:
        return space
    return _graph_space(space.name.partition(LAYERS_SEPARATOR)[0], layers)


def get_space(name: str, depth_multiplier: float = 1.0, layers: int | None = None) -> SearchSpace:
    """The space `name` (a deepened one's name, `<space>@depth<d>`, and a NAS-RL space's
    `<space>@layers<N>` included), deepened by `depth_multiplier` (see `nascli.space.depth`);
    `layers` sets a NAS-RL space's depth."""
    if name.partition(LAYERS_SEPARATOR)[0] in GRAPH_SPACES:
        if depth_multiplier != 1:
            raise NascliError(
                f"space {name}: depth_multiplier applies to the TuNAS spaces; set space.layers"
            )
        return _graph_space(name, layers)
    try:
        base, depth = split_name(name)
    except ValueError as error:
        raise NascliError(str(error)) from None
    if base not in SPACES:
        raise NascliError(f"unknown search space {name!r}; available: {', '.join(ALL_SPACES)}")
    if depth_multiplier < 1:
        raise NascliError(f"depth multiplier {depth_multiplier:g}: must be ≥ 1")
    if layers is not None:
        raise NascliError(f"space {name}: space.layers applies to the NAS-RL spaces only")
    return deepen_space(SPACES[base], depth * depth_multiplier)


@dataclass(frozen=True)
class Architecture:
    """One point of a search space. Its text form is TuNAS's colon-separated indices."""

    space: str
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        validate_indices(get_space(self.space), self.indices)

    @property
    def text(self) -> str:
        return format_indices(self.indices)

    def __str__(self) -> str:
        return self.text


def format_indices(indices: tuple[int, ...] | list[int]) -> str:
    return ":".join(str(int(i)) for i in indices)


def validate_indices(space: SearchSpace, indices: tuple[int, ...]) -> None:
    """Raise a one-line `NascliError` naming the first bad position."""
    if len(indices) != space.num_decisions:
        raise NascliError(
            f"space {space.name} needs {space.num_decisions} indices, got {len(indices)}"
        )
    for decision, index in zip(space.decisions, indices, strict=True):
        if not 0 <= index < decision.num_choices:
            raise NascliError(
                f"index {index} at position {decision.position} ({decision.path}) is out of "
                f"range: allowed 0..{decision.num_choices - 1}"
            )


def parse_indices(space: SearchSpace, text: str) -> Architecture:
    """Parse `0:1:2:...` into a validated architecture of `space`."""
    indices = []
    for position, part in enumerate(text.strip().split(":")):
        try:
            indices.append(int(part))
        except ValueError:
            raise NascliError(f"indices position {position} is not an integer: {part!r}") from None
    return Architecture(space.name, tuple(indices))


def sample_indices(
    space: SearchSpace, num: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`num` architectures, uniform per decision (TuNAS's random sampler): shape (num, D)."""
    sizes = torch.tensor([d.num_choices for d in space.decisions], dtype=torch.float64)
    uniform = torch.rand(num, space.num_decisions, generator=generator, dtype=torch.float64)
    return (uniform * sizes).floor().long()


def _extreme_option(decision, largest: bool) -> int:
    """A decision's cheapest or most costly option: a skip (`Zero`) against the first layer
    where a skip is offered, else the smallest or largest value (kernel, expansion, width; SE
    off or on); 0 for options with no order."""
    choices = decision.choices
    skips = [i for i, c in enumerate(choices) if isinstance(c, Zero)]
    if skips:
        return next(i for i in range(len(choices)) if i not in skips) if largest else skips[0]
    if all(isinstance(c, (int, float, bool)) for c in choices):
        return (max if largest else min)(range(len(choices)), key=lambda i: choices[i])
    return 0


def smallest_indices(space: SearchSpace) -> tuple[int, ...]:
    """Every decision at its cheapest option: a skip where offered, else the smallest value."""
    return tuple(_extreme_option(d, largest=False) for d in space.decisions)


def largest_indices(space: SearchSpace) -> tuple[int, ...]:
    """Every decision at its most costly option: every skippable layer on, the largest kernel,
    expansion and width, SE on (the sandwich rule's largest child)."""
    return tuple(_extreme_option(d, largest=True) for d in space.decisions)


def _json_path(spec: str) -> Path | None:
    """The arch.json a spec names (a file or a run directory), if it names one."""
    path = Path(spec)
    if path.is_dir():
        return path / "arch.json"
    if path.suffix == ".json" or path.is_file():
        return path
    return None


def space_of(spec: str) -> str | None:
    """The space an arch.json or run directory records (None for indices and references)."""
    path = _json_path(str(spec).strip()) if str(spec).strip() else None
    if path is None or not path.is_file():
        return None
    try:
        space = json.loads(path.read_text()).get("space")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(space, str):
        return None
    if space.partition(LAYERS_SEPARATOR)[0] in GRAPH_SPACES:
        return space
    try:
        return space if split_name(space)[0] in SPACES else None
    except ValueError:
        return None


def load_architecture(spec: str, space: SearchSpace) -> Architecture:
    """`spec` is an indices string, a reference name, an `arch.json`, or a run directory."""
    spec = str(spec).strip()
    if not spec:
        raise NascliError("no architecture given: pass arch=<indices | reference | arch.json>")
    path = _json_path(spec)
    if path is not None:
        if Path(spec).is_dir() and not path.is_file():
            raise NascliError(f"{spec} is a directory without an arch.json")
        return _load_json(path, space)
    if spec[0].isdigit():
        return parse_indices(space, spec)
    references = references_in(space)
    if spec in references:
        return Architecture(space.name, references[spec])
    others = [name for name, s in SPACES.items() if spec in references_in(s)]
    hint = f" (it is in: {', '.join(others)})" if others else ""
    raise NascliError(
        f"unknown reference {spec!r} for space {space.name}{hint}; "
        f"references here: {', '.join(references) or 'none'}"
    )


def _load_json(path: Path, space: SearchSpace) -> Architecture:
    try:
        data = json.loads(path.read_text())
        file_space, indices = data["space"], data["indices"]
    except FileNotFoundError:
        raise NascliError(f"architecture file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NascliError(f"cannot read architecture from {path}: {error}") from None
    if isinstance(indices, list):
        indices = ":".join(str(i) for i in indices)
    if not isinstance(indices, str):
        raise NascliError(f"{path}: 'indices' must be a colon-separated string or a list")
    base, depth = split_name(space.name)
    if file_space == base and depth != 1:  # deepened as EfficientNet deepens a network
        shallow = parse_indices(get_space(base), indices)
        return Architecture(space.name, deepen_indices(get_space(base), shallow.indices, depth))
    if file_space != space.name:
        raise NascliError(
            f"{path} holds an architecture of space {file_space!r}, expected {space.name!r} "
            f"(pass space={file_space.partition('@')[0]})"
        )
    return parse_indices(space, indices)
