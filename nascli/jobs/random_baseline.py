"""`nascli random-baseline` (= `nascli search strategy=random`): sample architectures uniformly
per decision inside a cost window, train each with the same short recipe, keep the best on valid.

Run directory: `candidates.json` (the sampled architectures, fixed at the first run),
`candidates/<i>/` (each candidate's training run: last.pt, best.pt, metrics.csv, result.json),
`candidates.csv` (indices, cost, params, MACs, status, valid top-1, train time), `arch.json` and
`summary.json` of the best, `plots/accuracy_vs_cost.png`. Rerunning with `out=` skips finished
candidates, resumes an interrupted one and retries failed ones.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from nascli.config import fingerprint_sections, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.cost.timing import physical_cores
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.files import write_csv, write_json
from nascli.nn.builder import build_model
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.search.random import RandomSettings, cost_window, sample_in_window
from nascli.search.tunas import default_target
from nascli.space.arch import Architecture, format_indices, get_space
from nascli.space.network import decode
from nascli.train.distributed import context
from nascli.train.engine import Interrupted, Trainer, exit_interrupted

EXIT_CANDIDATES_FAILED = 4


def candidate_fingerprint(cfg: DictConfig, indices: str) -> dict[str, Any]:
    return {
        "command": "random-baseline",
        "indices": indices,
        **fingerprint_sections(cfg, "space", "data", "train"),
        "seed": cfg.seed,
    }


def sampled_candidates(cfg: DictConfig, out: Path, console: Console) -> dict[str, Any]:
    """The run's candidates: drawn once and stored, so a rerun trains the same ones."""
    path = out / "candidates.json"
    settings = RandomSettings.from_config(cfg.strategy)
    space = get_space(cfg.space.name)
    net_settings = network_settings(cfg)
    cost_model = make_cost_model(cfg.cost, space, net_settings)
    target = default_target(cfg.cost.name, space.name, cfg.cost.target)
    low, high = cost_window(settings, cfg.cost.name, space.name, target)
    request = {
        "space": space.name,
        "cost_model": cost_model.name,
        "cost_units": cost_model.units,
        "window": [low, high],
        "target": target,
        "num_samples": settings.num_samples,
        "seed": cfg.seed,
    }
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["request"] != request:
            raise NascliError(
                f"{path} was sampled with other settings; use a new out= or the original ones"
            )
        return stored
    with console.status("sampling architectures in the cost window"):
        indices, costs, attempts = sample_in_window(
            space, cost_model, settings.num_samples, low, high, cfg.seed, settings.max_attempts
        )
    console.print(
        f"{len(indices)} architectures with {cost_model.name} in [{low:g}, {high:g}] "
        f"{cost_model.units} after {attempts:,} draws ({len(indices) / attempts:.2%} accepted)",
        soft_wrap=True,
    )
    stored = {
        "request": request,
        "attempts": attempts,
        "candidates": [
            {"indices": format_indices(i), "cost": c} for i, c in zip(indices, costs, strict=True)
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, stored)
    return stored


def train_candidate(
    cfg: DictConfig, number: int, indices: str, out: Path, data, ctx, console: Console
) -> dict[str, Any]:
    """Train one candidate in `out/candidates/<number>` (resuming), return its result."""
    run_dir = out / "candidates" / str(number)
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    space = get_space(cfg.space.name)
    arch = Architecture(space.name, tuple(int(i) for i in indices.split(":")))
    network = decode(space, arch.indices, network_settings(cfg))
    cost = network_cost(network)
    torch.manual_seed(cfg.seed)
    model = build_model(network)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        model,
        cfg.train,
        data,
        ctx,
        seed=cfg.seed,
        run_dir=run_dir,
        fingerprint=candidate_fingerprint(cfg, arch.text),
        console=console,
    )
    outcome = trainer.fit()
    last = outcome.history[-1]
    result = {
        "status": "done",
        "valid_top1": last.get("valid_top1"),
        "best_valid_top1": outcome.best_valid_top1,
        "params": cost.params,
        "macs": cost.macs,
        "train_seconds": outcome.train_seconds,
        "images": outcome.steps * cfg.train.batch_size,
    }
    if ctx.is_main:
        write_json(result_path, result)
    return result


