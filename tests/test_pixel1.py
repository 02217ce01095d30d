"""TuNAS's Pixel-1 cost model: every verification vector of the published weights."""

import pytest
import torch

from nascli.cost.pixel1 import Pixel1Model, feature_pieces
from nascli.space.arch import sample_indices
from nascli.space.references import references_in
from nascli.space.spaces import SPACES

PX_INTEGRATION = (
    "0:0:0:1:0:0:0:0:1:0:0:1:0:0:1:0:1:1:0:1:0:0:1:0:0:0:0:0:0:2:1:0:1:1:0:2:1:0:2:1:0:0:1:1:0:0:"
    "0:0:1:0:0:1:0:0:0:1:1:0:2:0:0:0:0:0:1:0:0:0:2:1:0:0:0"
)
PX_MINIMAL = (
    "0:0:0:0:0:0:0:0:1:0:0:1:0:0:1:0:0:0:0:0:0:1:0:0:1:0:0:1:0:0:0:0:0:0:1:0:0:1:0:0:1:0:0:0:0:0:"
    "0:1:0:0:1:0:0:1:0:0:0:0:0:0:1:0:0:1:0:0:1:0:0:0:0:0:0"
)
# (space, indices, milliseconds) from the data's companion note, §5.2–§5.4.
VECTORS = [
    ("proxylessnas", "proxylessnas_mobile", 84.4162),
    ("proxylessnas", PX_INTEGRATION, 84.0167),
    ("proxylessnas", ":".join(["0"] * 73), 70.7398),
    ("proxylessnas", PX_MINIMAL, 30.9361),
    ("proxylessnas", "0:2:0:2:1:0:2:1:0:2:1:0:2:1:0:0:2:1:0:2:1:0:2:1:0:2:1:0:0:2:1:0:2:1:0:2:1:0:2:1:0:0:2:1:0:2:1:0:2:1:0:2:1:0:0:2:1:0:2:1:0:2:1:0:2:1:0:0:2:1:0:0:0", 219.0914),
    ("proxylessnas", "0:0:0:2:0:0:0:0:0:2:1:1:2:0:0:0:2:0:0:0:0:1:1:0:0:1:1:1:0:1:1:0:0:0:1:2:0:0:1:0:1:0:1:1:0:1:1:0:0:0:0:2:0:1:0:0:1:0:2:1:0:1:0:1:2:0:0:0:0:0:0:0:0", 84.1074),
    ("proxylessnas", "0:0:0:0:1:0:1:1:0:1:1:1:0:0:1:0:1:0:0:1:0:0:2:0:1:0:0:0:0:0:1:0:0:0:1:2:1:1:1:0:1:0:0:0:0:1:1:0:0:0:0:0:1:1:0:1:1:0:1:1:0:2:0:1:1:1:0:0:0:0:0:0:0", 80.6233),
    ("proxylessnas_enlarged", "mobilenet_v2", 77.2223),
    ("proxylessnas_enlarged", "mnasnet_b1", 84.5118),
    ("proxylessnas_enlarged", "proxylessnas_mobile", 84.4051),
    ("proxylessnas_enlarged", ":".join(["0"] * 73), 24.7054),
    ("proxylessnas_enlarged", PX_MINIMAL, 10.2874),
    ("proxylessnas_enlarged", "3:2:3:2:1:0:2:1:0:2:1:0:2:1:0:3:2:1:0:2:1:0:2:1:0:2:1:0:5:2:1:0:2:1:0:2:1:0:2:1:0:6:2:1:0:2:1:0:2:1:0:2:1:0:6:2:1:0:2:1:0:2:1:0:2:1:0:6:2:1:0:6:6", 590.9789),
    ("proxylessnas_enlarged", "1:0:1:1:0:0:0:0:0:0:0:1:0:0:1:1:2:0:0:0:0:0:1:0:0:1:0:0:2:2:1:0:1:0:0:1:0:0:1:0:0:3:1:1:0:1:0:0:1:0:0:1:0:0:3:2:1:0:2:1:0:2:0:0:2:0:0:3:2:1:0:3:3", 102.8348),
    ("proxylessnas_enlarged", "2:0:3:1:0:0:1:1:0:1:0:1:2:1:0:1:0:1:0:1:0:1:0:0:0:0:1:0:3:0:0:0:0:0:0:0:1:0:0:0:1:2:1:1:0:1:1:0:2:1:1:1:0:0:5:1:0:0:0:0:0:0:0:1:2:0:0:2:0:0:0:1:0", 102.5724),
    ("proxylessnas_enlarged", "0:2:2:1:0:0:2:1:1:0:0:1:2:1:1:0:1:1:0:0:0:1:1:1:0:1:0:1:3:1:1:0:0:0:1:2:1:0:1:0:0:0:2:0:0:0:1:0:0:0:1:2:1:0:4:2:1:0:2:1:0:0:0:1:0:1:1:5:1:0:0:6:1", 125.4416),
    ("mnv3", ":".join(["0"] * 86), 11.0752),
    ("mnv3", "0:0:1:0:0:0:0:0:0:0:1:0:0:0:1:0:0:0:1:0:0:0:0:0:0:0:1:0:0:0:1:0:0:0:1:0:0:0:0:0:0:0:1:0:0:0:1:0:0:0:1:0:0:0:0:0:0:0:1:0:0:0:1:0:0:0:1:0:0:0:0:0:0:0:1:0:0:0:1:0:0:0:1:0:0:0", 4.1964),
    ("mnv3", "1:2:0:3:2:5:1:2:5:1:0:2:5:1:0:2:5:1:0:3:2:5:1:2:5:1:0:2:5:1:0:2:5:1:0:5:2:5:1:2:5:1:0:2:5:1:0:2:5:1:0:6:2:5:1:2:5:1:0:2:5:1:0:2:5:1:0:6:2:5:1:2:5:1:0:2:5:1:0:2:5:1:0:6:6:6", 550.2819),
    ("mnv3", "0:0:0:1:0:3:0:0:2:0:0:0:0:0:1:0:0:0:1:2:1:2:1:1:2:1:0:1:2:1:0:0:0:0:1:3:0:5:0:0:2:0:0:0:1:0:0:0:1:0:0:4:0:5:1:0:5:1:0:0:0:0:1:0:0:0:1:3:1:5:1:1:5:1:0:1:5:1:0:0:0:0:1:1:6:4", 62.4187),
    ("mnv3", "1:2:1:2:1:1:1:1:1:0:0:0:2:1:0:0:1:0:0:1:1:2:0:1:5:1:1:0:4:0:0:0:4:0:1:0:2:1:0:2:3:1:1:0:3:1:1:0:5:1:0:2:0:2:1:0:1:1:1:2:4:1:0:2:4:1:1:6:2:5:1:1:1:1:1:0:0:0:0:2:4:0:1:0:0:2", 84.2906),
    ("mnv3", "0:2:0:2:1:3:0:2:0:1:1:0:2:1:0:1:0:1:0:1:1:1:0:0:5:1:0:0:2:1:1:0:4:0:0:4:0:3:0:0:4:0:1:0:4:1:1:1:5:1:1:6:2:4:0:2:5:0:0:2:3:0:0:0:2:1:0:6:0:3:1:1:4:1:0:0:2:1:1:0:5:0:0:5:4:3", 207.7209),
]  # fmt: skip


