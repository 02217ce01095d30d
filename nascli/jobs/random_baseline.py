"""`nascli random-baseline` (= `nascli search strategy=random`): sample architectures uniformly
per decision inside a cost window, train each with the same short recipe, keep the best on valid.

Run directory: `candidates.json` (the sampled architectures, fixed at the first run),
`candidates/<i>/` (each candidate's training run by the shared `Evaluator`: last.pt, best.pt,
metrics.csv, result.json), `candidates.csv` (indices, cost, params, MACs, status, valid top-1,
train time), `last.pt` (the search driver's checkpoint: the rows so far), `arch.json` and
`summary.json` of the best, `plots/accuracy_vs_cost.png`. Rerunning with `out=` skips finished
candidates, resumes an interrupted one and retries failed ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nascli.config import configured_space, fingerprint_sections, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.errors import NascliError, Stopped
from nascli.files import write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.search.budgets import BatchBudgets, limits_of
from nascli.search.driver import drive
from nascli.search.evaluator import EvaluatorSpec, evaluate_in_processes
from nascli.search.random import RandomSearch, RandomSettings, cost_window, sample_in_window
from nascli.search.tunas import default_target
from nascli.space.arch import format_indices, get_space, parse_indices
from nascli.space.network import decode
from nascli.train.distributed import context
from nascli.train.engine import Interrupted

EXIT_CANDIDATES_FAILED = 4


def candidate_identity(cfg: DictConfig) -> dict[str, Any]:
    """What each candidate's training checkpoint is tied to, besides its indices."""
    return {
        "command": "random-baseline",
        **fingerprint_sections(cfg, "space", "data", "train"),
        "seed": cfg.seed,
    }


def run_identity(cfg: DictConfig, request: dict[str, Any], world: int) -> dict[str, Any]:
    """What the run's own checkpoint (the candidates' rows) is tied to: not `workers` or
    `candidate`, so a sweep's jobs and a parallel run are collected by a plain rerun."""
    return {
        "command": "search",
        "strategy": "random",
        "request": request,
        **fingerprint_sections(cfg, "space", "data", "train"),
        "seed": cfg.seed,
        "world_size": world,
    }


