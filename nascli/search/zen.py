"""Zero-shot evolutionary search (Zen-NAS's `evolution_search.py`), over a nascli
search space's own decisions.

Each iteration, as the reference: trim the population to its size by deleting the lowest
score; make a candidate (while the population has ≤ `init_population` members, a 1-decision
mutation of the initial architecture; afterwards a `mutations`-draw mutation of a parent chosen
uniformly); check the budgets (params, MACs, peak memory, then the `cost=` model), a rejected
candidate still using up the iteration; score it with the proxy on a freshly built network and
add it. The result is the population's best score.

Deliberate differences from the reference, for TuNAS's discrete spaces: a mutation draws among
the decisions that are *active* in the parent (a kernel of a skipped layer changes nothing) and
moves a decision to any other of its options uniformly, where the reference rescales widths by
×[0.4, 2.5] and depths by ±2 in its own block grammar. Every iteration's random draws come from
a generator seeded by (seed, iteration), so an interrupted search resumes exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from nascli.cost.analytic import NetworkCost, network_cost
from nascli.cost.models import CostModel
from nascli.errors import NascliError
from nascli.search.budgets import BudgetSettings, first_exceeded, limits_of
from nascli.search.driver import Strategy
from nascli.search.policy import ancestors
from nascli.search.proxies import PROXIES, ProxySettings, scorable, score
from nascli.settings import check_fields, option
from nascli.space.arch import (
    format_indices,
    load_architecture,
    sample_indices,
    smallest_indices,
)
from nascli.space.network import Network, NetworkSettings, decode
from nascli.space.spaces import SearchSpace


@dataclass(frozen=True)
class ZenSettings(BudgetSettings):
    """The `strategy=zen` config group (see conf/strategy/zen.yaml)."""

    name: str = option("zen", choices=("zen",))
    proxy: str = option("zen", choices=PROXIES)
    # nascli's CPU-sized defaults (conf/strategy/zen.yaml); the paper's: zen_full.yaml
    population_size: int = option(64, ge=1, le=1_000_000)
    iterations: int = option(1500, ge=1, le=10**9)
    #: smallest (every decision at its cheapest option: skips taken, smallest kernel, width
    #: and expansion, no SE) | random (uniform draws until one fits the budgets) | an
    #: architecture (indices, reference name, arch.json or run dir).
    init: str = option("smallest", text="smallest, random or an architecture")
    init_population: int = option(10, ge=1, le=1_000_000)
    mutations: int = option(2, ge=1, le=10_000)
    max_cost: float | None = option(None, gt=0)  # in the cost model's units; default: cost.target
    log_every: int = option(10, ge=1, le=10**9)
    checkpoint_every: int = option(100, ge=0)
    proxy_settings: ProxySettings = field(default_factory=ProxySettings)

    @classmethod
    def from_config(cls, cfg: Any) -> ZenSettings:
        values = dict(cfg)
        proxy_names = frozenset(f.name for f in fields(ProxySettings))
        own = check_fields(cls, values, "strategy", ignore=proxy_names)
        proxy = ProxySettings.from_mapping(values, "strategy")
        return cls(**own, proxy_settings=proxy)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values |= values.pop("proxy_settings")
        return values


def active_decisions(space: SearchSpace, indices: tuple[int, ...]) -> list[int]:
    """Positions of the searchable (≥ 2 options) decisions that matter for `indices`."""
    chains = _chains(space)
    return [
        position
        for position, decision in enumerate(space.decisions)
        if decision.num_choices > 1 and all(indices[p] == option for p, option in chains[position])
    ]


_CHAINS: dict[str, list[list[tuple[int, int]]]] = {}


def _chains(space: SearchSpace) -> list[list[tuple[int, int]]]:
    if space.name not in _CHAINS:
        _CHAINS[space.name] = ancestors(space)
    return _CHAINS[space.name]


def mutate(
    space: SearchSpace, parent: tuple[int, ...], draws: int, generator: torch.Generator
) -> tuple[tuple[int, ...], list[int]]:
    """A child of `parent`: `draws` positions drawn uniformly, with replacement, among the
    parent's active decisions (a repeat is skipped, so 1..draws decisions change); each moves
    to one of its other options, uniformly. Returns the child and the changed positions."""
    active = active_decisions(space, parent)
    if not active:
        raise NascliError(f"{space.name} has no searchable decision to mutate")
    child = list(parent)
    changed: list[int] = []
    for _ in range(draws):
        position = active[int(torch.randint(len(active), (), generator=generator))]
        if position in changed:
            continue
        others = [o for o in range(space.decisions[position].num_choices) if o != parent[position]]
        child[position] = others[int(torch.randint(len(others), (), generator=generator))]
        changed.append(position)
    return tuple(child), changed


@dataclass
class Member:
    indices: tuple[int, ...]
    score: float
    cost: float
    params: int
    macs: int
    iteration: int


@dataclass
class Outcome:
    """What one iteration did."""

    iteration: int
    status: str  # scored | over_params | over_macs | over_peak_memory | over_cost
    indices: tuple[int, ...]
    changed: list[int]
    score: float | None = None
    cost: float | None = None


class EvolutionSearch(Strategy):
    """The population and one `step()` per iteration; `state()` / `load_state()` resume it."""

    unit = "iteration"

    def __init__(
        self,
        space: SearchSpace,
        net_settings: NetworkSettings,
        settings: ZenSettings,
        cost_model: CostModel,
        max_cost: float | None,
        seed: int,
    ):
        self.space = space
        self.net_settings = net_settings
        self.settings = settings
        self.cost_model = cost_model
        self.max_cost = max_cost
        self.seed = seed
        self.iteration = 0
        self.population: list[Member] = []
        self.counts: dict[str, int] = {}
        self.initial = self._initial()
        self.log_every = max(1, settings.log_every)
        self.checkpoint_every = settings.checkpoint_every

    # ------------------------------------------------------------------ the driver's view
    @property
    def position(self) -> int:
        return self.iteration

    @property
    def total(self) -> int:
        return self.settings.iterations

    def advance(self) -> Outcome:
        return self.step()

    def log_row(self, record: Outcome, seconds: float) -> dict[str, Any] | None:
        """Every `log_every` iterations and the last: the population's scores, the best's
        cost, and how many candidates were scored or rejected per budget."""
        done = self.iteration == self.settings.iterations
        if not self.population or (self.iteration % self.log_every and not done):
            return None
        scores = [m.score for m in self.population]
        best = self.best()
        rejected = sum(v for k, v in self.counts.items() if k != "scored")
        return {
            "iteration": self.iteration,
            "seconds": seconds,
            "population": len(scores),
            "best_score": best.score,
            "mean_score": sum(scores) / len(scores),
            "worst_score": min(scores),
            "best_cost": best.cost,
            "best_params": best.params,
            "best_macs": best.macs,
            "scored": self.counts.get("scored", 0),
            "rejected": rejected,
            **{k: v for k, v in sorted(self.counts.items()) if k != "scored"},
            "best_indices": format_indices(best.indices),
        }

    def status(self, row: dict[str, Any]) -> str:
        return (
            f"best {row['best_score']:.2f} at {row['best_cost']:.4g} {self.cost_model.units} · "
            f"scored {row['scored']:,} · rejected {row['rejected']:,}"
        )

    def population_rows(self) -> list[dict[str, Any]]:
        members = sorted(self.population, key=lambda m: -m.score)
        return [{**asdict(m), "indices": format_indices(m.indices)} for m in members]

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"population.csv": self.population_rows()} if self.population else {}

    # ------------------------------------------------------------------ set-up
    def _initial(self) -> tuple[int, ...]:
        init = str(self.settings.init)
        if init == "smallest":
            indices = smallest_indices(self.space)
        elif init == "random":
            indices = self._random_within_budget()
        else:
            indices = load_architecture(init, self.space).indices
        reason = self.over_budget(indices)
        if reason is not None:
            raise NascliError(
                f"the initial architecture ({init}) is already {reason.replace('_', ' ')}: "
                "raise the budget or pick a smaller strategy.init"
            )
        return indices

    def _random_within_budget(self, attempts: int = 10_000) -> tuple[int, ...]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(attempts):
            indices = tuple(sample_indices(self.space, 1, generator)[0].tolist())
            if self.over_budget(indices) is None:
                return indices
        raise NascliError(f"no random architecture fits the budgets in {attempts:,} draws")

    def generator(self, iteration: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)

    # ------------------------------------------------------------------ one iteration
    def measure(self, indices: tuple[int, ...]) -> tuple[Network, NetworkCost, float]:
        """The decoded network of `indices`, its analytic costs and its `cost=` model cost."""
        network = decode(self.space, indices, self.net_settings)
        return network, network_cost(network), self.cost_model.cost(indices)

    def over_budget(self, indices: tuple[int, ...]) -> str | None:
        """The first budget `indices` exceeds ("over_<name>"), or None."""
        _, analytic, cost = self.measure(indices)
        return self.check(analytic, cost)

    def check(self, analytic: NetworkCost, cost: float) -> str | None:
        exceeded = first_exceeded(analytic, limits_of(self.settings))
        if exceeded is not None:
            return f"over_{exceeded}"
        if self.max_cost is not None and cost > self.max_cost:
            return "over_cost"
        return None

    def score(self, network: Network, analytic: NetworkCost, generator: torch.Generator) -> float:
        """The proxy of a freshly built `network`."""
        net = scorable(network, analytic)
        value = score(self.settings.proxy, net, self.settings.proxy_settings, generator)
        if value != value or value in (float("inf"), float("-inf")):  # the reference's −9999
            return -9999.0
        return value

    def step(self) -> Outcome:
        settings = self.settings
        while len(self.population) > settings.population_size:
            worst = min(range(len(self.population)), key=lambda i: self.population[i].score)
            del self.population[worst]
        generator = self.generator(self.iteration)
        if len(self.population) <= settings.init_population:
            parent, draws = self.initial, 1
        else:
            choice = int(torch.randint(len(self.population), (), generator=generator))
            parent, draws = self.population[choice].indices, settings.mutations
        child, changed = mutate(self.space, parent, draws, generator)
        outcome = Outcome(self.iteration, "scored", child, changed)
        network, analytic, cost = self.measure(child)
        reason = self.check(analytic, cost)
        outcome.cost = cost
        if reason is not None:
            outcome.status = reason
        else:
            value = self.score(network, analytic, generator)
            self.population.append(
                Member(child, value, cost, analytic.params, analytic.macs, self.iteration)
            )
            outcome.score = value
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        self.iteration += 1
        return outcome

    # ------------------------------------------------------------------ results
    def best(self) -> Member:
        if not self.population:
            raise NascliError(
                "no candidate fitted the budgets: every iteration was rejected "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))})"
            )
        return max(self.population, key=lambda m: m.score)

    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "population": [asdict(m) for m in self.population],
            "counts": dict(self.counts),
            "initial": list(self.initial),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.population = [
            Member(**{**m, "indices": tuple(m["indices"])}) for m in state["population"]
        ]
        self.counts = dict(state["counts"])
        self.initial = tuple(state["initial"])
