"""NAS-RL's CIFAR-10 space (Zoph & Le 2017, §3.3, §4.1) and its anchor-point controller: the
three compilation rules, costs against the built model, the decision order, and the
skip-connection sigmoids."""

import itertools
import json

import pandas as pd
import pytest
import torch

from nascli.cost.analytic import count_macs, count_params, network_cost
from nascli.cost.models import AnalyticCost
from nascli.errors import NascliError
from nascli.nn.builder import build_model, concat
from nascli.search.lstm import AnchorLSTMController
from nascli.search.nasrl import NasrlSettings
from nascli.search.policy import ControllerSettings, make_controller
from nascli.search.proxies import ProxySettings, scorable, score
from nascli.space.arch import get_space, graph_prefix_space, sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.schema import INPUT
from tests.conftest import TINY

NET = NetworkSettings(resolution=16, num_classes=10, in_channels=3)


def layer_indices(kh=1, kw=1, stride=0, filters=0, inputs=()):
    """One layer's indices in the space's order: height, width, stride, filters, inputs."""
    return [kh, kw, stride, filters, *inputs]


def test_decisions_come_in_the_papers_token_order_per_layer():
    space = get_space("nasrl_strides", layers=4)
    paths = [d.path for d in space.decisions]
    assert paths[:9] == [
        "layer1.0.kernel_height", "layer1.0.kernel_width", "layer1.0.stride", "layer1.0.filters",
        "layer2.0.kernel_height", "layer2.0.kernel_width", "layer2.0.stride", "layer2.0.filters",
        "layer2.0.inputs.0",
    ]  # fmt: skip
    assert space.num_decisions == 4 * 4 + (0 + 1 + 2 + 3)
    assert [d.choices for d in space.decisions[:4]] == [(1, 3, 5, 7), (1, 3, 5, 7), (1, 2, 3),
                                                         (24, 36, 48, 64)]  # fmt: skip
    assert sum(d.tag == INPUT for d in space.decisions) == 6
    assert get_space("nasrl").decisions[2].choices == (1,)  # strides fixed to 1


def test_space_names_carry_the_depth_and_bad_depths_are_one_line_errors():
    space = get_space("nasrl", layers=9)
    assert space.name == "nasrl@layers9" and get_space(space.name) == space
    assert get_space("nasrl", layers=6) is get_space("nasrl")
    assert graph_prefix_space(space, get_space("nasrl", layers=3).num_decisions).name == (
        "nasrl@layers3"
    )
    for bad in ("nasrl@layers0", "nasrl@layersx"):
        with pytest.raises(NascliError, match="layer count"):
            get_space(bad)
    with pytest.raises(NascliError, match="depth_multiplier"):
        get_space("nasrl", 1.5)
    with pytest.raises(NascliError, match="NAS-RL spaces only"):
        get_space("proxylessnas", layers=4)


def test_rule_1_a_layer_without_inputs_takes_the_image():
    space = get_space("nasrl", layers=3)
    # layer 3 selects neither layer 1 nor layer 2
    indices = layer_indices() + layer_indices(inputs=(1,)) + layer_indices(filters=3, inputs=(0, 0))
    layers = decode(space, tuple(indices), NET).layers
    assert layers[0].inputs == (-1,) and layers[2].inputs == (-1,)
    assert layers[2].in_channels == 3 and layers[1].inputs == (0,)
    assert build_model(decode(space, tuple(indices), NET))(torch.randn(2, 3, 16, 16)).shape == (
        2,
        10,
    )


