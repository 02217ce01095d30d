import json

import pandas as pd
import pytest
import torch

from nascli.cost.analytic import network_cost
from nascli.cost.models import AnalyticCost, Pixel1Cost
from nascli.errors import NascliError
from nascli.search.zen import (
    EvolutionSearch,
    ZenSettings,
    active_decisions,
    mutate,
)
from nascli.space.arch import get_space, smallest_indices, validate_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.references import references_in
from tests.conftest import SPACE_NAMES, TINY, assert_common_summary, random_archs

SMALL = NetworkSettings(resolution=16, num_classes=4, in_channels=1, width_multiplier=0.25)


def settings(**overrides) -> ZenSettings:
    values = {"population_size": 6, "iterations": 40, "batch_size": 4} | overrides
    return ZenSettings.from_config(values)


def make_search(space_name="proxylessnas", max_cost=None, seed=0, **overrides):
    space = get_space(space_name)
    return EvolutionSearch(
        space, SMALL, settings(**overrides), Pixel1Cost(space, SMALL), max_cost, seed
    )


@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_mutation_stays_in_the_space_and_changes_one_or_two_active_decisions(space_name):
    space = get_space(space_name)
    generator = torch.Generator().manual_seed(0)
    counts = {1: 0, 2: 0}
    for parent in random_archs(space_name, 300, seed=1):
        for draws in (1, 2):
            child, changed = mutate(space, parent, draws, generator)
            validate_indices(space, child)
            differs = [p for p in range(len(parent)) if parent[p] != child[p]]
            assert sorted(changed) == differs
            assert 1 <= len(differs) <= draws
            assert set(differs) <= set(active_decisions(space, parent))
            if draws == 2:
                counts[len(differs)] += 1
    assert counts[2] > counts[1] > 0  # a repeated draw is skipped, so both happen


def test_active_decisions_skip_the_options_of_a_skipped_layer():
    space = get_space("proxylessnas")
    kernel, expansion, op = 6, 7, 8  # b2.1: kernel, expansion, layer-or-skip
    assert space.decisions[op].path == "b2.1.op"
    indices = list(smallest_indices(space))
    assert indices[op] == 1  # the smallest network skips b2.1
    active = active_decisions(space, tuple(indices))
    assert op in active and kernel not in active and expansion not in active
    indices[op] = 0
    active = active_decisions(space, tuple(indices))
    assert kernel in active and expansion in active
    assert 0 not in active  # single-choice decisions are never mutated


@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_the_smallest_architecture_is_valid_and_cheapest(space_name):
    space = get_space(space_name)
    smallest = smallest_indices(space)
    validate_indices(space, smallest)
    macs = network_cost(decode(space, smallest, SMALL)).macs
    others = [network_cost(decode(space, a, SMALL)).macs for a in random_archs(space_name, 50)]
    assert macs <= min(others)


def test_over_budget_candidates_are_rejected_and_still_count_as_iterations():
    probe = make_search()
    start = probe.cost_model.cost(probe.initial)
    search = make_search(max_cost=start + 4.0, proxy="params")
    outcomes = [search.step() for _ in range(40)]
    rejected = [o for o in outcomes if o.status == "over_cost"]
    assert rejected and all(o.cost > start + 4.0 for o in rejected)
    assert search.iteration == 40
    assert sum(search.counts.values()) == 40
    assert search.counts["scored"] + len(rejected) == 40
    assert all(m.cost <= start + 4.0 for m in search.population)


def test_analytic_budgets_are_checked_too():
    space = get_space("mnv3")
    initial = smallest_indices(space)
    limit = network_cost(decode(space, initial, SMALL)).params * 1.02
    search = EvolutionSearch(
        space, SMALL, settings(max_params=limit, proxy="macs"), AnalyticCost(space, SMALL, "macs"),
        None, 0,
    )  # fmt: skip
    for _ in range(30):
        search.step()
    assert search.counts.get("over_params", 0) > 0
    assert all(m.params <= limit for m in search.population)


def test_an_initial_architecture_over_budget_is_refused():
    with pytest.raises(NascliError, match="raise the budget"):
        make_search(max_cost=1.0)


def test_the_population_keeps_the_best_scores_and_its_size():
    search = make_search(proxy="params", population_size=5)
    scored = []
    for _ in range(40):
        outcome = search.step()
        if outcome.status == "scored":
            scored.append(outcome.score)
        assert len(search.population) <= 6  # trimmed at the top of each iteration
    final = sorted(m.score for m in search.population)
    assert final[-5:] == sorted(scored)[-5:]
    assert search.best().score == max(scored)


def test_the_first_candidates_are_single_mutations_of_the_initial_architecture():
    search = make_search(proxy="random", init_population=10)
    for _ in range(8):
        outcome = search.step()
        differs = [
            p
            for p, (a, b) in enumerate(zip(search.initial, outcome.indices, strict=True))
            if a != b
        ]
        assert len(differs) == 1


