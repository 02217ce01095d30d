"""`nascli search strategy=grid`: a grid (or EfficientNet's compound scaling) over config keys of
one fixed architecture; every point within the budgets trained by the shared evaluator, best on
valid (`nascli.search.grid`).

Run directory: `grid.json` (every point: its overrides, measured costs and whether it fits, fixed
at the first run), `points/<i>/` (each trained point's run by the `Evaluator`), `trained.csv`
(the trained points' results), `points.csv` (every point, rejected ones included, with its
status and valid top-1), `last.pt`, `arch.json` and `summary.json` of the best (its overrides in
`details.point`), `plots/accuracy_vs_macs.png`. Rerunning with `out=` skips trained points and
resumes an interrupted one.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from nascli.config import fingerprint_sections, network_settings, run_directory, validate
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.files import write_csv, write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.search.budgets import first_exceeded, rejected_counts
from nascli.search.driver import drive
from nascli.search.evaluator import Evaluator, EvaluatorSpec
from nascli.search.grid import GridSearch, GridSettings, grid_points
from nascli.space.arch import Architecture, format_indices, get_space, load_architecture
from nascli.space.depth import deepen_indices
from nascli.space.network import decode
from nascli.train.distributed import context

_ABSENT = object()
#: What a compound or coefficient point records besides its config keys.
PARAMETERS = ("phi", "alpha", "beta", "gamma")


def point_config(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    """`cfg` with a point's overrides applied, checked like a config given on the command line."""
    point = copy.deepcopy(cfg)
    with open_dict(point):
        for key, value in overrides.items():
            if "." not in key:  # phi, alpha, beta, gamma: what made the point, not config keys
                continue
            if OmegaConf.select(point, key, default=_ABSENT) is _ABSENT:
                raise NascliError(f"strategy.axes: {key} is not a config key")
            OmegaConf.update(point, key, value, merge=True)
    validate(point)
    return point


def measure_points(cfg: DictConfig, settings: GridSettings) -> dict[str, Any]:
    """Every point's overrides, architecture, costs and status (`fit` or `over_<budget>`)."""
    base_space = get_space(cfg.space.name)
    base = load_architecture(settings.base, base_space)
    points = grid_points(
        settings,
        float(cfg.space.width_multiplier),
        int(cfg.data.resolution),
        float(cfg.space.get("depth_multiplier", 1.0)),
    )
    measured, seen_settings, blind = [], set(), False
    for number, overrides in enumerate(points):
        point = point_config(cfg, overrides)
        depth = float(point.space.depth_multiplier)
        space = get_space(base_space.name, depth)
        indices = deepen_indices(base_space, base.indices, depth)
        net_settings = network_settings(point)
        analytic = network_cost(decode(space, indices, net_settings))
        try:
            cost_model = make_cost_model(point.cost, space, net_settings)
            cost, units = float(cost_model.cost(indices)), cost_model.units
            blind = blind or not cost_model.follows_settings
            seen_settings.add(net_settings)
        except NascliError:
            if settings.max_cost is not None:
                raise
            cost, units = None, None  # e.g. Pixel-1 has no model of a deepened space
        exceeded = first_exceeded(analytic, settings.budgets())
        status = "fit" if exceeded is None else f"over_{exceeded}"
        if status == "fit" and settings.max_cost is not None and cost > settings.max_cost:
            status = "over_cost"
        measured.append(
            {
                "point": number,
                **overrides,
                "space": space.name,
                "indices": format_indices(indices),
                "params": analytic.params,
                "macs": analytic.macs,
                "sram_bytes": analytic.sram_bytes,
                "flash_bytes": analytic.flash_bytes,
                "cost": cost,
                "cost_units": units,
                "status": status,
            }
        )
    if settings.max_cost is not None and blind and len(seen_settings) > 1:
        raise NascliError(
            f"strategy.max_cost: cost={cfg.cost.name} ignores the network settings the grid "
            "varies (it predicts one fixed network: TuNAS's at 224 px, width 1), so every point "
            "would cost the same; budget the grid under an analytic cost (cost=macs, ...) or "
            "cost=lut"
        )
    if settings.mode == "compound":  # only the largest φ within the budgets is trained
        fitting = [p for p in measured if p["status"] == "fit"]
        for p in fitting[:-1]:
            p["status"] = "smaller_phi"
    return {"base": base.text, "cost_model": cfg.cost.name, "points": measured}


