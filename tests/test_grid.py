import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nascli.cost.analytic import network_cost
from nascli.cost.models import Pixel1Cost
from nascli.errors import NascliError
from nascli.jobs.grid_search import measure_points
from nascli.search.grid import GridSettings, grid_points
from nascli.space.arch import get_space, load_architecture
from nascli.space.depth import deepen_indices, round_repeats
from nascli.space.network import NetworkSettings, block_width, decode, make_divisible
from tests.conftest import SPACE_NAMES, TINY, assert_common_summary, random_archs


def repeats(space_name: str, indices, depth: float) -> dict[str, int]:
    """Inverted bottlenecks and separable convs per block of the decoded network."""
    network = decode(get_space(space_name, depth), indices, NetworkSettings())
    counts: dict[str, int] = {}
    for layer in network.layers:
        if layer.kind in ("ibn", "sepconv"):
            block = layer.name.split(".")[0]
            counts[block] = counts.get(block, 0) + 1
    return counts


# ------------------------------------------------------------------ EfficientNet's rounding
def test_round_repeats_is_a_ceiling_and_round_filters_keeps_the_ten_percent_guard():
    assert [round_repeats(n, d) for n, d in ((3, 1.2), (2, 1.1), (1, 1.1), (4, 1.0))] == [
        4,
        3,
        2,
        4,
    ]  # fmt: skip  (round() would give 4, 2, 1)
    assert make_divisible(32 * 1.1) == 32 and make_divisible(1280 * 1.4) == 1792
    # 17 × 0.7 = 11.9: the nearest multiple of 8 is 8, 33% below, so round_filters gives 16
    tunas = NetworkSettings(width_multiplier=0.7)
    efficientnet = NetworkSettings(width_multiplier=0.7, width_rounding="efficientnet")
    assert (block_width(17, tunas), block_width(17, efficientnet)) == (8, 16)


@pytest.mark.parametrize("space_name", SPACE_NAMES)
@pytest.mark.parametrize("depth", [1.2, 1.5, 2.0])
def test_a_deepened_architecture_has_ceil_d_n_layers_per_block_copying_the_last(space_name, depth):
    space = get_space(space_name)
    deep = get_space(space_name, depth)
    assert deep.name == f"{space_name}@depth{depth:g}" and get_space(deep.name) is deep
    for indices in random_archs(space_name, 6, seed=3):
        deeper = deepen_indices(space, indices, depth)
        before = repeats(space_name, indices, 1.0)
        after = repeats(space_name, deeper, depth)
        assert after == {b: round_repeats(n, depth) for b, n in before.items()}
        # the added layers are copies of the block's last active layer, at stride 1
        shallow = decode(space, indices, NetworkSettings()).layers
        layers = decode(deep, deeper, NetworkSettings()).layers
        for block, n in before.items():
            last = [x for x in shallow if x.name.startswith(block + ".") and x.kind != "conv"][-1]
            ours = [x for x in layers if x.name.startswith(block + ".") and x.kind == last.kind]
            for copy in ours[n:]:
                assert (copy.kernel, copy.expansion, copy.se_channels > 0, copy.stride) == (
                    last.kernel, last.expansion, last.se_channels > 0, 1,
                )  # fmt: skip
                assert copy.residual


def test_references_and_arch_json_are_deepened_and_pixel1_refuses_a_deepened_space():
    space = get_space("proxylessnas")
    mobile = load_architecture("proxylessnas_mobile", space)
    deep = get_space("proxylessnas", 1.2)
    assert load_architecture("proxylessnas_mobile", deep).indices == deepen_indices(
        space, mobile.indices, 1.2
    )
    with pytest.raises(NascliError, match="tunas_pixel1"):
        Pixel1Cost(deep, NetworkSettings())
    with pytest.raises(NascliError, match="≥ 1"):
        get_space("proxylessnas@depth0.5")


def test_compound_scaling_grows_flops_by_about_alpha_beta2_gamma2_to_the_phi():
    settings = GridSettings.from_config({"mode": "compound", "max_macs": 1e12, "phi_max": 3})
    space = get_space("proxylessnas")
    base = load_architecture("proxylessnas_mobile", space).indices
    macs = []
    for point in grid_points(settings, 1.0, 224):
        depth = point["space.depth_multiplier"]
        net_settings = NetworkSettings(
            resolution=point["data.resolution"], width_multiplier=point["space.width_multiplier"]
        )
        network = decode(get_space("proxylessnas", depth), deepen_indices(space, base, depth),
                         net_settings)  # fmt: skip
        macs.append(network_cost(network).macs)
    growth = 1.2 * 1.1**2 * 1.15**2  # 1.92; α·β·γ (the classic slip) would be 1.52
    for phi in (1, 2, 3):
        # rounding (ceil of 1-layer stages, SAME padding at sizes not a multiple of 32, widths
        # to multiples of 8) puts φ = 1 at 2.5×; the trend is the formula's
        assert 0.85 <= macs[phi] / macs[0] / growth**phi <= 1.35, (phi, macs[phi] / macs[0])


