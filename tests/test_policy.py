"""TuNAS's controller, rewards, baseline and schedules against hand-computed values (§3-§5, §11)."""

import math

import pytest
import torch

from nascli.errors import NascliError
from nascli.search.policy import CategoricalPolicy, PolicyAdam, ancestors, apply_warmup
from nascli.search.rewards import (
    EmaBaseline,
    policy_learning_rate,
    reward,
    warmup_probability,
)
from nascli.search.tunas import TunasSettings
from nascli.space.schema import FILTERS, OP, Block, InvertedBottleneck, OneOf, Residual, Zero
from nascli.space.spaces import SPACES, SearchSpace


def tiny_space() -> SearchSpace:
    """One skippable IBN (kernel, expansion, skip) and a searched width: 4 decisions."""
    ibn = InvertedBottleneck(kernel=OneOf((3, 5, 7), OP), expansion=OneOf((3, 6), FILTERS))
    block = Block("b", (Residual(OneOf((ibn, Zero()), OP)),), OneOf((8, 16), FILTERS))
    return SearchSpace("tiny", "tiny", (block,))


# ---------------------------------------------------------------- hierarchy
def test_ancestors_of_a_skippable_layer():
    space = tiny_space()
    assert [d.path for d in space.decisions] == [
        "b.0.kernel",
        "b.0.expansion",
        "b.0.op",
        "b.filters",
    ]
    # kernel and expansion count only when the skip node (position 2) selects the layer (0).
    assert ancestors(space) == [[(2, 0)], [(2, 0)], [], []]


def test_ancestors_match_the_real_spaces():
    space = SPACES["proxylessnas"]
    chains = ancestors(space)
    by_path = {d.path: d.position for d in space.decisions}
    skip = by_path["b2.1.op"]
    assert chains[by_path["b2.1.kernel"]] == [(skip, 0)]
    assert chains[by_path["b2.0.kernel"]] == [(by_path["b2.0.op"], 0)]
    assert chains[skip] == []


def test_hierarchical_log_prob_ignores_the_inner_choices_of_a_skipped_layer():
    policy = CategoricalPolicy(tiny_space())
    policy.logits[0, :3] = torch.tensor([1.0, 2.0, 3.0])  # kernel
    policy.logits[1, :2] = torch.tensor([0.5, -0.5])  # expansion
    policy.logits[2, :2] = torch.tensor([0.2, 0.0])  # layer vs zero
    policy.logits[3, :2] = torch.tensor([0.0, 1.0])  # width
    lk = torch.log_softmax(torch.tensor([1.0, 2.0, 3.0]), 0)
    le = torch.log_softmax(torch.tensor([0.5, -0.5]), 0)
    lo = torch.log_softmax(torch.tensor([0.2, 0.0]), 0)
    lw = torch.log_softmax(torch.tensor([0.0, 1.0]), 0)
    kept = torch.tensor([[2, 1, 0, 1]])
    skipped = torch.tensor([[2, 1, 1, 1]])
    assert policy.log_prob(kept).item() == pytest.approx(float(lk[2] + le[1] + lo[0] + lw[1]))
    assert policy.log_prob(skipped).item() == pytest.approx(float(lo[1] + lw[1]))
    # The entropy counts the same nodes.
    h = lambda logp: float(-(logp.exp() * logp).sum())  # noqa: E731
    assert policy.entropy(skipped).item() == pytest.approx(h(lo) + h(lw))
    assert policy.entropy(kept).item() == pytest.approx(h(lk) + h(le) + h(lo) + h(lw))


def test_analytic_policy_gradients_equal_autograd():
    policy = CategoricalPolicy(SPACES["mnv3"])
    policy.logits.normal_(generator=torch.Generator().manual_seed(0))
    indices = policy.sample(5, torch.Generator().manual_seed(1))
    counted = policy.active(indices)
    counted[:, ::7] = False  # as if some nodes were replaced by a warmup
    advantages = torch.tensor([0.3, -0.2, 0.1, 0.0, -1.0], dtype=torch.float64)
    coef = 0.05
    grads = policy.loss_gradients(indices, advantages, counted, coef)
    for k in range(len(indices)):
        logits = policy.logits.clone().requires_grad_(True)
        logp = logits.masked_fill(~policy.valid, -math.inf).log_softmax(1)
        picked = logp.gather(1, indices[k : k + 1].T).squeeze(1)
        node_h = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(1)
        mask = counted[k].double()
        loss = -advantages[k] * (picked * mask).sum() - coef * (node_h * mask).sum()
        (expected,) = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(grads[k], expected)


