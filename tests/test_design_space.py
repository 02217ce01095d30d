"""MCUNet's TinyNAS stage 1 (NeurIPS 2020 §3.1): spaces ranked by the mean MACs of the samples
within every memory budget (mistakes: a budget not gating, rejected samples in the ranking,
mean over all samples, kB vs KiB)."""

import json

import pandas as pd
import pytest
import torch

from nascli.cost.analytic import network_cost
from nascli.errors import NascliError
from nascli.search.design import Budgets, rank_design_spaces
from nascli.space.arch import get_space, sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES

SPACE = SPACES["proxylessnas"]
BASE = NetworkSettings(num_classes=10, in_channels=3)


def decoded(width, resolution, samples=60, seed=0):
    settings = NetworkSettings(num_classes=10, in_channels=3, resolution=resolution,
                               width_multiplier=width)  # fmt: skip
    indices = sample_indices(SPACE, samples, torch.Generator().manual_seed(seed))
    return [network_cost(decode(SPACE, row, settings)) for row in indices.tolist()]


def test_the_mean_is_over_the_samples_within_both_budgets_only():
    widths, resolutions = [0.35, 0.5], [96, 128]
    budgets = Budgets(sram=200e3, flash=600e3)
    report = rank_design_spaces(SPACE, BASE, widths, resolutions, 60, budgets)
    assert len(report.ranked) == 4
    for row in report.ranked:
        costs = decoded(row.width, row.resolution)
        fit = [c for c in costs if c.sram_bytes <= 200e3 and c.flash_bytes <= 600e3]
        assert row.fit == len(fit)
        assert row.over_sram == sum(c.sram_bytes > 200e3 for c in costs)
        assert row.over_flash == sum(c.flash_bytes > 600e3 for c in costs)
        if fit:
            assert row.mean_macs == pytest.approx(sum(c.macs for c in fit) / len(fit))
            assert row.mean_macs <= max(c.macs for c in fit)
    means = [r.mean_macs for r in report.ranked if r.fit]
    assert means == sorted(means, reverse=True)


def test_each_budget_gates_a_sample_on_its_own():
    widths, resolutions = [0.5], [128]
    sram_only = rank_design_spaces(SPACE, BASE, widths, resolutions, 60, Budgets(sram=200e3))
    flash_only = rank_design_spaces(SPACE, BASE, widths, resolutions, 60, Budgets(flash=600e3))
    both = rank_design_spaces(SPACE, BASE, widths, resolutions, 60, Budgets(200e3, 600e3))
    a, b, c = sram_only.ranked[0], flash_only.ranked[0], both.ranked[0]
    assert a.over_sram > 0 and b.over_flash > 0  # the budgets bind at this size
    assert c.fit < min(a.fit, b.fit) and c.fit >= 60 - a.over_sram - b.over_flash


def test_a_budget_on_a_cost_fitted_to_one_space_is_refused():
    for name in ("tunas_pixel1", "measured"):
        with pytest.raises(NascliError, match="needs an analytic cost"):
            Budgets(cost=name, max_cost=4.0)
    with pytest.raises(NascliError, match=r"no lut cost for the spaces \[\(0\.5, 96\)\]"):
        rank_design_spaces(SPACE, BASE, [0.5], [96], 10, Budgets(cost="lut", max_cost=4.0))


