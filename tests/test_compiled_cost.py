"""Compiled costs: the same numbers as decoding each architecture, an exact expectation, and
the mistakes a compiled cost invites (a peak summed over layers instead of maxed, a decision
counted twice in an expectation, a layer missing from the latency table found only later)."""

from __future__ import annotations

import random

import pytest
import torch

from nascli.cost.analytic import network_cost
from nascli.cost.compiled import CompiledCost, entry_groups
from nascli.cost.lut import POOLED, LookupTable, distinct_layers, layer_group, layer_key
from nascli.cost.models import AnalyticCost, LutCost, Pixel1Cost
from nascli.errors import NascliError
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES

SETTINGS = {
    "imagenet": NetworkSettings(resolution=224),
    "digits": NetworkSettings(resolution=32, num_classes=10, in_channels=1, width_multiplier=0.5),
}
FIELDS = {
    "macs": "macs",
    "params": "params",
    "peak_memory": "peak_memory_bytes",
    "sram": "sram_bytes",
    "flash": "flash_bytes",
}


def random_archs(space, count: int, seed: int = 0) -> torch.Tensor:
    return sample_indices(space, count, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", list(SPACES))
def test_analytic_costs_equal_the_decoded_networks_on_random_architectures(name, setting):
    space, settings = SPACES[name], SETTINGS[setting]
    indices = random_archs(space, 1000)
    networks = [network_cost(decode(space, row, settings)) for row in indices.tolist()]
    for metric, field in FIELDS.items():
        compiled = AnalyticCost(space, settings, metric)(indices)
        assert compiled.dtype == torch.float64
        assert compiled.tolist() == [float(getattr(n, field)) for n in networks], metric


def test_the_groups_consume_every_decision_once_in_order():
    for space in SPACES.values():
        groups, _ = entry_groups(space, SETTINGS["imagenet"])
        own = [p for g in groups for p in g.own]
        widths = sorted({g.width for g in groups})
        assert sorted(own + widths) == list(range(space.num_decisions))
        for group in groups:  # a decision appears once even where incoming = own width
            assert len(set(group.positions)) == len(group.positions)


def fake_table(space, settings) -> LookupTable:
    """Every layer the space can produce, with made-up times, lines and a full correction."""
    rng = random.Random(0)
    layers = distinct_layers(space, settings)
    entries = {key: rng.uniform(0.01, 2.0) for key in layers}
    groups = {layer_group(layer) for layer in layers.values()}
    lines = {g: [rng.uniform(0.5, 1.5), rng.uniform(-0.05, 0.05)] for g in sorted(groups)[::2]}
    lines[POOLED] = [1.1, 0.01]
    correction = {"scale": 0.9, "per_mparam": 0.3, "per_layer": 0.02, "offset": 0.4}
    return LookupTable(entries, {}, correction, lines)


@pytest.mark.parametrize("name", list(SPACES))
def test_the_compiled_lut_predicts_what_the_table_predicts(name):
    space, settings = SPACES[name], SETTINGS["digits"]
    table = fake_table(space, settings)
    indices = random_archs(space, 300, seed=1)
    expected = [table.predict(decode(space, row, settings)) for row in indices.tolist()]
    got = LutCost(space, settings, table)(indices)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_a_layer_missing_from_the_table_is_refused_when_the_cost_is_built():
    space, settings = SPACES["proxylessnas"], SETTINGS["digits"]
    table = fake_table(space, settings)
    table.entries.pop(layer_key(decode(space, [0] * space.num_decisions, settings).layers[3]))
    with pytest.raises(NascliError, match="is not in the latency table"):
        LutCost(space, settings, table)


@pytest.mark.parametrize("metric", ["peak_memory", "sram"])
def test_peak_memory_is_the_largest_layer_not_a_sum(metric):
    space, settings = SPACES["proxylessnas"], SETTINGS["digits"]
    peak = AnalyticCost(space, settings, metric)
    network = decode(space, [0] * space.num_decisions, settings)
    cost = network_cost(network)
    per_layer = (
        [c.peak_elements * 4 for c in cost.layers] if metric == "peak_memory"
        else list(cost.layer_sram_bytes)
    )  # fmt: skip
    assert peak.cost([0] * space.num_decisions) == max(per_layer) < sum(per_layer)
    with pytest.raises(ValueError, match="no per-layer expectation"):
        peak.expected([torch.ones(d.num_choices) / d.num_choices for d in space.decisions])


def random_probabilities(space, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.softmax(2 * torch.randn(d.num_choices, generator=generator, dtype=torch.float64), 0)
        for d in space.decisions
    ]


def one_hot(space, row: list[int]) -> list[torch.Tensor]:
    return [
        torch.eye(d.num_choices, dtype=torch.float64)[v]
        for d, v in zip(space.decisions, row, strict=True)
    ]


def check_expectation(space, cost, seed: int, rel: float) -> None:
    """Exact at one-hot probabilities; within 4 standard errors of 20,000 draws otherwise."""
    for row in random_archs(space, 5, seed=seed).tolist():
        assert float(cost.expected(one_hot(space, row))) == pytest.approx(cost.cost(row), rel=rel)
    probabilities = random_probabilities(space, seed=seed + 1)
    generator = torch.Generator().manual_seed(seed + 2)
    draws = torch.stack(
        [torch.multinomial(p, 20000, replacement=True, generator=generator) for p in probabilities],
        dim=1,
    )
    values = cost(draws)
    error = float(values.std()) / len(values) ** 0.5
    assert abs(float(cost.expected(probabilities)) - float(values.mean())) < 4 * error


@pytest.mark.parametrize("name", list(SPACES))
def test_the_expectation_is_exact_at_one_hot_and_matches_monte_carlo(name):
    space = SPACES[name]
    check_expectation(space, AnalyticCost(space, SETTINGS["digits"], "macs"), seed=2, rel=1e-12)


@pytest.mark.parametrize("name", list(SPACES))
def test_the_pixel1_expectation_is_exact_at_one_hot_and_matches_monte_carlo(name):
    # float32 in the batched path (TuNAS's), float64 in the expectation.
    space = SPACES[name]
    check_expectation(space, Pixel1Cost(space, SETTINGS["imagenet"]), seed=5, rel=1e-5)


def test_the_expectation_is_differentiable_in_every_decision_that_changes_the_cost():
    space, settings = SPACES["mnv3"], SETTINGS["digits"]
    cost = AnalyticCost(space, settings, "params")
    logits = [
        torch.zeros(d.num_choices, dtype=torch.float64, requires_grad=True) for d in space.decisions
    ]
    cost.expected([torch.softmax(x, 0) for x in logits]).backward()
    searched = [i for i, d in enumerate(space.decisions) if d.num_choices > 1]
    # Kernel, expansion, SE, skip and width: every searched decision of mnv3 moves params.
    assert all(logits[i].grad.abs().sum() > 0 for i in searched)
    # Against a finite difference on one decision's logits.
    i = searched[0]
    step = torch.zeros(space.decisions[i].num_choices, dtype=torch.float64)
    step[0] = 1e-6
    with torch.no_grad():
        base = [torch.softmax(x, 0) for x in logits]
        moved = list(base)
        moved[i] = torch.softmax(logits[i] + step, 0)
        slope = (cost.expected(moved) - cost.expected(base)) / 1e-6
    assert float(logits[i].grad[0]) == pytest.approx(float(slope), rel=1e-4)


def test_a_max_cost_needs_the_max_reduction():
    with pytest.raises(ValueError, match="reduce must be sum or max"):
        CompiledCost.of_layers(SPACES["proxylessnas"], SETTINGS["digits"], lambda _: 0.0, "mean")
