"""One cost interface for search: `model(indices) -> costs`, batched over architectures.

`cost=` selects the implementation: `macs`, `params`, `peak_memory` (analytic), `tunas_pixel1`
(TuNAS's Pixel-1 linear model, milliseconds), `lut` (a table measured on this machine by
`nascli profile-latency`), `measured` (times each architecture end to end; for final reports).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nascli.cost.analytic import layer_cost, layer_flash, layer_sram
from nascli.cost.compiled import CompiledCost, DecodedCost, LayerValue, layer_terms_many
from nascli.cost.lut import NO_CORRECTION, LookupTable, settings_meta
from nascli.cost.pixel1 import Pixel1Model
from nascli.cost.timing import Protocol, Timing, measure, protocol_from_config
from nascli.errors import NascliError
from nascli.nn.builder import build_model
from nascli.space.network import LayerArgs, Network, NetworkSettings, decode
from nascli.space.spaces import SearchSpace

ANALYTIC_UNITS = {
    "macs": "MACs",
    "params": "params",
    "peak_memory": "bytes",  # fp32 live-set peak
    "sram": "bytes",  # int8 peak activation memory, MCUNet's convention
    "flash": "bytes",  # int8 weights + int32 biases
}
#: Analytic costs whose network value is the maximum over layers, not the sum.
PEAK_METRICS = ("peak_memory", "sram")


class CostModel(ABC):
    name: str
    units: str
    #: False where the cost ignores the network settings (width, resolution): one fixed network
    follows_settings: bool = True

    def __init__(self, space: SearchSpace, settings: NetworkSettings):
        self.space = space
        self.settings = settings

    @abstractmethod
    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) float64 costs of a (B, D) long tensor of indices."""

    def cost(self, indices: Any) -> float:
        """The cost of one architecture."""
        return float(self(torch.as_tensor([list(indices)], dtype=torch.long))[0])


class PerArchitecture(CostModel):
    """A cost computed from each decoded network in turn."""

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        values = [self.network_cost(tuple(row)) for row in indices.tolist()]
        return torch.tensor(values, dtype=torch.float64)

    @abstractmethod
    def network_cost(self, indices: tuple[int, ...]) -> float: ...


class Compiled(CostModel):
    """A cost compiled into per-layer tables (`nascli.cost.compiled`): a batch is a gather and a
    sum (a max for peak memory); additive costs also have `expected(probabilities)`."""

    compiled: CompiledCost

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.compiled(indices)

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[cost] under independent categoricals, one probability vector per decision."""
        return self.compiled.expected(probabilities)


def _analytic_value(metric: str, bytes_per_element: int = 4) -> LayerValue:
    if metric == "peak_memory":
        return lambda layers: max(
            (layer_cost(layer).peak_elements * bytes_per_element for layer in layers), default=0
        )
    if metric == "sram":
        return lambda layers: max((layer_sram(layer) for layer in layers), default=0)
    if metric == "flash":
        return lambda layers: sum(layer_flash(layer) for layer in layers)
    return lambda layers: sum(getattr(layer_cost(layer), metric) for layer in layers)


@functools.cache
def compiled_analytic(
    space: SearchSpace, settings: NetworkSettings, metric: str
) -> CompiledCost | DecodedCost:
    return compiled_analytics(space, settings, (metric,))[metric]


def compiled_analytics(
    space: SearchSpace, settings: NetworkSettings, metrics: tuple[str, ...]
) -> dict[str, CompiledCost | DecodedCost]:
    """Several analytic costs compiled together (each layer combination decoded once); in a
    NAS-RL space, decoded per architecture."""
    values = [_analytic_value(metric) for metric in metrics]
    if space.graph:
        return {
            metric: DecodedCost(space, settings, value, "max" if metric in PEAK_METRICS else "sum")
            for metric, value in zip(metrics, values, strict=True)
        }
    terms = layer_terms_many(space, settings, values)
    return {
        metric: CompiledCost(
            space.num_decisions, metric_terms, "max" if metric in PEAK_METRICS else "sum"
        )
        for metric, metric_terms in zip(metrics, terms, strict=True)
    }


class AnalyticCost(Compiled):
    def __init__(self, space: SearchSpace, settings: NetworkSettings, metric: str):
        super().__init__(space, settings)
        self.name, self.units = metric, ANALYTIC_UNITS[metric]
        self.compiled = compiled_analytic(space, settings, metric)


class Pixel1Cost(CostModel):
    """TuNAS's simulated Pixel-1 at 224×224; independent of nascli's network settings."""

    name, units = "tunas_pixel1", "ms"
    follows_settings = False

    def __init__(self, space: SearchSpace, settings: NetworkSettings):
        super().__init__(space, settings)
        self.model = Pixel1Model(space)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.model(indices.long()).double()

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[ms] under independent categoricals (float64; the batched path stays float32)."""
        return self.model.compiled.expected(probabilities)


