"""The latency-matched random baseline (TuNAS code: `tools/sample_random_architectures.py`):
architectures drawn uniformly per decision (TuNAS's sampler with all-zero logits), kept only if
their cost lies in a window around the target, then each trained with the same short recipe and
compared on `valid`. `RandomSearch` runs it on the search driver, one candidate per unit."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nascli.cost.models import CostModel
from nascli.errors import NascliError
from nascli.search.budgets import BatchBudgets, BudgetSettings
from nascli.search.driver import Strategy
from nascli.search.evaluator import Evaluator
from nascli.settings import check_fields, option
from nascli.space.arch import parse_indices, sample_indices
from nascli.space.spaces import SearchSpace

#: TuNAS's rejection windows under its Pixel-1 model (ms): 83–85 and 57–59
#: (`tunas/tools/sample_random_architectures.py` and TuNAS's README).
PIXEL1_WINDOWS_MS = {
    "proxylessnas": (83.0, 85.0),
    "proxylessnas_enlarged": (83.0, 85.0),
    "mnv3": (57.0, 59.0),
}


@dataclass(frozen=True)
class RandomSettings(BudgetSettings):
    """The `strategy=random` config group (see conf/strategy/random.yaml)."""

    name: str = option("random", choices=("random",))
    num_samples: int = option(4, ge=1, le=1_000_000)
    min_cost: float | None = option(None, ge=0)
    max_cost: float | None = option(None, gt=0)
    window: float = option(0.02, ge=0, lt=1)
    max_attempts: int = option(1_000_000, ge=1, le=10**12)
    workers: int = option(1, ge=1, le=1024)
    candidate: int | None = option(None, ge=0, le=1_000_000)
    # the hard budgets (BudgetSettings): a draw over one is rejected like one outside the window

    @classmethod
    def from_config(cls, cfg: Any) -> RandomSettings:
        settings = cls(**check_fields(cls, dict(cfg), "strategy"))
        if (settings.min_cost is None) != (settings.max_cost is None):
            raise NascliError("strategy.min_cost and max_cost: give both or neither")
        if settings.min_cost is not None and settings.min_cost > settings.max_cost:
            raise NascliError(
                f"strategy.min_cost={settings.min_cost} exceeds max_cost={settings.max_cost}"
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_window(
    settings: RandomSettings, cost_name: str, space_name: str, target: float | None
) -> tuple[float, float]:
    """[min_cost, max_cost]: explicit bounds, else TuNAS's Pixel-1 windows (when the target is
    the paper's), else target·(1 ± window)."""
    if settings.min_cost is not None and settings.max_cost is not None:
        low, high = float(settings.min_cost), float(settings.max_cost)
    elif target is None:
        raise NascliError(
            "the random baseline needs a cost window: set cost.target=<value> or "
            "strategy.min_cost= and strategy.max_cost="
        )
    elif cost_name == "tunas_pixel1" and target in (84.0, 57.0) and settings.window == 0.02:
        low, high = PIXEL1_WINDOWS_MS[space_name]
    else:
        low, high = target * (1 - settings.window), target * (1 + settings.window)
    if settings.min_cost is not None and settings.max_cost is None:
        low = float(settings.min_cost)
    if settings.max_cost is not None and settings.min_cost is None:
        high = float(settings.max_cost)
    if low > high:
        raise NascliError(f"empty cost window [{low:g}, {high:g}]")
    return low, high


@dataclass(frozen=True)
class Sampled:
    """What `sample_in_window` drew: the kept architectures (in the order drawn), their costs,
    the draws used, and how many draws each reason rejected (`cost` or a budget's name)."""

    indices: list[list[int]]
    costs: list[float]
    attempts: int
    rejected: dict[str, int]