def test_step_one_keeps_the_coefficients_that_double_the_flops_and_they_do():
    """EfficientNet §3.3 step 1: at φ = 1, α·β²·γ² ≈ 2 (not α·β·γ), B0's 1.2, 1.1, 1.15 among
    them; each point's network has about twice the base's MACs."""
    settings = GridSettings.from_config({"mode": "coefficients"})
    points = grid_points(settings, 1.0, 224)
    formula = [p["alpha"] * p["beta"] ** 2 * p["gamma"] ** 2 for p in points]
    assert len(points) == 40 and all(1.9 <= f <= 2.1 for f in formula)
    assert (1.2, 1.1, 1.15) in {(p["alpha"], p["beta"], p["gamma"]) for p in points}
    grid = settings.coefficient_grid
    every = [a * b**2 * g**2 for a in grid["alpha"] for b in grid["beta"] for g in grid["gamma"]]
    assert sum(1.9 <= f <= 2.1 for f in every) == len(points)  # none missed
    space = get_space("proxylessnas")
    base = load_architecture("proxylessnas_mobile", space).indices
    base_macs = network_cost(decode(space, base, NetworkSettings())).macs
    for point, growth in zip(points, formula, strict=True):
        depth = point["space.depth_multiplier"]
        net_settings = NetworkSettings(
            resolution=point["data.resolution"], width_multiplier=point["space.width_multiplier"]
        )
        network = decode(get_space("proxylessnas", depth), deepen_indices(space, base, depth),
                         net_settings)  # fmt: skip
        # rounding only adds: repeats round up, widths to the nearest multiple of 8 (≥ 90%)
        assert 1.0 <= network_cost(network).macs / base_macs / growth <= 1.55, point


def test_bad_coefficient_grids_are_refused_in_one_line():
    with pytest.raises(NascliError, match=r"strategy\.coefficient_grid: give"):
        GridSettings.from_config({"mode": "coefficients", "coefficient_grid": {"alpha": [1.2]}})
    with pytest.raises(NascliError, match=r"strategy\.coefficient_grid: give"):
        bad = {"alpha": [0.5], "beta": [1.1], "gamma": [1.1]}
        GridSettings.from_config({"mode": "coefficients", "coefficient_grid": bad})
    with pytest.raises(NascliError, match="no α, β, γ with"):
        none = {"alpha": [1.0], "beta": [1.0], "gamma": [1.0]}
        GridSettings.from_config({"mode": "coefficients", "coefficient_grid": none})


# ------------------------------------------------------------------ points and budgets
def grid_config(*overrides: str):
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        return compose("search", ["strategy=grid", "train=candidate_cpu", *TINY, *overrides])


def test_points_over_a_budget_are_rejected_before_training_and_compound_keeps_the_largest_phi():
    cfg = grid_config()
    settings = GridSettings.from_config(OmegaConf.to_container(cfg.strategy) | {"max_macs": 5e6})
    grid = measure_points(cfg, settings)
    statuses = {p["status"] for p in grid["points"]}
    assert statuses == {"fit", "over_macs"}
    assert all((p["macs"] <= 5e6) == (p["status"] == "fit") for p in grid["points"])
    compound = GridSettings.from_config(
        {"mode": "compound", "max_macs": 3e6, "phi_max": 6, "phi_step": 1.0}
    )
    points = measure_points(cfg, compound)["points"]
    fit = [p for p in points if p["status"] == "fit"]
    assert len(fit) == 1
    assert all(p["macs"] > 3e6 for p in points if p["phi"] > fit[0]["phi"])
    assert all(p["status"] == "smaller_phi" for p in points if p["phi"] < fit[0]["phi"])


def test_bad_grids_are_refused_in_one_line():
    with pytest.raises(NascliError, match="budget"):
        GridSettings.from_config({"mode": "compound"})
    with pytest.raises(NascliError, match=r"strategy\.axes"):
        GridSettings.from_config({"axes": {}})
    cfg = grid_config()
    settings = GridSettings.from_config({"axes": {"space.width_multiplie": [1.0]}})
    with pytest.raises(NascliError, match="not a config key"):
        measure_points(cfg, settings)
    settings = GridSettings.from_config({"axes": {"data.resolution": [2]}})
    with pytest.raises(NascliError, match=r"data\.resolution"):
        measure_points(cfg, settings)


