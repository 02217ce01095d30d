"""`nascli search strategy=zen`: zero-shot evolutionary search under budgets (Zen-NAS).

The run directory holds the composed config (`.hydra/`), `search_log.csv` (every `log_every`
iterations: the population's best, mean and worst score, the best's cost, how many candidates
were scored or rejected per budget), `population.csv` (every member: indices, score, cost,
params, MACs, the iteration it was born), `last.pt` (population and counters: rerunning with
`out=` resumes exactly, and a larger `strategy.iterations` extends a finished search),
`arch.json` (the best score's architecture), `summary.json` and `plots/`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console

from nascli.config import configured_space, fingerprint_sections, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human, result_table
from nascli.search.budgets import limits_of
from nascli.search.driver import drive
from nascli.search.tunas import default_target
from nascli.search.zen import EvolutionSearch, ZenSettings
from nascli.space.arch import Architecture
from nascli.space.network import decode
from nascli.train.distributed import world_size


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    return {
        "command": "search",
        **fingerprint_sections(cfg, "space", "strategy", "data", "cost"),
        "seed": cfg.seed,
    }


def run_zen(cfg: DictConfig) -> None:
    started = time.perf_counter()
    if world_size() > 1:
        raise NascliError("strategy=zen runs in one process: start it without torchrun")
    console = RunConsole()
    settings = ZenSettings.from_config(cfg.strategy)
    space = configured_space(cfg)
    net_settings = network_settings(cfg)
    cost_model = make_cost_model(cfg.cost, space, net_settings)
    max_cost = settings.max_cost
    if max_cost is None:
        max_cost = default_target(cfg.cost.name, space.name, cfg.cost.target)
    search = EvolutionSearch(space, net_settings, settings, cost_model, max_cost, cfg.seed)
    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    budgets = [f"{cost_model.name} ≤ {max_cost:g} {cost_model.units}"] if max_cost else []
    budgets += [f"{name} ≤ {human(limit)}" for name, limit in limits_of(settings).items()]
    p = settings.proxy_settings
    header = (
        f"search {space.title} · strategy zen (proxy {settings.proxy}, BN term {p.bn_term}, "
        f"batch {p.batch_size}, repeat {p.repeat}) · population {settings.population_size} · "
        f"{settings.iterations:,} iterations · budget {', '.join(budgets) or 'none'} · "
        f"{net_settings.resolution}px × {net_settings.in_channels} channels"
    )
    rows, seconds = drive(
        search, out, fingerprint(cfg), console, header, tensorboard=cfg.tensorboard
    )
    finish(cfg, search, rows, out, console, max_cost, seconds, started)


def finish(
    cfg: DictConfig,
    search: EvolutionSearch,
    rows: list[dict[str, Any]],
    out: Path,
    console: Console,
    max_cost: float | None,
    seconds: float,
    started: float,
) -> None:
    best = search.best()
    space, settings = search.space, search.settings
    arch = Architecture(space.name, best.indices)
    network = decode(space, arch.indices, search.net_settings)
    cost = network_cost(network)
    units = search.cost_model.units
    p = settings.proxy_settings
    scored = search.counts.get("scored", 0)
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="search",
        strategy="zen",
        seed=cfg.seed,
        cost_model=search.cost_model.name,
        cost=best.cost,
        cost_units=units,
        target=max_cost,
        images=0,  # nothing is trained
        seconds=seconds,
        wall_seconds=time.perf_counter() - started,
        details={
            "proxy": settings.proxy,
            "bn_term": p.bn_term,
            "score": best.score,
            "iterations": search.iteration,
            "scored": scored,
            "rejected": {k: v for k, v in search.counts.items() if k != "scored"},
            "scored_images": scored * p.batch_size * p.repeat,
        },
    )
    record = arch_record(arch, network, cost)
    record["search"] = summary.search_record() | {"proxy": settings.proxy, "score": best.score}
    write_json(out / "arch.json", record)
    summary.write(out / "summary.json")
    (out / "plots").mkdir(exist_ok=True)
    plots.evolution_curves(
        out / "plots" / "zen_scores.png",
        pd.DataFrame(rows),
        pd.DataFrame(search.population_rows()),
        settings.proxy,
        max_cost,
        units,
    )
    table = result_table(
        arch, space.title, cost, search.cost_model.name, best.cost, units, max_cost, "budget"
    )
    table.add_row(f"{settings.proxy} score", f"{best.score:.4g}")
    table.add_row(
        "iterations",
        f"{search.iteration:,} ({scored:,} scored, {search.iteration - scored:,} over budget)",
    )
    table.add_row("search time", f"{seconds:.0f} s ({scored / max(seconds, 1e-9):.1f} scored/s)")
    console.print(table)
    console.print(
        f"wrote {out}/arch.json, summary.json, population.csv, search_log.csv, plots/; next: "
        f"`nascli retrain arch={out}`",
        soft_wrap=True,
    )