def run_grid(cfg: DictConfig) -> None:
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    settings = GridSettings.from_config(cfg.strategy)
    out = run_directory()
    with console.status("measuring the grid's points"):
        grid = measure_points(cfg, settings)
    path = out / "grid.json"
    if path.exists() and json.loads(path.read_text()) != grid:
        raise NascliError(f"{path} holds another grid; use a new out= or the original settings")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, grid)
    points = grid["points"]
    rejected = rejected_counts(points)
    chosen = [p for p in points if p["status"] == "fit"]
    budgets = ", ".join(f"{n} ≤ {human(v)}" for n, v in settings.budgets().items())
    if settings.max_cost is not None:
        budgets = ", ".join(filter(None, [budgets, f"{cfg.cost.name} ≤ {settings.max_cost:g}"]))
    console.print(
        f"grid of {len(points)} points ({settings.mode}) of {settings.base} · budgets "
        f"{budgets or 'none'} · rejected before training: "
        + (", ".join(f"{n} {k.removeprefix('over_')}" for k, n in rejected.items()) or "none")
        + f" · training {len(chosen)}",
        soft_wrap=True,
    )
    if not chosen:
        raise NascliError("no point of the grid fits the budgets: raise them or shrink the grid")
    evaluators: dict[int, Evaluator] = {}
    datasets: dict[str, Any] = {}

    def evaluator_for(point: dict[str, Any]) -> Evaluator:
        number = point["point"]
        if number not in evaluators:
            overrides = {k: point[k] for k in point if "." in k}
            point_cfg = point_config(cfg, overrides)
            identity = {
                "command": "search",
                "strategy": "grid",
                **fingerprint_sections(point_cfg, "space", "data", "train"),
                "seed": cfg.seed,
            }
            key = json.dumps(OmegaConf.to_container(point_cfg.data, resolve=True), sort_keys=True)
            if key not in datasets:
                datasets[key] = load_data(point_cfg.data)
            spec = EvaluatorSpec.of_config(point_cfg, identity)
            evaluators[number] = spec.build(console, datasets[key], ctx)
        return evaluators[number]

    search = GridSearch(chosen, evaluator_for, out)
    identity = {
        "command": "search",
        "strategy": "grid",
        "grid": grid,
        **fingerprint_sections(cfg, "train"),
        "seed": cfg.seed,
        "world_size": ctx.world,
    }
    header = (
        f"grid search · {len(chosen)} points of {settings.base} · recipe {cfg.train.name} "
        f"({cfg.train.epochs} epochs)"
    )
    drive(
        search,
        out,
        identity,
        console,
        header,
        writer=ctx.is_main,
        agreed_stop=lambda signum: int(ctx.all_reduce(torch.tensor([signum]), op="max")[0]),
    )
    finish_grid(cfg, out, grid, search.rows, console, started)


def finish_grid(
    cfg: DictConfig,
    out: Path,
    grid: dict[str, Any],
    rows: list[dict[str, Any]],
    console: Console,
    started: float,
) -> None:
    trained = {row["point"]: row for row in rows}
    table = Table(title="grid points (valid top-1 after the recipe)", title_justify="left")
    keys = [k for k in grid["points"][0] if "." in k or k in PARAMETERS]
    for column in (*(k.rpartition(".")[2] for k in keys), "params", "MACs", "SRAM", "status",
                   "valid top1"):  # fmt: skip
        table.add_column(column, justify="right")
    done = [r for r in rows if r["status"] == "done"]
    best = max(done, key=lambda r: r["valid_top1"]) if done else None
    merged = []
    for point in grid["points"]:
        result = trained.get(point["point"], {})
        status = result.get("status", point["status"])
        merged.append({**point, "status": status, "valid_top1": result.get("valid_top1")})
        mark = " ★" if best is not None and point["point"] == best["point"] else ""
        table.add_row(
            *(f"{point[k]:g}" for k in keys),
            human(point["params"]),
            human(point["macs"]),
            f"{point['sram_bytes'] / 1e3:.1f} kB",
            status + mark,
            f"{result['valid_top1']:.2%}" if status == "done" else "–",
        )
    console.print(table)
    write_csv(out / "points.csv", merged)
    if best is None:
        raise NascliError(f"every trained point failed; see {out}/points/*/error.txt")
    overrides = {k: best[k] for k in best if "." in k}
    coefficients = {k: best[k] for k in ("alpha", "beta", "gamma") if k in best}
    point_cfg = point_config(cfg, overrides)
    space = get_space(best["space"])
    arch = Architecture(space.name, tuple(int(v) for v in best["indices"].split(":")))
    network = decode(space, arch.indices, network_settings(point_cfg))
    cost = network_cost(network)
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="search",
        strategy="grid",
        seed=cfg.seed,
        cost_model=grid["cost_model"] if best["cost"] is not None else None,
        cost=best["cost"],
        cost_units=best["cost_units"],
        valid_top1=float(best["valid_top1"]),
        images=int(sum(r["images"] for r in done)),
        seconds=float(sum(r["train_seconds"] for r in done)),
        wall_seconds=time.perf_counter() - started,
        details={
            "point": overrides,
            "points": len(grid["points"]),
            "trained": len(rows),
            "rejected": rejected_counts(grid["points"]),
            **({"coefficients": coefficients} if coefficients else {}),
        },
    )
    record = arch_record(arch, network, cost)
    record["search"] = summary.search_record()
    write_json(out / "arch.json", record)
    summary.write(out / "summary.json")
    (out / "plots").mkdir(exist_ok=True)
    plots.accuracy_vs_cost(
        out / "plots" / "accuracy_vs_macs.png",
        [r["macs"] / 1e6 for r in done],
        [r["valid_top1"] for r in done],
        "M MACs",
        None,
        best_number=done.index(best),
    )
    again = " ".join(f"{k}={v:g}" for k, v in overrides.items())
    console.print(
        f"best: point {best['point']} ({again}), valid top1 {best['valid_top1']:.2%} · wrote "
        f"{out}/points.csv, arch.json, summary.json, plots/ · retrain it with: nascli retrain "
        f"arch={out} {again}",
        soft_wrap=True,
    )
    if coefficients:  # EfficientNet's step 1 done: step 2 scales by φ with these
        scale = " ".join(f"strategy.{k}={v:g}" for k, v in coefficients.items())
        console.print(
            f"coefficients α·β²·γ² = {best['alpha'] * best['beta'] ** 2 * best['gamma'] ** 2:.3g}"
            f": scale the base with: nascli search strategy=grid strategy.mode=compound {scale} "
            "strategy.max_macs=<budget>",
            soft_wrap=True,
        )