def test_resuming_from_state_gives_the_uninterrupted_population():
    whole = make_search()
    for _ in range(20):
        whole.step()
    first = make_search()
    for _ in range(8):
        first.step()
    state = json.loads(json.dumps(first.state()))  # what a checkpoint keeps survives a round trip
    resumed = make_search()
    resumed.load_state(state)
    for _ in range(12):
        resumed.step()
    assert [(m.indices, m.score) for m in resumed.population] == [
        (m.indices, m.score) for m in whole.population
    ]


def test_unknown_strategy_options_are_refused():
    with pytest.raises(NascliError, match=r"unknown option\(s\) strategy\."):
        ZenSettings.from_config({"population": 3})
    with pytest.raises(NascliError, match=r"strategy\.proxy"):
        ZenSettings.from_config({"proxy": "snip"})


ZEN_TINY = [
    *TINY,
    "strategy=zen",
    "strategy.population_size=6",
    "strategy.batch_size=4",
    "strategy.log_every=5",
    "strategy.checkpoint_every=10",
]


@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_zen_search_command_writes_the_run_on_every_space(run_cli, tmp_path, space_name):
    out = tmp_path / space_name
    result = run_cli("search", f"space={space_name}", *ZEN_TINY, "strategy.iterations=25",
                     f"out={out}")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("arch.json", "summary.json", "search_log.csv", "population.csv", "last.pt",
                 "plots/zen_scores.png"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert_common_summary(summary, "search", "zen")
    assert summary["strategy"] == "zen" and summary["space"] == space_name
    assert summary["iterations"] == 25 and summary["cost"] <= summary["target"]
    population = pd.read_csv(out / "population.csv", dtype={"indices": str})
    assert population["score"].iloc[0] == summary["score"] == population["score"].max()
    assert json.loads((out / "arch.json").read_text())["indices"] == summary["indices"]


def test_budget_keys_bound_the_search_like_the_strategys_own(run_cli, tmp_path):
    """`budget.flash=` / `budget.sram=` are the strategy's `max_flash` / `max_sram`: the result
    fits both and each budget rejected candidates; the two spellings give the same run."""
    budgets = ("budget.flash=70e3", "budget.sram=12.3e3")
    out = tmp_path / "b"
    result = run_cli("search", *ZEN_TINY, "strategy.iterations=25", *budgets, f"out={out}")
    assert result.exit_code == 0, result.output
    totals = json.loads((out / "arch.json").read_text())["totals"]
    assert totals["flash_bytes"] <= 70e3 and totals["sram_bytes"] <= 12.3e3
    rejected = json.loads((out / "summary.json").read_text())["rejected"]
    assert rejected["over_flash"] > 0 and rejected["over_sram"] > 0
    own = ("strategy.max_flash=70e3", "strategy.max_sram=12.3e3")
    same = run_cli("search", *ZEN_TINY, "strategy.iterations=25", *own, f"out={tmp_path / 's'}")
    assert same.exit_code == 0, same.output
    assert (tmp_path / "s" / "arch.json").read_text() == (out / "arch.json").read_text()


def test_zen_search_resumes_and_extends_a_finished_run(run_cli, tmp_path):
    out = tmp_path / "z"
    first = run_cli("search", *ZEN_TINY, "strategy.iterations=12", f"out={out}")
    assert first.exit_code == 0, first.output
    log = pd.read_csv(out / "search_log.csv")
    more = run_cli("search", *ZEN_TINY, "strategy.iterations=20", f"out={out}")
    assert more.exit_code == 0, more.output
    assert "resuming from iteration 12" in more.output
    extended = pd.read_csv(out / "search_log.csv")
    assert extended["iteration"].iloc[-1] == 20
    pd.testing.assert_frame_equal(extended.iloc[: len(log)], log)
    whole = run_cli("search", *ZEN_TINY, "strategy.iterations=20", f"out={tmp_path / 'w'}")
    assert whole.exit_code == 0, whole.output
    straight = pd.read_csv(tmp_path / "w" / "search_log.csv")
    columns = [c for c in straight.columns if c != "seconds"]
    # the first run's final row (iteration 12) is extra; every other row is identical
    common = extended[extended["iteration"].isin(straight["iteration"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(common[columns], straight[columns])
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "population.csv"), pd.read_csv(tmp_path / "w" / "population.csv")
    )
    other = run_cli("search", *ZEN_TINY, "strategy.proxy=naswot", f"out={out}")
    assert other.exit_code == 2 and "belongs to a different run" in other.output


def test_zen_search_result_is_built_and_compared(run_cli, tmp_path):
    out = tmp_path / "z"
    assert run_cli("search", *ZEN_TINY, "strategy.iterations=10", f"out={out}").exit_code == 0
    built = run_cli("build", f"arch={out}", *TINY, f"out={tmp_path / 'b'}")
    assert built.exit_code == 0, built.output
    compared = run_cli("compare", str(out), "--plot", "")
    assert compared.exit_code == 0 and "zen" in compared.output


def test_random_and_named_initial_architectures():
    probe = make_search()
    limit = probe.cost_model.cost(probe.initial) + 25.0
    search = make_search(max_cost=limit, init="random", seed=3)
    assert search.cost_model.cost(search.initial) <= limit
    assert search.initial != probe.initial
    named = make_search(init="proxylessnas_mobile")
    assert named.initial == references_in(get_space("proxylessnas"))["proxylessnas_mobile"]