def test_design_space_command_writes_the_ranking_and_the_winners_overrides(run_cli, tmp_path):
    out = tmp_path / "d"
    result = run_cli(
        "design-space", "design.widths=[0.3,0.5]", "design.resolutions=[96,128]",
        "design.samples=100", "data=synthetic", "data.in_channels=3", f"out={out}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "design_space.csv")
    assert len(frame) == 4 and list(frame["rank"]) == [1, 2, 3, 4]
    width, resolution = float(frame["width"][0]), int(frame["resolution"][0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sram_budget"] == 320_000 and summary["flash_budget"] == 1_000_000  # kB
    assert (summary["best_width"], summary["best_resolution"]) == (width, resolution)
    expected = f"space.width_multiplier={width:g} data.resolution={resolution}"
    assert expected in " ".join(result.output.split())
    assert "1,200 cost evaluations" in result.output  # 4 spaces × 100 samples × 3 metrics
    assert (out / "plots" / "macs_cdf.png").stat().st_size > 0


def test_budget_keys_override_the_boards_memories(run_cli, tmp_path):
    grid = ("design.widths=[0.3,0.5]", "design.resolutions=[96,128]", "design.samples=50",
            "data=synthetic", "data.in_channels=3")  # fmt: skip
    out = tmp_path / "b"
    result = run_cli("design-space", *grid, "budget.sram=100e3", f"out={out}")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sram_budget"] == 100_000 and summary["flash_budget"] == 1_000_000
    none = run_cli("design-space", *grid, "board=none", f"out={tmp_path / 'n'}")
    assert none.exit_code == 2 and "no budget: choose a board= or set budget.sram=" in none.output
    params = tmp_path / "p"  # any of the search's budgets, each with its own column
    result = run_cli("design-space", *grid, "board=none", "budget.params=400e3", f"out={params}")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(params / "design_space.csv")
    indices = sample_indices(SPACE, 50, torch.Generator().manual_seed(0)).tolist()
    for width, resolution, over in zip(frame["width"], frame["resolution"],
                                       frame["over_params"], strict=True):  # fmt: skip
        settings = NetworkSettings(num_classes=4, in_channels=3, resolution=resolution,
                                   width_multiplier=width)  # fmt: skip
        counted = [network_cost(decode(SPACE, row, settings)).params for row in indices]
        assert over == sum(c > 400e3 for c in counted)
    assert (
        0 < frame["over_params"].sum() < 200 and (frame["fit"] == 50 - frame["over_params"]).all()
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget.flash=0", "budget.flash=0.0: expected > 0"),
        ("design.widths=[0.5,0]", "design.widths=[0.5, 0]: expected a non-empty list"),
        ("design.resolutions=[96.5]", "design.resolutions=[96.5]: expected a non-empty list"),
        ("board.sram=-1", "board.sram=-1"),
    ],
)
def test_a_bad_grid_or_board_is_refused_before_work(run_cli, tmp_path, override, message):
    out = tmp_path / "bad"
    result = run_cli("design-space", override, f"out={out}")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (out / "design_space.csv").exists()


LUT_GRID = ("design.widths=[0.3,0.5]", "design.resolutions=[64,96]", "design.samples=80",
            "data=synthetic", "data.in_channels=3", "cost=lut", "cost.threads=1")  # fmt: skip


def cache_fake_tables(grid, skip=()):
    """A fake latency table per space of `grid` (a layer's 'latency' is its MACs in millions,
    plus 0.01 ms per layer), stored where `cost=lut` looks for this machine's tables."""
    from hydra import compose, initialize_config_module

    from nascli.config import network_settings
    from nascli.cost.analytic import layer_cost
    from nascli.cost.lut import LookupTable, distinct_layers
    from nascli.cost.models import cached_lut_path, lut_identity
    from nascli.cost.timing import protocol_from_config

    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose("design_space", list(grid))
    base, protocol = network_settings(cfg), protocol_from_config(cfg.cost, "cpu")
    tables = {}
    for width in cfg.design.widths:
        for resolution in cfg.design.resolutions:
            settings = NetworkSettings(**{**vars(base), "width_multiplier": width,
                                          "resolution": resolution})  # fmt: skip
            layers = distinct_layers(SPACE, settings)
            entries = {key: layer_cost(layer).macs / 1e6 for key, layer in layers.items()}
            identity = lut_identity(SPACE, settings, protocol)
            table = LookupTable(entries, identity, {"per_layer": 0.01, "offset": 0.2})
            tables[(width, resolution)] = (table, settings)
            if (width, resolution) not in skip:
                table.save(cached_lut_path(identity))
    return tables


def test_a_latency_table_per_space_is_a_budget_of_the_design_space(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tables = cache_fake_tables(LUT_GRID)
    out = tmp_path / "d"
    result = run_cli("design-space", *LUT_GRID, "board=none", "design.max_cost=8.5", f"out={out}")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "design_space.csv")
    indices = sample_indices(SPACE, 80, torch.Generator().manual_seed(0)).tolist()
    over = {}
    for (width, resolution), (table, settings) in tables.items():  # each network decoded
        predicted = [table.predict(decode(SPACE, row, settings)) for row in indices]
        over[(width, resolution)] = sum(ms > 8.5 for ms in predicted)
    columns = zip(frame["width"], frame["resolution"], frame["over_cost"], strict=True)
    got = {(w, r): n for w, r, n in columns}
    assert got == over and 0 < over[(0.3, 96)] < 80 and over[(0.5, 96)] == 80
    assert (frame["fit"] == 80 - frame["over_cost"]).all()  # no memory budget: only the cost's
    assert (frame["width"].iloc[-1], frame["resolution"].iloc[-1]) == (0.5, 96)  # none fits


def test_a_missing_latency_table_is_named_with_the_sweep_that_makes_it(
    run_cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache_fake_tables(LUT_GRID, skip=[(0.5, 96)])
    out = tmp_path / "d"
    result = run_cli("design-space", *LUT_GRID, "design.max_cost=3", f"out={out}")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "no latency table for 1 of the 4 spaces (w0.5 r96)" in message
    assert "nascli profile-latency -m space=proxylessnas space.width_multiplier=0.5 " in message
    assert not (out / "design_space.csv").exists()
    with_path = run_cli("design-space", *LUT_GRID, "design.max_cost=3", "cost.path=x.csv",
                        f"out={tmp_path / 'p'}")  # fmt: skip
    assert with_path.exit_code == 2 and "leave cost.path unset" in with_path.output


def test_a_nasrl_space_is_ranked_with_its_decoded_costs(run_cli, tmp_path):
    out = tmp_path / "n"
    result = run_cli("design-space", "space=nasrl_strides", "space.layers=3",
                     "design.widths=[0.25,1]", "design.resolutions=[16,32]",
                     "design.samples=40", "board=none", "budget.sram=20e3",
                     "data=synthetic", "data.in_channels=3", f"out={out}")  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "design_space.csv")
    space = get_space("nasrl_strides@layers3")
    indices = sample_indices(space, 40, torch.Generator().manual_seed(0)).tolist()
    for width, resolution, over in zip(frame["width"], frame["resolution"], frame["over_sram"],
                                       strict=True):  # fmt: skip
        settings = NetworkSettings(num_classes=4, in_channels=3, resolution=resolution,
                                   width_multiplier=width)  # fmt: skip
        costs = [network_cost(decode(space, row, settings)).sram_bytes for row in indices]
        assert over == sum(c > 20e3 for c in costs), (width, resolution)
    assert 0 < frame["over_sram"].sum() < 160
    assert "nascli search space=nasrl_strides space.layers=3 strategy=nasrl" in " ".join(
        result.output.split()
    )
