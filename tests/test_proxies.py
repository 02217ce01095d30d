import math

import pandas as pd
import pytest
import torch
from torch import nn

from nascli.cost.analytic import count_macs, count_params
from nascli.errors import NascliError
from nascli.report.ranking import kendall, spearman
from nascli.search.proxies import (
    NTK_FLOOR,
    PROXIES,
    ProxySettings,
    Scorable,
    kaiming_init,
    linear_regions,
    ntk_condition,
    scorable,
    score,
    strip_residual_adds,
    te_nas_rank,
    without_residuals,
    zen_score,
)
from nascli.space.arch import format_indices, get_space
from nascli.space.network import NetworkSettings, decode
from tests.conftest import SPACE_NAMES, TINY, random_archs

SMALL = NetworkSettings(resolution=16, num_classes=4, in_channels=1, width_multiplier=0.25)


def small_scorable(space_name: str, seed: int = 0) -> Scorable:
    space = get_space(space_name)
    return scorable(decode(space, random_archs(space_name, 1, seed)[0], SMALL))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ Zen-Score, by hand
@pytest.mark.parametrize("bn_term", ["paper", "reference"])
def test_zen_score_of_a_conv_bn_net_matches_the_hand_computed_definition(bn_term):
    features = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2))
    features[1].momentum = 0.01  # nascli's own BN momentum must not leak into the score
    features.eval()  # the score must put BN in train mode itself
    settings = ProxySettings(batch_size=4, gamma=0.5, bn_term=bn_term)
    result = zen_score(features, (1, 3, 3), settings, generator(7))

    # The same draws, in the documented order: weights (module order), then x, then ε.
    g = generator(7)
    w = torch.empty(2, 1, 1, 1).normal_(0.0, 1.0, generator=g).view(1, 2, 1, 1)
    x = torch.randn(4, 1, 3, 3, generator=g)
    eps = torch.randn(4, 1, 3, 3, generator=g)
    z_clean, z_perturbed = (w * x).double(), (w * (x + 0.5 * eps)).double()

    def bn(z):  # train-mode BN: biased batch variance, ε = 1e-5, γ = 1, β = 0
        mean = z.mean(dim=(0, 2, 3), keepdim=True)
        var = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (z - mean) / torch.sqrt(var + 1e-5)

    delta = (bn(z_clean) - bn(z_perturbed)).abs().sum(dim=(1, 2, 3)).mean()  # per-sample L1
    v1 = z_clean.var(dim=(0, 2, 3))  # unbiased, as BN's running statistics use
    v2 = z_perturbed.var(dim=(0, 2, 3))
    paper = 0.5 * torch.log(v1.mean())
    reference = 0.5 * torch.log((0.81 + 0.09 * v1 + 0.1 * v2).mean())
    expected_term = paper if bn_term == "paper" else reference

    assert result.bn_term[0] == pytest.approx(float(expected_term), abs=1e-5)
    assert result.log_delta[0] == pytest.approx(float(torch.log(delta)), abs=1e-5)
    assert result.score == pytest.approx(float(torch.log(delta) + expected_term), abs=1e-5)
    assert abs(float(paper - reference)) > 0.05  # the two definitions really differ here
    assert features[1].momentum == 0.01 and not features.training  # restored


def test_zen_score_reinitialises_every_repeat_and_is_fixed_by_the_seed():
    net = small_scorable("proxylessnas")
    settings = ProxySettings(batch_size=8, repeat=3)
    first = zen_score(net.features, net.input_shape, settings, generator(1))
    with torch.no_grad():  # whatever the weights were before, a seed fixes the score
        for p in net.model.parameters():
            p.mul_(3.0).add_(1.0)
    again = zen_score(net.features, net.input_shape, settings, generator(1))
    other = zen_score(net.features, net.input_shape, settings, generator(2))
    assert first == again
    assert first.score != other.score
    assert first.score == pytest.approx(sum(first.repeats) / 3)
    assert len(set(first.repeats)) == 3  # a new init and new inputs each repeat