# ---------------------------------------------------------------- warmup sampling
def test_warmup_draws_are_per_node_and_replace_op_and_filter_nodes():
    policy = CategoricalPolicy(SPACES["mnv3"])
    generator = torch.Generator().manual_seed(0)
    indices = policy.sample(400, generator)
    warmed, mixed, replaced = apply_warmup(policy, indices, 0.3, 0.6, generator)
    is_op, is_filter = policy.is_op, policy.is_filter
    assert not mixed[:, is_filter].any()
    share_mixed = mixed[:, is_op].float().mean().item()
    assert share_mixed == pytest.approx(0.3, abs=0.02)
    widest = warmed == (policy.sizes - 1)
    changed = warmed != indices
    assert changed[:, is_op].sum() == 0  # op warmup mixes, it does not resample
    filter_replaced = replaced & is_filter
    assert widest[filter_replaced].all()
    # Independent per node: within an architecture, some nodes are replaced and others not.
    per_arch = mixed[:, is_op].float().mean(1)
    assert per_arch.min() > 0 and per_arch.max() < 1
    assert filter_replaced[:, is_filter].float().mean().item() == pytest.approx(0.6, abs=0.02)


def test_no_warmup_replaces_nothing():
    policy = CategoricalPolicy(SPACES["proxylessnas"])
    indices = policy.sample(10)
    warmed, mixed, replaced = apply_warmup(policy, indices, 0.0, 0.0)
    assert torch.equal(warmed, indices) and not mixed.any() and not replaced.any()


# ---------------------------------------------------------------- schedules
def test_warmup_probability_falls_linearly_to_zero_over_the_window():
    total = 1000  # W = 250
    assert warmup_probability(0, total, 0.25) == 1.0
    assert warmup_probability(125, total, 0.25) == pytest.approx(0.5)
    assert warmup_probability(249, total, 0.25) == pytest.approx(1 / 250)
    assert warmup_probability(250, total, 0.25) == 0.0
    assert warmup_probability(900, total, 0.25) == 0.0
    assert warmup_probability(0, total, 0.0) == 0.0


def test_policy_learning_rate_is_zero_during_the_delay_then_ramps_tenfold():
    total, base = 27050, 0.0048  # TuNAS: delay ⌊0.25·S⌋ = 6762 steps
    assert policy_learning_rate(6761, total, base, 0.25) == 0.0
    assert policy_learning_rate(6762, total, base, 0.25) == pytest.approx(base)
    middle = 6762 + (total - 6762) // 2
    assert policy_learning_rate(middle, total, base, 0.25) == pytest.approx(
        base * 10**0.5, rel=1e-4
    )
    assert policy_learning_rate(total, total, base, 0.25) == pytest.approx(10 * base)


def test_warmups_longer_than_the_rl_delay_are_refused():
    with pytest.raises(NascliError, match="warmup"):
        TunasSettings.from_config({"op_warmup_fraction": 0.3, "rl_delay_fraction": 0.25})


# ---------------------------------------------------------------- rewards and baseline
def test_reward_formulas():
    q = torch.tensor([0.7, 0.7, 0.7], dtype=torch.float64)
    t = torch.tensor([42.0, 84.0, 126.0], dtype=torch.float64)
    absolute = reward(q, t, 84.0, "abs", -0.1)
    torch.testing.assert_close(absolute, torch.tensor([0.65, 0.7, 0.65], dtype=torch.float64))
    mnas = reward(q, t, 84.0, "mnas", -0.1)
    expected = torch.tensor([0.7 * 0.5**-0.1, 0.7, 0.7 * 1.5**-0.1], dtype=torch.float64)
    torch.testing.assert_close(mnas, expected)
    hard = reward(q, t, 84.0, "mnas_hard", -0.1)
    torch.testing.assert_close(hard, torch.tensor([0.7, 0.7, 0.7 * 1.5**-0.1]).double())
    assert torch.equal(reward(q, t, None, "quality", -0.1), q)
    with pytest.raises(NascliError, match="target"):
        reward(q, t, None, "abs", -0.1)


def test_baseline_is_zero_debiased_and_includes_the_current_step():
    baseline = EmaBaseline(0.95)
    assert baseline.update(2.0) == pytest.approx(2.0)  # debiased: not 0.1
    second = baseline.update(4.0)
    raw = 0.95 * 0.05 * 2.0 + 0.05 * 4.0
    assert second == pytest.approx(raw / (1 - 0.95**2))


# ---------------------------------------------------------------- policy optimiser
def test_policy_adam_uses_the_mean_of_squared_per_arch_gradients():
    logits = torch.zeros(1, 2, dtype=torch.float64)
    grads = torch.tensor([[[1.0, 0.0]], [[-1.0, 2.0]]], dtype=torch.float64)
    adam = PolicyAdam(logits.shape, beta1=0.0, beta2=0.999, eps=1e-8)
    adam.step(logits, grads, lr=0.1)
    # m = mean g = [0, 1]; v = mean g² = [1, 2] (not (mean g)² = [0, 1]); bias-corrected.
    expected = -0.1 * torch.tensor([0.0, 1.0]) / (torch.tensor([1.0, 2.0]).sqrt() + 1e-8)
    torch.testing.assert_close(logits, expected.reshape(1, 2).double())
    standard = PolicyAdam(logits.shape, second_moment="mean")
    other = torch.zeros(1, 2, dtype=torch.float64)
    standard.step(other, grads, lr=0.1)
    assert other[0, 1].item() == pytest.approx(-0.1, rel=1e-6)


