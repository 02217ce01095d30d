"""The three TuNAS spaces: sizes, the indices encoding, references and sampling."""

import math

import pytest
import torch
from conftest import SPACE_NAMES, random_archs

from nascli.errors import NascliError
from nascli.space.arch import Architecture, format_indices, parse_indices, sample_indices
from nascli.space.references import references_in
from nascli.space.schema import FILTERS, OP, Zero
from nascli.space.spaces import SPACES, scale_filters, width_choice

# Published encodings (TuNAS's cost-model tests, and the reference table of the Pixel-1 model
# data note): a traversal in any other order than TuNAS's cannot reproduce these strings.
PUBLISHED = {
    ("proxylessnas", "proxylessnas_mobile"): "0:0:0:1:0:0:0:0:0:0:0:1:0:0:1:0:2:0:0:0:0:0:1:0:0:"
    "1:0:0:0:2:1:0:1:0:0:1:0:0:1:0:0:0:1:1:0:1:0:0:1:0:0:1:0:0:0:2:1:0:2:1:0:2:0:0:2:0:0:0:2:1:"
    "0:0:0",
    ("proxylessnas_enlarged", "proxylessnas_mobile"): "3:0:1:1:0:0:0:0:0:0:0:1:0:0:1:3:2:0:0:0:"
    "0:0:1:0:0:1:0:0:3:2:1:0:1:0:0:1:0:0:1:0:0:4:1:1:0:1:0:0:1:0:0:1:0:0:2:2:1:0:2:1:0:2:0:0:2:"
    "0:0:2:2:1:0:1:4",
    ("proxylessnas_enlarged", "mobilenet_v2"): "3:0:1:0:1:0:0:1:0:0:0:1:0:0:1:2:0:1:0:0:1:0:0:1:"
    "0:0:0:1:2:0:1:0:0:1:0:0:1:0:0:1:0:3:0:1:0:0:1:0:0:1:0:0:0:1:2:0:1:0:0:1:0:0:1:0:0:0:1:1:0:"
    "1:0:1:4",
    ("proxylessnas_enlarged", "mnasnet_b1"): "3:0:1:0:0:0:0:0:0:0:0:0:0:0:1:2:1:0:0:1:0:0:1:0:0:"
    "0:0:1:3:1:1:0:1:1:0:1:1:0:0:0:1:4:0:1:0:0:1:0:0:0:1:0:0:1:2:1:1:0:1:1:0:1:1:0:1:1:0:2:0:1:"
    "0:1:4",
}


@pytest.mark.parametrize(
    ("name", "length", "searched", "log10_size"),
    [
        ("proxylessnas", 73, 58, math.log10(3 * 6**6 * 12**15)),
        ("proxylessnas_enlarged", 73, 67, math.log10(1.4e28)),
        ("mnv3", 86, 86, math.log10(8.5e42)),
    ],
)
def test_space_sizes_match_tunas(name, length, searched, log10_size):
    space = SPACES[name]
    assert space.num_decisions == length
    assert space.num_searched == searched
    assert space.log10_size == pytest.approx(log10_size, abs=0.02)


def test_width_candidates_follow_tunas_rounding():
    assert width_choice(16).choices == (8, 16, 24, 32)
    assert width_choice(32).choices == (16, 24, 32, 40, 48, 64)
    assert width_choice(1024).choices == (512, 640, 768, 1024, 1280, 1536, 2048)
    assert scale_filters(4, 0.5) == 8  # never below 8
    assert scale_filters(20, 1.0) == 24  # nearest multiple of 8, halves round up


@pytest.mark.parametrize(("space", "reference"), sorted(PUBLISHED))
def test_reference_encodings_equal_published_indices(space, reference):
    assert format_indices(references_in(SPACES[space])[reference]) == PUBLISHED[space, reference]


def test_references_lie_only_in_spaces_that_contain_them():
    assert set(references_in(SPACES["proxylessnas"])) == {"proxylessnas_mobile"}
    assert set(references_in(SPACES["proxylessnas_enlarged"])) == {
        "proxylessnas_mobile",
        "mobilenet_v2",
        "mnasnet_b1",
    }
    assert references_in(SPACES["mnv3"]) == {}