def run_random(cfg: DictConfig) -> None:
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    out = run_directory()
    sampled = sampled_candidates(cfg, out, console)
    request = sampled["request"]
    data = load_data(cfg.data)
    console.print(
        f"random baseline {request['space']} · {len(sampled['candidates'])} candidates · "
        f"{request['cost_model']} in [{request['window'][0]:g}, {request['window'][1]:g}] "
        f"{request['cost_units']} · recipe {cfg.train.name} ({cfg.train.epochs} epochs) · "
        f"data {data.name}",
        soft_wrap=True,
    )
    settings = RandomSettings.from_config(cfg.strategy)
    if settings.candidate is not None:  # one job of a sweep over candidates (cluster launchers)
        number = settings.candidate
        if not 0 <= number < len(sampled["candidates"]):
            raise NascliError(f"strategy.candidate={number}: the run has candidates 0 to "
                              f"{len(sampled['candidates']) - 1}")  # fmt: skip
        train_candidate(
            cfg, number, sampled["candidates"][number]["indices"], out, data, ctx, console
        )
        console.print(
            f"candidate {number} done; when all are, run the same command without "
            f"strategy.candidate and with out={out} to collect them",
            soft_wrap=True,
        )
        return
    if settings.workers > 1 and ctx.world == 1:
        train_in_workers(cfg, out, sampled["candidates"], settings.workers, console)
    rows = []
    for number, candidate in enumerate(sampled["candidates"]):
        console.print(
            f"candidate {number + 1}/{len(sampled['candidates'])}: {candidate['indices']}",
            soft_wrap=True,
        )
        row: dict[str, Any] = {"candidate": number, **candidate}
        try:
            row |= train_candidate(cfg, number, candidate["indices"], out, data, ctx, console)
        except Interrupted as stop:
            exit_interrupted(console, stop.signum, f"in candidate {number}", out)
        except (NascliError, RuntimeError, ValueError) as error:  # reported, never dropped
            message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            row |= {"status": "failed", "error": message[:200]}
            console.print(f"[red]candidate {number} failed:[/] {message}", soft_wrap=True)
            (out / "candidates" / str(number)).mkdir(parents=True, exist_ok=True)
            (out / "candidates" / str(number) / "error.txt").write_text(traceback.format_exc())
        rows.append(row)
        if ctx.is_main:
            write_csv(out / "candidates.csv", rows)
    finish_random(cfg, out, rows, request, console, started)


def _worker(config: dict[str, Any], out: str, numbers: list[int], threads: int) -> None:
    """One process of `strategy.workers`: trains its share of the candidates, one after another.
    Results and failures land in each candidate's directory; the parent collects them."""
    torch.set_num_threads(threads)
    cfg = OmegaConf.create(config)
    ctx = context("cpu" if cfg.device == "auto" else cfg.device)
    console = Console(quiet=True)
    data = load_data(cfg.data)
    candidates = json.loads((Path(out) / "candidates.json").read_text())["candidates"]
    for number in numbers:
        try:
            train_candidate(
                cfg, number, candidates[number]["indices"], Path(out), data, ctx, console
            )
        except Interrupted:
            return
        except Exception:  # reported by the parent, which retrains it in-process
            (Path(out) / "candidates" / str(number)).mkdir(parents=True, exist_ok=True)
            (Path(out) / "candidates" / str(number) / "error.txt").write_text(
                traceback.format_exc()
            )


def train_in_workers(
    cfg: DictConfig, out: Path, candidates: list[dict[str, Any]], workers: int, console: Console
) -> None:
    """Train the unfinished candidates in `workers` processes sharing the cores evenly; the
    serial loop afterwards only collects their results (and retries any that failed)."""
    pending = [
        n
        for n in range(len(candidates))
        if not (out / "candidates" / str(n) / "result.json").exists()
    ]
    if not pending:
        return
    workers = min(workers, len(pending))
    threads = max(1, physical_cores() // workers)
    config = OmegaConf.to_container(cfg, resolve=True)
    context_ = torch.multiprocessing.get_context("spawn")
    processes = [
        context_.Process(target=_worker, args=(config, str(out), pending[w::workers], threads))
        for w in range(workers)
    ]
    console.print(
        f"training {len(pending)} candidates in {workers} processes × {threads} threads",
        soft_wrap=True,
    )
    with console.status("training candidates in parallel"):
        for process in processes:
            process.start()
        try:
            for process in processes:
                process.join()
        except KeyboardInterrupt:  # the workers got the same Ctrl-C and checkpoint
            for process in processes:
                process.join()
            console.print(f"interrupted; rerun the same command with out={out} to resume")
            sys.exit(130)


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
    arch = Architecture(space.name, tuple(int(i) for i in best["indices"].split(":")))
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
        details={"window": request["window"], "candidates": len(rows), "failed": len(failed)},
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