def test_reference_bn_term_penalises_every_bn_layer():
    """Zen-NAS code (`compute_zen_score.py`): running_var = 0.81 + 0.19·v against the paper's v, so
    each BN layer with pre-BN variance v > 1 loses 0.5·ln((0.81 + 0.19v)/v), between 0 and
    0.5·ln(0.19) ≈ −0.83 (the limit of wide convs). With N(0,1) weights every v here is ≥ 4 (a
    depthwise 3×3 on BN+ReLU output gives ≈ 4.5, so MobileNets lose less than the −0.83 of wide
    ResNets)."""
    net = small_scorable("proxylessnas", seed=3)
    paper = zen_score(net.features, net.input_shape, ProxySettings(batch_size=8), generator(0))
    reference = zen_score(
        net.features, net.input_shape, ProxySettings(batch_size=8, bn_term="reference"),
        generator(0),
    )  # fmt: skip
    layers = sum(isinstance(m, nn.BatchNorm2d) for m in net.features.modules())
    assert paper.log_delta == reference.log_delta  # the same draws, only the BN term differs
    per_layer = (reference.bn_term[0] - paper.bn_term[0]) / layers
    assert 0.5 * math.log(0.19) < per_layer < 0.5 * math.log((0.81 + 0.19 * 4) / 4)


# ------------------------------------------------------------------ residuals
def test_residuals_are_off_while_scoring_and_back_in_the_built_model():
    space = get_space("proxylessnas")
    indices = next(
        a for a in random_archs("proxylessnas", 50, seed=5)
        if any(layer.residual for layer in decode(space, a, SMALL).layers)
    )  # fmt: skip
    network = decode(space, indices, SMALL)
    net = scorable(network)
    flagged = [m for m in net.model.modules() if getattr(m, "residual", False) is True]
    assert flagged
    with without_residuals(net.features) as plain:
        assert plain is net.features and not any(m.residual for m in flagged)
    assert all(m.residual for m in flagged)
    dropped = score("zen", net, ProxySettings(batch_size=8), generator(0))
    kept = score("zen", net, ProxySettings(batch_size=8, residuals="keep"), generator(0))
    assert dropped != kept
    assert all(m.residual for m in flagged)
    assert any(layer.residual for layer in network.layers)  # budgets see the real network


