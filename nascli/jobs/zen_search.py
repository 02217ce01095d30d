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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console

from nascli.config import fingerprint_sections, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.errors import NascliError
from nascli.files import write_csv, write_json
from nascli.report import plots
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human, result_table
from nascli.search.tunas import default_target
from nascli.search.zen import BUDGETS, EvolutionSearch, ZenSettings
from nascli.space.arch import Architecture, format_indices, get_space
from nascli.space.network import decode
from nascli.train.checkpoint import load_checkpoint, save_checkpoint
from nascli.train.distributed import world_size
from nascli.train.engine import exit_interrupted, progress_bar, stop_requests


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    return {
        "command": "search",
        **fingerprint_sections(cfg, "space", "strategy", "data", "cost"),
        "seed": cfg.seed,
    }


def log_row(search: EvolutionSearch, seconds: float) -> dict[str, Any]:
    scores = [m.score for m in search.population]
    best = search.best()
    rejected = sum(v for k, v in search.counts.items() if k != "scored")
    return {
        "iteration": search.iteration,
        "seconds": seconds,
        "population": len(scores),
        "best_score": best.score,
        "mean_score": sum(scores) / len(scores),
        "worst_score": min(scores),
        "best_cost": best.cost,
        "best_params": best.params,
        "best_macs": best.macs,
        "scored": search.counts.get("scored", 0),
        "rejected": rejected,
        **{k: v for k, v in sorted(search.counts.items()) if k != "scored"},
        "best_indices": format_indices(best.indices),
    }


def population_rows(search: EvolutionSearch) -> list[dict[str, Any]]:
    members = sorted(search.population, key=lambda m: -m.score)
    return [{**asdict(m), "indices": format_indices(m.indices)} for m in members]


def run_zen(cfg: DictConfig) -> None:
    started = time.perf_counter()
    if world_size() > 1:
        raise NascliError("strategy=zen runs in one process: start it without torchrun")
    console = Console()
    settings = ZenSettings.from_config(cfg.strategy)
    space = get_space(cfg.space.name)
    net_settings = network_settings(cfg)
    cost_model = make_cost_model(cfg.cost, space, net_settings)
    max_cost = settings.max_cost
    if max_cost is None:
        max_cost = default_target(cfg.cost.name, space.name, cfg.cost.target)
    search = EvolutionSearch(space, net_settings, settings, cost_model, max_cost, cfg.seed)
    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    identity = fingerprint(cfg)
    checkpoint = out / "last.pt"
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, identity)
        search.load_state(state["search"])
        rows, seconds = state["log"], state["seconds"]
        console.print(f"resuming from iteration {search.iteration:,} of {settings.iterations:,}")

    budgets = [f"{cost_model.name} ≤ {max_cost:g} {cost_model.units}"] if max_cost else []
    budgets += [
        f"{name} ≤ {human(limit)}"
        for name, _ in BUDGETS
        if (limit := getattr(settings, f"max_{name}")) is not None
    ]
    p = settings.proxy_settings
    console.print(
        f"search {space.title} · strategy zen (proxy {settings.proxy}, BN term {p.bn_term}, "
        f"batch {p.batch_size}, repeat {p.repeat}) · population {settings.population_size} · "
        f"{settings.iterations:,} iterations · budget {', '.join(budgets) or 'none'} · "
        f"{net_settings.resolution}px × {net_settings.in_channels} channels",
        soft_wrap=True,
    )

    def save() -> None:
        save_checkpoint(
            checkpoint,
            {"fingerprint": identity, "search": search.state(), "log": rows, "seconds": seconds},
        )
        write_csv(out / "search_log.csv", rows)
        if search.population:
            write_csv(out / "population.csv", population_rows(search))

    every = max(1, settings.log_every)
    with stop_requests() as requested, progress_bar(console, True) as progress:
        task = progress.add_task(
            "search", total=settings.iterations, completed=search.iteration, status=""
        )
        while search.iteration < settings.iterations:
            tick = time.perf_counter()
            search.step()
            seconds += time.perf_counter() - tick
            done = search.iteration == settings.iterations
            if search.population and (search.iteration % every == 0 or done):
                rows.append(log_row(search, seconds))
                last = rows[-1]
                progress.update(
                    task,
                    completed=search.iteration,
                    status=(
                        f"best {last['best_score']:.2f} at {last['best_cost']:.4g} "
                        f"{cost_model.units} · scored {last['scored']:,} · "
                        f"rejected {last['rejected']:,}"
                    ),
                )
            else:
                progress.update(task, completed=search.iteration)
            due = (
                settings.checkpoint_every > 0 and search.iteration % settings.checkpoint_every == 0
            )
            if due or requested.signum:
                save()
            if requested.signum:
                exit_interrupted(console, requested.signum, f"at iteration {search.iteration}", out)
    save()
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
    summary = RunSummary(
        command="search",
        strategy="zen",
        space=space.name,
        seed=cfg.seed,
        indices=arch.text,
        cost_model=search.cost_model.name,
        cost=best.cost,
        cost_units=units,
        target=max_cost,
        params=cost.params,
        macs=cost.macs,
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
        pd.DataFrame(population_rows(search)),
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
