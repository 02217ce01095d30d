"""`nascli profile-latency`: a latency lookup table for this machine, validated end to end; or
(`arch=`) one architecture measured end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nascli.config import configured_network, configured_space, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.models import LUT_GRAPH, cached_lut_path, measure_network
from nascli.cost.profiler import TableBuilder, TableOptions
from nascli.cost.timing import (
    Protocol,
    protocol_from_config,
)
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.train.distributed import resolve_device

#: The columns of `lut_partial.csv` and `layer_timings.csv`: each layer's median milliseconds
#: as timed, and the drift probe's reading taken with it and that reading's number.
TIMING_COLUMNS = ("key", "raw_ms", "probe_ms", "probe")
PROBE_RUNS = 5
#: The least share of validation archs whose even- and odd-round medians agree within ±10% for
#: the validation to be taken at its word; below it the report says so.
STEADY = 0.9


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def measure_one(cfg: DictConfig, protocol: Protocol, console: Console, out: Path) -> None:
    started = time.perf_counter()
    arch, network = configured_network(cfg)
    tick = time.perf_counter()
    timing = measure_network(network, protocol)
    seconds = time.perf_counter() - tick
    cost = network_cost(network)
    table = Table(title=f"{arch.space} · {network.settings.resolution}px", title_justify="left")
    for column in ("median", "p10", "p90", "runs", "params", "MACs"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{timing.median_ms:.3f} ms", f"{timing.p10_ms:.3f} ms", f"{timing.p90_ms:.3f} ms",
        str(timing.runs), human(cost.params), human(cost.macs),
    )  # fmt: skip
    console.print(table)
    info = protocol.describe()
    console.print(" · ".join(f"{k} {v}" for k, v in info.items() if v is not None))
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "latency.json",
        {"indices": arch.text, "space": arch.space, **timing.__dict__, "protocol": info},
    )
    RunSummary.of_architecture(
        arch,
        cost,
        command="profile-latency",
        strategy=None,
        seed=cfg.seed,
        cost_model="measured",
        cost=timing.median_ms,
        cost_units="ms",
        images=0,
        seconds=seconds,
        wall_seconds=time.perf_counter() - started,
        details={"p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms, "runs": timing.runs},
    ).write(out / "summary.json")


def scatter_plot(path: Path, frame: pd.DataFrame, title: str) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(frame["measured_ms"], frame["predicted_ms"], s=12)
    low = float(frame[["measured_ms", "predicted_ms"]].min().min())
    high = float(frame[["measured_ms", "predicted_ms"]].max().max())
    line = np.array([low * 0.9, high * 1.1])
    ax.plot(line, line, "k-", lw=0.8, label="y = x")
    ax.fill_between(line, line * 0.9, line * 1.1, alpha=0.15, label="±10%")
    ax.set_xlabel("measured median (ms)")
    ax.set_ylabel("LUT prediction (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    plots.save(fig, path)


def describe_correction(fit: dict[str, float]) -> str:
    text = f"{fit['scale']:.3f}·sum"
    if fit["per_mparam"]:
        text += f" {fit['per_mparam']:+.3f}·Mparams"
    if fit["per_layer"]:
        text += f" {fit['per_layer']:+.4f}·layers"
    return f"{text} {fit['offset']:+.3f} ms"


def build_table(cfg: DictConfig, protocol: Protocol, console: Console, out: Path) -> None:
    started = time.perf_counter()
    space = configured_space(cfg)
    if space.graph:
        raise NascliError(LUT_GRAPH)
    settings = network_settings(cfg)
    c = cfg.cost
    options = TableOptions(
        c.calibrate, c.validate, c.rounds, c.in_network, c.probe_every, seed=cfg.seed
    )
    builder = TableBuilder(space, settings, protocol, options, out)
    if builder.resumed:
        console.print(f"resuming: {builder.resumed} layers already measured")
    if builder.in_network_skipped:
        console.print(builder.in_network_skipped)
    with progress(console) as bar:
        tasks: dict[str, Any] = {}

        def started_timing(layers: int, already: int) -> None:
            tasks["layers"] = bar.add_task(
                f"layers of {space.name}", total=layers, completed=already
            )
            tasks["rounds"] = bar.add_task("end-to-end networks, rounds", total=options.rounds)

        report = builder.build(
            started=started_timing,
            layer_done=lambda: bar.advance(tasks["layers"]),
            round_done=lambda done: bar.update(tasks["rounds"], completed=done),
        )
    table, frame, best = report.table, report.networks, report.best
    if report.in_network is not None:
        report.in_network.to_csv(out / "in_network.csv", index=False)
    table.save(out / "lut.csv")
    frame.to_csv(out / "validation.csv", index=False)
    plot = frame[frame.set == "validate"].rename(columns={f"predicted_{best}_ms": "predicted_ms"})
    scatter_plot(
        out / "lut_validation.png",
        plot[["measured_ms", "predicted_ms"]],
        f"{space.name} · {settings.resolution}px · {protocol.threads} threads · {best} correction",
    )
    report.timings.to_csv(out / "layer_timings.csv", index=False)
    builder.discard_partial()
    layers, alone = len(report.timings), report.alone
    repeatability, drift = report.repeatability, report.drift
    RunSummary(
        command="profile-latency",
        strategy=None,
        space=space.name,
        seed=cfg.seed,
        cost_model="lut",
        cost_units="ms",
        images=0,
        seconds=time.perf_counter() - started,
        wall_seconds=time.perf_counter() - started,
        details={
            "layers": layers,
            "resolution": settings.resolution,
            "correction_kind": best,
            "validation": report.report[best],
            "repeatability": repeatability,
        },
    ).write(out / "summary.json")

    summary = Table(
        title=f"LUT {space.name}: {layers} layers, validated on {cfg.cost.validate} random archs",
        title_justify="left",
    )
    summary.add_column("correction")
    summary.add_column("fit")
    for column in ("±10%", "±5%", "MAPE", "ρ", "chosen"):
        summary.add_column(column, justify="right")
    for name, r in report.report.items():
        summary.add_row(
            name, describe_correction(r), f"{r['within_10']:.0%}",
            f"{r['within_5']:.0%}", f"{r['mape']:.1%}", f"{r['spearman']:.3f}",
            "✓" if name == best else "",
        )  # fmt: skip
    console.print(summary)
    console.print(
        f"±10%/±5%: share of the {cfg.cost.validate} validation archs predicted that close to "
        f"their measured median; the correction is chosen by leave-one-out error on the "
        f"{cfg.cost.calibrate} calibration archs"
    )
    if alone is not None:
        console.print(
            f"each layer mapped to its time inside a network by {len(table.in_network) - 1} "
            f"group lines (in_network.csv); summed as timed alone instead, the chosen "
            f"{alone['correction_kind']} correction scores ±10% {alone['within_10']:.0%}, "
            f"±5% {alone['within_5']:.0%}, MAPE {alone['mape']:.1%}"
        )
    if repeatability is not None:
        console.print(
            f"the measurement itself: the validation archs' medians over the even and over the "
            f"odd rounds agree within ±10% for {repeatability['within_10']:.0%} of them "
            f"(±5%: {repeatability['within_5']:.0%}): how repeatable the numbers the table is "
            "judged on are"
        )
        if repeatability["within_10"] < STEADY:
            console.print(
                f"[yellow]warning:[/] the measurement did not repeat itself (under "
                f"{STEADY:.0%} within ±10%), so the scores above say more about this machine's "
                "noise than about the table: build it again when the machine is quieter"
            )
    if cfg.cost.probe_every:
        console.print(
            f"machine speed while profiling: the probe network ran in "
            f"{drift['probe_p10_ms']:.3f}–{drift['probe_p90_ms']:.3f} ms (p10–p90); each "
            "layer is scaled by the typical reading over the one taken with it"
        )
    console.print(
        f"wrote {out}/lut.csv, lut.json, layer_timings.csv, validation.csv, lut_validation.png"
        + (", in_network.csv" if report.in_network is not None else "")
    )
    if cfg.cost.cache:
        cached = cached_lut_path(builder.identity)
        table.save(cached)
        console.print(f"cached as {cached}: `cost=lut` finds it for these settings")


def run(cfg: DictConfig) -> None:
    console = RunConsole()
    device = str(resolve_device(cfg.device))
    protocol = protocol_from_config(cfg.cost, device)
    torch.set_flush_denormal(True)
    out = run_directory()
    if cfg.arch is not None:
        measure_one(cfg, protocol, console, out)
    else:
        build_table(cfg, protocol, console, out)
