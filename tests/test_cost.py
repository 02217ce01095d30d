"""Analytic params / MACs / peak memory, against published counts and against PyTorch."""

import pytest
from conftest import SPACE_NAMES, random_archs

from nascli.cost.analytic import (
    count_macs,
    count_params,
    layer_cost,
    layer_flash,
    layer_sram,
    network_cost,
)
from nascli.nn.builder import build_model
from nascli.space.network import LayerArgs, NetworkSettings, decode
from nascli.space.references import references_in
from nascli.space.spaces import SPACES

# Published counts at 224×224, 1000 classes. MACs are published rounded; we compare at that
# precision.
#   MobileNetV2: torchvision `mobilenet_v2` IMAGENET1K_V1 metadata (torchvision/models/
#     mobilenetv2.py): num_params 3504872, _ops ("GFLOPS", really GMACs) 0.301.
#   MnasNet-B1: torchvision `mnasnet1_0` IMAGENET1K_V1 metadata (torchvision/models/mnasnet.py):
#     num_params 4383312, _ops 0.314.
#   ProxylessNAS-Mobile: the authors' training log (mit-han-lab/proxylessnas,
#     logs/imagenet_mobile_log.txt): "Total training params: 4.08M", "Total FLOPs: 320.4M"
#     (their counter counts MACs); exact count 4,080,512 asserted by osmr/imgclsmob
#     (pytorchcv/models/proxylessnas.py) for the converted authors' weights.
PUBLISHED = {
    "mobilenet_v2": (3_504_872, 0.301e9, 1e6),
    "mnasnet_b1": (4_383_312, 0.314e9, 1e6),
    "proxylessnas_mobile": (4_080_512, 320.4e6, 0.1e6),
}


@pytest.mark.parametrize("reference", sorted(PUBLISHED))
def test_reference_counts_equal_published(reference):
    params, macs, precision = PUBLISHED[reference]
    spaces = ["proxylessnas_enlarged"] + (["proxylessnas"] * (reference == "proxylessnas_mobile"))
    for name in spaces:
        indices = references_in(SPACES[name])[reference]
        cost = network_cost(decode(SPACES[name], indices, NetworkSettings()))
        assert cost.params == params
        assert round(cost.macs / precision) * precision == pytest.approx(macs)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_params_and_macs_match_the_built_module(name):
    settings = NetworkSettings(resolution=64, num_classes=10, in_channels=3)
    for indices in random_archs(name, 4, seed=3):
        network = decode(SPACES[name], indices, settings)
        model = build_model(network).eval()
        cost = network_cost(network)
        assert cost.params == count_params(model)
        assert cost.macs == count_macs(model, (3, 64, 64))


def test_macs_match_at_full_resolution_with_se():
    settings = NetworkSettings(num_classes=1001)
    indices = random_archs("mnv3", 1, seed=7)[0]
    network = decode(SPACES["mnv3"], indices, settings)
    model = build_model(network).eval()
    assert network_cost(network).macs == count_macs(model, (3, 224, 224))


def test_peak_memory_counts_live_tensors_by_hand():
    # An IBN with residual, 8 -> 48 -> 8 channels at 4×4: the depthwise op holds the kept
    # input (8·16), the expanded tensor (48·16) and its output (48·16).
    ibn = LayerArgs("x", "ibn", 8, 8, 4, 4, kernel=3, expansion=6, mid_channels=48, residual=True)
    assert layer_cost(ibn).peak_elements == 8 * 16 + 48 * 16 + 48 * 16
    # Without the residual the input is freed after the expand conv.
    plain = LayerArgs("x", "ibn", 8, 16, 4, 2, kernel=3, stride=2, expansion=6, mid_channels=48)
    assert layer_cost(plain).peak_elements == max(8 * 16 + 48 * 16, 48 * 16 + 48 * 4)
    stem = LayerArgs("s", "conv", 3, 32, 224, 112, kernel=3, stride=2)
    assert layer_cost(stem).peak_elements == 3 * 224 * 224 + 32 * 112 * 112