class BasicBlock(nn.Module):
    """A hand-written ResNet basic block with a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.out = nn.ReLU()

    def forward(self, x):
        branch = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.out(branch + identity)

    def plain(self, x):
        return self.out(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def tiny_resnet() -> tuple[nn.Module, nn.Module]:
    features = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        BasicBlock(8, 8, 1),
        BasicBlock(8, 16, 2),
    )
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    return model, features


def test_a_hand_written_resnet_is_scored_without_its_adds_and_projection_shortcuts():
    model, features = tiny_resnet()
    plain = strip_residual_adds(features)
    names = [name for name, _ in plain.named_modules()]
    assert not any("shortcut" in name for name in names)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert bns == 1 + 2 + 2  # stem and the two branches; the projection's BN is gone
    features.eval()
    plain.eval()
    x = torch.randn(2, 3, 8, 8)
    stem, block1, block2 = features
    expected = block2.plain(block1.plain(stem(x)))
    torch.testing.assert_close(plain(x), expected)
    assert not torch.allclose(features(x), expected)  # the original still adds

    net = Scorable(model, features, (3, 8, 8), num_classes=5)
    settings = ProxySettings(batch_size=8)
    values = {name: score(name, net, settings, generator(0)) for name in PROXIES}
    again = {name: score(name, net, settings, generator(0)) for name in PROXIES}
    assert values == again
    assert all(math.isfinite(v) for v in values.values())
    kept = score("zen", net, ProxySettings(batch_size=8, residuals="keep"), generator(0))
    assert kept != values["zen"]
    assert values["params"] == count_params(model)  # budgets count the shortcuts


def test_an_untraceable_module_names_the_way_out():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) + x if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(NascliError, match="residuals=keep"):
        strip_residual_adds(Branchy())


# ------------------------------------------------------------------ the other proxies
@pytest.mark.parametrize("space_name", SPACE_NAMES)
def test_every_proxy_is_fixed_by_its_seed_on_every_space(space_name):
    settings = ProxySettings(batch_size=8)
    first = {n: score(n, small_scorable(space_name), settings, generator(4)) for n in PROXIES}
    second = {n: score(n, small_scorable(space_name), settings, generator(4)) for n in PROXIES}
    assert first == second
    assert all(math.isfinite(v) for v in first.values())
    other = score("zen", small_scorable(space_name), settings, generator(5))
    assert other != first["zen"]


def test_analytic_params_and_macs_agree_with_counting_the_module():
    for space_name in SPACE_NAMES:
        net = small_scorable(space_name, seed=2)
        assert net.params == count_params(net.model)
        assert net.macs == count_macs(net.model, net.input_shape)


def test_synflow_variants_and_dtype_restored():
    net = small_scorable("mnv3", seed=1)
    reference = score("synflow", net, ProxySettings(), generator(0))
    original = score("synflow", net, ProxySettings(synflow="original"), generator(0))
    assert reference < 0 < original  # Zen-NAS negates it
    assert all(p.dtype == torch.float32 for p in net.model.parameters())


def test_grad_norm_and_naswot_are_positive_scores_of_the_network():
    net = small_scorable("proxylessnas_enlarged", seed=4)
    assert score("grad_norm", net, ProxySettings(batch_size=8), generator(0)) > 0
    # NASWOT: log|det K| of B×B Hamming kernels; distinct Gaussian images give distinct codes.
    assert score("naswot", net, ProxySettings(batch_size=8), generator(0)) > 0


def test_bad_proxy_settings_are_refused():
    with pytest.raises(NascliError, match="bn_term"):
        ProxySettings(bn_term="batch")
    with pytest.raises(NascliError, match="unknown proxy"):
        score("snip", small_scorable("mnv3"), ProxySettings(), generator(0))


# ------------------------------------------------------------------ TE-NAS
def linear_net(features: int, classes: int) -> Scorable:
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, classes, bias=False))
    return Scorable(model, None, (1, 1, features), classes)


def test_ntk_condition_of_a_linear_model_is_that_of_the_gram_matrix_of_its_inputs():
    # logits = W x: the gradient of Σ_c logit_ic over W is 1_C ⊗ x_i, so Θ = C · X Xᵀ.
    net = linear_net(features=12, classes=3)
    kappa = ntk_condition(net, ProxySettings(te_batch_size=5), generator(0))
    replay = generator(0)
    kaiming_init(linear_net(12, 3).model, replay, "fan_out")  # the same draws, weights first
    x = torch.randn((5, 1, 1, 12), generator=replay).flatten(1).double()
    eigenvalues = torch.linalg.eigvalsh(3 * x @ x.T)
    assert kappa == pytest.approx(float(eigenvalues[-1] / eigenvalues[0]), rel=1e-4)
    assert kappa > 1  # and smaller is better: the proxy is −κ
    assert score("te_ntk", net, ProxySettings(te_batch_size=5), generator(0)) == -kappa


def test_a_singular_ntk_gets_the_worst_finite_condition_number():
    # 8 images in 3 dimensions: X Xᵀ has rank 3, λ_min = 0 up to rounding (or below it)
    net = linear_net(features=3, classes=2)
    kappa = ntk_condition(net, ProxySettings(te_batch_size=8), generator(1))
    assert kappa == pytest.approx(1 / (8 * NTK_FLOOR))
    assert math.isfinite(score("te_ntk", net, ProxySettings(te_batch_size=8), generator(1)))
    with pytest.raises(NascliError, match="te_batch_size"):
        ProxySettings(te_batch_size=1)  # a 1×1 NTK has κ = 1 for every network


def test_linear_regions_count_distinct_exact_codes_of_activations_on_feature_maps():
    # one 1×1 conv on 2 pixels, then ReLU: an image's code is (w·x > 0) per pixel, ≤ 4 patterns;
    # the ReLU on the flattened 2-D tensor is not hooked (the reference's 4-D rule).
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2), nn.ReLU()
    )
    net = Scorable(model, None, (1, 1, 2), 2)
    regions = linear_regions(net, ProxySettings(te_batch_size=6), generator(3))
    replay = generator(3)
    copy = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2), nn.ReLU()
    )
    kaiming_init(copy, replay, "fan_in")
    x = torch.randn((6, 1, 1, 2), generator=replay)
    codes = (copy[0](x) > 0).flatten(1)
    assert regions == len({tuple(c.tolist()) for c in codes}) <= 4


def test_te_nas_rank_sums_rounded_tied_ranks_of_both_indicators():
    # κ 10.0 and 10.04 agree to 3 significant figures and tie; smaller κ and more regions win.
    ranks = te_nas_rank([10.0, 10.04, 5.0, 20.0], [3, 3, 4, 2])
    assert ranks == [4.0, 4.0, 8.0, 2.0]


def test_te_proxies_score_every_space_and_zen_search_takes_the_te_score():
    for space_name in SPACE_NAMES:
        net = small_scorable(space_name, seed=3)
        settings = ProxySettings(te_batch_size=4)
        assert 1 <= score("te_regions", net, settings, generator(0)) <= 4
        assert score("te_ntk", net, settings, generator(0)) <= -1  # κ ≥ 1
    from tests.test_zen import make_search

    search = make_search(proxy="te_nas", te_batch_size=4)
    scored = [o.score for o in (search.step() for _ in range(3)) if o.status == "scored"]
    assert scored and all(math.isfinite(v) for v in scored)


# ------------------------------------------------------------------ rank correlations
def test_rank_correlations_handle_ties_and_say_when_they_are_undefined():
    x = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7, 0.7, 0.2]
    y = [1.0, 3.0, 2.0, 5.0, 2.0, 4.0, 6.0, 0.5]
    # τ-b by hand: 28 pairs, 23 concordant, 2 discordant, 2 tied in x only, 1 in y only.
    tau = kendall(x, y)
    assert tau.statistic == pytest.approx((23 - 2) / math.sqrt((28 - 2) * (28 - 1)))
    assert 0 < tau.pvalue < 0.05
    assert kendall([1, 2, 3], [3, 2, 1]).statistic == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]).statistic == pytest.approx(0.8)
    assert all(math.isnan(v) for v in spearman([1, 1, 1], [1, 2, 3]))
    assert all(math.isnan(v) for v in kendall([1.0], [2.0]))


# ------------------------------------------------------------------ `nascli proxies`
def test_proxies_command_ranks_every_proxy_against_a_csv(run_cli, tmp_path):
    archs = random_archs("proxylessnas", 5, seed=8)
    csv = tmp_path / "archs.csv"
    accuracy = [0.2, 0.5, 0.1, 0.9, 0.4]
    pd.DataFrame({"indices": [format_indices(a) for a in archs], "valid_top1": accuracy}).to_csv(
        csv, index=False
    )
    out = tmp_path / "p"
    result = run_cli("proxies", f"input={csv}", *TINY, "strategy.batch_size=4", f"out={out}")
    assert result.exit_code == 0, result.output
    stats = pd.read_csv(out / "correlations.csv").set_index("proxy")
    assert sorted(stats.index) == sorted([*PROXIES, "te_nas_rank"])  # its parts scored too
    scores = pd.read_csv(out / "proxies.csv")
    # every one of 16 images has its own activation pattern in every network: a constant proxy,
    # whose correlation is undefined (NaN), not a number that cannot be told from a real one
    assert scores["te_regions"].eq(16).all()
    assert stats.loc["te_regions", ["kendall_tau", "spearman_rho"]].isna().all()
    defined = stats.drop(index="te_regions")
    assert defined[["kendall_tau", "spearman_rho"]].abs().le(1).all().all()
    assert defined[["kendall_p", "spearman_p"]].ge(0).all().all()
    tau = kendall(scores["params"], accuracy)
    assert stats.loc["params", "kendall_tau"] == pytest.approx(tau.statistic)
    assert stats.loc["params", "kendall_p"] == pytest.approx(tau.pvalue)
    rank = te_nas_rank(-scores["te_ntk"], scores["te_regions"])
    assert scores["te_nas_rank"].tolist() == rank
    assert (out / "plots" / "proxies.png").is_file()


def test_proxies_command_scores_a_random_baseline_run_with_the_runs_own_settings(run_cli, tmp_path):
    run = tmp_path / "rb"
    baseline = run_cli(
        "random-baseline", *TINY, "strategy.num_samples=3", "strategy.min_cost=0",
        "strategy.max_cost=1000", f"out={run}",
    )  # fmt: skip
    assert baseline.exit_code == 0, baseline.output
    out = tmp_path / "p"
    # no TINY here: the space, resolution and widths must come from the run's own config
    result = run_cli("proxies", f"input={run}", "strategy.batch_size=4", f"out={out}")
    assert result.exit_code == 0, result.output
    assert "the run's settings" in result.output
    scores = pd.read_csv(out / "proxies.csv", dtype={"indices": str}).set_index("indices")
    candidates = pd.read_csv(run / "candidates.csv", dtype={"indices": str}).set_index("indices")
    assert scores["params"].to_dict() == candidates.loc[scores.index, "params"].to_dict()


def test_proxies_command_explains_bad_input(run_cli, tmp_path):
    result = run_cli("proxies", f"out={tmp_path / 'a'}")
    assert result.exit_code == 2 and "pass input=" in result.output
    csv = tmp_path / "c.csv"
    pd.DataFrame({"indices": ["0:1"] * 3, "top1": [0.1, 0.2, 0.3]}).to_csv(csv, index=False)
    result = run_cli("proxies", f"input={csv}", f"out={tmp_path / 'b'}")
    assert result.exit_code == 2 and "no column valid_top1" in result.output
    assert "Traceback" not in result.output