def sampled_candidates(cfg: DictConfig, out: Path, console: Console) -> dict[str, Any]:
    """The run's candidates: drawn once and stored, so a rerun trains the same ones."""
    path = out / "candidates.json"
    settings = RandomSettings.from_config(cfg.strategy)
    space = configured_space(cfg)
    net_settings = network_settings(cfg)
    cost_model = make_cost_model(cfg.cost, space, net_settings)
    target = default_target(cfg.cost.name, space.name, cfg.cost.target)
    low, high = cost_window(settings, cfg.cost.name, space.name, target)
    limits = limits_of(settings)
    request = {
        "space": space.name,
        "cost_model": cost_model.name,
        "cost_units": cost_model.units,
        "window": [low, high],
        "target": target,
        "num_samples": settings.num_samples,
        "seed": cfg.seed,
        **({"budgets": limits} if limits else {}),
    }
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["request"] != request:
            raise NascliError(
                f"{path} was sampled with other settings; use a new out= or the original ones"
            )
        return stored
    budgets = BatchBudgets(space, net_settings, limits) if limits else None
    with console.status("sampling architectures in the cost window"):
        sampled = sample_in_window(
            space, cost_model, settings.num_samples, low, high, cfg.seed, settings.max_attempts,
            budgets=budgets,
        )  # fmt: skip
    attempts = sampled.attempts
    over = ", ".join(f"{n:,} over {k}" for k, n in sampled.rejected.items() if k != "cost")
    console.print(
        f"{len(sampled.indices)} architectures with {cost_model.name} in [{low:g}, {high:g}] "
        f"{cost_model.units} after {attempts:,} draws ({len(sampled.indices) / attempts:.2%} "
        f"accepted; {sampled.rejected['cost']:,} outside the window"
        + (f", {over}" if over else "")
        + ")",
        soft_wrap=True,
    )
    stored = {
        "request": request,
        "attempts": attempts,
        **({"rejected": sampled.rejected} if limits else {}),
        "candidates": [
            {"indices": format_indices(i), "cost": c}
            for i, c in zip(sampled.indices, sampled.costs, strict=True)
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, stored)
    return stored


def run_random(cfg: DictConfig) -> None:
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    out = run_directory()
    sampled = sampled_candidates(cfg, out, console)
    request = sampled["request"]
    data = load_data(cfg.data)
    header = (
        f"random baseline {request['space']} · {len(sampled['candidates'])} candidates · "
        f"{request['cost_model']} in [{request['window'][0]:g}, {request['window'][1]:g}] "
        f"{request['cost_units']} · recipe {cfg.train.name} ({cfg.train.epochs} epochs) · "
        f"data {data.name}"
    )
    settings = RandomSettings.from_config(cfg.strategy)
    candidates = sampled["candidates"]
    spec = EvaluatorSpec.of_config(cfg, candidate_identity(cfg))
    evaluator = spec.build(console, data, ctx)
    if settings.candidate is not None:  # one job of a sweep over candidates (cluster launchers)
        number = settings.candidate
        if not 0 <= number < len(candidates):
            raise NascliError(f"strategy.candidate={number}: the run has candidates 0 to "
                              f"{len(candidates) - 1}")  # fmt: skip
        console.print(header, soft_wrap=True)
        try:
            evaluator.evaluate(
                parse_indices(evaluator.space, candidates[number]["indices"]).indices,
                out / "candidates" / str(number),
            )
        except Interrupted as stop:
            raise Stopped(stop.signum, f"in candidate {number}", out) from None
        console.print(
            f"candidate {number} done; when all are, run the same command without "
            f"strategy.candidate and with out={out} to collect them",
            soft_wrap=True,
        )
        return
    if settings.workers > 1 and ctx.world == 1:
        jobs = [
            (parse_indices(evaluator.space, c["indices"]).indices, out / "candidates" / str(n))
            for n, c in enumerate(candidates)
        ]
        with console.status(f"training candidates in {settings.workers} processes"):
            try:
                pool = evaluate_in_processes(spec, jobs, settings.workers)
            except Interrupted as stop:
                raise Stopped(stop.signum, "while training candidates in parallel", out) from None
        if pool.pending:
            console.print(
                f"trained {pool.pending} candidates in {pool.processes} processes × "
                f"{pool.threads} threads",
                soft_wrap=True,
            )
    search = RandomSearch(candidates, evaluator, out)
    drive(
        search,
        out,
        run_identity(cfg, request, ctx.world),
        console,
        header,
        writer=ctx.is_main,
        agreed_stop=lambda signum: int(ctx.all_reduce(torch.tensor([signum]), op="max")[0]),
    )
    finish_random(cfg, out, search.rows, request, console, started)


def finish_random(
    cfg: DictConfig,
    out: Path,
    rows: list[dict[str, Any]],
    request: dict[str, Any],
    console: Console,
    started: float,
) -> None:
    frame = pd.DataFrame(rows)
    done = frame[frame["status"] == "done"]
    failed = frame[frame["status"] != "done"]
    table = Table(title="candidates (valid top-1 after the recipe)", title_justify="left")
    for column in ("#", "cost", "params", "MACs", "valid top1", "train time", "status"):
        table.add_column(column, justify="right")
    best_number = int(done.loc[done["valid_top1"].idxmax(), "candidate"]) if len(done) else None
    for row in rows:
        if row["status"] != "done":
            console.print(f"candidate {row['candidate']} failed: {row['error']}", soft_wrap=True,
                          markup=False)  # fmt: skip
    for row in rows:
        ok = row["status"] == "done"
        mark = " ★" if row["candidate"] == best_number else ""
        table.add_row(
            f"{row['candidate']}{mark}",
            f"{row['cost']:.4g} {request['cost_units']}",
            human(row["params"]) if ok else "–",
            human(row["macs"]) if ok else "–",
            f"{row['valid_top1']:.2%}" if ok else "–",
            f"{row['train_seconds']:.0f} s" if ok else "–",
            row["status"],
        )
    console.print(table)
    if best_number is None:
        raise NascliError(f"every candidate failed; see {out}/candidates/*/error.txt")
    best = done[done["candidate"] == best_number].iloc[0]
    space = get_space(request["space"])
    arch = parse_indices(space, best["indices"])
    network = decode(space, arch.indices, network_settings(cfg))
    cost = network_cost(network)
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="search",
        strategy="random",
        seed=cfg.seed,
        cost_model=request["cost_model"],
        cost=float(best["cost"]),
        cost_units=request["cost_units"],
        target=request["target"],
        valid_top1=float(best["valid_top1"]),
        images=int(done["images"].sum()),
        seconds=float(done["train_seconds"].sum()),
        wall_seconds=time.perf_counter() - started,
        details={
            "window": request["window"],
            "candidates": len(rows),
            "failed": len(failed),
            **({"budgets": request["budgets"]} if "budgets" in request else {}),
        },
    )
    record = arch_record(arch, network, cost)
    record["search"] = summary.search_record()
    write_json(out / "arch.json", record)
    summary.write(out / "summary.json")
    (out / "plots").mkdir(exist_ok=True)
    plots.accuracy_vs_cost(
        out / "plots" / "accuracy_vs_cost.png",
        done["cost"].tolist(),
        done["valid_top1"].tolist(),
        request["cost_units"],
        request["target"],
        best_number=list(done["candidate"]).index(best_number),
    )
    console.print(
        f"best: candidate {best_number}, valid top1 {summary.valid_top1:.2%}, cost "
        f"{summary.cost:.4g} {request['cost_units']} · wrote {out}/candidates.csv, arch.json, "
        f"summary.json, plots/",
        soft_wrap=True,
    )
    if len(failed):
        raise NascliError(
            f"{len(failed)} candidate(s) failed (see candidates.csv and candidates/*/error.txt); "
            f"rerun with out={out} to retry them",
            exit_code=EXIT_CANDIDATES_FAILED,
        )
