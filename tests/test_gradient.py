"""Gradient-based search (ProxylessNAS's binarized paths, FBNet's Gumbel-softmax, first-order
DARTS) on the weight-shared supernet: the estimator, the splits, and the classic mistakes of
methods' §2.4."""

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from nascli.config import DataConfig, TrainConfig
from nascli.cost.models import AnalyticCost, Pixel1Cost
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.nn.supernet import Sample, Supernet
from nascli.search.gradient import (
    GradientSearch,
    GradientSettings,
    autograd_product,
    central_difference,
    cost_loss,
)
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SPACES
from nascli.train.distributed import Context, context
from tests.conftest import SPACE_NAMES, TINY, assert_common_summary

NET = NetworkSettings(resolution=16, num_classes=4, in_channels=1, width_multiplier=0.25)
TRAIN = OmegaConf.merge(
    OmegaConf.structured(TrainConfig),
    {"name": "t", "epochs": 2, "batch_size": 16, "lr_per_256": 0.1, "warmup_fraction": 0.0},
)
DATA = {"name": "synthetic", "num_samples": 160, "resolution": 16, "in_channels": 1,
        "num_classes": 4, "valid_fraction": 0.3}  # fmt: skip


def make_search(space_name="proxylessnas", cost="pixel1", ctx=None, **settings):
    space = SPACES[space_name]
    data = load_data(OmegaConf.merge(OmegaConf.structured(DataConfig), DATA))
    model = Pixel1Cost(space, NET) if cost == "pixel1" else AnalyticCost(space, NET, cost)
    target = 84.0 if cost == "pixel1" else None
    values = {"warmup_fraction": 0.0, "arch_update_every": 1} | settings
    torch.manual_seed(0)
    supernet = Supernet(space, NET)
    return GradientSearch(
        supernet, TRAIN, GradientSettings(**values), data, model, target, ctx or context("cpu"), 0
    )