def test_peak_memory_of_a_network_is_its_largest_layer_in_bytes():
    indices = references_in(SPACES["proxylessnas_enlarged"])["mobilenet_v2"]
    cost = network_cost(decode(SPACES["proxylessnas_enlarged"], indices, NetworkSettings()))
    # MobileNetV2's peak is the stride-2 depthwise conv of its first IBN: 96 channels at 112²
    # in, 96 at 56² out (the 16-channel block input is already freed).
    assert cost.peak_memory_bytes == 4 * (96 * 112**2 + 96 * 56**2)
    assert cost.peak_memory_bytes == 4 * max(c.peak_elements for c in cost.layers)


def test_int8_sram_follows_mcunets_peak_activation_count_by_hand():
    """MCUNet's `count_peak_activation_size`: each conv holds input + output; a residual
    block's input stays alive during the depthwise conv; one byte an element."""
    # Residual IBN, 8 -> 48 -> 8 at 4×4: the depthwise conv (48·16 in, 48·16 out) plus the
    # block input (8·16) is the block's peak, not the expand or project conv (8·16 + 48·16).
    ibn = LayerArgs("x", "ibn", 8, 8, 4, 4, kernel=3, expansion=6, mid_channels=48, residual=True)
    assert layer_sram(ibn) == 48 * 16 + 48 * 16 + 8 * 16
    # Without the residual, stride 2 (4×4 -> 2×2): the block input is freed after the expand.
    plain = LayerArgs("x", "ibn", 8, 16, 4, 2, kernel=3, stride=2, expansion=6, mid_channels=48)
    assert layer_sram(plain) == max(8 * 16 + 48 * 16, 48 * 16 + 48 * 4, 48 * 4 + 16 * 4)
    # Expansion 1 keeps its expand conv in nascli's spaces, so it is counted (16·64 + 16·64).
    one = LayerArgs("x", "ibn", 16, 16, 8, 8, kernel=3, expansion=1, mid_channels=16, residual=True)
    assert layer_sram(one) == max(16 * 64 * 2, 16 * 64 * 2 + 16 * 64)
    # A stride-2 stem conv: its input and output, in bytes (int8), a quarter of fp32's.
    stem = LayerArgs("s", "conv", 3, 32, 224, 112, kernel=3, stride=2)
    assert layer_sram(stem) == 3 * 224 * 224 + 32 * 112 * 112
    assert 4 * layer_sram(stem) == 4 * layer_cost(stem).peak_elements
    assert layer_sram(LayerArgs("p", "gap", 1280, 1280, 7, 1, bn=False)) == 0


def test_int8_flash_counts_weights_at_one_byte_and_a_folded_int32_bias_per_channel():
    stem = LayerArgs("s", "conv", 3, 32, 224, 112, kernel=3, stride=2)
    assert layer_flash(stem) == 3 * 3 * 3 * 32 + 4 * 32
    ibn = LayerArgs("x", "ibn", 8, 8, 4, 4, kernel=3, expansion=6, mid_channels=48)
    assert layer_flash(ibn) == (8 * 48 + 4 * 48) + (9 * 48 + 4 * 48) + (48 * 8 + 4 * 8)
    se = LayerArgs("x", "ibn", 8, 8, 4, 4, kernel=3, expansion=6, mid_channels=48, se_channels=16)
    assert layer_flash(se) - layer_flash(ibn) == (48 * 16 + 4 * 16) + (16 * 48 + 4 * 48)
    assert layer_flash(LayerArgs("c", "linear", 1280, 1000, 1, 1, bn=False)) == 1_284_000


def test_a_networks_sram_is_its_largest_layer_and_its_flash_the_sum():
    indices = references_in(SPACES["proxylessnas_enlarged"])["mobilenet_v2"]
    network = decode(SPACES["proxylessnas_enlarged"], indices, NetworkSettings())
    cost = network_cost(network)
    per_layer = [layer_sram(layer) for layer in network.layers]
    assert cost.sram_bytes == max(per_layer) < sum(per_layer)
    assert cost.flash_bytes == sum(layer_flash(layer) for layer in network.layers)
    # MobileNetV2 at 224: the first IBN's stride-2 depthwise conv sets it (96·112² + 96·56²),
    # the same layer as the fp32 live-set peak, in a quarter of the bytes.
    assert cost.sram_bytes == 96 * 112**2 + 96 * 56**2 == cost.peak_memory_bytes // 4
