"""NAS-RL's LSTM controller (Zoph & Le 2017, §3.1–3.2; mistakes: sign of the update, feeding
back the argmax instead of the sampled token, decisions inside skipped layers counted)."""

import itertools
import json

import pytest
import torch

from nascli.search.lstm import LSTMController, parents_first
from nascli.search.policy import ControllerSettings, ancestors
from nascli.search.rewards import EmaBaseline
from nascli.space.spaces import SPACES, SearchSpace
from tests.conftest import TINY

BLOCKS = SPACES["proxylessnas"].blocks
#: ProxylessNAS's stem block and first searched block: 3 architectures, no hierarchy.
FLAT = SearchSpace("flat", "flat", BLOCKS[:2])
#: Its second searched block: 13 decisions, 4 of them skip-or-not with two decisions inside.
NESTED = SearchSpace("nested", "nested", BLOCKS[2:3])


@pytest.fixture(autouse=True)
def one_thread():
    """The controller's ops are tiny: on a busy machine two threads wait on each other far
    longer than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lstm(space, **changes):
    return LSTMController(space, ControllerSettings(name="lstm", **changes), seed=0)


def effective_architectures(space):
    """Every architecture once: inactive decisions at 0."""
    controller = lstm(space)
    grid = itertools.product(*[range(d.num_choices) for d in space.decisions])
    every = torch.tensor(list(grid))
    active = controller.active(every)
    return every[(every * ~active).sum(dim=1) == 0]


def test_enclosing_choices_come_before_the_decisions_inside_them():
    order = parents_first(NESTED)
    assert sorted(order) == list(range(NESTED.num_decisions)) and order != sorted(order)
    for position, chain in enumerate(ancestors(NESTED)):
        assert all(order.index(parent) < order.index(position) for parent, _ in chain)


def test_log_probabilities_form_a_distribution_independent_of_inactive_decisions():
    controller = lstm(NESTED, init_range=1.0)  # strong weights: each step depends on history
    every = effective_architectures(NESTED)
    total = controller.log_prob(every).exp().sum()
    assert total == pytest.approx(1.0, abs=1e-4)
    # An inactive decision's value changes nothing (it is neither counted nor fed back).
    changed = every.clone()
    inactive = ~controller.active(every)
    assert inactive.any()
    changed[inactive] = 1
    assert torch.allclose(controller.log_prob(changed), controller.log_prob(every))


def test_samples_follow_the_teacher_forced_conditionals_of_the_sampled_tokens():
    """If sampling fed back the argmax (or anything but the sampled token), the frequency of
    each option would differ from the mean of the conditionals along the sampled paths."""
    controller = lstm(NESTED, init_range=1.0)
    samples = controller.sample(20_000, torch.Generator().manual_seed(0))
    conditionals = controller.conditionals(samples)  # (B, D, C)
    active = controller.active(samples)
    checked = 0
    for d, decision in enumerate(NESTED.decisions):
        rows = active[:, d]
        if decision.num_choices < 2 or rows.sum() < 2000:
            continue
        for option in range(decision.num_choices):
            seen = (samples[rows, d] == option).double().mean()
            expected = conditionals[rows, d, option].double().mean()
            assert abs(seen - expected) < 0.02, (d, option, float(seen), float(expected))
            checked += 1
    assert checked >= 10
    # And the frequencies of the three architectures of a flat space match exp(log π).
    flat = lstm(FLAT, init_range=1.0)
    drawn = flat.sample(20_000, torch.Generator().manual_seed(1))
    every = effective_architectures(FLAT)
    for arch, p in zip(every, flat.log_prob(every).exp(), strict=True):
        assert abs((drawn == arch).all(dim=1).double().mean() - p) < 0.015


def test_log_prob_is_the_sum_of_the_counted_tokens_log_softmax_values():
    controller = lstm(NESTED, init_range=1.0)
    samples = controller.sample(16, torch.Generator().manual_seed(2))
    logp = controller.conditionals(samples).log()
    picked = logp.gather(2, samples.unsqueeze(2))[:, :, 0]
    active = controller.active(samples)
    assert torch.allclose(controller.log_prob(samples), (picked * active).sum(1).double())
    counted = active.clone()
    counted[:, 0] = False
    assert torch.allclose(
        controller.log_prob(samples, counted), (picked * counted).sum(1).double(), atol=1e-5
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_step_with_a_positive_advantage_raises_the_sampled_architecture(sign):
    controller = lstm(NESTED, lr=0.01)
    arch = controller.sample(1, torch.Generator().manual_seed(3))
    before = controller.log_prob(arch)
    counted = controller.active(arch)
    controller.update(arch, torch.tensor([sign]), counted, lr=0.01)
    after = controller.log_prob(arch)
    assert (after - before).item() * sign > 0


def test_reinforce_with_an_ema_baseline_converges_to_the_best_sequence():
    """Known reward, no training: R = the share of decisions at their target, where the target
    keeps every skippable layer and takes every other decision's last option (a decision
    inside a skipped layer scores nothing, so the best sequence is unique)."""
    space = SearchSpace("three", "three", BLOCKS[:3])
    # 32 architectures a step: with 8, one decision's share of the reward is mostly noise, and
    # on some seeds Adam's steps collapse it onto a wrong token within 100 steps (measured).
    controller = lstm(space, lr=0.01)
    encloses = {parent for chain in ancestors(space) for parent, _ in chain}
    best = controller.sizes - 1
    best[sorted(encloses)] = 0  # option 0 of a skippable layer keeps it
    generator = torch.Generator().manual_seed(4)
    baseline = EmaBaseline(0.9)

    def rewards(indices):
        hit = (indices == best) & controller.active(indices)
        return hit.double().sum(dim=1) / space.num_decisions

    first = float(rewards(controller.sample(256, generator)).mean())
    for _ in range(300):
        indices = controller.sample(32, generator)
        r = rewards(indices)
        b = baseline.update(float(r.mean()))  # updated before the advantage, as TuNAS and ENAS
        controller.update(indices, r - b, controller.active(indices), lr=0.01)
    assert torch.equal(controller.argmax(), best)
    assert float(rewards(controller.sample(256, generator)).mean()) > max(0.9, first + 0.3)


def test_state_round_trip_restores_the_same_distribution():
    a = lstm(NESTED, lr=0.05)
    arch = a.sample(4, torch.Generator().manual_seed(5))
    a.update(arch, torch.ones(4), a.active(arch), lr=0.05)
    b = lstm(NESTED, lr=0.05)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.log_prob(arch), b.log_prob(arch))
    a.update(arch, torch.ones(4), a.active(arch), lr=0.05)
    b.update(arch, torch.ones(4), b.active(arch), lr=0.05)  # Adam's moments came along too
    assert torch.equal(a.log_prob(arch), b.log_prob(arch))


def test_enas_logit_shaping_divides_by_the_temperature_before_the_tanh():
    plain = lstm(FLAT, init_range=2.0)
    shaped = lstm(FLAT, init_range=2.0, temperature=5.0, tanh_constant=2.5)
    output = torch.randn(3, plain.settings.hidden, generator=torch.Generator().manual_seed(6))
    raw = plain._logits(1, output)
    assert torch.allclose(shaped._logits(1, output), 2.5 * torch.tanh(raw / 5.0))


def test_tunas_search_runs_with_the_lstm_controller(run_cli, tmp_path):
    out = tmp_path / "s"
    result = run_cli("search", *TINY, "controller=lstm", f"out={out}")
    assert result.exit_code == 0, result.output
    assert "lstm controller" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controller"] == "lstm"
    assert len(summary["indices"].split(":")) == SPACES["proxylessnas"].num_decisions


def test_a_controller_for_a_strategy_without_one_is_refused_before_work(run_cli, tmp_path):
    out = tmp_path / "z"
    result = run_cli("search", "strategy=zen", "controller=lstm", f"out={out}")
    assert result.exit_code == 2
    assert "controller=lstm: strategy=zen has no controller" in result.output
    assert not out.exists() or not any(out.glob("*.csv"))