def test_index_order_children_before_parents():
    """TuNAS's indices order: kernel, expansion, then the layer's op node; the block's filters after
    its layers; single-choice nodes included; Zero is the last op choice."""
    paths = [d.path for d in SPACES["proxylessnas_enlarged"].decisions]
    assert paths[:3] == ["stem.filters", "b1.0.kernel", "b1.filters"]
    assert paths[3:16] == [
        "b2.0.kernel", "b2.0.expansion", "b2.0.op",
        "b2.1.kernel", "b2.1.expansion", "b2.1.op",
        "b2.2.kernel", "b2.2.expansion", "b2.2.op",
        "b2.3.kernel", "b2.3.expansion", "b2.3.op",
        "b2.filters",
    ]  # fmt: skip
    assert paths[68:] == ["b7.0.kernel", "b7.0.expansion", "b7.0.op", "b7.filters", "head.filters"]
    v3 = [d.path for d in SPACES["mnv3"].decisions]
    assert v3[:4] == ["stem.0.kernel", "stem.2.kernel", "stem.2.op", "stem.filters"]
    assert v3[4:11] == [
        "b1.0.kernel", "b1.0.expansion", "b1.0.se",
        "b1.1.kernel", "b1.1.expansion", "b1.1.se", "b1.1.op",
    ]  # fmt: skip
    assert v3[84:] == ["head1.filters", "head2.filters"]
    for space in SPACES.values():
        for decision in space.decisions:
            if decision.path.endswith(".op") and decision.num_choices == 2:
                assert decision.choices[-1] == Zero()
            first_ibn_op = decision.path.endswith(".0.op")
            assert not first_ibn_op or decision.num_choices == 1


def test_decision_tags_separate_ops_from_widths():
    tags = {d.path.rsplit(".", 1)[-1]: d.tag for d in SPACES["mnv3"].decisions}
    assert tags == {"kernel": OP, "se": OP, "op": OP, "expansion": FILTERS, "filters": FILTERS}


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_encoding_round_trips_for_random_architectures(name):
    space = SPACES[name]
    for indices in random_archs(name, 200):
        arch = parse_indices(space, format_indices(indices))
        assert arch.indices == indices
        assert Architecture(name, indices).text == format_indices(indices)


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_sampling_is_uniform_per_decision(name):
    space = SPACES[name]
    samples = sample_indices(space, 20_000, torch.Generator().manual_seed(1))
    for decision, column in zip(space.decisions, samples.T, strict=True):
        counts = torch.bincount(column, minlength=decision.num_choices).double()
        assert len(counts) == decision.num_choices  # never out of range
        assert counts.min() / counts.sum() > 1 / decision.num_choices - 0.02


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0:1", "needs 73 indices, got 2"),
        ("0:3" + ":0" * 71, "index 3 at position 1 (b1.0.kernel) is out of range: allowed 0..2"),
        ("1" + ":0" * 72, "index 1 at position 0 (stem.filters) is out of range: allowed 0..0"),
        ("0:x" + ":0" * 71, "position 1 is not an integer"),
        ("0:-1" + ":0" * 71, "index -1 at position 1"),
    ],
)
def test_bad_indices_name_the_position(text, message):
    with pytest.raises(NascliError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_indices(SPACES["proxylessnas"], text)


def test_arch_json_round_trips_and_accepts_lists(tmp_path):
    import json

    from nascli.space.arch import load_architecture

    space = SPACES["mnv3"]
    for indices in random_archs("mnv3", 5, seed=4):
        path = tmp_path / "arch.json"
        path.write_text(json.dumps({"space": "mnv3", "indices": format_indices(indices)}))
        assert load_architecture(str(path), space).indices == indices
        path.write_text(json.dumps({"space": "mnv3", "indices": list(indices)}))
        assert load_architecture(str(tmp_path), space).indices == indices  # a run directory
    path.write_text(json.dumps({"space": "mnv3", "indices": ["a"] * 86}))
    with pytest.raises(NascliError, match="position 0 is not an integer"):
        load_architecture(str(path), space)
    path.write_text(json.dumps({"space": "mnv3", "indices": 5}))
    with pytest.raises(NascliError, match="must be a colon-separated string"):
        load_architecture(str(path), space)
