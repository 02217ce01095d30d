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
from nascli.errors import NascliError
from nascli.files import LogFile
from nascli.report.summary import RunSummary
from nascli.search.driver import Strategy, drive
from nascli.search.registry import STRATEGIES, register
from nascli.settings import check_fields, option
from nascli.space.arch import get_space
from nascli.train.checkpoint import load_checkpoint
from tests.conftest import TINY, tensorboard_scalars


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


def test_the_log_is_appended_and_a_resume_cuts_it_back_to_its_checkpoint(tmp_path):
    path = tmp_path / "search_log.csv"
    log = LogFile(path)
    rows = [{"step": 1, "loss": 0.1, "note": None}, {"step": 2, "loss": 1 / 3, "note": "x"}]
    log.append(rows)
    rows.append({"step": 3, "loss": 2 / 3, "note": None})
    log.append(rows)  # appended: the first two lines stay as they were
    assert path.read_text().splitlines() == [
        "step,loss,note", "1,0.1,", f"2,{1 / 3!r},x", f"3,{2 / 3!r},",
    ]  # fmt: skip
    rows.append({"step": 4, "loss": 0.5, "note": None, "new": True})  # a new column: rewritten
    log.append(rows)
    assert pd.read_csv(path).columns.tolist() == ["step", "loss", "note", "new"]
    with path.open("a") as file:  # a unit after the checkpoint, and a line cut short by a kill
        file.write("5,0.25,,False\n6,0.1")
    back = LogFile(path).resume(3)
    assert back == [{k: r[k] for k in ("step", "loss", "note")} | {"new": None} for r in rows[:3]]
    assert [type(v) for v in back[1].values()] == [int, float, str, type(None)]
    assert len(path.read_text().splitlines()) == 4  # the header and the three rows counted
    with pytest.raises(NascliError, match="fewer than the 9 rows"):
        LogFile(path).resume(9)


class Count(Strategy):
    """Logs its position; raises at `fail_at` (a crash after that unit's row was logged)."""

    checkpoint_every = 2

    def __init__(self, fail_at: int | None = None):
        self.done, self.fail_at = 0, fail_at

    position = property(lambda self: self.done)
    total = property(lambda self: 5)

    def advance(self):
        if self.done == self.fail_at:
            raise RuntimeError("crash")
        self.done += 1

    def log_row(self, record, seconds):
        return {"unit": self.done, "half": self.done / 2, "text": "x", "flag": True}

    def status(self, row):
        return ""

    def state(self):
        return {"done": self.done}

    def load_state(self, state):
        self.done = state["done"]


def test_a_checkpoint_counts_the_log_rows_instead_of_holding_them(tmp_path):
    rows, _ = drive(Count(), tmp_path, {"run": 1}, Console(quiet=True), "count")
    state = load_checkpoint(tmp_path / "last.pt", {"run": 1})
    assert "log" not in state and state["log_rows"] == 5 == len(rows)
    assert pd.read_csv(tmp_path / "search_log.csv").unit.tolist() == [1, 2, 3, 4, 5]


def test_tensorboard_events_hold_each_logged_number_once_after_a_crash_and_resume(tmp_path):
    with pytest.raises(RuntimeError, match="crash"):  # units 1-3 logged, the checkpoint at 2
        drive(Count(fail_at=3), tmp_path, {"run": 1}, Console(quiet=True), "c", tensorboard=True)
    assert tensorboard_scalars(tmp_path / "tensorboard")["unit"][-1] == (3, 3.0)
    drive(Count(), tmp_path, {"run": 1}, Console(quiet=True), "count", tensorboard=True)
    events = tensorboard_scalars(tmp_path / "tensorboard")
    assert set(events) == {"unit", "half"}  # numbers only: no text, no flags
    assert events["unit"] == [(u, float(u)) for u in range(1, 6)]
    assert pd.read_csv(tmp_path / "search_log.csv").unit.tolist() == [1, 2, 3, 4, 5]


def test_tensorboard_without_its_package_is_refused_before_any_work(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("nascli.config.tensorboard_missing", lambda: "tensorboard=true needs it")
    out = tmp_path / "run"
    result = run_cli("search", *TINY, "tensorboard=true", f"out={out}")
    assert result.exit_code == 2 and "tensorboard=true needs it" in result.output
    assert not out.exists()
