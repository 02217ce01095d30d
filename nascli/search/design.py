"""Choosing the design space before searching it: MCUNet's TinyNAS stage 1 (Lin et al.,
NeurIPS 2020, §3.1 and Fig. 3).

For each (width multiplier, input resolution) of a grid, m architectures are sampled uniformly
per decision, those within every memory budget (int8 SRAM and Flash, MCUNet's convention; see
`nascli/cost/analytic.py`) and any cost budget are kept, and the spaces are ranked by the
**mean MACs of the architectures that fit** ("larger FLOPs → larger capacity → more likely
higher accuracy"). Spaces where nothing fits rank last. Every space uses the same m draws of
indices (the decisions do not depend on width or resolution), so spaces differ only by their
scaling, not by sampling noise. Costs are compiled once per space (`nascli/cost/compiled.py`)
and each batch of m is one gather.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from nascli.cost.models import ANALYTIC_UNITS, compiled_analytics
from nascli.errors import NascliError
from nascli.search.budgets import NAMES as BUDGET_NAMES
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SearchSpace


@dataclass(frozen=True)
class Budgets:
    """Hard limits a sample must meet to count (None: no limit). Bytes for the memories; the
    cost limit is in the units of the analytic metric `cost` names."""

    sram: float | None = None
    flash: float | None = None
    cost: str | None = None
    max_cost: float | None = None
    params: float | None = None
    macs: float | None = None
    peak_memory: float | None = None  # bytes, fp32 (nascli's own, not MCUNet's int8 SRAM)

    def limits(self) -> dict[str, float]:
        """The analytic budgets set (metric -> limit), in the order they are checked."""
        return {n: getattr(self, n) for n in BUDGET_NAMES if getattr(self, n) is not None}

    def __post_init__(self) -> None:
        if self.max_cost is not None and self.cost not in (*ANALYTIC_UNITS, "lut"):
            raise NascliError(
                f"design.max_cost needs an analytic cost= ({', '.join(ANALYTIC_UNITS)}) or "
                f"cost=lut with a table per space; {self.cost} is fitted to one resolution "
                "and width, not to every space"
            )


@dataclass(frozen=True)
class DesignSpace:
    """One (width, resolution) space and what its samples showed."""

    width: float
    resolution: int
    samples: int
    fit: int
    mean_macs: float  # of the samples that fit (nan when none does)
    median_macs: float
    top20_macs: float  # the 80th percentile: the top 20% of fitting samples have more
    over_sram: int  # samples each budget rejected (a sample may exceed several)
    over_flash: int
    over_cost: int
    over_params: int = 0
    over_macs: int = 0
    over_peak_memory: int = 0

    @property
    def share(self) -> float:
        return self.fit / self.samples


@dataclass(frozen=True)
class DesignReport:
    ranked: list[DesignSpace]  # best first
    macs: dict[tuple[float, int], torch.Tensor]  # each space's fitting samples' MACs, sorted
    compile_seconds: float
    evaluate_seconds: float
    evaluations: int  # cost evaluations (samples × spaces × metrics)


def rank_design_spaces(
    space: SearchSpace,
    base: NetworkSettings,
    widths: list[float],
    resolutions: list[int],
    samples: int,
    budgets: Budgets,
    seed: int = 0,
    tables: Mapping[tuple[float, int], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> DesignReport:
    """Every (width, resolution) space of the grid, ranked by the mean MACs of its samples
    within `budgets`. A cost budget on a fitted cost (`lut`) takes each space's own compiled
    model from `tables`, keyed by (width, resolution): a table holds one width and resolution."""
    indices = sample_indices(space, samples, torch.Generator().manual_seed(seed))
    fitted = budgets.max_cost is not None and budgets.cost not in ANALYTIC_UNITS
    if fitted:
        missing = [(w, r) for w in widths for r in resolutions if (w, r) not in (tables or {})]
        if missing:
            raise NascliError(f"no {budgets.cost} cost for the spaces {missing}")
    metrics = ["macs", "sram", "flash"]
    metrics += [m for m in budgets.limits() if m not in metrics]
    if budgets.max_cost is not None and budgets.cost not in metrics and not fitted:
        metrics.append(budgets.cost)
    compile_seconds = evaluate_seconds = 0.0
    rows, macs = [], {}
    for width in widths:
        for resolution in resolutions:
            settings = replace(base, resolution=resolution, width_multiplier=width)
            tick = time.perf_counter()
            compiled = compiled_analytics(space, settings, tuple(metrics))
            compile_seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            values = {m: c(indices) for m, c in compiled.items()}
            if fitted:
                values[budgets.cost] = tables[(width, resolution)](indices)
            over = {name: values[name] > limit for name, limit in budgets.limits().items()}
            if budgets.max_cost is not None:
                over["cost"] = values[budgets.cost] > budgets.max_cost
            rejected = torch.zeros(samples, dtype=torch.bool)
            for mask in over.values():
                rejected |= mask
            counts = {f"over_{name}": int(mask.sum()) for name, mask in over.items()}
            fitting = values["macs"][~rejected].sort().values
            evaluate_seconds += time.perf_counter() - tick
            macs[(width, resolution)] = fitting
            nan = math.nan
            rows.append(
                DesignSpace(
                    width=width,
                    resolution=resolution,
                    samples=samples,
                    fit=len(fitting),
                    mean_macs=float(fitting.mean()) if len(fitting) else nan,
                    median_macs=float(fitting.median()) if len(fitting) else nan,
                    top20_macs=float(fitting.quantile(0.8)) if len(fitting) else nan,
                    **{"over_sram": 0, "over_flash": 0, "over_cost": 0, **counts},
                )
            )
    ranked = sorted(rows, key=lambda r: (r.fit == 0, -(r.mean_macs if r.fit else 0.0)))
    return DesignReport(
        ranked,
        macs,
        compile_seconds,
        evaluate_seconds,
        samples * len(rows) * (len(metrics) + fitted),
    )
