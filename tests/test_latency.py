"""Latency: the timing protocol, lookup tables and the cost-model interface."""

import ctypes
import ctypes.util
import functools
import itertools
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from nascli.config import CostConfig
from nascli.cost.lut import (
    CORRECTIONS,
    POOLED,
    LookupTable,
    choose_correction,
    corrected,
    distinct_layers,
    drift_corrected,
    fit_correction,
    fit_corrections,
    fit_in_network,
    layer_group,
    layer_key,
    layer_module,
    profile_layers,
)
from nascli.cost.models import AnalyticCost, Pixel1Cost, make_cost_model
from nascli.cost.timing import (
    REWARM,
    PartRounds,
    Protocol,
    RoundRobin,
    Runner,
    measure,
    measure_many,
    protocol_from_config,
    sample_runs,
    summarise,
    thread_count,
)
from nascli.errors import NascliError
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES

PROXY = NetworkSettings(resolution=32, num_classes=10, in_channels=1)


def test_warmup_is_not_timed_and_the_median_is_reported():
    ticks = itertools.count()
    durations = iter([100, 100, 100, 5, 1, 9, 3, 7])  # 3 warm-up calls, then 5 timed
    now = [0]

    def clock():
        return now[0]

    def run():
        now[0] += next(durations) * 1_000_000  # milliseconds as nanoseconds
        next(ticks)

    timing = summarise(sample_runs(run, warmup=3, runs=5, clock=clock))
    assert next(ticks) == 8  # every call happened
    assert timing.median_ms == 5.0 and timing.runs == 5
    assert timing.p10_ms == pytest.approx(1.8) and timing.p90_ms == pytest.approx(8.2)


def test_threads_are_set_for_the_measurement_and_restored():
    seen = []
    before = torch.get_num_threads()
    with thread_count(1):
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == before
    module = torch.nn.Conv2d(3, 8, 3)
    timing = measure(module, (1, 3, 16, 16), Protocol(threads=1, warmup=1, runs=3))
    assert timing.median_ms > 0 and timing.p10_ms <= timing.median_ms <= timing.p90_ms


@pytest.mark.parametrize("name", list(SPACES))
def test_lut_keys_cover_every_layer_of_random_architectures(name):
    layers = distinct_layers(SPACES[name], PROXY)
    indices = sample_indices(SPACES[name], 200, torch.Generator().manual_seed(0))
    for row in indices.tolist():
        for layer in decode(SPACES[name], row, PROXY).layers:
            assert layer_key(layer) in layers, layer.name


@functools.cache
def fake_times(space_name) -> tuple[tuple[str, float], ...]:
    """Each distinct layer's fake 'latency', its MACs in millions, after profiling every layer
    with a no-op timer. Computed once per space and process (mnv3 has 7,584 distinct layers)."""
    from nascli.cost.analytic import layer_cost

    layers = distinct_layers(SPACES[space_name], PROXY)
    entries = profile_layers(layers, lambda module, shape: 0.0, {}, lambda k, t: None)
    assert set(entries) == set(layers)
    return tuple((key, layer_cost(layer).macs / 1e6) for key, layer in layers.items())


def fake_table(space_name):
    """A fresh table from the fake timer (tests change its entries and lines)."""
    return LookupTable(dict(fake_times(space_name)), {"space": space_name})


def test_a_fake_timer_table_sums_exactly():
    from nascli.cost.analytic import network_cost

    table = fake_table("proxylessnas_enlarged")
    table.correction = {"scale": 2.0, "offset": 0.5}
    for row in sample_indices(SPACES["proxylessnas_enlarged"], 20, torch.Generator()).tolist():
        network = decode(SPACES["proxylessnas_enlarged"], row, PROXY)
        assert table.layer_sum(network) == pytest.approx(network_cost(network).macs / 1e6)
        assert table.predict(network) == pytest.approx(2.0 * network_cost(network).macs / 1e6 + 0.5)


def test_a_missing_layer_is_an_error_naming_it():
    table = fake_table("proxylessnas")
    network = decode(SPACES["proxylessnas"], [0] * 73, PROXY)
    del table.entries[layer_key(network.layers[3])]
    with pytest.raises(NascliError, match=network.layers[3].name):
        table.predict(network)


