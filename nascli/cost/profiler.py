"""Building a latency lookup table on this machine: every distinct layer of a space timed alone
(resumably), calibration and validation networks timed end to end in rounds spread over the
layer timing, the correction chosen and validated. `TableBuilder.build()` returns a
`TableReport`; writing files and printing are the caller's (`nascli profile-latency`).

The only file the builder writes is its resume state: `lut_partial.csv` (one line per layer
timed, appended and flushed as it goes) and `lut_partial.json` (what it was measured under).
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

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
from nascli.cost.models import lut_identity
from nascli.cost.timing import REWARM, PartRounds, Protocol, RoundRobin, Runner, measure
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.nn.builder import build_model, layer_modules
from nascli.space.arch import sample_indices
from nascli.space.network import Network, NetworkSettings, decode
from nascli.space.spaces import SearchSpace

#: The columns of `lut_partial.csv` and `layer_timings.csv`: each layer's median milliseconds
#: as timed, and the drift probe's reading taken with it and that reading's number.
TIMING_COLUMNS = ("key", "raw_ms", "probe_ms", "probe")
PROBE_RUNS = 5
#: Networks sampled only to check that a correction predicts a positive latency for them.
CHECKED = 256


@dataclass(frozen=True)
class TableOptions:
    """How a table is measured and judged (the `cost` group's table keys)."""

    calibrate: int
    validate: int
    rounds: int
    in_network: bool
    probe_every: int
    seed: int = 0


@dataclass
class TableReport:
    table: LookupTable
    networks: pd.DataFrame  # calibration and validation archs: features, measured, predicted
    timings: pd.DataFrame  # every layer: raw, probe reading, entry
    in_network: pd.DataFrame | None  # each calibration network's layers timed inside it
    report: dict[str, dict[str, float]]  # each correction's fit and validation scores
    best: str
    alone: dict[str, Any] | None  # the chosen correction with the layers as timed alone
    repeatability: dict[str, float] | None
    drift: dict[str, float]


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


def choose_and_validate(
    frame: pd.DataFrame, sums: str, checked: pd.DataFrame
) -> tuple[str, dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Every correction fitted on the calibration archs with `sums` as the layer sum, the one
    chosen by leave-one-out among those predicting a positive latency for every network of
    `frame` and `checked`, and each one's accuracy on the validation archs."""

    def features(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {name: rows[name].to_numpy() for name in FEATURES} | {
            "layer_sum_ms": rows[sums].to_numpy()
        }

    calib, valid = frame[frame.set == "calibrate"], frame[frame.set == "validate"]
    everywhere = pd.concat([frame, checked], ignore_index=True)
    best = choose_correction(features(calib), calib.measured_ms.to_numpy(), features(everywhere))
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


def _nothing(*_: Any) -> None:
    return None


class TableBuilder:
    """Measures the table of `space` under `settings` and `protocol` into `folder`'s resume
    state; `resumed` is how many layers an interrupted run had already timed there."""

    def __init__(
        self,
        space: SearchSpace,
        settings: NetworkSettings,
        protocol: Protocol,
        options: TableOptions,
        folder: Path,
    ):
        self.space, self.settings, self.protocol, self.options = space, settings, protocol, options
        self.identity = lut_identity(space, settings, protocol)
        self.partial = folder / "lut_partial.csv"
        self.identity_file = folder / "lut_partial.json"
        partial_identity = {**self.identity, "probe_every": options.probe_every}
        self.done: dict[str, Timed] = {}
        if self.partial.exists():  # resume an interrupted profiling run
            if json.loads(self.identity_file.read_text()) != partial_identity:
                raise NascliError(
                    f"{self.partial} was measured under other settings; use a new out="
                )
            self.done = read_partial(self.partial)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(self.identity_file, partial_identity)
        #: Why the layers will not be timed inside the networks although asked, or None.
        self.in_network_skipped = None
        if options.in_network and protocol.backend != "torch":
            self.in_network_skipped = (
                f"cost.in_network: layers can only be timed inside a network with the torch "
                f"backend; with {protocol.backend} they are summed as timed alone"
            )

    @property
    def resumed(self) -> int:
        return len(self.done)

    def discard_partial(self) -> None:
        """Drop the resume state once the caller has written the table."""
        self.partial.unlink()
        self.identity_file.unlink()

    def build(
        self,
        started: Callable[[int, int], None] = _nothing,
        layer_done: Callable[[], None] = _nothing,
        round_done: Callable[[int], None] = _nothing,
    ) -> TableReport:
        """Time what is left. `started(layers, already)` once the layers are enumerated,
        `layer_done()` after each layer, `round_done(rounds done)` after each network round."""
        space, settings, protocol, options = self.space, self.settings, self.protocol, self.options
        layers = distinct_layers(space, settings)
        started(len(layers), len(self.done))
        torch.manual_seed(options.seed)
        side = settings.resolution
        shape = (protocol.batch_size, settings.in_channels, side, side)
        # The drift probe: the space's first architecture, timed every `probe_every` layers.
        first = decode(space, [0] * len(space.decisions), settings)
        probe_runner = Runner(build_model(first), shape, protocol)

        def probe() -> float:
            return statistics.median(probe_runner.samples(REWARM, PROBE_RUNS))

        # The calibration and validation networks are measured in rounds spread over the layers
        # still to time, so that both are measured over the same period of this machine's life.
        generator = torch.Generator().manual_seed(options.seed)
        archs = sample_indices(space, options.calibrate + options.validate, generator)
        networks = [decode(space, indices, settings) for indices in archs.tolist()]
        sets = mixed_sets(options.calibrate, options.validate)
        calibration = [n for n, kind in zip(networks, sets, strict=True) if kind == "calibrate"]
        rounds = options.rounds
        robin = RoundRobin([(build_model(n), shape) for n in networks], protocol, rounds)
        # The calibration networks' layers timed inside them, in the same rounds, on copies with
        # forward hooks (the hooks' own cost stays out of the end-to-end numbers).
        inside = None
        if options.in_network and self.in_network_skipped is None:
            models = [build_model(network) for network in calibration]
            parts = [layer_modules(model) for model in models]
            inside = PartRounds([(model, shape) for model in models], protocol, rounds, parts)
        todo = sum(1 for key in layers if key not in self.done)
        due = [todo * r // rounds for r in range(rounds)]  # layers timed before round r
        timed_here = 0

        def next_round() -> None:
            robin.next_round()
            if inside is not None:
                inside.next_round()
            round_done(robin.done)

        def timer(module: torch.nn.Module, layer_shape: tuple[int, ...]) -> float:
            nonlocal timed_here
            while robin.done < rounds and due[robin.done] <= timed_here:
                next_round()
            timed_here += 1
            return measure(module, (protocol.batch_size, *layer_shape), protocol).median_ms

        with self.partial.open("a") as log:

            def record(key: str, timing: Timed) -> None:
                ms, reading, number = timing
                log.write(f'"{key}",{ms!r},{reading!r},{number}\n')
                log.flush()
                layer_done()

            timed = profile_layers(
                layers, timer, self.done, record, probe if options.probe_every else None,
                options.probe_every,
            )  # fmt: skip
        while robin.done < rounds:
            next_round()
        return self._report(layers, timed, networks, archs, sets, calibration, robin, inside)

    def _checked_features(self, table: LookupTable) -> pd.DataFrame:
        """The features of networks that are predicted but never timed, on which a correction
        must give a positive latency: each decision's first and each its last option, and
        `CHECKED` uniform samples (a generator of their own, so the timed archs stay put)."""
        space, settings = self.space, self.settings
        firsts = [0] * len(space.decisions)
        lasts = [d.num_choices - 1 for d in space.decisions]
        generator = torch.Generator().manual_seed(self.options.seed + 1)
        archs = [firsts, lasts, *sample_indices(space, CHECKED, generator).tolist()]
        networks = [decode(space, indices, settings) for indices in archs]
        rows = pd.DataFrame(
            [network_features(network, table.layer_sum(network)) for network in networks]
        )
        rows["alone_sum_ms"] = [table.layer_sum(n, inside=False) for n in networks]
        return rows

    def _report(self, layers, timed, networks, archs, sets, calibration, robin, inside):
        timed = {k: timed[k] for k in layers}
        table = LookupTable(drift_corrected(timed), self.identity)
        in_network = None
        if inside is not None:
            in_network = in_network_rows(calibration, table.entries, inside.part_medians())
            table.in_network = fit_in_network(in_network)
        features = pd.DataFrame(
            [network_features(network, table.layer_sum(network)) for network in networks]
        )
        features["alone_sum_ms"] = [table.layer_sum(n, inside=False) for n in networks]
        checked = self._checked_features(table)
        frame = pd.DataFrame(
            {
                "indices": [":".join(map(str, indices)) for indices in archs.tolist()],
                "set": sets,
                **features,
                "measured_ms": [timing.median_ms for timing in robin.timings()],
            }
        )
        repeatability = None
        if self.options.rounds >= 2:  # the measurement against itself: even rounds vs odd
            frame["measured_even_ms"], frame["measured_odd_ms"] = robin.halves()
            halves = frame[frame.set == "validate"]
            agreement = accuracy(
                halves.measured_even_ms.to_numpy(), halves.measured_odd_ms.to_numpy()
            )
            repeatability = {k: agreement[k] for k in ("within_10", "within_5", "mape")}
        best, fits, report = choose_and_validate(frame, "layer_sum_ms", checked)
        for name, fit in fits.items():
            frame[f"predicted_{name}_ms"] = corrected(fit, frame)
        table.correction = fits[best]
        alone = None
        if table.in_network:  # what the same choice makes of the layers summed as timed alone
            alone_best, _, alone_report = choose_and_validate(frame, "alone_sum_ms", checked)
            alone = {"correction_kind": alone_best, **alone_report[alone_best]}
        readings = np.array([reading for _, reading, _ in timed.values()])
        probe_every = self.options.probe_every
        drift = {"probe_every": probe_every, "probe_p10_ms": 0.0, "probe_p90_ms": 0.0}
        if probe_every:
            p10, p90 = np.percentile(readings, [10, 90]).tolist()
            drift["probe_p10_ms"], drift["probe_p90_ms"] = p10, p90
        table.meta = {
            **self.identity,
            "correction_kind": best,
            "validation": report,
            "alone": alone,
            "repeatability": repeatability,
            "drift": drift,
        }
        timings = pd.DataFrame(
            [(key, *timing) for key, timing in timed.items()], columns=list(TIMING_COLUMNS)
        )
        timings["median_ms"] = timings.key.map(table.entries)
        return TableReport(
            table, frame, timings, in_network, report, best, alone, repeatability, drift
        )
