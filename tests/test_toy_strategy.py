"""A new strategy is one module plus one config option: this file is both. The toy searches two
decisions of a space exhaustively (every other decision at 0) for the lowest cost, on the same
driver as TuNAS and Zen-NAS (resume, checkpoints, log, signals) and the same results schema."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest
import torch
from hydra.core.config_store import ConfigStore
from rich.console import Console

from nascli.config import fingerprint_sections, network_settings, run_directory
from nascli.cost.models import make_cost_model
from nascli.report.summary import RunSummary
from nascli.search.driver import Strategy, drive
from nascli.search.registry import STRATEGIES, register
from nascli.settings import check_fields, option
from nascli.space.arch import get_space
from tests.conftest import TINY


@dataclass
class ToySettings:
    name: str = option("toy", choices=("toy",))
    first: int = option(1, ge=0)  # the two decision positions searched
    second: int = option(4, ge=0)
    stop_after: int = option(0, ge=0)  # send this process SIGTERM after this many (0: never)

    @classmethod
    def from_config(cls, cfg: Any) -> ToySettings:
        return cls(**check_fields(cls, dict(cfg), "strategy"))


class Exhaustive(Strategy):
    checkpoint_every = 1

    def __init__(self, space, cost_model, settings: ToySettings):
        self.cost_model, self.settings, self.done, self.best = cost_model, settings, 0, None
        self.base = [0] * space.num_decisions
        sizes = [space.decisions[p].num_choices for p in (settings.first, settings.second)]
        self.grid = [(a, b) for a in range(sizes[0]) for b in range(sizes[1])]

    position = property(lambda self: self.done)
    total = property(lambda self: len(self.grid))

    def advance(self) -> tuple[list[int], float]:
        indices = list(self.base)
        indices[self.settings.first], indices[self.settings.second] = self.grid[self.done]
        cost = self.cost_model.cost(indices)
        if self.best is None or cost < self.best[1]:
            self.best = (indices, cost)
        self.done += 1
        if self.done == self.settings.stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return indices, cost

    def log_row(self, record, seconds: float) -> dict[str, Any]:
        return {"unit": self.done, "indices": ":".join(map(str, record[0])), "cost": record[1]}

    def status(self, row: dict[str, Any]) -> str:
        return f"cost {row['cost']:.4g}"

    def state(self) -> dict[str, Any]:
        return {"done": self.done, "best": self.best}

    def load_state(self, state: dict[str, Any]) -> None:
        self.done, self.best = state["done"], state["best"]


def run_toy(cfg) -> None:
    settings, space = ToySettings.from_config(cfg.strategy), get_space(cfg.space.name)
    cost_model = make_cost_model(cfg.cost, space, network_settings(cfg))
    search, out = Exhaustive(space, cost_model, settings), run_directory()
    out.mkdir(parents=True, exist_ok=True)
    sections = fingerprint_sections(cfg, "space", "cost")  # stop_after may change on resume
    drive(search, out, {"toy": sections, "first": settings.first}, Console(), "toy search")
    indices, cost = search.best
    RunSummary("search", "toy", space.name, cfg.seed, indices=":".join(map(str, indices)),
               cost=cost, cost_units=cost_model.units).write(out / "summary.json")  # fmt: skip


# ------------------------------------------------------------------ end of the strategy


@pytest.fixture
def toy_registered():
    ConfigStore.instance().store(group="strategy", name="toy", node=ToySettings)
    register("toy", f"{__name__}:ToySettings", f"{__name__}:run_toy")
    yield
    STRATEGIES.pop("toy")
    ConfigStore.instance().repo["strategy"].pop("toy.yaml")


def test_a_strategy_from_a_test_file_runs_end_to_end_with_resume(run_cli, tmp_path, toy_registered):
    out, args = tmp_path / "toy", ["search", "strategy=toy", *TINY, "cost=macs"]
    stopped = run_cli(*args, "strategy.stop_after=2", f"out={out}")
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    assert len(pd.read_csv(out / "search_log.csv")) == 2 and not (out / "summary.json").exists()
    resumed = run_cli(*args, f"out={out}")
    assert resumed.exit_code == 0, resumed.output
    log = pd.read_csv(out / "search_log.csv")
    assert log.unit.tolist() == list(range(1, 3 * 2 + 1))  # 3 kernels × 2 expansions, once each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "toy" and summary["cost"] == log.cost.min()
    space = get_space("proxylessnas")
    assert [space.decisions[p].path for p in (1, 4)] == ["b1.0.kernel", "b2.0.expansion"]
    assert torch.tensor(log.cost.tolist()).unique().numel() > 1  # the decisions change the cost
    refused = run_cli(*args, "strategy.first=-1", f"out={tmp_path / 'bad'}")
    assert refused.exit_code == 2 and "strategy.first=-1" in refused.output
