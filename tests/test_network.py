"""Decoding architectures into concrete layers: widths, strides, SE, proxy settings."""

import pytest
from conftest import SPACE_NAMES, random_archs

from nascli.nn.blocks import same_padding
from nascli.space.arch import parse_indices
from nascli.space.network import NetworkSettings, decode, make_divisible
from nascli.space.references import encode_values, references_in
from nascli.space.spaces import SPACES


def layers_by_name(space, indices, **settings):
    network = decode(SPACES[space], indices, NetworkSettings(**settings))
    return {layer.name: layer for layer in network.layers}


def test_expansion_is_relative_to_the_sampled_input_width():
    """As TuNAS's code: the expanded width is scale(actual input width, ratio)."""
    space = SPACES["proxylessnas_enlarged"]
    for b2_width in (16, 24, 32):
        indices = encode_values(
            space, {"b2.filters": b2_width, "b3.0.expansion": 6, "b3.filters": 40}
        )
        layer = layers_by_name("proxylessnas_enlarged", indices)["b3.0"]
        assert layer.in_channels == b2_width
        assert layer.mid_channels == max(8, 8 * int(b2_width * 6 / 8 + 0.5))


def test_ratio_one_keeps_the_expand_conv_and_se_uses_the_v3_rule():
    space = SPACES["mnv3"]
    indices = encode_values(
        space, {"stem.filters": 24, "b1.0.expansion": 1, "b1.0.se": True, "b1.filters": 16}
    )
    layer = layers_by_name("mnv3", indices)["b1.0"]
    assert layer.kind == "ibn" and layer.mid_channels == 24  # 1×1 expand at ratio 1
    assert layer.se_channels == make_divisible(0.25 * 24) == 8
    assert [make_divisible(v) for v in (4, 12, 18, 36, 60)] == [8, 16, 24, 40, 64]


def test_skipped_layers_disappear_and_kept_ones_are_residual():
    mobile = references_in(SPACES["proxylessnas"])["proxylessnas_mobile"]
    layers = layers_by_name("proxylessnas", mobile)
    assert "b2.2" not in layers and "b2.3" not in layers  # ProxylessNAS-Mobile skips these
    assert layers["b2.1"].residual and not layers["b2.0"].residual
    assert (layers["b6.0"].kernel, layers["b6.0"].expansion) == (7, 6)


def test_mnasnet_decodes_to_its_published_layers():
    indices = references_in(SPACES["proxylessnas_enlarged"])["mnasnet_b1"]
    network = decode(SPACES["proxylessnas_enlarged"], indices, NetworkSettings())
    ibns = [
        (layer.kernel, layer.expansion, layer.out_channels)
        for layer in network.layers
        if layer.kind == "ibn"
    ]
    assert ibns == (
        [(3, 3, 24)] * 3 + [(5, 3, 40)] * 3 + [(5, 6, 80)] * 3 + [(3, 6, 96)] * 2
        + [(5, 6, 192)] * 4 + [(3, 6, 320)]
    )  # fmt: skip


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_defaults_change_nothing_at_224(name):
    for indices in random_archs(name, 20):
        auto = decode(SPACES[name], indices, NetworkSettings(stride_policy="auto"))
        keep = decode(SPACES[name], indices, NetworkSettings(stride_policy="keep"))
        assert auto.layers == keep.layers
        assert next(layer for layer in auto.layers if layer.kind == "gap").in_resolution == 7


@pytest.mark.parametrize("name", SPACE_NAMES)
@pytest.mark.parametrize(
    ("resolution", "minimum", "final"),
    [(32, 4, 4), (28, 4, 4), (64, 4, 4), (96, 4, 6), (32, 2, 2), (96, 2, 3), (32, 1, 1)],
)
def test_auto_stride_policy_drops_early_strides_for_small_inputs(name, resolution, minimum, final):
    indices = random_archs(name, 1)[0]
    settings = NetworkSettings(resolution=resolution, min_final_resolution=minimum)
    network = decode(SPACES[name], indices, settings)
    assert next(layer for layer in network.layers if layer.kind == "gap").in_resolution == final
    strides = [layer.stride for layer in network.layers]
    first_kept = strides.index(2)
    assert all(s == 1 for s in strides[:first_kept])  # only the earliest strides go


def test_width_multiplier_scales_every_width_with_tunas_rounding():
    mobile = references_in(SPACES["proxylessnas"])["proxylessnas_mobile"]
    full = layers_by_name("proxylessnas", mobile)
    half = layers_by_name("proxylessnas", mobile, width_multiplier=0.5)
    for name, layer in full.items():
        if layer.kind != "linear":
            assert half[name].out_channels == max(8, 8 * int(layer.out_channels * 0.5 / 8 + 0.5))
    assert half["classifier"].out_channels == full["classifier"].out_channels


def test_tf_same_padding_is_asymmetric_at_stride_two():
    assert same_padding(3, 2, 224) == (0, 1)
    assert same_padding(5, 2, 224) == (1, 2)
    assert same_padding(7, 1, 56) == (3, 3)
    assert same_padding(3, 2, 7) == (1, 1)


def test_architecture_must_match_settings_validation():
    with pytest.raises(ValueError, match="stride_policy"):
        NetworkSettings(stride_policy="sometimes")
    with pytest.raises(Exception, match="needs 86 indices"):
        parse_indices(SPACES["mnv3"], "0")


def test_mnv3_activations_are_fixed_per_block_and_the_head_follows_tunas():
    indices = random_archs("mnv3", 1, seed=5)[0]
    layers = decode(SPACES["mnv3"], indices, NetworkSettings()).layers
    acts = {layer.name.split(".")[0]: layer.act for layer in layers if layer.kind == "ibn"}
    assert acts == {"b1": "relu", "b2": "relu", "b3": "swish6", "b4": "swish6", "b5": "swish6"}
    stem, *_, gap, head2, classifier = layers
    assert (stem.kind, stem.act, stem.stride) == ("conv", "swish6", 2)
    assert gap.kind == "gap" and gap.in_resolution == 7
    # after the pooling: a 1×1 conv without BN (so with a bias) and h-swish, then the classifier
    assert (head2.kind, head2.bn, head2.bias, head2.act) == ("conv", False, True, "swish6")
    assert classifier.kind == "linear" and classifier.in_channels == head2.out_channels
