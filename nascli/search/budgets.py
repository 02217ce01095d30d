"""Hard budgets on an architecture's analytic costs, the same for every strategy that has them
(`strategy.max_params`, `max_macs`, `max_peak_memory`, `max_sram`, `max_flash`; each strategy
adds `max_cost` in its `cost=` model's units).

`first_exceeded` checks one decoded network; `BatchBudgets` checks a batch of indices at once
with the costs compiled into per-layer tables (`nascli.cost.compiled`), for samplers that
reject thousands of draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nascli.cost.analytic import NetworkCost
from nascli.settings import option
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SearchSpace

#: Budgets in the order they are checked (cheapest first): name, NetworkCost field, the compiled
#: metric that computes the same number.
BUDGETS = (
    ("params", "params", "params"),
    ("macs", "macs", "macs"),
    ("peak_memory", "peak_memory_bytes", "peak_memory"),
    ("sram", "sram_bytes", "sram"),
    ("flash", "flash_bytes", "flash"),
)
NAMES = tuple(name for name, _, _ in BUDGETS)


@dataclass(frozen=True)
class BudgetSettings:
    """The hard budgets every strategy's settings take (None: unset); each strategy's YAML
    lists them."""

    max_params: float | None = option(None, gt=0)
    max_macs: float | None = option(None, gt=0)
    max_peak_memory: float | None = option(None, gt=0)  # bytes (fp32 live set)
    max_sram: float | None = option(None, gt=0)  # bytes (int8 peak activation, MCUNet)
    max_flash: float | None = option(None, gt=0)  # bytes (int8 weights + int32 biases)


def limits_of(settings: Any) -> dict[str, float]:
    """The budgets a strategy's settings set (`max_<name>`, None: unset), in checking order."""
    limits = {name: getattr(settings, f"max_{name}", None) for name in NAMES}
    return {name: float(limit) for name, limit in limits.items() if limit is not None}


def rejected_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Rows rejected by a budget (status `over_<budget>`), counted per status."""
    counts: dict[str, int] = {}
    for row in rows:
        if str(row["status"]).startswith("over_"):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def first_exceeded(analytic: NetworkCost, limits: dict[str, float]) -> str | None:
    """The first budget `analytic` exceeds, or None when it fits them all."""
    for name, field, _ in BUDGETS:
        if name in limits and getattr(analytic, field) > limits[name]:
            return name
    return None


class BatchBudgets:
    """`limits` on the architectures of `space` at `settings`, checked a batch at a time."""

    def __init__(self, space: SearchSpace, settings: NetworkSettings, limits: dict[str, float]):
        from nascli.cost.models import compiled_analytics

        self.limits = limits
        metrics = {name: metric for name, _, metric in BUDGETS if name in limits}
        compiled = compiled_analytics(space, settings, tuple(metrics.values())) if limits else {}
        self.costs = {name: compiled[metric] for name, metric in metrics.items()}

    def exceeded(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) index into `self.names` + 1 of the first budget each row exceeds, 0 if none."""
        first = torch.zeros(len(indices), dtype=torch.long)
        for number, (name, cost) in enumerate(self.costs.items(), start=1):
            over = (cost(indices) > self.limits[name]) & (first == 0)
            first[over] = number
        return first

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.costs)
