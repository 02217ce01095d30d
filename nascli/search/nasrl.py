"""NAS-RL's multi-trial search (Zoph & Le, ICLR 2017, §3.2 and §4.1): each controller step
samples m architectures, each is trained from scratch by the shared `Evaluator`, its reward is
(max valid top-1 over the last 5 epochs)³, and REINFORCE with an exponential-moving-average
baseline updates the controller:

    ∇J ≈ (1/m) Σ_k Σ_t ∇ log P(a_t | a_<t) (R_k − b).

The baseline's decay is not in the paper: it is `baseline_decay` (0.95 by default, TuNAS's
value; ENAS's code uses 0.99). The baseline is zero-debiased and updated with the batch's mean
reward before the advantages are formed (TuNAS's and ENAS's order). ENAS's optional entropy
bonus is added to each reward without a gradient (`entropy_weight`, off by default). A child
whose training failed (out of memory, divergence) gets reward 0 and a row with its error. A
child over a hard budget (`max_sram`, `max_flash`, ...) is not trained: it gets
`over_budget_reward` (0 by default, MnasNet's hard constraint) and a row `over_<budget>`, so the
result, the best trained child, is always within every budget.

`reference` (None by default: none) adds that many children drawn uniformly at random after the
search, trained by the same evaluator under the same budgets (reference child k has NAS-RL
child k's depth under a depth schedule), never updating the controller: the plot's
uniform-random line and `reference.csv`, the same compute's worth of chance to compare with.

One unit of the driver is one child, so a SIGKILL loses at most the child in training (which
resumes from its own checkpoint), never a finished one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nascli.cost.analytic import network_cost
from nascli.cost.models import CostModel
from nascli.errors import NascliError, Waiting
from nascli.search.budgets import BudgetSettings, first_exceeded, limits_of
from nascli.search.driver import Strategy
from nascli.search.evaluator import Evaluator
from nascli.search.policy import Controller
from nascli.search.rewards import EmaBaseline
from nascli.settings import check_fields, option
from nascli.space.arch import format_indices, graph_prefix_space_of_depth, sample_indices
from nascli.space.network import decode
from nascli.space.spaces import SearchSpace


@dataclass(frozen=True)
class NasrlSettings(BudgetSettings):
    """The `strategy=nasrl` config group (conf/strategy/nasrl.yaml, nasrl_paper.yaml)."""

    name: str = option("nasrl", choices=("nasrl",))
    children_per_step: int = option(2, ge=1, le=100_000)  # m
    steps: int = option(4, ge=1, le=10_000_000)  # controller steps: m × steps children
    reward_epochs: int = option(5, ge=1, le=10_000)  # max valid top-1 over the last this many
    reward_power: float = option(3.0, gt=0, le=100)
    baseline_decay: float = option(0.95, ge=0, lt=1)
    entropy_weight: float = option(0.0, ge=0, le=1000)
    workers: int = option(1, ge=1, le=1024)  # processes training a step's children at once
    #: hard budgets (BudgetSettings): a child over one is not trained and gets this reward
    #: (MnasNet's hard constraint: the lowest reward there is, since rewards lie in [0, 1])
    over_budget_reward: float = option(0.0, ge=-1000, le=1000)
    #: NAS-RL's depth schedule (§4.1: 6 layers, + 2 every 1,600 children), NAS-RL spaces
    #: only: child n has min(space.layers, depth_start + depth_step · ⌊n / depth_every⌋)
    #: layers. None: every child has space.layers.
    depth_start: int | None = option(None, ge=1, le=200)
    depth_every: int | None = option(None, ge=1, le=10_000_000)
    depth_step: int = option(2, ge=1, le=200)
    #: uniform-random children trained after the search as its reference (None: none)
    reference: int | None = option(None, ge=1, le=10_000_000)
    #: one job of a sweep: train only child `child` of the run's next controller step
    child: int | None = option(None, ge=0, le=100_000)
    #: never train: take each child's stored result, and stop (exit 0) at the first child
    #: a sweep has not trained yet, after updating the controller on every complete step
    collect: bool = option(False)

    @classmethod
    def from_config(cls, cfg: Any) -> NasrlSettings:
        return cls(**check_fields(cls, dict(cfg), "strategy"))

    def depth(self, child: int, layers: int) -> int:
        """Layers of child number `child` (0-based) in a space of at most `layers`."""
        if self.depth_start is None:
            return layers
        every = self.depth_every or 1
        return min(layers, self.depth_start + self.depth_step * (child // every))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stored_result(run_dir: Path) -> dict[str, Any] | None:
    """A child's stored result: its `result.json`, a failed row when only its `error.txt` is
    there (the failure a sweep's job recorded), None when it was not trained."""
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    if (run_dir / "error.txt").exists():
        lines = (run_dir / "error.txt").read_text().strip().splitlines()
        return {"status": "failed", "error": (lines[-1] if lines else "failed")[:200]}
    return None


class NasrlSearch(Strategy):
    """The children (`children.csv`: controller step, indices, cost, reward, then the
    evaluator's result, whose `valid_top1_last` the reward is computed from) and one
    row per controller step in `search_log.csv` (mean reward, baseline, mean advantage,
    entropy, best valid top-1 so far)."""

    unit = "child"
    checkpoint_every = 1

    def __init__(
        self,
        settings: NasrlSettings,
        controller: Controller,
        lr: float,
        evaluator: Evaluator,
        cost_model: CostModel,
        out: Path,
        seed: int,
        pool: Callable[[list[tuple[Sequence[int], Path]]], object] | None = None,
        make_cost_model: Callable[[SearchSpace], CostModel] | None = None,
    ):
        """`pool`, when given, trains a whole step's children at once (in worker processes)
        as soon as the step's batch is drawn; each child's unit then collects its result."""
        self.pool = pool
        self.settings = settings
        self.controller = controller
        self.lr = lr
        self.evaluator = evaluator
        self.cost_model = cost_model
        self.make_cost_model = make_cost_model
        self._cost_models: dict[str, CostModel] = {}
        self.out = out
        self.seed = seed
        self.baseline = EmaBaseline(settings.baseline_decay)
        self.children: list[dict[str, Any]] = []
        self.reference: list[dict[str, Any]] = []  # the uniform children, after the search
        self.batch: list[list[int]] = []
        self._pooled: int | None = None  # the step whose batch went to the pool (not saved:
        # after a resume the rest of the batch goes to the pool once more)

    @property
    def position(self) -> int:
        return len(self.children) + len(self.reference)

    @property
    def searched(self) -> int:
        """Children the controller samples (the reference's come after them)."""
        return self.settings.children_per_step * self.settings.steps

    @property
    def total(self) -> int:
        return self.searched + (self.settings.reference or 0)

    def _sample_batch(self, step: int) -> list[list[int]]:
        """The step's m architectures, from a generator keyed by (seed, step): a resumed run
        draws the same ones. Under a depth schedule each is the prefix of a full-depth sample
        that holds its layers (an autoregressive controller's prefix has the same law)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        m = self.settings.children_per_step
        sampled = self.controller.sample(m, generator).tolist()
        return [row[: self._length(step * m + k)] for k, row in enumerate(sampled)]

    def _length(self, child: int) -> int:
        """How many indices child number `child` has (all of them without a depth schedule)."""
        space = self.controller.space
        if not space.graph or self.settings.depth_start is None:
            return space.num_decisions
        depth = self.settings.depth(child, space.graph_layers)
        return graph_prefix_space_of_depth(space, depth).num_decisions

    def _train(self, indices: Sequence[int], run_dir: Path) -> tuple[dict[str, Any], float]:
        """A child's result and reward: not trained when over a budget; under `collect`, the
        stored result only."""
        over = self._over_budget(indices)
        if over is not None:
            return {"status": f"over_{over}"}, self.settings.over_budget_reward
        if self.settings.collect:
            result = stored_result(run_dir)
            if result is None:
                raise Waiting(self._waiting_message())
        else:
            result = self.evaluator.try_evaluate(indices, run_dir)
        accuracy = result.get("valid_top1_last") if result["status"] == "done" else None
        return result, 0.0 if accuracy is None else accuracy**self.settings.reward_power

    def _advance_reference(self) -> None:
        """The next uniform child, drawn from a generator keyed by (seed, its number)."""
        k = len(self.reference)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 500_000_000 + k)
        space = self.controller.space
        indices = sample_indices(space, 1, generator)[0].tolist()[: self._length(k)]
        result, reward = self._train(indices, self.out / "reference" / str(k))
        self.reference.append(
            {
                "child": k,
                "indices": format_indices(indices),
                "layers": self.evaluator.space_of(indices).graph_layers or None,
                "cost": self.cost_of(indices),
                "reward": reward,
                **result,
            }
        )

    def _waiting_message(self) -> str:
        m = self.settings.children_per_step
        step = len(self.children) // m
        if len(self.children) >= self.searched:
            return (
                f"uniform reference child {len(self.reference)} is not trained yet: rerun "
                "without strategy.collect to train the reference"
            )
        return (
            f"collected {len(self.children)} of {self.searched} children; step {step}'s are not "
            f"all trained yet: run its sweep, `-m strategy.child={','.join(map(str, range(m)))} "
            "hydra.sweep.subdir=.` with the same out=, then collect again"
        )

    def train_one(self, slot: int) -> tuple[int, dict[str, Any] | None]:
        """One job of a sweep: train child `slot` of the next controller step (its number and
        result; None when it needs no training: over a budget or already trained)."""
        m = self.settings.children_per_step
        if not 0 <= slot < m:
            raise NascliError(f"strategy.child={slot}: a step has children 0 to {m - 1}")
        if len(self.children) >= self.searched:
            raise NascliError("every child of the search is trained: collect it without "
                              "strategy.child")  # fmt: skip
        step, done = divmod(len(self.children), m)
        batch = self.batch if done else self._sample_batch(step)
        number = step * m + slot
        if slot < done or self._over_budget(batch[slot]) is not None:
            return number, None
        return number, self.evaluator.try_evaluate(batch[slot], self._run_dir(number))

    def reference_reward(self) -> float | None:
        """The uniform children's mean reward (None without a reference)."""
        rewards = [c["reward"] for c in self.reference]
        return sum(rewards) / len(rewards) if rewards else None

    def advance(self) -> dict[str, Any] | None:
        m = self.settings.children_per_step
        number = len(self.children)
        if number >= self.searched:
            self._advance_reference()
            return None
        step, slot = divmod(number, m)
        if slot == 0:
            self.batch = self._sample_batch(step)
        if self.pool is not None and self._pooled != step:  # the rest of the batch, at once
            self._pooled = step
            rest = [k for k in range(slot, m) if self._over_budget(self.batch[k]) is None]
            self.pool([(self.batch[k], self._run_dir(number - slot + k)) for k in rest])
        indices = self.batch[slot]
        result, reward = self._train(indices, self._run_dir(number))
        self.children.append(
            {
                "child": number,
                "step": step,
                "indices": format_indices(indices),
                "layers": self.evaluator.space_of(indices).graph_layers or None,
                "cost": self.cost_of(indices),
                "reward": reward,
                **result,
            }
        )
        if slot == m - 1:
            return self._update(step)
        return None

    def _over_budget(self, indices: Sequence[int]) -> str | None:
        limits = limits_of(self.settings)
        if not limits:
            return None
        space = self.evaluator.space_of(indices)
        network = decode(space, tuple(indices), self.evaluator.net_settings)
        return first_exceeded(network_cost(network), limits)

    def cost_of(self, indices: Sequence[int]) -> float:
        """The child's cost under the run's cost model (of its own depth's space)."""
        space = self.evaluator.space_of(indices)
        if space is self.cost_model.space:
            return self.cost_model.cost(tuple(indices))
        if space.name not in self._cost_models:
            self._cost_models[space.name] = self.make_cost_model(space)
        return self._cost_models[space.name].cost(tuple(indices))

    def _run_dir(self, number: int) -> Path:
        return self.out / "children" / str(number)

    def _update(self, step: int) -> dict[str, Any]:
        """REINFORCE on the step's m children: baseline first, then advantages, one step."""
        rows = self.children[-self.settings.children_per_step :]
        # The step's children, in order, padded to full depth; only their own decisions count.
        full = self.controller.space.num_decisions
        indices = torch.tensor([row + [0] * (full - len(row)) for row in self.batch])
        lengths = torch.tensor([len(row) for row in self.batch])
        counted = self.controller.active(indices) & (torch.arange(full) < lengths[:, None])
        entropy = self.controller.entropy(indices, counted)  # no gradient (ENAS: stop-gradient)
        rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float64)
        rewards = rewards + self.settings.entropy_weight * entropy
        baseline = self.baseline.update(float(rewards.mean()))
        advantages = rewards - baseline
        self.controller.update(indices, advantages, counted, self.lr)
        done = [c["best_valid_top1"] for c in self.children if c["status"] == "done"]
        return {
            "step": step,
            "children": len(self.children),
            "reward": float(rewards.mean()),
            "baseline": baseline,
            "advantage": float(advantages.abs().mean()),
            "entropy": float(entropy.mean()),
            "best_valid_top1": max(done) if done else None,
        }

    def log_row(self, record: dict[str, Any] | None, seconds: float) -> dict[str, Any] | None:
        return None if record is None else {**record, "seconds": seconds}

    def status(self, row: dict[str, Any]) -> str:
        if not row:
            return ""
        best = row["best_valid_top1"]
        text = f"reward {row['reward']:.3f} · baseline {row['baseline']:.3f} · best " + (
            f"{best:.1%}" if best is not None else "–"
        )
        if self.reference:
            text += f" · uniform reference {self.reference_reward():.3f} ({len(self.reference)})"
        return text

    def best(self) -> dict[str, Any] | None:
        """The child with the highest valid top-1 (its best epoch)."""
        done = [c for c in self.children if c["status"] == "done"]
        return max(done, key=lambda c: c["best_valid_top1"]) if done else None

    def state(self) -> dict[str, Any]:
        return {
            "children": self.children,
            "reference": self.reference,
            "batch": self.batch,
            "baseline": self.baseline.state_dict(),
            "controller": self.controller.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.children = state["children"]
        self.reference = state.get("reference", [])  # runs from before the reference
        self.batch = state["batch"]
        self.baseline.load_state_dict(state["baseline"])
        self.controller.load_state_dict(state["controller"])

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        tables = {"children.csv": self.children}
        if self.reference:
            tables["reference.csv"] = self.reference
        return tables