def test_binary_gates_give_proxylessnas_gradient_through_the_softmax_jacobian():
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):  # the forward pass is exactly one-hot, whatever α is
        alpha = torch.randn(4, dtype=torch.float64, generator=generator)
        p = alpha.softmax(0)
        gates = torch.nn.functional.one_hot(torch.tensor(2), 4).double() + (p - p.detach())
        assert torch.equal(gates, torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    alpha.requires_grad_(True)
    p = alpha.softmax(0)
    gates = torch.nn.functional.one_hot(torch.tensor(2), 4).double() + (p - p.detach())
    dl_dg = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    (gates * dl_dg).sum().backward()
    q = p.detach()
    expected = torch.stack(
        [sum(dl_dg[j] * q[j] * (float(i == j) - q[i]) for j in range(4)) for i in range(4)]
    )
    assert torch.allclose(alpha.grad, expected)
    alpha.grad = None  # equal gate gradients move nothing (methods §2.4, mistake 3)
    p = alpha.softmax(0)
    ((torch.nn.functional.one_hot(torch.tensor(0), 4) + (p - p.detach())) * 5.0).sum().backward()
    assert alpha.grad.abs().max() < 1e-12


def test_a_one_hot_relaxed_forward_is_the_sampled_child():
    s = make_search()
    indices = s.sample_indices(0, 1)
    probs = s.probabilities().detach()
    gates = torch.nn.functional.one_hot(indices, probs.shape[1]).double() + (probs - probs)
    x = torch.randn(8, 1, 16, 16)
    s.net.train()
    child = s.net(x, Sample.of(indices.tolist()))
    relaxed = s.net(x, s.relaxed_sample(indices, gates))
    assert torch.allclose(child, relaxed, atol=1e-5)


@pytest.mark.parametrize("space_name", SPACE_NAMES)
@pytest.mark.parametrize("relaxation", ["softmax", "gumbel"])
def test_every_searched_decision_receives_an_architecture_gradient(space_name, relaxation):
    loss = "fbnet_log" if relaxation == "gumbel" else "mul_log"
    s = make_search(space_name, relaxation=relaxation, loss=loss)
    s.arch_gradient(0)
    grad = s.policy.logits.grad
    for d in s.searched:
        assert grad[d, : int(s.policy.sizes[d])].abs().max() > 0, s.space.decisions[d].path


def test_alpha_learns_from_the_valid_split_only_and_the_weights_from_train_only():
    s = make_search()
    used = []
    for name in ("train_batches", "valid_batches"):
        batches = getattr(s, name)
        original = batches.get
        batches.get = lambda t, original=original, name=name: used.append(name) or original(t)
    s.arch_gradient(0)
    assert used == ["valid_batches"]
    assert all(p.grad is None for p in s.net.parameters())  # no weight gradient from valid
    assert all(p is not s.policy.logits for p in s.net.parameters())
    weights = {id(p) for group in s.optimizer.param_groups for p in group["params"]}
    assert id(s.policy.logits) not in weights
    used.clear()
    s.arch_optimizer.zero_grad(set_to_none=True)
    s.update_weights(0)
    assert used == ["train_batches"] and s.policy.logits.grad is None


def test_a_decision_whose_sampled_option_is_zero_gets_no_update():
    s = make_search(relaxation="binary")
    for t in range(20):
        indices = s.sample_indices(t, 13)
        zero = [d for d in s.searched if s.is_zero[d, int(indices[d])]]
        if zero:
            s.arch_gradient(t)
            assert all(s.policy.logits.grad[d].abs().max() == 0 for d in zero)
            return
    pytest.fail("no draw sampled a skip")


def test_two_path_mode_moves_only_the_drawn_pair_and_keeps_the_others_probabilities():
    s = make_search(relaxation="binary", binary_mode="two", arch_lr=0.1)
    for t in range(3):
        before = s.probabilities().detach().clone()
        s.arch_step(t)
        pairs = s._pairs
        after = s.probabilities().detach()
        assert (pairs[s.searched].sum(dim=1) == 2).all()
        grad = s.policy.logits.grad
        assert (grad[~pairs] == 0).all()  # no gradient outside the two drawn options
        others = ~pairs & s.policy.valid
        assert torch.allclose(after[others], before[others], rtol=0, atol=1e-12)
        mass = (after * pairs).sum(dim=1)
        assert torch.allclose(mass, (before * pairs).sum(dim=1), atol=1e-12)
    assert not torch.equal(s.probabilities().detach(), make_search().probabilities().detach())


def test_gumbel_temperature_is_annealed_per_epoch():
    s = make_search(relaxation="gumbel", loss="fbnet_log")
    n = s.steps_per_epoch
    assert s.temperature(0) == s.temperature(n - 1) == 5.0
    assert s.temperature(n) == pytest.approx(5.0 * math.exp(-0.045))
    assert make_search().temperature(n) is None  # binary paths have no temperature


def test_fbnet_loss_refuses_a_cost_whose_log_is_not_positive():
    settings = GradientSettings(name="fbnet", relaxation="gumbel", loss="fbnet_log", loss_beta=0.6)
    value = cost_loss(torch.tensor(2.0), torch.tensor(math.e**2), None, settings)
    assert float(value) == pytest.approx(0.2 * 2.0 * 2.0**0.6)
    with pytest.raises(NascliError, match="above 1"):
        cost_loss(torch.tensor(2.0), torch.tensor(0.5), None, settings)


def test_losses_match_the_released_code():
    mul = GradientSettings(loss="mul_log", loss_alpha=0.2, loss_beta=0.3)
    value = cost_loss(torch.tensor(1.5), torch.tensor(100.0), 80.0, mul)
    assert float(value) == pytest.approx(0.2 * 1.5 * (math.log(100) / math.log(80)) ** 0.3)
    add = GradientSettings(loss="add_linear", loss_lambda=0.1)
    assert float(cost_loss(torch.tensor(1.5), torch.tensor(100.0), 80.0, add)) == pytest.approx(
        1.5 + 0.1 * 20 / 80
    )


def test_the_result_is_the_argmax_of_alpha():
    s = make_search(relaxation="gumbel", loss="fbnet_log")
    for _ in range(3):
        s.advance()
    assert s.result_indices() == (s.policy.argmax().tolist(), "argmax")


def test_under_a_budget_the_argmax_breaks_the_result_is_the_likeliest_architecture_within_it():
    from nascli.search.budgets import BatchBudgets

    s = make_search(relaxation="gumbel", loss="fbnet_log")
    for _ in range(3):
        s.advance()
    argmax = s.final_indices()
    flash = BatchBudgets(s.space, NET, {"flash": 1.0}).costs["flash"]
    limit = float(flash(torch.tensor([argmax]))[0]) - 1
    s.budgets = BatchBudgets(s.space, NET, {"flash": limit})
    chosen, how = s.result_indices()
    assert how == "likeliest_within_budgets" and chosen != argmax
    assert float(flash(torch.tensor([chosen]))[0]) <= limit
    s.budgets = BatchBudgets(s.space, NET, {"flash": 1.0})  # nothing fits
    with pytest.raises(NascliError, match="no architecture of the final α fits the budgets"):
        s.result_indices()


def test_costs_without_an_expectation_are_refused():
    with pytest.raises(NascliError, match="no expectation"):
        make_search(cost="sram")


@pytest.mark.parametrize("strategy", ["proxyless", "fbnet_cpu"])
def test_gradient_search_end_to_end(run_cli, tmp_path, strategy):
    out = tmp_path / strategy
    result = run_cli("search", f"strategy={strategy}", *TINY, "train.epochs=2", f"out={out}")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert_common_summary(summary, "search", strategy.removesuffix("_cpu"))
    log = pd.read_csv(out / "search_log.csv")
    assert log["arch_loss"].notna().any() and (out / "plots" / "search_curves.png").exists()
    assert json.loads((out / "arch.json").read_text())["indices"] == summary["indices"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=proxyless", "space=nasrl"], "weight-sharing supernet"),
        (["strategy=proxyless", "strategy.loss=fbnet_log"], "relaxed mixture"),
        (["strategy=fbnet", "cost=peak_memory"], "no expectation"),
    ],
)
def test_bad_gradient_searches_are_refused_in_one_line(run_cli, args, message):
    result = run_cli("search", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


class Twins(Context):
    """Two ranks that see the same slice: a sum over ranks is twice this rank's value."""

    def all_reduce(self, tensor, op="sum"):
        return tensor.mul_(self.world) if op == "sum" else tensor


def test_ranks_sum_their_slices_gradients_into_the_global_batch_mean():
    # With every rank on the same images, the global mean is the one process's: weights and
    # α's gradient must come out as one process computes them, not `world` times larger.
    single = make_search(relaxation="softmax")
    twins = make_search(relaxation="softmax", ctx=Twins(0, 2, torch.device("cpu")))
    twins.train_batches.get, twins.valid_batches.get = (
        single.train_batches.get, single.valid_batches.get,
    )  # fmt: skip
    losses = [s.update_weights(0)[0] for s in (single, twins)]
    assert losses[0] == losses[1]
    for a, b in zip(single.net.parameters(), twins.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    results = [s.arch_gradient(0) for s in (single, twins)]
    torch.testing.assert_close(single.policy.logits.grad, twins.policy.logits.grad)
    assert float(results[0][0]) == pytest.approx(float(results[1][0])) and (
        results[0][2] == results[1][2]
    )


@pytest.mark.slow
def test_torchrun_ranks_share_each_sampled_child_and_end_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["search", "strategy=proxyless", *TINY]  # 11 steps: 3 warm, α steps at 5 and 10
    runs = {
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "nascli", *common],
        "single": [sys.executable, "-m", "nascli", *common],
    }  # fmt: skip
    for name, command in runs.items():
        done = subprocess.run(
            [*command, f"out={tmp_path / name}"], env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["replica_checksums"]) == 2
    assert len(set(summary["replica_checksums"])) == 1  # weights and α agree exactly
    ddp, single = (pd.read_csv(tmp_path / name / "search_log.csv") for name in runs)
    assert len(ddp) == len(single) and ddp["arch_loss"].notna().any()
    # Until α first moves the children come from the same keyed draws in both runs.
    warm = ddp["arch_loss"].isna().cumprod().astype(bool)
    assert warm.sum() >= 2 and ddp["cost"][warm].tolist() == single["cost"][warm].tolist()


def test_second_order_darts_matches_the_exact_unrolled_gradient():
    # ∇α L_val(w − ξ∇w L_train(w, α), α) by double backward through the unrolled step, against
    # the strategy's α gradient with its Hessian-vector product by autograd (no momentum yet,
    # no weight decay: w' is exactly one SGD step).
    from torch.func import functional_call

    xi = 0.5
    s = make_search(relaxation="softmax", order=2, unrolled_lr=xi)
    s.weight_decay = 0.0
    alpha = s.policy.logits
    with torch.no_grad():
        alpha.add_(torch.randn(alpha.shape, generator=torch.Generator().manual_seed(1)).double())
    train_images, train_labels = s.train_batches.get(0)
    images, labels = s.valid_batches.get(0)
    indices = s.sample_indices(0, 13)
    names, params = zip(*s.net.named_parameters(), strict=True)
    sample = s.relaxed_sample(indices, s.relaxed_weights(0, grad=True))
    ce = torch.nn.functional.cross_entropy(s.net(train_images, sample), train_labels)
    grads = torch.autograd.grad(ce, params, create_graph=True, allow_unused=True)

    def search_loss(weights):
        relaxed = s.relaxed_weights(0, grad=True)
        logits = functional_call(s.net, weights, (images, s.relaxed_sample(indices, relaxed)))
        ce = torch.nn.functional.cross_entropy(logits, labels)
        return cost_loss(ce, s.expected_cost(relaxed), s.target, s.settings)

    unrolled = {
        n: p if g is None else p - xi * g for n, p, g in zip(names, params, grads, strict=True)
    }
    (exact,) = torch.autograd.grad(search_loss(unrolled), [alpha])
    frozen = {n: w.detach() for n, w in unrolled.items()}
    (direct,) = torch.autograd.grad(search_loss(frozen), [alpha])  # without the Hessian term
    s.net.zero_grad(set_to_none=True)
    s.second_order_gradient(0)
    ours, valid = s.policy.logits.grad, s.policy.valid
    error = (ours - exact)[valid].norm()
    assert error < 1e-3 * (direct - exact)[valid].norm()  # the Hessian term is there and right
    assert error < 1e-3 * exact[valid].norm()


def test_darts_central_difference_is_the_hessian_vector_product_on_a_smooth_loss():
    # DARTS's finite difference against double backward where the loss is smooth and float64.
    generator = torch.Generator().manual_seed(0)
    alpha = torch.randn(5, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(3, 5, generator=generator, dtype=torch.float64),
               torch.randn(3, generator=generator, dtype=torch.float64)]  # fmt: skip
    direction = [torch.randn_like(w) for w in weights]

    def loss(ws):
        mix = torch.softmax(alpha, 0)
        return (torch.tanh(ws[0] @ mix + ws[1]) ** 2).sum() + (ws[0] ** 2).sum() * alpha.sum()

    exact = autograd_product(loss, alpha, weights, direction)
    difference = central_difference(loss, alpha, weights, direction)
    assert exact.norm() > 1e-2  # the product is not trivially zero
    torch.testing.assert_close(difference, exact, rtol=1e-4, atol=1e-6)
    zero = [torch.zeros_like(w) for w in weights]
    assert central_difference(loss, alpha, weights, zero).eq(0).all()


def test_second_order_darts_runs_end_to_end_and_binary_paths_refuse_it(run_cli, tmp_path):
    out = tmp_path / "darts"
    args = ["search", "strategy=fbnet_cpu", "strategy.relaxation=softmax", "strategy.order=2"]
    args += ["strategy.hessian=finite_difference"]  # the exact product: the test above
    result = run_cli(*args, *TINY, "strategy.arch_update_every=4", f"out={out}")
    assert result.exit_code == 0, result.output
    log = pd.read_csv(out / "search_log.csv")
    assert (
        log["arch_loss"].notna().sum() >= 1 and log["arch_loss"].dropna().map(math.isfinite).all()
    )
    refused = run_cli("search", "strategy=proxyless", "strategy.order=2")
    assert refused.exit_code == 2 and "relaxed mixture" in refused.output
