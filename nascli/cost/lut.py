"""Latency lookup tables: every distinct layer a space can produce, timed on this machine.

A network's predicted latency is the sum of its layers' entries plus a correction fitted on
end-to-end measurements of a few networks: a constant per-network overhead, a factor, or a line
in the sum, optionally with the network's weights and number of layers as further terms (see
`CORRECTIONS`). The correction is chosen by leave-one-out error on the calibration networks,
before the validation networks are looked at, among those that predict a positive latency for
every network they are checked on (a fit to a few noisy timings can extrapolate below zero).

A layer timed alone is not the same layer inside a network: alone, its code and data stay hot
from one run to the next; inside, the other layers ran in between. How much that changes its
time depends on the kind of layer and where it sits, so a table can also carry one line per
`layer_group` (`fit_in_network`), fitted on the calibration networks' layers timed inside them
with forward hooks, that maps each entry to its time inside a network before the sum.

A layer missing from the table is an error naming it, never a silent zero; a table measured on
another machine or with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from nascli.cost.analytic import network_cost
from nascli.errors import NascliError
from nascli.files import atomic_path, write_json
from nascli.nn.builder import build_layer
from nascli.space.network import LayerArgs, Network, NetworkSettings, decode
from nascli.space.spaces import SearchSpace

FORMAT = "nascli-latency-lut-v1"


def layer_key(layer: LayerArgs) -> str:
    """Everything about a layer that its latency depends on (not its name)."""
    return (
        f"{layer.kind} in={layer.in_channels} out={layer.out_channels} res={layer.in_resolution}"
        f" k={layer.kernel} s={layer.stride} mid={layer.mid_channels} se={layer.se_channels}"
        f" act={layer.act} bn={int(layer.bn)} residual={int(layer.residual)}"
    )


def layer_module(layer: LayerArgs) -> tuple[nn.Module, tuple[int, ...]]:
    """The layer alone, and its input shape without the batch dimension."""
    if layer.kind == "linear":
        module = nn.Sequential(nn.Flatten(), nn.Linear(layer.in_channels, layer.out_channels))
        return module, (layer.in_channels, 1, 1)
    return build_layer(layer), (layer.in_channels, layer.in_resolution, layer.in_resolution)


def distinct_layers(space: SearchSpace, settings: NetworkSettings) -> dict[str, LayerArgs]:
    """Every distinct layer configuration any architecture of `space` can contain.

    Which decisions a layer depends on is found by changing each decision of a base
    architecture; the product of those decisions' choices is then enumerated per layer.
    """
    sizes = [d.num_choices for d in space.decisions]
    base = [0] * len(sizes)

    def keys_by_name(indices: list[int]) -> dict[str, str]:
        return {layer.name: layer_key(layer) for layer in decode(space, indices, settings).layers}

    base_keys = keys_by_name(base)
    depends: dict[str, set[int]] = {name: set() for name in base_keys}
    for position, size in enumerate(sizes):
        for value in range(1, size):
            changed = list(base)
            changed[position] = value
            keys = keys_by_name(changed)
            for name, key in base_keys.items():
                if keys.get(name) != key:
                    depends[name].add(position)
    found: dict[str, LayerArgs] = {}
    for name, positions in depends.items():
        ordered = sorted(positions)
        for values in itertools.product(*(range(sizes[p]) for p in ordered)):
            indices = list(base)
            for p, v in zip(ordered, values, strict=True):
                indices[p] = v
            for layer in decode(space, indices, settings).layers:
                if layer.name == name:
                    found.setdefault(layer_key(layer), layer)
    return found


def layer_group(layer: LayerArgs) -> str:
    """Layers whose time inside a network is taken to relate to their time alone in the same
    way: one kind, activation and stride, at one input resolution."""
    return f"{layer.kind} act={layer.act} s={layer.stride} res={layer.in_resolution}"


#: The line for a group no calibration network had: all groups pooled.
POOLED = "*"
#: The fewest layers, and distinct layers, a group's own line is fitted on; with fewer, or if
#: the fitted slope is not positive, the group gets the ratio of its summed times instead.
MIN_GROUP_ROWS, MIN_GROUP_KEYS = 6, 3


def fit_in_network(rows: pd.DataFrame) -> dict[str, list[float]]:
    """Per `layer_group`, the least-squares line `inside_ms ≈ slope·alone_ms + intercept` over
    `rows` (one per layer of each calibration network: group, key, alone_ms, inside_ms), and
    `POOLED`, the ratio over all rows."""

    def ratio(part: pd.DataFrame) -> list[float]:
        return [float(part.inside_ms.sum() / part.alone_ms.sum()), 0.0]

    lines = {POOLED: ratio(rows)}
    for group, part in rows.groupby("group", sort=True):
        line = ratio(part)
        if len(part) >= MIN_GROUP_ROWS and part.key.nunique() >= MIN_GROUP_KEYS:
            slope, intercept = np.polyfit(part.alone_ms, part.inside_ms, 1).tolist()
            if slope > 0:
                line = [slope, intercept]
        lines[str(group)] = line
    return lines


@dataclass
class LookupTable:
    """Median latency (ms) per layer key, the in-network lines (none: entries are summed as
    timed alone), the correction, and what it was measured under."""

    entries: dict[str, float]
    meta: dict[str, Any]
    correction: dict[str, float] = field(default_factory=lambda: dict(NO_CORRECTION))
    in_network: dict[str, list[float]] = field(default_factory=dict)

    def layer_sum(self, network: Network, inside: bool = True) -> float:
        """The network's layers' entries summed, each mapped by its group's in-network line
        (never below zero) unless `inside=False`."""
        return sum(self.layer_ms(layer, inside) for layer in network.layers)

    def layer_ms(self, layer: LayerArgs, inside: bool = True) -> float:
        """One layer's entry, mapped by its group's in-network line unless `inside=False`."""
        key = layer_key(layer)
        if key not in self.entries:
            raise NascliError(
                f"layer {layer.name} ({key}) is not in the latency table; rebuild it with "
                "`nascli profile-latency` for these settings"
            )
        ms = self.entries[key]
        if inside and self.in_network:
            line = self.in_network.get(layer_group(layer), self.in_network[POOLED])
            ms = max(line[0] * ms + line[1], 0.0)
        return ms

    def predict(self, network: Network) -> float:
        """Predicted end-to-end latency in milliseconds."""
        sums = self.layer_sum(network)
        if self.correction.get("per_mparam", 0.0) == 0.0:  # counting weights is not worth it then
            features = {"layer_sum_ms": sums, "layers": float(len(network.layers))}
        else:
            features = network_features(network, sums)
        return float(corrected(self.correction, features))

    def save(self, path: Path) -> None:
        """`path` (CSV: key, median_ms) and `path.json` (metadata and correction)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({"key": list(self.entries), "median_ms": list(self.entries.values())})
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        write_json(
            path.with_suffix(".json"),
            {
                "format": FORMAT,
                "meta": self.meta,
                "correction": self.correction,
                "in_network": self.in_network,
            },
        )

    @classmethod
    def load(cls, path: Path, expected: dict[str, Any] | None = None) -> LookupTable:
        """Read a table; refuse one measured under other settings than `expected`."""
        meta_path = path.with_suffix(".json")
        try:
            info = json.loads(meta_path.read_text())
            table = pd.read_csv(path)
            entries = dict(zip(table["key"], table["median_ms"].astype(float), strict=True))
        except FileNotFoundError as error:
            raise NascliError(f"latency table not found: {error.filename}") from None
        except (ValueError, KeyError, pd.errors.ParserError, UnicodeDecodeError) as error:
            raise NascliError(f"{path} is not a readable latency table ({error})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise NascliError(f"{meta_path} is not a nascli latency table ({FORMAT})")
        if not entries or not all(np.isfinite(v) and v >= 0 for v in entries.values()):
            raise NascliError(f"{path} has missing or invalid latencies")
        if expected is not None:
            differs = sorted(k for k in expected if info["meta"].get(k) != expected[k])
            if differs:
                details = ", ".join(
                    f"{k}: table {info['meta'].get(k)!r}, here {expected[k]!r}" for k in differs
                )
                raise NascliError(f"{path} was measured under other settings ({details})")
        in_network = info.get("in_network") or {}
        lines_ok = isinstance(in_network, dict) and all(
            isinstance(line, list)
            and len(line) == 2
            and all(isinstance(v, int | float) and np.isfinite(v) for v in line)
            for line in in_network.values()
        )
        if not lines_ok or (in_network and POOLED not in in_network):
            raise NascliError(f"{meta_path} has invalid in-network lines")
        return cls(entries, info["meta"], {**NO_CORRECTION, **info["correction"]}, in_network)


#: What a correction can use about a network, each with the coefficient it gets:
#: measured ≈ scale·layer_sum_ms + per_mparam·mparams + per_layer·layers + offset.
FEATURES = {"layer_sum_ms": "scale", "mparams": "per_mparam", "layers": "per_layer"}
NO_CORRECTION = {"scale": 1.0, "per_mparam": 0.0, "per_layer": 0.0, "offset": 0.0}
#: The candidates, simplest first, by the features their least-squares fit uses besides the
#: offset. `overhead` fits only the offset (the median residual, scale 1); `proportional` only
#: the scale (the median ratio, no offset: positive whenever the layer sum is). `weights` adds the
#: network's weights (a layer timed alone keeps them in cache; inside a network they were
#: evicted by the rest of it); `context` adds the number of layers (each layer inside a network
#: pays a fixed extra cost that a layer timed alone, with hot code and data, does not).
CORRECTIONS: dict[str, tuple[str, ...]] = {
    "overhead": (),
    "proportional": ("layer_sum_ms",),
    "linear": ("layer_sum_ms",),
    "weights": ("layer_sum_ms", "mparams"),
    "context": ("layer_sum_ms", "mparams", "layers"),
}
#: The fewest calibration networks a correction is chosen from: one more than the largest fit
#: has terms, so that every fit is determined.
MIN_CALIBRATION = max(len(used) for used in CORRECTIONS.values()) + 2
#: The correction used when no other predicts a positive latency everywhere it is checked.
FALLBACK = "proportional"

Features = dict[str, Any]  # feature name -> a number or an array over networks


def network_features(network: Network, layer_sum: float) -> dict[str, float]:
    """What a correction can use about `network`, given its layers' summed entries."""
    return {
        "layer_sum_ms": layer_sum,
        "mparams": network_cost(network).params / 1e6,
        "layers": float(len(network.layers)),
    }


def corrected(correction: dict[str, float], features: Features) -> Any:
    """A correction applied to networks' features (ms)."""
    c = {**NO_CORRECTION, **correction}
    total = c["offset"]
    for name, coefficient in FEATURES.items():
        if c[coefficient] != 0.0:
            total = total + c[coefficient] * features[name]
    return total


def fit_correction(kind: str, features: Features, measured: np.ndarray) -> dict[str, float]:
    """Least squares in the features `kind` uses, plus an offset, on *relative* errors (each
    network's row divided by its measured latency), since accuracy is judged in percent and
    plain least squares would favour the slowest networks; `overhead` is the median residual of
    the plain sum, `proportional` the median ratio of measured to sum."""
    sums = np.asarray(features["layer_sum_ms"], dtype=float)
    measured = np.asarray(measured, dtype=float)
    if kind == "overhead":
        return {**NO_CORRECTION, "offset": float(np.median(measured - sums))}
    if kind == "proportional":
        return {**NO_CORRECTION, "scale": float(np.median(measured / sums))}
    used = CORRECTIONS[kind]
    design = np.column_stack(
        [*(np.asarray(features[n], dtype=float) for n in used), np.ones_like(sums)]
    )
    coef = np.linalg.lstsq(design / measured[:, None], np.ones_like(sums), rcond=None)[0].tolist()
    fit = {FEATURES[name]: value for name, value in zip(used, coef[:-1], strict=True)}
    return {**NO_CORRECTION, **fit, "offset": coef[-1]}


def fit_corrections(features: Features, measured: np.ndarray) -> dict[str, dict[str, float]]:
    """Every candidate correction fitted on all the calibration measurements."""
    return {kind: fit_correction(kind, features, measured) for kind in CORRECTIONS}


def _take(features: Features, rows: Any) -> Features:
    return {name: np.asarray(values, dtype=float)[rows] for name, values in features.items()}


def leave_one_out_error(kind: str, features: Features, measured: np.ndarray) -> float:
    """Mean absolute relative error of `kind` on each calibration network, fitted without it."""
    errors = []
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        fit = fit_correction(kind, _take(features, keep), measured[keep])
        errors.append(abs(corrected(fit, _take(features, i)) / measured[i] - 1))
    return float(np.mean(errors))


def admissible(fit: dict[str, float], features: Features) -> bool:
    """Whether `fit` predicts a positive latency for every network in `features`."""
    return bool(np.all(np.asarray(corrected(fit, features), dtype=float) > 0))


def choose_correction(
    features: Features, measured: np.ndarray, checked: Features | None = None
) -> str:
    """The candidate with the least leave-one-out error on the calibration networks (the
    simpler one on a tie), among those whose fit on all of them predicts a positive latency
    for the calibration networks and every network in `checked`; `FALLBACK` if none does."""
    if len(measured) < MIN_CALIBRATION:
        raise NascliError(
            f"cost.calibrate must be at least {MIN_CALIBRATION} to choose a LUT correction"
        )
    fits = fit_corrections(features, measured)
    order = [
        kind
        for kind in CORRECTIONS
        if admissible(fits[kind], features) and (checked is None or admissible(fits[kind], checked))
    ] or [FALLBACK]
    errors = {kind: leave_one_out_error(kind, features, measured) for kind in order}
    return min(order, key=lambda kind: (round(errors[kind], 6), order.index(kind)))


def accuracy(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """nn-Meter's ±10% share, ±5% share, mean absolute percentage error, Spearman's ρ."""
    error = np.abs(predicted - measured) / measured
    ranks = pd.DataFrame({"p": predicted, "m": measured}).rank()
    rho = float(np.corrcoef(ranks["p"], ranks["m"])[0, 1]) if len(measured) > 1 else float("nan")
    return {
        "within_10": float(np.mean(error <= 0.10)),
        "within_5": float(np.mean(error <= 0.05)),
        "mape": float(np.mean(error)),
        "spearman": rho,
    }


#: What profiling records per layer: its median milliseconds, the latest drift-probe reading
#: (milliseconds of the reference network) and that reading's number, in timing order.
Timed = tuple[float, float, int]


def profile_layers(
    layers: dict[str, LayerArgs],
    timer: Callable[[nn.Module, tuple[int, ...]], float],
    done: dict[str, Timed],
    on_result: Callable[[str, Timed], None],
    probe: Callable[[], float] | None = None,
    probe_every: int = 0,
) -> dict[str, Timed]:
    """Time each layer not in `done` with `timer(module, input_shape)`; report each result.

    With a `probe` (the current latency of one fixed reference network), it is read before the
    first layer and then every `probe_every` layers, and every layer carries the latest
    reading, so that `drift_corrected` can undo a slow or fast spell of the machine. Without
    one every reading is 1.
    """
    results = dict(done)
    number = max((n for _, _, n in done.values()), default=-1)
    reading, since = 1.0, probe_every
    for key, layer in layers.items():
        if key in results:
            continue
        if probe is not None and since >= probe_every:
            reading, since, number = probe(), 0, number + 1
        module, shape = layer_module(layer)
        results[key] = (timer(module, shape), reading, max(number, 0))
        since += 1
        on_result(key, results[key])
    return results


def drift_corrected(timed: dict[str, Timed], window: int = 3) -> dict[str, float]:
    """Every layer's milliseconds scaled by (typical probe reading / the reading taken with
    it): the table as if the machine had run at one speed throughout.

    Each probe reading is first replaced by the median of it and its neighbours (`window`
    readings in the order they were taken), so one stray reading cannot rescale the layers
    that follow it; the typical reading is the median over all layers.
    """
    readings = dict(sorted({n: r for _, r, n in timed.values()}.items()))
    smooth = pd.Series(list(readings.values())).rolling(window, center=True, min_periods=1)
    by_number = dict(zip(readings, smooth.median(), strict=True))
    reference = float(np.median([by_number[n] for _, _, n in timed.values()]))
    return {key: ms * reference / by_number[n] for key, (ms, _, n) in timed.items()}


def settings_meta(space: SearchSpace, settings: NetworkSettings) -> dict[str, Any]:
    return {"space": space.name, **dataclasses.asdict(settings)}