def test_a_cost_budget_the_grid_cannot_move_is_refused():
    """Pixel-1 predicts TuNAS's one 224 px, width-1 network: every width x resolution point
    would cost the same, so a max_cost under it would keep all or none of them."""
    cfg = grid_config("cost=tunas_pixel1")
    pixel1 = GridSettings.from_config({"max_cost": 40.0})
    with pytest.raises(NascliError, match="ignores the network settings the grid varies"):
        measure_points(cfg, pixel1)
    unbudgeted = measure_points(cfg, GridSettings.from_config({}))["points"]
    assert len({p["cost"] for p in unbudgeted}) == 1  # the column is constant: hence the refusal
    macs = measure_points(grid_config("cost=macs"), GridSettings.from_config({"max_cost": 5e6}))
    assert {p["status"] for p in macs["points"]} == {"fit", "over_cost"}


@pytest.mark.slow
def test_coefficient_search_trains_each_doubling_within_budget_and_names_the_compound_run(
    run_cli, tmp_path
):
    out = tmp_path / "coefficients"
    grid = "{alpha:[1.0,1.2],beta:[1.0,1.1],gamma:[1.0,1.15,1.4]}"
    args = (
        "search", "strategy=grid", "strategy.mode=coefficients", "train=candidate_cpu", *TINY,
        "train.epochs=1", f"strategy.coefficient_grid={grid}", "strategy.flops_tolerance=0.1",
        "strategy.max_params=300000", f"out={out}",
    )  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    points = pd.read_csv(out / "points.csv")
    # α·β²·γ² within 10% of 2: (1, 1, 1.4) 1.96, (1, 1.1, 1.15) 1.60 no, (1.2, 1.1, 1.15) 1.92,
    # (1.2, 1, 1.4) 2.35 no, (1.0, 1.0, 1.15) 1.32 no, ...
    kept = {(a, b, g) for a, b, g in zip(points["alpha"], points["beta"], points["gamma"],
                                          strict=True)}  # fmt: skip
    assert kept == {(1.0, 1.0, 1.4), (1.2, 1.1, 1.15)}
    assert sorted(points["status"]) == ["done", "over_params"]  # B0's doubling is over it
    done = points[points["status"] == "done"]
    assert list(done["alpha"]) == [1.0] and (done["params"] <= 300000).all()
    summary = json.loads((out / "summary.json").read_text())
    best = done.loc[done["valid_top1"].idxmax()]
    expected = {"alpha": best["alpha"], "beta": best["beta"], "gamma": best["gamma"]}
    assert summary["coefficients"] == expected
    scale = f"strategy.alpha={best['alpha']:g} strategy.beta={best['beta']:g}"
    assert f"strategy.mode=compound {scale}" in " ".join(result.output.split())


@pytest.mark.slow
def test_a_grid_search_trains_only_the_points_within_budget_and_resumes(run_cli, tmp_path):
    out = tmp_path / "grid"
    args = (
        "search", "strategy=grid", "train=candidate_cpu", *TINY, "train.epochs=1",
        "strategy.axes={space.width_multiplier:[0.5,0.25],space.depth_multiplier:[1,1.5]}",
        "strategy.max_params=500000", f"out={out}",
    )  # fmt: skip
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    points = pd.read_csv(out / "points.csv")
    over = points[points["status"] == "over_params"]
    done = points[points["status"] == "done"]
    assert len(over) == 2 and len(done) == 2 and (done["params"] <= 500000).all()
    trained = sorted(int(p.name) for p in (out / "points").iterdir())
    assert trained == list(range(len(done)))  # nothing over budget was ever trained
    summary = json.loads((out / "summary.json").read_text())
    assert_common_summary(summary, "search", "grid")
    best = done.loc[done["valid_top1"].idxmax()]
    assert summary["point"]["space.depth_multiplier"] == best["space.depth_multiplier"]
    assert summary["rejected"] == {"over_params": 2}
    arch = json.loads((out / "arch.json").read_text())
    assert arch["space"] == best["space"] and arch["totals"]["params"] == best["params"]
    deep = points[points["space.depth_multiplier"] == 1.5]
    assert set(deep["space"]) == {"proxylessnas@depth1.5"} and "done" in set(deep["status"])
    again = run_cli(*args)  # every point has its result: nothing trains again
    assert again.exit_code == 0, again.output
    assert "resuming from point 2 of 2" in again.output