class LutCost(Compiled):
    """`LookupTable.predict` compiled: each layer's mapped entry and its share of the
    correction's per-layer and per-weight terms; the correction's offset once."""

    name, units = "lut", "ms"

    def __init__(self, space: SearchSpace, settings: NetworkSettings, table: LookupTable):
        super().__init__(space, settings)
        self.table = table
        c = {**NO_CORRECTION, **table.correction}

        def value(layers: Sequence[LayerArgs]) -> float:
            return sum(
                c["scale"] * table.layer_ms(layer)
                + c["per_layer"]
                + c["per_mparam"] * layer_cost(layer).params / 1e6
                for layer in layers
            )

        self.compiled = CompiledCost.of_layers(space, settings, value, offset=c["offset"])


class MeasuredCost(PerArchitecture):
    name, units = "measured", "ms"

    def __init__(self, space: SearchSpace, settings: NetworkSettings, protocol: Protocol):
        super().__init__(space, settings)
        self.protocol = protocol

    def network_cost(self, indices: tuple[int, ...]) -> float:
        network = decode(self.space, indices, self.settings)
        return measure_network(network, self.protocol).median_ms


def measure_network(network: Network, protocol: Protocol) -> Timing:
    """A freshly built standalone model of `network`, timed end to end."""
    s = network.settings
    shape = (protocol.batch_size, s.in_channels, s.resolution, s.resolution)
    return measure(build_model(network), shape, protocol)


def lut_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nascli" / "lut"


def lut_identity(space: SearchSpace, settings: NetworkSettings, protocol: Protocol) -> dict:
    """What a table must have been measured under to be used here."""
    return {**settings_meta(space, settings), **protocol.describe()}


def cached_lut_path(identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return lut_cache_dir() / f"{identity['space']}-{identity['resolution']}px-{digest}.csv"


#: Why a NAS-RL space has no latency table.
LUT_GRAPH = (
    "cost=lut covers the TuNAS spaces: a NAS-RL layer's input is a concatenation of any earlier "
    "layers, so its time is not a function of a few decisions; use cost=measured or cost=macs"
)


def make_cost_model(
    cfg: Any, space: SearchSpace, settings: NetworkSettings, device: str = "cpu"
) -> CostModel:
    """The cost model the `cost` config group describes."""
    if cfg.name in ANALYTIC_UNITS:
        return AnalyticCost(space, settings, cfg.name)
    if cfg.name == "tunas_pixel1":
        return Pixel1Cost(space, settings)
    if cfg.name == "lut" and space.graph:
        raise NascliError(LUT_GRAPH)
    protocol = protocol_from_config(cfg, device)
    if cfg.name == "measured":
        return MeasuredCost(space, settings, protocol)
    if cfg.name == "lut":
        identity = lut_identity(space, settings, protocol)
        if cfg.path:
            return LutCost(space, settings, LookupTable.load(Path(cfg.path), identity))
        path = cached_lut_path(identity)
        if not path.exists():
            raise NascliError(
                f"no latency table for {space.name} at {settings.resolution}px with these "
                f"settings on this machine; run `nascli profile-latency space={space.name}` "
                "with the same space/data/cost settings first, or pass cost.path=<lut.csv>"
            )
        return LutCost(space, settings, LookupTable.load(path, identity))
    raise NascliError(f"unknown cost model {cfg.name!r}")
