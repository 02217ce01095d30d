"""Analytic params / MACs / peak memory, against published counts and against PyTorch."""

import pytest
from conftest import SPACE_NAMES, random_archs

from nascli.cost.analytic import count_macs, count_params, layer_cost, network_cost
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