def parse(space_name: str, text: str) -> list[int]:
    references = references_in(SPACES[space_name])
    if text in references:
        return list(references[text])
    return [int(v) for v in text.split(":")]


@pytest.mark.parametrize(("space_name", "indices", "expected"), VECTORS)
def test_published_verification_vectors(space_name, indices, expected):
    model = Pixel1Model(SPACES[space_name])
    cost = model(torch.tensor([parse(space_name, indices)]))
    assert cost.item() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(("space_name", "dim", "pieces"), [
    ("proxylessnas", 144, 22), ("proxylessnas_enlarged", 5983, 33), ("mnv3", 29068, 33)
])  # fmt: skip
def test_feature_layout_matches_the_published_dimensions(space_name, dim, pieces):
    found, total = feature_pieces(SPACES[space_name])
    assert total == dim and len(found) == pieces


@pytest.mark.parametrize("space_name", list(SPACES))
def test_hot_features_never_land_on_structural_zeros(space_name):
    # The published kernels are exactly 0 where a feature can never be 1; a wrong piece order,
    # Kronecker order or in-width coupling would hit them.
    model = Pixel1Model(SPACES[space_name])
    indices = sample_indices(SPACES[space_name], 2000, torch.Generator().manual_seed(1))
    hot = model.hot_features(indices)
    assert (model.kernel[hot] != 0).all()
    features = model.features(indices[:200])
    assert (features.sum(dim=1) == len(model.pieces)).all()  # one 1 per piece
    dense = features @ model.kernel + model.bias  # TuNAS's matmul form
    assert torch.allclose(dense, model(indices[:200]), atol=1e-3)


@pytest.mark.parametrize(("space_name", "mean"), [
    ("proxylessnas", 92.5), ("proxylessnas_enlarged", 114.8), ("mnv3", 78.5)
])  # fmt: skip
def test_random_architectures_cost_what_the_note_reports(space_name, mean):
    model = Pixel1Model(SPACES[space_name])
    indices = sample_indices(SPACES[space_name], 4000, torch.Generator().manual_seed(2))
    assert model(indices).mean().item() == pytest.approx(mean, rel=0.03)