def sample_in_window(
    space: SearchSpace,
    cost_model: CostModel,
    num: int,
    low: float,
    high: float,
    seed: int,
    max_attempts: int,
    chunk: int = 4096,
    budgets: BatchBudgets | None = None,
) -> Sampled:
    """`num` architectures uniform per decision with low ≤ cost ≤ high and within `budgets`.
    Gives up after `max_attempts` draws with a message stating the cost range seen and what
    the budgets rejected, never loops forever."""
    generator = torch.Generator().manual_seed(seed)
    kept: list[list[int]] = []
    costs: list[float] = []
    attempts = 0
    names = budgets.names if budgets is not None else ()
    rejected = dict.fromkeys(("cost", *names), 0)
    seen_low, seen_high = float("inf"), float("-inf")
    while True:
        if attempts >= max_attempts:
            over = ", ".join(f"{n:,} over {k}" for k, n in rejected.items() if k != "cost" and n)
            raise NascliError(
                f"found {len(kept)} of {num} architectures with cost in [{low:g}, {high:g}] "
                f"{cost_model.units} after {attempts:,} draws; costs seen ranged "
                f"{seen_low:.4g} to {seen_high:.4g}"
                + (f"; rejected by a budget: {over}" if over else "")
                + ": widen the window, move cost.target or raise the budgets"
            )
        size = min(chunk, max_attempts - attempts)
        indices = sample_indices(space, size, generator)
        values = cost_model(indices)
        seen_low = min(seen_low, float(values.min()))
        seen_high = max(seen_high, float(values.max()))
        exceeded = budgets.exceeded(indices) if budgets is not None else torch.zeros(size)
        outside = (values < low) | (values > high)
        inside = (~outside & (exceeded == 0)).nonzero().flatten().tolist()
        need = num - len(kept)
        stop = inside[need - 1] + 1 if len(inside) >= need else size  # draws used
        rejected["cost"] += int(outside[:stop].sum())
        for number, name in enumerate(names, start=1):
            rejected[name] += int(((exceeded[:stop] == number) & ~outside[:stop]).sum())
        for i in inside[:need]:
            kept.append(indices[i].tolist())
            costs.append(float(values[i]))
        if len(kept) == num:
            return Sampled(kept, costs, attempts + stop, rejected)
        attempts += size


class RandomSearch(Strategy):
    """The random baseline's candidates, trained one per unit by `evaluator` in
    `out/candidates/<number>/`; their rows (indices, cost, then the evaluator's result) are
    `candidates.csv`. A failed candidate is a row with its error, and a rerun of the run
    retries it: resuming keeps the rows before the first failure, and the candidates after it
    return their stored results without training again."""

    unit = "candidate"
    checkpoint_every = 1

    def __init__(self, candidates: list[dict[str, Any]], evaluator: Evaluator, out: Path):
        self.candidates = candidates
        self.evaluator = evaluator
        self.out = out
        self.rows: list[dict[str, Any]] = []

    @property
    def position(self) -> int:
        return len(self.rows)

    @property
    def total(self) -> int:
        return len(self.candidates)

    def evaluator_for(self, candidate: dict[str, Any]) -> Evaluator:
        """The evaluator that trains `candidate` (one for all of them here)."""
        return self.evaluator

    def advance(self) -> dict[str, Any]:
        number = len(self.rows)
        candidate = self.candidates[number]
        evaluator = self.evaluator_for(candidate)
        arch = parse_indices(evaluator.space, candidate["indices"])
        result = evaluator.try_evaluate(arch.indices, self.out / f"{self.unit}s" / str(number))
        row = {self.unit: number, **candidate, **result}
        self.rows.append(row)
        return row

    def log_row(self, record: dict[str, Any], seconds: float) -> None:
        return None  # the candidates' rows are the log: `tables`

    def status(self, row: dict[str, Any]) -> str:
        done = [r["valid_top1"] for r in self.rows if r["status"] == "done"]
        failed = len(self.rows) - len(done)
        best = f"best valid {max(done):.1%}" if done else f"no {self.unit} done yet"
        return best + (f" · {failed} failed" if failed else "")

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state(self, state: dict[str, Any]) -> None:
        rows = state["rows"]
        failed = [i for i, row in enumerate(rows) if row["status"] != "done"]
        self.rows = rows[: failed[0]] if failed else rows

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {"candidates.csv": self.rows}