def test_rule_2_every_unused_output_reaches_the_classifier():
    space = get_space("nasrl", layers=4)
    # 1 → 2, 1 → 3; nobody takes 2, 3 or 4 (4 is last), so 2, 3 and 4 are concatenated
    indices = (
        layer_indices(filters=0)
        + layer_indices(filters=1, inputs=(1,))
        + layer_indices(filters=2, inputs=(1, 0))
        + layer_indices(filters=3, inputs=(0, 0, 0))
    )
    network = decode(space, tuple(indices), NET)
    concat_layer = next(layer for layer in network.layers if layer.kind == "concat")
    assert concat_layer.inputs == (1, 2, 3)
    assert concat_layer.out_channels == 36 + 48 + 64
    model = build_model(network)
    assert model.classifier.in_features == 36 + 48 + 64
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_rule_3_inputs_of_different_sizes_are_zero_padded_to_the_largest():
    a = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    b = torch.full((1, 2, 3, 3), 7.0)
    out = concat([a, b])
    assert out.shape == (1, 3, 3, 3)
    assert torch.equal(out[:, :1, :2, :2], a)
    assert out[:, 0, 2, :].abs().sum() == 0 and out[:, 0, :, 2].abs().sum() == 0
    assert torch.equal(out[:, 1:], b)
    space = get_space("nasrl_strides", layers=3)
    # layer 1 stride 2 (16 → 8), layer 2 stride 1 on the image (16), layer 3 takes both
    indices = layer_indices(stride=1) + layer_indices(inputs=(0,)) + layer_indices(inputs=(1, 1))
    network = decode(space, tuple(indices), NET)
    assert [layer.out_resolution for layer in network.layers[:3]] == [8, 16, 16]
    assert network.layers[2].in_resolution == 16 and network.layers[2].in_channels == 48
    assert build_model(network)(torch.randn(1, 3, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("name", ["nasrl", "nasrl_strides"])
def test_params_and_macs_of_built_models_equal_the_analytic_counts(name):
    space = get_space(name, layers=5)
    generator = torch.Generator().manual_seed(0)
    for row in sample_indices(space, 12, generator).tolist():
        network = decode(space, tuple(row), NET)
        cost = network_cost(network)
        model = build_model(network)
        assert count_params(model) == cost.params
        assert count_macs(model, (3, 16, 16)) == cost.macs


def test_peak_memory_keeps_outputs_a_later_layer_still_reads():
    space = get_space("nasrl", layers=3)
    # 1 → 2 and 1 → 3; nobody takes 2, so it waits for the final concatenation while 3 runs
    indices = layer_indices(filters=0) + layer_indices(filters=1, inputs=(1,))
    indices += layer_indices(filters=2, inputs=(1, 0))
    network = decode(space, tuple(indices), NET)
    hw = 16 * 16
    assert network.layers[1].kept == 0  # layer 1's output, still needed, is its own input
    assert network.layers[2].kept == 36 * hw  # layer 2's output
    cost = network_cost(network)
    assert cost.layers[2].peak_elements == 24 * hw + 48 * hw + 36 * hw
    assert cost.layer_sram_bytes[2] == (24 + 48 + 36) * hw


def test_costs_of_a_batch_equal_the_decoded_networks():
    space = get_space("nasrl_strides")
    batch = sample_indices(space, 20, torch.Generator().manual_seed(1))
    for metric in ("params", "macs", "peak_memory", "sram", "flash"):
        values = AnalyticCost(space, NET, metric)(batch)
        for row, value in zip(batch.tolist(), values.tolist(), strict=True):
            cost = network_cost(decode(space, tuple(row), NET))
            expected = {
                "params": cost.params,
                "macs": cost.macs,
                "flash": cost.flash_bytes,
                "peak_memory": cost.peak_memory_bytes,
                "sram": cost.sram_bytes,
            }
            assert value == expected[metric]


def test_proxies_score_nasrl_architectures():
    space = get_space("nasrl")
    settings = ProxySettings(batch_size=4)
    for row in sample_indices(space, 3, torch.Generator().manual_seed(2)).tolist():
        net = scorable(decode(space, tuple(row), NET))
        for name in ("zen", "naswot", "synflow"):
            value = score(name, net, settings, torch.Generator().manual_seed(0))
            assert torch.isfinite(torch.tensor(value)), name


# --------------------------------------------------------------------------- the controller
def controller(space, seed=0):
    made = make_controller(space, ControllerSettings(name="lstm"), "cpu", seed)
    assert isinstance(made, AnchorLSTMController)
    return made


def test_the_controller_is_a_distribution_over_every_architecture():
    space = get_space("nasrl_strides", layers=2)
    every = torch.tensor(list(itertools.product(*[range(d.num_choices) for d in space.decisions])))
    assert len(every) == (4 * 4 * 3 * 4) ** 2 * 2
    assert float(controller(space).log_prob(every).exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_skip_probability_is_the_anchor_sigmoid_computed_by_hand():
    space = get_space("nasrl", layers=2)
    c = controller(space, seed=3)
    indices = torch.tensor([layer_indices(2, 1, 0, 3) + layer_indices(0, 3, 0, 1, inputs=(1,))])
    with torch.no_grad():
        x, state, anchors = c.start.view(1, 1, -1), None, []
        for layer_positions in ([0, 1, 2, 3], [4, 5, 6, 7]):
            for t in layer_positions:
                _, state = c.lstm(x, state)
                x = c.embedding[c.offsets[t] + indices[0, t]].view(1, 1, -1)
            output, state = c.lstm(x, state)  # the anchor point
            anchors.append(output[0, 0])
            x = c.start.view(1, 1, -1)
        a = c.v @ torch.tanh(c.w_prev @ anchors[0] + c.w_curr @ anchors[1])
        p = float(c.conditionals(indices)[0, 8, 1])
    assert p == pytest.approx(float(torch.sigmoid(a)), abs=1e-6)


def test_skip_decisions_of_one_layer_are_independent_and_the_sampled_ones_are_fed_back():
    space = get_space("nasrl", layers=4)
    c = controller(space, seed=1)
    base = sample_indices(space, 1, torch.Generator().manual_seed(5))[0]
    layer4 = [p for p, d in enumerate(space.decisions) if d.path.startswith("layer4.0.inputs")]
    first, second = layer4[0], layer4[1]
    variants = base.repeat(2, 1)
    variants[0, first], variants[1, first] = 0, 1
    probs = c.conditionals(variants)
    # the same layer's other skip decision does not see it (independent sigmoids, no softmax)
    assert torch.equal(probs[0, second], probs[1, second])
    # a later layer's tokens do see it: the sampled choices are fed back (through the anchors)
    layer3 = [p for p, d in enumerate(space.decisions) if d.path.startswith("layer3.0.inputs")]
    variants = base.repeat(2, 1)
    variants[0, layer3[0]], variants[1, layer3[0]] = 0, 1
    later = space.decisions.index(next(d for d in space.decisions if d.path.startswith("layer4")))
    assert not torch.allclose(
        c.conditionals(variants)[0, later], c.conditionals(variants)[1, later]
    )


def test_one_reinforce_step_moves_the_sampled_architecture_with_the_advantages_sign():
    space = get_space("nasrl", layers=3)
    for sign in (1.0, -1.0):
        c = controller(space)
        sampled = c.sample(4, torch.Generator().manual_seed(0))
        before = c.log_prob(sampled)
        c.update(sampled, torch.full((4,), sign), c.active(sampled), 0.01)
        assert ((c.log_prob(sampled) - before) * sign > 0).all()


def test_the_controller_state_round_trips():
    space = get_space("nasrl", layers=3)
    a, b = controller(space, seed=0), controller(space, seed=9)
    sampled = a.sample(3, torch.Generator().manual_seed(0))
    a.update(sampled, torch.ones(3), a.active(sampled), 0.01)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.log_prob(sampled), b.log_prob(sampled))


def test_depth_schedule():
    s = NasrlSettings(depth_start=6, depth_every=1600)
    assert [s.depth(n, 20) for n in (0, 1599, 1600, 3200, 12_799)] == [6, 6, 8, 10, 20]
    assert NasrlSettings().depth(5, 7) == 7


# --------------------------------------------------------------------------- commands
def test_a_nasrl_search_grows_its_children_and_builds_the_best(run_cli, tmp_path):
    out = tmp_path / "n"
    args = [*TINY, "strategy=nasrl", "space=nasrl", "space.layers=4", "strategy.depth_start=2",
            "strategy.depth_every=2", "strategy.children_per_step=2",
            "strategy.steps=3"]  # fmt: skip
    result = run_cli("search", *args, f"out={out}")
    assert result.exit_code == 0, result.output
    children = pd.read_csv(out / "children.csv")
    assert list(children["layers"]) == [2, 2, 4, 4, 4, 4]
    lengths = [len(i.split(":")) for i in children["indices"]]
    assert lengths == [get_space("nasrl", layers=n).num_decisions for n in children["layers"]]
    arch = json.loads((out / "arch.json").read_text())
    assert (
        arch["space"]
        == f"nasrl@layers{children.loc[children['best_valid_top1'].idxmax(), 'layers']}"
    )
    assert "cost macs" in result.output  # the search's Pixel-1 default does not model NAS-RL
    built = run_cli("build", f"arch={out}", *TINY, f"out={tmp_path / 'b'}")
    assert built.exit_code == 0, built.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "space=nasrl"], "weight-sharing supernet"),
        (["random-baseline", "space=nasrl"], "TuNAS's three spaces"),
        (["search", "strategy=nasrl", "strategy.depth_start=2"], "needs a NAS-RL space"),
        (["profile-latency", "space=nasrl"], "cost=lut covers the TuNAS spaces"),
        (["search", "strategy=nasrl", "space=nasrl", "space.layers=0"], "space.layers"),
    ],
)
def test_what_the_nasrl_space_cannot_do_is_refused_in_one_line(run_cli, tmp_path, args, message):
    result = run_cli(*args, f"out={tmp_path / 'refused'}")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