def test_profiling_skips_what_was_already_measured():
    layers = distinct_layers(SPACES["proxylessnas"], PROXY)
    first = next(iter(layers))
    timed = []
    profile_layers(layers, lambda m, s: 1.0, {first: (7.0, 1.0, 0)}, lambda k, t: timed.append(k))
    assert first not in timed and len(timed) == len(layers) - 1
    # A resumed run numbers its probe readings after the ones already recorded.
    resumed = profile_layers(layers, lambda m, s: 1.0, {first: (7.0, 2.0, 4)}, lambda k, t: None,
                             lambda: 3.0, 10)  # fmt: skip
    assert resumed[first] == (7.0, 2.0, 4)
    assert {n for k, (_, _, n) in resumed.items() if k != first} == set(range(5, 5 + 8))


def test_the_drift_probe_undoes_a_slow_spell_of_the_machine():
    from nascli.cost.analytic import layer_cost

    layers = distinct_layers(SPACES["proxylessnas_enlarged"], PROXY)
    true = {key: layer_cost(layer).macs / 1e6 for key, layer in layers.items()}
    order = list(layers)
    slow = set(order[200:600])  # the machine runs 1.5x slower while these are timed
    current = {"key": None}

    def speed():
        return 1.5 if current["key"] in slow else 1.0

    def timer(module, shape):
        return true[current["key"]] * speed()

    def probe():
        current["key"] = order[len(readings) * 8]  # the next layer to be timed
        readings.append(3.0 * speed())
        return readings[-1]

    def run(with_probe):
        keys = iter(order)

        def before_each(module, shape):
            current["key"] = next(keys)
            return timer(module, shape)

        return profile_layers(layers, before_each, {}, lambda *a: None, with_probe, 8)

    readings = []
    timed = run(probe)
    assert len(readings) == -(-len(order) // 8)
    assert [n for _, _, n in timed.values()] == [i // 8 for i in range(len(order))]
    assert drift_corrected(timed) == pytest.approx(true)
    # One stray reading is outvoted by its neighbours.
    stray = {k: (ms, 9.0 if n == 100 else r, n) for k, (ms, r, n) in timed.items()}
    assert drift_corrected(stray) == pytest.approx(true)
    unprobed = drift_corrected(run(None))
    assert unprobed[order[300]] == pytest.approx(1.5 * true[order[300]])
    assert unprobed[order[700]] == pytest.approx(true[order[700]])


def network_features_like(seed: int, smallest_sum: float, count: int) -> dict[str, np.ndarray]:
    """Random calibration features: layer sums from `smallest_sum` to 10 ms."""
    rng = np.random.default_rng(seed)
    return {
        "layer_sum_ms": rng.uniform(smallest_sum, 10, count),
        "mparams": rng.uniform(0.5, 8, count),
        "layers": rng.integers(10, 25, count).astype(float),
    }


def test_corrections_recover_known_surfaces_and_the_simplest_that_fits_is_chosen():
    features = network_features_like(0, 1, 20)
    sums, mparams, layers = features.values()
    in_context = 1.2 * sums + 0.3 * mparams + 0.04 * layers + 0.5
    fits = fit_corrections(features, in_context)
    assert fits["context"] == pytest.approx(
        {"scale": 1.2, "per_mparam": 0.3, "per_layer": 0.04, "offset": 0.5}
    )
    assert choose_correction(features, in_context) == "context"
    with_weights = 1.2 * sums + 0.3 * mparams + 0.5
    fits = fit_corrections(features, with_weights)
    assert fits["weights"] == pytest.approx(
        {"scale": 1.2, "per_mparam": 0.3, "per_layer": 0.0, "offset": 0.5}
    )
    assert fits["overhead"]["scale"] == 1.0 and fits["linear"]["per_mparam"] == 0.0
    # `context` fits this exactly too: the tie goes to the simpler correction.
    assert choose_correction(features, with_weights) == "weights"
    line = 1.5 * sums + 2.0
    assert fit_corrections(features, line)["linear"] == pytest.approx(
        {"scale": 1.5, "per_mparam": 0.0, "per_layer": 0.0, "offset": 2.0}
    )
    assert choose_correction(features, line) == "linear"
    assert choose_correction(features, sums + 0.7) == "overhead"
    few = {name: values[:4] for name, values in features.items()}
    with pytest.raises(NascliError, match="at least 5"):
        choose_correction(few, line[:4])


def test_a_correction_that_predicts_a_negative_latency_anywhere_checked_is_not_chosen():
    # Five noisy timings can make the best leave-one-out fit a steep line whose offset drives
    # the space's smallest network below zero; such a fit is never the table's correction.
    features = network_features_like(1, 5, 12)
    sums, mparams, layers = features.values()
    steep = 1.2 * sums + 0.3 * mparams + 0.04 * layers - 3.0
    small = {
        "layer_sum_ms": np.array([0.5]),
        "mparams": np.array([0.1]),
        "layers": np.array([10.0]),
    }
    assert choose_correction(features, steep) == "context"  # unchecked, it fits exactly
    chosen = choose_correction(features, steep, small)
    assert chosen != "context"
    assert corrected(fit_corrections(features, steep)[chosen], small)[0] > 0
    # Below the sum everywhere by a constant: every fit with an offset goes negative on the
    # small network, and the factor alone is left.
    assert choose_correction(features, sums - 2.0, small) == "proportional"
    assert fit_correction("proportional", features, sums - 2.0)["offset"] == 0.0


def test_corrections_are_fitted_on_relative_errors_not_milliseconds():
    # Small networks with a 20% overhead and a few large ones without: least squares in
    # milliseconds bends the line to the large ones; in percent every network counts alike.
    sums = np.array([1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 20.0, 22.0])
    measured = np.where(sums < 10, 1.2 * sums, sums)
    features = {"layer_sum_ms": sums}
    fit = fit_correction("linear", features, measured)
    plain = np.polyfit(sums, measured, 1)

    def relative_sq(predicted):
        return float(np.sum((predicted / measured - 1) ** 2))

    ours = relative_sq(fit["scale"] * sums + fit["offset"])
    assert ours < 0.8 * relative_sq(np.polyval(plain, sums))
    # It is the least-squares optimum in percent: no nudge of either coefficient does better.
    for ds, do in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
        assert ours <= relative_sq((fit["scale"] + ds) * sums + fit["offset"] + do)


def test_the_weights_and_layers_terms_use_each_networks_own_counts(tmp_path):
    from nascli.cost.analytic import network_cost

    table = fake_table("mnv3")
    table.correction = {"scale": 2.0, "per_mparam": 0.25, "per_layer": 0.0, "offset": 0.5}
    network = decode(SPACES["mnv3"], [1] * len(SPACES["mnv3"].decisions), PROXY)
    expected = 2.0 * table.layer_sum(network) + 0.25 * network_cost(network).params / 1e6 + 0.5
    assert table.predict(network) == pytest.approx(expected)
    table.correction = {**table.correction, "per_layer": 0.01}
    assert table.predict(network) == pytest.approx(expected + 0.01 * len(network.layers))
    # A table written before the weights and layers terms existed still loads, without them.
    table.save(tmp_path / "lut.csv")
    info = json.loads((tmp_path / "lut.json").read_text())
    info["correction"] = {"scale": 2.0, "offset": 0.5}
    del info["in_network"]
    (tmp_path / "lut.json").write_text(json.dumps(info))
    old = LookupTable.load(tmp_path / "lut.csv")
    assert old.predict(network) == pytest.approx(2.0 * table.layer_sum(network) + 0.5)


class Recorder(torch.nn.Module):
    """Appends its name to `calls` on every call, after sleeping `seconds`."""

    def __init__(self, name, calls, seconds=0.0):
        super().__init__()
        self.name, self.calls, self.seconds = name, calls, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        self.calls.append(self.name)
        return x


def test_interleaved_measurement_visits_every_module_in_each_round():
    calls = []
    items = [(Recorder(name, calls), (1, 2)) for name in "ab"]
    protocol = Protocol(threads=1, warmup=4, runs=6)
    rounds = []
    timings = measure_many(items, protocol, rounds=3, on_round=rounds.append)
    first = ["a"] * (4 + 2) + ["b"] * (4 + 2)
    later = ["a"] * (REWARM + 2) + ["b"] * (REWARM + 2)
    backwards = ["b"] * (REWARM + 2) + ["a"] * (REWARM + 2)  # every other round in reverse
    assert calls == first + backwards + later
    assert [t.runs for t in timings] == [6, 6] and rounds == [1, 2, 3]
    # Runs that do not split evenly are rounded up, never down.
    assert measure_many(items[:1], Protocol(threads=1, warmup=0, runs=5), rounds=2)[0].runs == 6
    with pytest.raises(NascliError, match="rounds"):
        measure_many(items, protocol, rounds=0)


def test_layers_are_timed_inside_the_network_by_hooks_that_are_removed_after(monkeypatch):
    # A clock that only the modules' "sleeps" advance: each part's time is exact, whatever
    # else runs on the machine.
    now = [0]
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now[0])
    monkeypatch.setattr(
        time, "sleep", lambda seconds: now.__setitem__(0, now[0] + round(seconds * 1e9))
    )
    calls = []
    parts = [Recorder("a", calls, 0.004), Recorder("b", calls), Recorder("c", calls, 0.002)]
    model = torch.nn.Sequential(*parts)
    runner = Runner(model, (1, 3), Protocol(threads=1))
    samples = runner.part_samples(parts, warmup=2, runs=3)
    assert len(calls) == 3 * (2 + 3)  # the warm-up calls ran, untimed
    assert [len(part) for part in samples] == [3, 3, 3]
    assert samples == [[4.0] * 3, [0.0] * 3, [2.0] * 3]
    assert all(not p._forward_hooks and not p._forward_pre_hooks for p in parts)
    # Rounds of such timings: one list per part per round, each part's median over rounds.
    rounds = PartRounds([(model, (1, 3))], Protocol(threads=1, warmup=0, runs=2), 2, [parts])
    rounds.next_round()
    rounds.next_round()
    assert len(rounds.samples[0]) == 2 and len(rounds.samples[0][0]) == 3
    medians = rounds.part_medians()[0]
    assert list(medians) == [4.0, 0.0, 2.0]
    traced = Runner(torch.nn.Linear(3, 3), (1, 3), Protocol(threads=1, backend="torchscript"))
    with pytest.raises(NascliError, match=r"cost\.backend=torch"):
        traced.part_samples([], 0, 1)


def rows_on_lines(lines, keys_per_group, repeats=2):
    """Rows of a layer per key and repeat whose inside time follows its group's exact line."""
    rows = []
    for group, (slope, intercept) in lines.items():
        for k in range(keys_per_group[group]):
            for _ in range(repeats):
                alone = 0.1 + 0.05 * k
                rows.append((group, f"{group} {k}", alone, slope * alone + intercept))
    return pd.DataFrame(rows, columns=["group", "key", "alone_ms", "inside_ms"])


def test_in_network_lines_are_fitted_per_group_with_the_ratio_where_a_line_is_not_safe():
    lines = {"a": (1.5, 0.02), "b": (0.8, -0.01), "few": (2.0, 0.1), "down": (-0.5, 1.0)}
    rows = rows_on_lines(lines, {"a": 4, "b": 3, "few": 2, "down": 3}, repeats=3)
    fitted = fit_in_network(rows)
    assert fitted["a"] == pytest.approx([1.5, 0.02]) and fitted["b"] == pytest.approx([0.8, -0.01])
    for group in ("few", "down"):  # 2 distinct layers; a falling line: the ratio instead
        part = rows[rows.group == group]
        assert fitted[group] == pytest.approx([part.inside_ms.sum() / part.alone_ms.sum(), 0.0])
    assert fitted[POOLED] == pytest.approx([rows.inside_ms.sum() / rows.alone_ms.sum(), 0.0])


def test_a_table_maps_each_layer_by_its_groups_line_before_the_sum(tmp_path):
    table = fake_table("mnv3")
    network = decode(SPACES["mnv3"], [1] * len(SPACES["mnv3"].decisions), PROXY)
    groups = sorted({layer_group(layer) for layer in network.layers})
    table.in_network = {POOLED: [2.0, 0.0], groups[0]: [1.5, 0.01], groups[1]: [1.0, -1e6]}
    expected = 0.0
    for layer in network.layers:
        alone = table.entries[layer_key(layer)]
        slope, intercept = table.in_network.get(layer_group(layer), [2.0, 0.0])
        expected += max(slope * alone + intercept, 0.0)  # never below zero
    assert table.layer_sum(network) == pytest.approx(expected)
    alone = sum(table.entries[layer_key(layer)] for layer in network.layers)
    assert table.layer_sum(network, inside=False) == pytest.approx(alone)
    table.correction = {"scale": 2.0, "offset": 0.5}
    assert table.predict(network) == pytest.approx(2.0 * expected + 0.5)
    table.save(tmp_path / "lut.csv")
    assert LookupTable.load(tmp_path / "lut.csv").predict(network) == pytest.approx(
        2 * expected + 0.5
    )
    info = json.loads((tmp_path / "lut.json").read_text())
    for bad in ({groups[0]: [1.0, 0.0]}, {POOLED: [1.0]}, {POOLED: ["x", 0.0]}, [1.0]):
        (tmp_path / "lut.json").write_text(json.dumps({**info, "in_network": bad}))
        with pytest.raises(NascliError, match="invalid in-network lines"):
            LookupTable.load(tmp_path / "lut.csv")


# What the steady allocator changes, read back from glibc itself in a fresh process: a 20 MiB
# block is served from the heap instead of a private mapping, and stays in the heap once freed
# (no trim). mallinfo2 reports the process's own allocator state, which no other process on the
# machine can disturb (the kernel's page-fault counters can be).
MALLINFO = """
import ctypes, ctypes.util, sys
from nascli.cost.timing import keep_freed_memory
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in names]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "steady":
    assert keep_freed_memory()
before = libc.mallinfo2()
block = libc.malloc(20 << 20)
allocated = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
print(allocated.hblkhd - before.hblkhd, freed.fordblks - before.fordblks)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not _has_mallinfo2(),
    reason="needs glibc >= 2.33 (mallinfo2)",
)
def test_the_steady_allocator_keeps_large_blocks_in_the_heap():
    def state(allocator):
        command = [sys.executable, "-c", MALLINFO, allocator]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
        return [int(v) for v in result.stdout.split()]

    block = 20 << 20
    mapped, kept = state("default")
    assert mapped >= block and kept < block  # glibc's default: mmap'd, unmapped on free
    mapped, kept = state("steady")
    assert mapped == 0 and kept > 0.99 * block  # steady: from the heap, kept for the next run


def test_the_allocator_is_checked_and_recorded():
    protocol = protocol_from_config(cost_config("measured"), "cpu")
    assert protocol.describe()["allocator"] in ("steady", "default")
    with pytest.raises(NascliError, match=r"cost\.allocator='bogus': choose steady, default"):
        protocol_from_config(cost_config("measured", allocator="bogus"), "cpu")


def test_tables_from_elsewhere_or_corrupt_are_refused(tmp_path):
    table = LookupTable({"conv a": 1.0}, {"space": "proxylessnas", "cpu": "A", "threads": 2})
    table.save(tmp_path / "lut.csv")
    loaded = LookupTable.load(tmp_path / "lut.csv", {"space": "proxylessnas", "threads": 2})
    assert loaded.entries == {"conv a": 1.0}
    with pytest.raises(NascliError, match=r"other settings \(cpu: table 'A', here 'B'\)"):
        LookupTable.load(tmp_path / "lut.csv", {"cpu": "B"})
    (tmp_path / "lut.csv").write_text("key,median_ms\nconv a,not-a-number\n")
    with pytest.raises(NascliError, match=r"readable latency table|invalid latencies"):
        LookupTable.load(tmp_path / "lut.csv")
    (tmp_path / "lut.csv").write_text("key,median_ms\nconv a,1.0\n")
    (tmp_path / "lut.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(NascliError, match="not a nascli latency table"):
        LookupTable.load(tmp_path / "lut.csv")
    with pytest.raises(NascliError, match="not found"):
        LookupTable.load(tmp_path / "missing.csv")


def cost_config(name, **overrides):
    return OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": name, **overrides})


def test_cost_models_share_one_interface():
    space = SPACES["proxylessnas_enlarged"]
    indices = sample_indices(space, 5, torch.Generator().manual_seed(3))
    from nascli.cost.analytic import network_cost

    macs = make_cost_model(cost_config("macs"), space, PROXY)
    assert isinstance(macs, AnalyticCost) and macs.units == "MACs"
    expected = [network_cost(decode(space, r, PROXY)).macs for r in indices.tolist()]
    assert macs(indices).tolist() == expected
    pixel = make_cost_model(cost_config("tunas_pixel1"), space, PROXY)
    assert isinstance(pixel, Pixel1Cost) and pixel.units == "ms"
    assert pixel.cost(indices[0].tolist()) == pytest.approx(float(pixel(indices)[0]))


def test_lut_cost_without_a_table_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(NascliError, match="nascli profile-latency space=mnv3"):
        make_cost_model(cost_config("lut"), SPACES["mnv3"], PROXY)


QUICK = ["cost.calibrate=5", "cost.validate=4", "cost.runs=3", "cost.warmup=1", "cost.threads=1"]


@pytest.mark.slow
def test_profile_latency_builds_validates_and_caches(tmp_path, monkeypatch):
    # Interrupted and resumed: tests/test_chaos.py.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "nascli", "profile-latency", *QUICK, f"out={out}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {"lut.csv", "lut.json", "validation.csv", "lut_validation.png"} <= {
        p.name for p in out.iterdir()
    }
    meta = json.loads((out / "lut.json").read_text())["meta"]
    assert meta["threads"] == 1 and meta["correction_kind"] in CORRECTIONS
    assert set(meta["validation"]["linear"]) >= {"within_10", "within_5", "mape", "spearman"}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lut = make_cost_model(
        cost_config("lut", threads=1, runs=3, warmup=1), SPACES["proxylessnas"], PROXY
    )
    assert lut.cost([0] * 73) > 0


def test_network_rounds_are_spread_over_the_layer_timing(run_cli, tmp_path, monkeypatch):
    from nascli.cost import profiler

    events = []
    real_round, real_measure = profiler.RoundRobin.next_round, profiler.measure

    def next_round(self):
        if len(self.runners) > 1:  # the networks' round robin, not a layer timed alone
            events.append("round")
        real_round(self)

    def measure(*args, **kwargs):
        events.append("layer")
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(profiler.RoundRobin, "next_round", next_round)
    monkeypatch.setattr(profiler, "measure", measure)
    out = tmp_path / "run"
    result = run_cli("profile-latency", *QUICK, "cost.rounds=3", "cost.cache=false", f"out={out}")
    assert result.exit_code == 0, result.output
    # 73 layers: a round before the 1st, the 25th and the 49th layer timed.
    assert [events[:i].count("layer") for i, e in enumerate(events) if e == "round"] == [0, 24, 48]
    frame = pd.read_csv(out / "validation.csv")
    assert (frame[["measured_even_ms", "measured_odd_ms"]] > 0).all().all()
    info = json.loads((out / "lut.json").read_text())
    repeat = info["meta"]["repeatability"]
    assert 0 <= repeat["within_5"] <= repeat["within_10"] <= 1
    assert "agree within ±10%" in result.output
    flagged = "did not repeat itself" in " ".join(result.output.split())
    assert flagged == (repeat["within_10"] < 0.9)
    # The two sets are mixed in measuring order: 5 calibration and 4 validation archs.
    assert frame.set.tolist() == ["validate", "calibrate"] * 4 + ["calibrate"]
    # The in-network lines come from every layer of the calibration archs, and only theirs.
    rows = pd.read_csv(out / "in_network.csv")
    calibration = frame[frame.set == "calibrate"]
    assert len(rows) == calibration.layers.sum() and rows.network.nunique() == 5
    assert (rows.inside_ms > 0).all() and set(info["in_network"]) == {POOLED, *rows.group}
    alone = info["meta"]["alone"]
    assert alone["correction_kind"] in CORRECTIONS and 0 <= alone["within_10"] <= 1
    assert (frame.alone_sum_ms > 0).all() and "summed as timed alone instead" in result.output


@pytest.mark.parametrize("override", ["cost.in_network=false", "cost.backend=onnxruntime"])
def test_without_in_network_lines_layers_are_summed_as_timed_alone(run_cli, tmp_path, override):
    out = tmp_path / "run"
    result = run_cli("profile-latency", *QUICK, override, "cost.cache=false", f"out={out}")
    assert result.exit_code == 0, result.output
    if "backend" in override:  # hooks need eager torch modules: said, not silently skipped
        assert "with onnxruntime they are summed as timed alone" in " ".join(result.output.split())
    info = json.loads((out / "lut.json").read_text())
    assert info["in_network"] == {} and info["meta"]["alone"] is None
    frame = pd.read_csv(out / "validation.csv")
    assert (frame.layer_sum_ms == frame.alone_sum_ms).all()
    assert not (out / "in_network.csv").exists()


def test_a_measurement_that_does_not_repeat_itself_is_flagged(run_cli, tmp_path, monkeypatch):
    from nascli.cost import profiler

    def halves(self):  # every validation arch twice as slow in the odd rounds as in the even
        even = np.arange(1.0, len(self.samples) + 1)
        return even, 2 * even

    monkeypatch.setattr(profiler.RoundRobin, "halves", halves)
    out = tmp_path / "run"
    result = run_cli("profile-latency", *QUICK, "cost.cache=false", f"out={out}")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "lut.json").read_text())["meta"]["repeatability"]["within_10"] == 0
    assert "did not repeat itself" in " ".join(result.output.split())


def test_round_robin_halves_are_the_even_and_the_odd_rounds():
    robin = RoundRobin([], Protocol(threads=1, runs=4), rounds=4)
    robin.samples = [[[1.0], [5.0], [3.0], [7.0]], [[2.0], [2.0], [4.0], [4.0]]]
    even, odd = robin.halves()
    assert even.tolist() == [2.0, 3.0] and odd.tolist() == [6.0, 3.0]
    assert [t.median_ms for t in robin.timings()] == [4.0, 3.0]
    robin.samples = [[[1.0]]]
    with pytest.raises(NascliError, match="two rounds"):
        robin.halves()


@pytest.mark.slow
def test_profile_latency_of_one_architecture(run_cli, tmp_path):
    out = tmp_path / "one"
    result = run_cli("profile-latency", "arch=proxylessnas_mobile", *QUICK, f"out={out}")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "latency.json").read_text())
    assert record["median_ms"] > 0 and record["protocol"]["threads"] == 1


def test_lut_layers_time_with_the_onnxruntime_backend():
    # The classifier entry is an nn.Sequential, whose forward argument is not named `x`.
    layers = distinct_layers(SPACES["proxylessnas"], PROXY)
    classifier = next(layer for layer in layers.values() if layer.kind == "linear")
    block = next(layer for layer in layers.values() if layer.kind == "ibn")
    protocol = Protocol(backend="onnxruntime", threads=1, warmup=1, runs=3)
    for layer in (classifier, block):
        module, shape = layer_module(layer)
        timing = measure(module, (1, *shape), protocol)
        assert timing.median_ms > 0 and timing.runs == 3
        assert protocol.describe()["onnxruntime"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("cost.calibrate=4", "cost.calibrate=4: expected ≥ 5"),
        ("cost.rounds=0", "cost.rounds=0: expected ≥ 1"),
        ("cost.probe_every=-1", "cost.probe_every=-1: expected ≥ 0"),
        ("cost.allocator=tcmalloc", "cost.allocator='tcmalloc': expected one of steady, default"),
    ],
)
def test_bad_table_settings_are_refused_before_any_timing(run_cli, tmp_path, override, message):
    result = run_cli("profile-latency", override, f"out={tmp_path / 'run'}")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "lut_partial.csv").exists()


def test_a_partial_table_cut_mid_line_is_cut_back_to_its_last_whole_line(tmp_path):
    from nascli.cost.profiler import read_partial

    partial = tmp_path / "lut_partial.csv"
    partial.write_text("")
    assert read_partial(partial) == {}
    partial.write_text('"a",0.1234567890123,0.5,0\n"b",0.25,0.5,1\n"c",0.3')
    assert read_partial(partial) == {"a": (0.1234567890123, 0.5, 0), "b": (0.25, 0.5, 1)}
    assert partial.read_text() == '"a",0.1234567890123,0.5,0\n"b",0.25,0.5,1\n'