def test_adam_moments_update_while_the_learning_rate_is_zero():
    logits = torch.zeros(1, 2, dtype=torch.float64)
    adam = PolicyAdam(logits.shape)
    adam.step(logits, torch.ones(1, 1, 2, dtype=torch.float64), lr=0.0)
    assert torch.equal(logits, torch.zeros(1, 2, dtype=torch.float64))
    assert adam.t == 1 and adam.v.sum() > 0


# ---------------------------------------------------------------- REINFORCE end to end
def reinforce(space, reward_fn, steps, archs, lr, seed=0):
    """The search's policy update alone: sample, reward, baseline, advantage, Adam."""
    policy = CategoricalPolicy(space)
    adam = PolicyAdam(policy.logits.shape)
    baseline = EmaBaseline(0.95)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        indices = policy.sample(archs, generator)
        rewards = reward_fn(indices)
        b = baseline.update(float(rewards.mean()))
        grads = policy.loss_gradients(indices, rewards - b, policy.active(indices))
        adam.step(policy.logits, grads, lr)
    return policy


def test_reinforce_finds_the_best_option_of_every_decision():
    space = SPACES["proxylessnas"]
    generator = torch.Generator().manual_seed(3)
    # A known value per option (distinct ranks), summed over each architecture's decisions.
    value = [torch.randperm(d.num_choices, generator=generator) / 3 for d in space.decisions]
    best = torch.tensor([[int(v.argmax()) for v in value]])
    table = torch.zeros(space.num_decisions, 3)
    for d, v in enumerate(value):
        table[d, : len(v)] = v

    def reward_fn(indices):  # no network: the reward is a sum of per-decision values
        return table.gather(1, indices.T).sum(0).double() / len(value)

    policy = reinforce(space, reward_fn, steps=600, archs=8, lr=0.05)
    found = policy.argmax().unsqueeze(0)
    # Decisions inside a layer the optimum skips get no gradient once it is skipped: compare
    # the decisions that are active in the optimum.
    active = policy.active(best)[0]
    assert torch.equal(found[0][active], best[0][active])
    assert float(reward_fn(found)) == pytest.approx(float(reward_fn(best)))


@pytest.mark.parametrize("target", [60.0, 84.0, 110.0])
def test_abs_reward_lands_the_argmax_cost_near_each_target(target):
    from nascli.cost.pixel1 import Pixel1Model

    space = SPACES["proxylessnas"]
    cost = Pixel1Model(space)  # linear in the one-hot features
    generator = torch.Generator().manual_seed(1)
    quality_value = [torch.rand(d.num_choices, generator=generator) for d in space.decisions]

    def reward_fn(indices):
        quality = torch.stack(
            [sum(quality_value[d][int(r[d])] for d in range(len(r))) for r in indices]
        ).double() / len(quality_value)
        return reward(0.3 * quality, cost(indices).double(), target, "abs", -0.1)

    policy = reinforce(space, reward_fn, steps=600, archs=8, lr=0.05)
    found = float(cost(policy.argmax().unsqueeze(0))[0])
    assert abs(found / target - 1) <= 0.05, found


def test_likeliest_in_window_is_the_argmax_when_it_fits_and_else_the_likeliest_fit():
    from omegaconf import OmegaConf

    from nascli.config import CostConfig
    from nascli.cost.models import make_cost_model
    from nascli.search.tunas import likeliest_within
    from nascli.space.network import NetworkSettings

    space = SPACES["proxylessnas"]
    settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
    cost_cfg = OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": "tunas_pixel1"})
    cost_model = make_cost_model(cost_cfg, space, settings)
    policy = CategoricalPolicy(space)
    generator = torch.Generator().manual_seed(3)
    policy.logits.copy_(torch.randn(policy.logits.shape, generator=generator, dtype=torch.float64))
    argmax = policy.argmax()
    argmax_cost = float(cost_model(argmax[None])[0])
    # The argmax fits a window around its own cost: it is the likeliest of all.
    found = likeliest_within(policy, cost_model, argmax_cost, 0.03, seed=0)
    assert torch.equal(found, argmax)
    # A target the argmax misses by ~20%: the result fits, and no uniform draw that fits the
    # window is likelier under the policy.
    target = argmax_cost * 1.2
    found = likeliest_within(policy, cost_model, target, 0.03, seed=0)
    assert abs(float(cost_model(found[None])[0]) / target - 1) <= 0.03
    assert not torch.equal(found, argmax)
    logp = policy.log_probs()

    def likelihood(indices):
        indices = torch.where(policy.active(indices), indices, argmax)
        return logp.gather(1, indices.T).T.sum(dim=1)

    draws = policy.sample(20000, torch.Generator().manual_seed(9))
    fits = (cost_model(draws).double() / target - 1).abs() <= 0.03
    assert fits.sum() > 10
    assert float(likelihood(found[None])[0]) >= float(likelihood(draws[fits]).max())
    # Nothing of the policy near an impossible target.
    assert likeliest_within(policy, cost_model, 1.0, 0.03, seed=0) is None
