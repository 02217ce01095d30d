"""Grid search and compound scaling of one fixed architecture (EfficientNet, Tan & Le, ICML 2019,
§3.3; MobileNet's width × resolution grid, Howard et al. 2017, §3.3–4.2).

A point is a set of config overrides (`space.width_multiplier`, `data.resolution`,
`space.depth_multiplier` by default, any config key allowed) applied to the run's config. Every
point is measured first (params, MACs, memory, the `cost=` model), points over a budget are
rejected *before anything trains*, and the rest are trained by the shared `Evaluator` with the
`train=` recipe; the best on valid wins.

`mode=compound` scales the base by φ: depth α^φ, width β^φ, resolution r·γ^φ (α·β²·γ² ≈ 2, so
FLOPs grow ≈ 2^φ), for φ = 0, step, 2·step, … up to `phi_max`, and trains the largest φ within
the budgets (EfficientNet's step 2 with the paper's α, β, γ = 1.2, 1.1, 1.15 for B0).

`mode=coefficients` is the paper's step 1: at φ = 1 ("twice more resources"), a grid of α, β, γ
(`coefficient_grid`) restricted to α·β²·γ² within `flops_tolerance` of `flops_ratio` (2), each
scaling the base once; every such point within the budgets is trained and the best on valid gives
the coefficients of a `mode=compound` run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nascli.errors import NascliError
from nascli.search.budgets import BudgetSettings, limits_of
from nascli.search.evaluator import Evaluator
from nascli.search.random import RandomSearch
from nascli.settings import check_fields, option

MODES = ("grid", "compound", "coefficients")
#: `axes` when none are given: MobileNet's widths × its resolutions 224-128 scaled by 1/7 for
#: the 32-px CPU default (conf/strategy/grid_mobilenet.yaml has the paper's).
DEFAULT_AXES = {
    "space.width_multiplier": [1.0, 0.75, 0.5, 0.25],
    "data.resolution": [32, 28, 24, 20],
}
#: `coefficient_grid` when none is given: the values around EfficientNet-B0's 1.2, 1.1, 1.15
#: (the paper does not publish its grid).
DEFAULT_COEFFICIENTS = {
    "alpha": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
    "beta": [1.0, 1.05, 1.1, 1.15, 1.2, 1.25],
    "gamma": [1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3],
}
#: The keys compound scaling sets, with the coefficient each is raised to the power φ of.
COMPOUND_KEYS = {
    "space.depth_multiplier": "alpha",
    "space.width_multiplier": "beta",
    "data.resolution": "gamma",
}


@dataclass(frozen=True)
class GridSettings(BudgetSettings):
    """The `strategy=grid` config group (see conf/strategy/grid.yaml)."""

    name: str = option("grid", choices=("grid",))
    mode: str = option("grid", choices=MODES)
    #: the fixed architecture: a reference name, indices, an arch.json or a run directory
    base: str = option("proxylessnas_mobile", text="an architecture")
    #: grid mode: config key -> the values it takes (the grid is their product, in this order);
    #: None: `DEFAULT_AXES`
    axes: Any = option(None, text="a mapping of config keys to lists of values")
    alpha: float = option(1.2, ge=1, le=10)
    beta: float = option(1.1, ge=1, le=10)
    gamma: float = option(1.15, ge=1, le=10)
    phi_step: float = option(1.0, gt=0, le=100)
    phi_max: float = option(8.0, ge=0, le=100)
    #: coefficients mode: {alpha|beta|gamma: [values]} (None: `DEFAULT_COEFFICIENTS`), kept
    #: where |α·β²·γ² − flops_ratio| ≤ flops_tolerance · flops_ratio
    coefficient_grid: Any = option(None, text="a mapping of alpha, beta, gamma to lists")
    flops_ratio: float = option(2.0, gt=1, le=100)
    flops_tolerance: float = option(0.05, ge=0, le=1)
    max_cost: float | None = option(None, gt=0)  # in the cost= model's units

    @classmethod
    def from_config(cls, cfg: Any) -> GridSettings:
        values = dict(cfg)
        for key, default in (("axes", DEFAULT_AXES), ("coefficient_grid", DEFAULT_COEFFICIENTS)):
            values[key] = _plain_mapping(values.get(key), default)
        settings = cls(**check_fields(cls, values, "strategy"))
        grid = settings.coefficient_grid
        ok = isinstance(grid, dict) and set(grid) == set(DEFAULT_COEFFICIENTS)
        ok = ok and all(isinstance(v, list) and v for v in grid.values())
        values = [x for v in grid.values() for x in v] if ok else []
        ok = ok and all(isinstance(x, int | float) and 1 <= x <= 10 for x in values)
        if not ok:
            raise NascliError(
                "strategy.coefficient_grid: give {alpha: [...], beta: [...], gamma: [...]} with "
                "values in [1, 10], e.g. strategy.coefficient_grid={alpha:[1.1,1.2],beta:[1.1],"
                "gamma:[1.1,1.15]}"
            )
        if settings.mode == "coefficients" and not settings.coefficients():
            raise NascliError(
                f"strategy.coefficient_grid: no α, β, γ with α·β²·γ² within "
                f"{settings.flops_tolerance:.0%} of {settings.flops_ratio:g}; widen the grid "
                "or strategy.flops_tolerance"
            )
        if settings.mode == "grid":
            axes = settings.axes
            if not isinstance(axes, dict) or not axes:
                raise NascliError(
                    "strategy.axes: give the grid as {config key: [values]}, e.g. "
                    "strategy.axes={space.width_multiplier:[1,0.5],data.resolution:[32,24]}"
                )
            for key, options in axes.items():
                if not isinstance(options, list) or not options:
                    raise NascliError(f"strategy.axes.{key}={options!r}: expected a list of values")
        elif settings.mode == "compound" and not settings.budgets() and settings.max_cost is None:
            raise NascliError(
                "strategy.mode=compound scales to the largest φ within a budget: set "
                "strategy.max_macs=, max_params=, max_sram=, max_flash=, max_peak_memory= "
                "or max_cost="
            )
        return settings

    def coefficients(self) -> list[tuple[float, float, float]]:
        """The (α, β, γ) of the coefficient grid whose α·β²·γ² is within the tolerance."""
        grid = self.coefficient_grid
        return [
            (a, b, g)
            for a, b, g in itertools.product(grid["alpha"], grid["beta"], grid["gamma"])
            if abs(a * b**2 * g**2 - self.flops_ratio) <= self.flops_tolerance * self.flops_ratio
        ]

    def budgets(self) -> dict[str, float]:
        """The analytic budgets set (name -> limit), in the order they are checked."""
        return limits_of(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain_mapping(given: Any, default: dict[str, list]) -> Any:
    """A {key: [values]} setting as plain dicts and lists (`default` when None); anything else
    unchanged, for the checks to refuse."""
    if given is None:
        return {k: list(v) for k, v in default.items()}
    if hasattr(given, "items"):
        return {str(k): list(v) if hasattr(v, "__iter__") else v for k, v in given.items()}
    return given


def compound_point(
    coefficients: tuple[float, float, float],
    phi: float,
    width: float,
    resolution: int,
    depth: float = 1.0,
) -> dict[str, Any]:
    """The overrides that scale a base of (`width`, `resolution`, `depth`) by φ with
    `coefficients` (α, β, γ)."""
    alpha, beta, gamma = coefficients
    return {
        "space.depth_multiplier": round(depth * alpha**phi, 6),
        "space.width_multiplier": round(width * beta**phi, 6),
        "data.resolution": round(resolution * gamma**phi),
    }


def grid_points(
    settings: GridSettings, width: float, resolution: int, depth: float = 1.0
) -> list[dict[str, Any]]:
    """Every point of the run: each a dict of config overrides (compound points carry `phi`,
    coefficient points `alpha`, `beta`, `gamma`)."""
    if settings.mode == "grid":
        keys = list(settings.axes)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*settings.axes.values())]  # fmt: skip
    if settings.mode == "coefficients":
        return [
            {"alpha": a, "beta": b, "gamma": g,
             **compound_point((a, b, g), 1.0, width, resolution, depth)}
            for a, b, g in settings.coefficients()
        ]  # fmt: skip
    count = math.floor(settings.phi_max / settings.phi_step + 1e-9) + 1
    phis = [round(k * settings.phi_step, 9) for k in range(count)]
    coefficients = (settings.alpha, settings.beta, settings.gamma)
    return [
        {"phi": phi, **compound_point(coefficients, phi, width, resolution, depth)} for phi in phis
    ]


class GridSearch(RandomSearch):
    """The points that fit the budgets, trained one per unit (as the random baseline's
    candidates), each by the evaluator of its own config (its width, depth and resolution)."""

    unit = "point"

    def __init__(self, candidates: list[dict[str, Any]], evaluators: Any, out: Path):
        super().__init__(candidates, None, out)  # type: ignore[arg-type]
        self.evaluators = evaluators

    def evaluator_for(self, candidate: dict[str, Any]) -> Evaluator:
        return self.evaluators(candidate)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"trained.csv": self.rows}
