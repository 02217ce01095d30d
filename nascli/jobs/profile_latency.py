"""`nascli profile-latency`: a latency lookup table for this machine, validated end to end; or
(`arch=`) one architecture measured end to end."""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nascli.config import configured_network, network_settings, run_directory
from nascli.cost.analytic import network_cost
from nascli.cost.lut import (
    FEATURES,
    LookupTable,
    Timed,
    accuracy,
    choose_correction,
    corrected,
    distinct_layers,
    drift_corrected,
    fit_corrections,
    fit_in_network,
    layer_group,
    layer_key,
    network_features,
    profile_layers,
)
from nascli.cost.models import cached_lut_path, lut_identity, measure_network
from nascli.cost.timing import (
    REWARM,
    PartRounds,
    Protocol,
    RoundRobin,
    Runner,
    measure,
    protocol_from_config,
)
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.nn.builder import build_model, layer_modules
from nascli.report import plots
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.space.arch import get_space, sample_indices
from nascli.space.network import Network, decode
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
    RunSummary(
        command="profile-latency",
        strategy=None,
        space=arch.space,
        seed=cfg.seed,
        indices=arch.text,
        cost_model="measured",
        cost=timing.median_ms,
        cost_units="ms",
        params=cost.params,
        macs=cost.macs,
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


def choose_and_validate(
    frame: pd.DataFrame, sums: str
) -> tuple[str, dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Every correction fitted on the calibration archs with `sums` as the layer sum, the one
    chosen by leave-one-out, and each one's accuracy on the validation archs."""

    def features(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {name: rows[name].to_numpy() for name in FEATURES} | {
            "layer_sum_ms": rows[sums].to_numpy()
        }

    calib, valid = frame[frame.set == "calibrate"], frame[frame.set == "validate"]
    best = choose_correction(features(calib), calib.measured_ms.to_numpy())
    fits = fit_corrections(features(calib), calib.measured_ms.to_numpy())
    report = {
        name: {**fit, **accuracy(corrected(fit, features(valid)), valid.measured_ms.to_numpy())}
        for name, fit in fits.items()
    }
    return best, fits, report


def mixed_sets(calibrate: int, validate: int) -> list[str]:
    """Which of the sampled archs calibrate and which validate: the two sets evenly mixed in
    measuring order, so that whatever the machine does during a round falls on both alike."""
    total = calibrate + validate
    return [
        "calibrate" if (p + 1) * calibrate // total > p * calibrate // total else "validate"
        for p in range(total)
    ]


def in_network_rows(
    networks: list[Network], alone: dict[str, float], medians: list[list[float]]
) -> pd.DataFrame:
    """One row per layer of each network: its group and key, its table entry (alone) and its
    median inside the network."""
    return pd.DataFrame(
        [
            (number, layer.name, layer_group(layer), layer_key(layer), alone[layer_key(layer)], ms)
            for number, (network, times) in enumerate(zip(networks, medians, strict=True))
            for layer, ms in zip(network.layers, times, strict=True)
        ],
        columns=["network", "layer", "group", "key", "alone_ms", "inside_ms"],
    )


def read_partial(path: Path) -> dict[str, Timed]:
    """The layers an interrupted run timed. A last line cut short (a crash while it was being
    written) is cut off the file, so that layer is timed again and appending stays well formed."""
    data = path.read_bytes()
    whole = data.rfind(b"\n") + 1
    if whole < len(data):
        with path.open("r+b") as file:
            file.truncate(whole)
    if not whole:  # killed before its first layer was written
        return {}
    rows = pd.read_csv(
        io.StringIO(data[:whole].decode()), names=list(TIMING_COLUMNS), float_precision="round_trip"
    )
    return {row.key: (row.raw_ms, row.probe_ms, int(row.probe)) for row in rows.itertuples()}


def build_table(cfg: DictConfig, protocol: Protocol, console: Console, out: Path) -> None:
    started = time.perf_counter()
    space = get_space(cfg.space.name)
    settings = network_settings(cfg)
    identity = lut_identity(space, settings, protocol)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "lut_partial.csv"
    identity_file = out / "lut_partial.json"
    partial_identity = {**identity, "probe_every": cfg.cost.probe_every}
    done: dict[str, Timed] = {}
    if partial.exists():  # resume an interrupted profiling run
        if json.loads(identity_file.read_text()) != partial_identity:
            raise NascliError(f"{partial} was measured under other settings; use a new out=")
        done = read_partial(partial)
        console.print(f"resuming: {len(done)} layers already measured")
    else:
        write_json(identity_file, partial_identity)
    with console.status("enumerating the layers the space can produce"):
        layers = distinct_layers(space, settings)
    torch.manual_seed(cfg.seed)
    shape = (protocol.batch_size, settings.in_channels, settings.resolution, settings.resolution)
    # The drift probe: the space's first architecture, timed every `probe_every` layers.
    first = decode(space, [0] * len(space.decisions), settings)
    probe_runner = Runner(build_model(first), shape, protocol)

    def probe() -> float:
        return statistics.median(probe_runner.samples(REWARM, PROBE_RUNS))

    # The calibration and validation networks are measured in rounds spread over the layers
    # still to time, so that both are measured over the same period of this machine's life.
    generator = torch.Generator().manual_seed(cfg.seed)
    archs = sample_indices(space, cfg.cost.calibrate + cfg.cost.validate, generator)
    networks = [decode(space, indices, settings) for indices in archs.tolist()]
    sets = mixed_sets(cfg.cost.calibrate, cfg.cost.validate)
    calibration = [
        network for network, kind in zip(networks, sets, strict=True) if kind == "calibrate"
    ]
    rounds = cfg.cost.rounds
    robin = RoundRobin([(build_model(network), shape) for network in networks], protocol, rounds)
    # The calibration networks' layers timed inside them, in the same rounds, on copies with
    # forward hooks (the hooks' own cost stays out of the end-to-end numbers).
    inside = None
    if cfg.cost.in_network and protocol.backend != "torch":
        console.print(
            f"cost.in_network: layers can only be timed inside a network with the torch "
            f"backend; with {protocol.backend} they are summed as timed alone"
        )
    elif cfg.cost.in_network:
        models = [build_model(network) for network in calibration]
        parts = [layer_modules(model) for model in models]
        inside = PartRounds([(model, shape) for model in models], protocol, rounds, parts)
    todo = sum(1 for key in layers if key not in done)
    due = [todo * r // rounds for r in range(rounds)]  # layers timed before round r
    timed_here = 0

    with progress(console) as bar, partial.open("a") as log:
        task = bar.add_task(f"layers of {space.name}", total=len(layers), completed=len(done))
        network_task = bar.add_task("end-to-end networks, rounds", total=rounds)

        def next_round() -> None:
            robin.next_round()
            if inside is not None:
                inside.next_round()
            bar.update(network_task, completed=robin.done)

        def timer(module: torch.nn.Module, layer_shape: tuple[int, ...]) -> float:
            nonlocal timed_here
            while robin.done < rounds and due[robin.done] <= timed_here:
                next_round()
            timed_here += 1
            return measure(module, (protocol.batch_size, *layer_shape), protocol).median_ms

        def record(key: str, timing: Timed) -> None:
            ms, reading, number = timing
            log.write(f'"{key}",{ms!r},{reading!r},{number}\n')
            log.flush()
            bar.advance(task)

        timed = profile_layers(
            layers, timer, done, record, probe if cfg.cost.probe_every else None,
            cfg.cost.probe_every,
        )  # fmt: skip
        while robin.done < rounds:
            next_round()
    timed = {k: timed[k] for k in layers}
    table = LookupTable(drift_corrected(timed), identity)
    if inside is not None:
        rows = in_network_rows(calibration, table.entries, inside.part_medians())
        rows.to_csv(out / "in_network.csv", index=False)
        table.in_network = fit_in_network(rows)
    timings = robin.timings()
    features = pd.DataFrame(
        [network_features(network, table.layer_sum(network)) for network in networks]
    )
    features["alone_sum_ms"] = [table.layer_sum(network, inside=False) for network in networks]
    frame = pd.DataFrame(
        {
            "indices": [":".join(map(str, indices)) for indices in archs.tolist()],
            "set": sets,
            **features,
            "measured_ms": [timing.median_ms for timing in timings],
        }
    )
    repeatability = None
    if rounds >= 2:  # the measurement against itself: even-numbered rounds against odd ones
        frame["measured_even_ms"], frame["measured_odd_ms"] = robin.halves()
        halves = frame[frame.set == "validate"]
        agreement = accuracy(halves.measured_even_ms.to_numpy(), halves.measured_odd_ms.to_numpy())
        repeatability = {k: agreement[k] for k in ("within_10", "within_5", "mape")}
    best, fits, report = choose_and_validate(frame, "layer_sum_ms")
    for name, fit in fits.items():
        frame[f"predicted_{name}_ms"] = corrected(fit, frame)
    table.correction = fits[best]
    alone = None
    if table.in_network:  # what the same choice makes of the layers summed as timed alone
        alone_best, _, alone_report = choose_and_validate(frame, "alone_sum_ms")
        alone = {"correction_kind": alone_best, **alone_report[alone_best]}
    readings = np.array([reading for _, reading, _ in timed.values()])
    drift = {"probe_every": cfg.cost.probe_every, "probe_p10_ms": 0.0, "probe_p90_ms": 0.0}
    if cfg.cost.probe_every:
        drift["probe_p10_ms"], drift["probe_p90_ms"] = np.percentile(readings, [10, 90]).tolist()
    table.meta = {
        **identity,
        "correction_kind": best,
        "validation": report,
        "alone": alone,
        "repeatability": repeatability,
        "drift": drift,
    }

    table.save(out / "lut.csv")
    frame.to_csv(out / "validation.csv", index=False)
    plot = frame[frame.set == "validate"].rename(columns={f"predicted_{best}_ms": "predicted_ms"})
    scatter_plot(
        out / "lut_validation.png",
        plot[["measured_ms", "predicted_ms"]],
        f"{space.name} · {settings.resolution}px · {protocol.threads} threads · {best} correction",
    )
    layer_timings = pd.DataFrame(
        [(key, *timing) for key, timing in timed.items()], columns=list(TIMING_COLUMNS)
    )
    layer_timings["median_ms"] = layer_timings.key.map(table.entries)
    layer_timings.to_csv(out / "layer_timings.csv", index=False)
    partial.unlink()
    identity_file.unlink()
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
            "layers": len(layers),
            "resolution": settings.resolution,
            "correction_kind": best,
            "validation": report[best],
            "repeatability": repeatability,
        },
    ).write(out / "summary.json")

    summary = Table(
        title=f"LUT {space.name}: {len(layers)} layers, "
        f"validated on {cfg.cost.validate} random archs",
        title_justify="left",
    )
    summary.add_column("correction")
    summary.add_column("fit")
    for column in ("±10%", "±5%", "MAPE", "ρ", "chosen"):
        summary.add_column(column, justify="right")
    for name, r in report.items():
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
        + (", in_network.csv" if inside is not None else "")
    )
    if cfg.cost.cache:
        cached = cached_lut_path(identity)
        table.save(cached)
        console.print(f"cached as {cached}: `cost=lut` finds it for these settings")


def run(cfg: DictConfig) -> None:
    console = Console()
    device = str(resolve_device(cfg.device))
    protocol = protocol_from_config(cfg.cost, device)
    torch.set_flush_denormal(True)
    out = run_directory()
    if cfg.arch is not None:
        measure_one(cfg, protocol, console, out)
    else:
        build_table(cfg, protocol, console, out)
