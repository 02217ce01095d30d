"""The search strategies by name: what `strategy.name` may be, each strategy's settings class
(the schema its `conf/strategy/*.yaml` options are checked against) and the job that runs it.
Entries are import paths, resolved when used, so registering costs no import."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    settings: str  # "module:Class" with a `from_config(cfg)` classmethod
    job: str  # "module:function" taking the composed config
    controller: str | None = None  # an RL strategy's default `controller=` (None: it has none)
    #: the strategy key that makes a job train one unit of a run (a sweep's job on a cluster):
    #: such a job locks that unit's directory, not the run's (None: no such key)
    unit: str | None = None


STRATEGIES: dict[str, Entry] = {
    "tunas": Entry(
        "nascli.search.tunas:TunasSettings",
        "nascli.jobs.search:run_tunas",
        controller="categorical",
    ),
    "random": Entry(
        "nascli.search.random:RandomSettings",
        "nascli.jobs.random_baseline:run_random",
        unit="candidate",
    ),
    "proxyless": Entry(
        "nascli.search.gradient:GradientSettings", "nascli.jobs.search:run_gradient"
    ),
    "fbnet": Entry("nascli.search.gradient:GradientSettings", "nascli.jobs.search:run_gradient"),
    "zen": Entry("nascli.search.zen:ZenSettings", "nascli.jobs.zen_search:run_zen"),
    "grid": Entry("nascli.search.grid:GridSettings", "nascli.jobs.grid_search:run_grid"),
    "nasrl": Entry(
        "nascli.search.nasrl:NasrlSettings",
        "nascli.jobs.nasrl_search:run_nasrl",
        controller="lstm",
        unit="child",
    ),
}


def register(name: str, settings: str, job: str, controller: str | None = None) -> None:
    """Add a strategy (one module and one `conf/strategy/<option>.yaml` with `name: <name>`)."""
    STRATEGIES[name] = Entry(settings, job, controller)


def resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
