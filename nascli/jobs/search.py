"""`nascli search`: search a space under a cost target (the weight-sharing strategies: tunas, and
the gradient-based proxyless and fbnet; random, zen, nasrl and grid have their own modules).

The run directory holds the composed config (`.hydra/`), `search_log.csv` (one row per logged
step: reward, baseline, advantage, valid accuracy, cost, learning rates, warmup probabilities,
entropy, the sampled indices and every decision's probabilities), `last.pt` (supernet,
optimisers, policy, baseline, RNG and step: rerunning with `out=` resumes exactly),
`arch.json` (the argmax architecture with its cost, params and MACs), `summary.json` and
`plots/`. `nascli build arch=<run dir>` and `nascli retrain arch=<run dir>` take the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console

from nascli.config import (
    configured_space,
    controller_settings,
    fingerprint_sections,
    network_settings,
    run_directory,
)
from nascli.cost.analytic import network_cost
from nascli.cost.models import CostModel, make_cost_model
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.nn.supernet import Supernet
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import result_table
from nascli.search.driver import drive
from nascli.search.gradient import GradientSearch, GradientSettings
from nascli.search.health import accuracy_signal
from nascli.search.registry import STRATEGIES, resolve
from nascli.search.tunas import (
    SupernetSearch,
    TunasSearch,
    TunasSettings,
    check_search_recipe,
    default_target,
)
from nascli.space.arch import Architecture
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SearchSpace
from nascli.train.distributed import Context, context
from nascli.train.engine import (
    check_replicas,
)


def fingerprint(cfg: DictConfig, world: int) -> dict[str, Any]:
    return {
        "command": "search",
        **fingerprint_sections(cfg, "space", "strategy", "controller", "data", "train", "cost"),
        "seed": cfg.seed,
        "world_size": world,
    }


def run(cfg: DictConfig) -> None:
    """The job of the strategy `strategy.name` names (`nascli.search.registry`)."""
    name = cfg.strategy.name
    if name not in STRATEGIES:
        raise NascliError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    resolve(STRATEGIES[name].job)(cfg)


def supernet_setup(
    cfg: DictConfig, ctx: Context
) -> tuple[SearchSpace, NetworkSettings, CostModel, float | None]:
    """What every weight-sharing strategy checks and builds first: its recipe, a space that has
    a supernet, the network settings, the cost model and the target."""
    check_search_recipe(cfg.train)
    space = configured_space(cfg)
    if space.graph:
        raise NascliError(
            f"strategy={cfg.strategy.name} trains a weight-sharing supernet, which {space.name} "
            "has none of: use strategy=nasrl, strategy=zen or nascli random-baseline"
        )
    net_settings = network_settings(cfg)
    cost_model = make_cost_model(cfg.cost, space, net_settings, str(ctx.device))
    return (
        space,
        net_settings,
        cost_model,
        default_target(cfg.cost.name, space.name, cfg.cost.target),
    )


def run_tunas(cfg: DictConfig) -> None:
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    settings = TunasSettings.from_config(cfg.strategy)
    space, net_settings, cost_model, target = supernet_setup(cfg, ctx)
    if target is None and settings.reward != "quality":
        raise NascliError(
            f"cost={cfg.cost.name} has no default target: set cost.target=<{cost_model.units}> "
            "(or strategy.reward=quality for an unconstrained search)"
        )
    data = load_data(cfg.data)
    torch.manual_seed(cfg.seed)
    supernet = Supernet(space, net_settings, settings.supernet_init)
    controller = controller_settings(cfg)
    search = TunasSearch(
        supernet, cfg.train, settings, data, cost_model, target, ctx, cfg.seed, controller
    )
    out = run_directory()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    header = (
        f"search {space.title} · strategy tunas ({settings.reward} reward, "
        f"{search.archs} arch/step{' + the largest (sandwich)' if settings.sandwich else ''}, "
        f"{search.controller.name} controller) · cost "
        f"{cost_model.name} target "
        f"{target if target is not None else '–'} {cost_model.units} · data {data.name} "
        f"{net_settings.resolution}px · {search.total_steps} steps of "
        f"{cfg.train.batch_size} images · {ctx.world} × {ctx.device}"
    )

    def policy() -> list[torch.Tensor]:
        return [t.float() for t in search.policy.tensors()]

    drive_supernet(cfg, ctx, search, out, console, header, target, started, policy)


def drive_supernet(
    cfg: DictConfig,
    ctx: Context,
    search: SupernetSearch,
    out: Path,
    console: RunConsole,
    header: str,
    target: float | None,
    started: float,
    policy: Callable[[], list[torch.Tensor]],
) -> None:
    """A weight-sharing search driven to its end on every rank, the ranks' supernet and
    `policy()` (the architecture distribution's tensors) checked equal, and the run finished."""
    rows, seconds = drive(
        search,
        out,
        fingerprint(cfg, ctx.world),
        console,
        header,
        writer=ctx.is_main,
        agreed_stop=lambda signum: int(ctx.all_reduce(torch.tensor([signum]), op="max")[0]),
        tensorboard=cfg.tensorboard,
    )
    replicas = check_replicas(ctx, [*search.net.state_dict().values(), *policy()])
    finish(cfg, search, rows, out, console, target, seconds, started, replicas)


def run_gradient(cfg: DictConfig) -> None:
    """`strategy=proxyless` / `strategy=fbnet`: architecture parameters trained by gradient on
    the weight-shared supernet (`nascli/search/gradient.py`)."""
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    settings = GradientSettings.from_config(cfg.strategy)
    space, net_settings, cost_model, target = supernet_setup(cfg, ctx)
    data = load_data(cfg.data)
    torch.manual_seed(cfg.seed)
    supernet = Supernet(space, net_settings, settings.supernet_init)
    search = GradientSearch(supernet, cfg.train, settings, data, cost_model, target, ctx, cfg.seed)
    out = run_directory()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    header = (
        f"search {space.title} · strategy {settings.name} ({settings.relaxation} paths, "
        f"{settings.loss} loss, an α step every {settings.arch_update_every} after "
        f"{settings.warmup_fraction:.0%}) · cost {cost_model.name} target "
        f"{target if target is not None else '–'} {cost_model.units} · data {data.name} "
        f"{net_settings.resolution}px · {search.total_steps} steps of "
        f"{cfg.train.batch_size} images · {ctx.world} × {ctx.device}"
    )

    def policy() -> list[torch.Tensor]:
        return [search.policy.logits.detach()]

    drive_supernet(cfg, ctx, search, out, console, header, target, started, policy)


def finish(
    cfg: DictConfig,
    search: TunasSearch | GradientSearch,
    rows: list[dict[str, Any]],
    out: Path,
    console: Console,
    target: float | None,
    seconds: float,
    started: float,
    replicas: list[float],
) -> None:
    """arch.json, summary.json, plots and the final report of a finished search."""
    space = search.space
    chosen, selection = search.result_indices()
    arch = Architecture(space.name, tuple(chosen))
    argmax = search.final_indices()
    network = decode(space, arch.indices, search.net.settings)
    cost = network_cost(network)
    value = search.cost_model.cost(arch.indices)
    units = search.cost_model.units
    qualities = [row["quality"] for row in rows if row["quality"] is not None]
    signal = accuracy_signal(qualities, search.net.settings.num_classes)
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="search",
        strategy=search.name,
        seed=cfg.seed,
        world_size=search.ctx.world,
        cost_model=search.cost_model.name,
        cost=value,
        cost_units=units,
        target=target,
        supernet_top1=signal.final,
        chance_top1=signal.chance,
        images=search.images,
        seconds=seconds,
        wall_seconds=time.perf_counter() - started,
        details={
            **search.details(),
            "steps": search.step,
            "replica_checksums": replicas,
            "final_valid_quality": qualities[-1] if qualities else None,
            "selection": selection,
            "argmax_indices": ":".join(map(str, argmax)),
            "argmax_cost": search.cost_model.cost(tuple(argmax)),
            "accuracy_signal": signal.clear,
            "entropy_first": rows[0]["entropy"] if rows else None,
            "entropy_final": rows[-1]["entropy"] if rows else None,
        },
    )
    if not search.ctx.is_main:
        return
    record = arch_record(arch, network, cost)
    record["search"] = summary.search_record()
    write_json(out / "arch.json", record)
    summary.write(out / "summary.json")
    details = summary.details
    log = pd.DataFrame(rows)
    (out / "plots").mkdir(exist_ok=True)
    plots.search_curves(out / "plots" / "search_curves.png", log, target, units, signal.chance)
    plots.probability_heatmap(out / "plots" / "policy_heatmap.png", log)

    table = result_table(arch, space.title, cost, search.cost_model.name, value, units, target)
    if selection != "argmax":
        table.add_row(
            "chosen as",
            f"{selection} (the policy's argmax costs {details['argmax_cost']:.4g} {units})",
        )
    table.add_row("steps · images", f"{search.step:,} · {summary.images:,}")
    table.add_row("search time", f"{seconds:.0f} s")
    table.add_row(
        "reward accuracy (supernet)",
        f"{signal.final:.1%} at the end (chance {signal.chance:.0%})",
    )
    if details["entropy_final"] is not None:
        table.add_row(
            "policy entropy", f"{details['entropy_first']:.1f} → {details['entropy_final']:.1f}"
        )
    console.print(table)
    warning = signal.warning()
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    console.print(
        f"wrote {out}/arch.json, summary.json, search_log.csv, plots/; next: "
        f"`nascli retrain arch={out}`",
        soft_wrap=True,
    )
