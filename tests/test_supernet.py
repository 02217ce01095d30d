"""The weight-shared supernet (TuNAS code: `mobile_search_space_v3.py` and `layers.py`): the sampled
child equals the extracted standalone model, unexecuted branches get no gradient, weight decay sees
only active slices, warmup mixing averages branches."""

import pytest
import torch
from torch import nn

from nascli.nn.supernet import KernelSwitch, Sample, Supernet, SupernetInit, Trace
from nascli.space.arch import largest_indices
from nascli.space.network import NetworkSettings
from nascli.space.references import references_in
from nascli.space.schema import OP, Block, InvertedBottleneck, OneOf, Residual, Zero
from nascli.space.spaces import SPACES, SearchSpace
from tests.conftest import SPACE_NAMES, random_archs

SETTINGS = NetworkSettings(resolution=32, num_classes=10, in_channels=3)


@pytest.fixture(scope="module")
def supernets():
    torch.manual_seed(0)
    nets = {}
    for name in SPACE_NAMES:
        net = Supernet(SPACES[name], SETTINGS)
        nn.init.normal_(net.classifier.weight)  # large logits: differences show
        nets[name] = net
    return nets


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_child_equals_the_extracted_standalone_model(supernets, space):
    net = supernets[space]
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for indices in random_archs(space, 3, seed=2):
        model = net.extract(indices).train()  # BN with batch statistics, as in search
        torch.testing.assert_close(net(x, Sample.of(indices)), model(x), rtol=1e-5, atol=1e-5)


def test_every_searched_decision_of_an_active_layer_changes_the_output(supernets):
    """A supernet that ignored a decision would still match its own extraction; this would not."""
    space = SPACES["proxylessnas_enlarged"]
    net = supernets[space.name]
    base = list(references_in(space)["proxylessnas_mobile"])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = net(x, Sample.of(base))
    skipped = {
        d.path.rsplit(".", 1)[0]
        for d in space.decisions
        if d.path.endswith(".op") and d.num_choices == 2 and base[d.position] == 1
    }
    for d in space.decisions:
        inside_skipped = d.path.rsplit(".", 1)[0] in skipped and not d.path.endswith(".op")
        if d.num_choices < 2 or inside_skipped:
            continue
        other = list(base)
        other[d.position] = (base[d.position] + 1) % d.num_choices
        assert not torch.allclose(net(x, Sample.of(other)), reference), d.path


def test_unexecuted_branches_get_no_gradient(supernets):
    space = SPACES["proxylessnas"]
    net = supernets[space.name]
    net.zero_grad(set_to_none=True)
    indices = list(references_in(space)["proxylessnas_mobile"])
    net(torch.randn(4, 3, 32, 32), Sample.of(indices)).sum().backward()
    by_path = {d.path: d.position for d in space.decisions}
    layer = net.blocks[2].layers[0].layers[0]  # b2.0, an IBN with kernel 5 in this arch
    chosen = indices[by_path["b2.0.kernel"]]
    for k, conv in enumerate(layer.depthwise.convs):
        has_grad = conv.conv.weight.grad is not None
        assert has_grad == (k == chosen)
    skipped_layer = net.blocks[2].layers[2].layers[0]  # b2.2 is skipped in this arch
    assert all(p.grad is None for p in skipped_layer.parameters())
    net.zero_grad(set_to_none=True)


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_weight_decay_covers_exactly_the_child_kernels(supernets, space):
    """Σw² over the active slices equals Σw² over the extracted model's conv kernels: no BN,
    no bias, no classifier, nothing from inactive branches or skipped layers."""
    net = supernets[space]
    for indices in random_archs(space, 2, seed=5):
        with torch.no_grad():
            net(torch.randn(2, 3, 32, 32), Sample.of(indices))
        active = sum(float((w.detach()[index] ** 2).sum()) for w, index in net.active_decay())
        model = net.extract(indices)
        kernels = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert active == pytest.approx(
            sum(float((w.detach() ** 2).sum()) for w in kernels), rel=1e-6
        )
        assert len(net.active_decay()) == len(kernels)


def tiny_space() -> SearchSpace:
    ibn = InvertedBottleneck(
        kernel=OneOf((3, 5, 7), OP), expansion=OneOf((3,), "filters"), se=OneOf((False, True), OP)
    )
    block = Block("b", (Residual(OneOf((ibn, Zero()), OP)),), OneOf((8,), "filters"))
    return SearchSpace("tiny", "tiny", (block,))


def test_op_warmup_mixes_branches_with_uniform_weights():
    torch.manual_seed(0)
    space = tiny_space()  # decisions: kernel, expansion, se, skip, width
    net = Supernet(space, NetworkSettings(resolution=8, num_classes=2, in_channels=8))
    block = net.blocks[0]
    x = torch.randn(4, 8, 8, 8)

    def out(indices, mixed=(False,) * 5):
        return block(x, Sample(list(indices), list(mixed)), Trace())

    # Skip node mixed: x + ½·layer(x), i.e. the mean of "layer" and "skip".
    torch.testing.assert_close(
        out([0, 0, 0, 0, 0], [False, False, False, True, False]),
        (out([0, 0, 0, 0, 0]) + out([0, 0, 0, 1, 0])) / 2,
    )
    # SE node mixed: the mean of the IBN with and without SE only after the project conv,
    # which is linear, and its BN, which is not: check at the switch level instead.
    switch = next(
        m for m in net.modules() if isinstance(m, KernelSwitch) and m.choice.position == 0
    )
    y = torch.randn(4, switch.convs[0].conv.weight.shape[0], 8, 8)
    mixed = switch(y, y.shape[1], Sample([0] * 5, [True] + [False] * 4), Trace())
    single = [
        switch(y, y.shape[1], Sample([k, 0, 0, 0, 0], [False] * 5), Trace()) for k in range(3)
    ]
    torch.testing.assert_close(mixed, sum(single) / 3)


SAME_START = SupernetInit(zero_residual=True, tied_kernels=True, zero_se=True)


def _same_start_variants(
    space: SearchSpace, base: list[int], kinds=("kernel", "op", "se")
) -> list[tuple[str, list[int]]]:
    """`base` with one decision of `kinds` changed: the decisions the same start makes
    irrelevant at initialisation (expansion and widths too with `zero_width`)."""
    variants = []
    for d in space.decisions:
        if d.num_choices > 1 and d.path.rsplit(".", 1)[1] in kinds:
            other = list(base)
            other[d.position] = (base[d.position] + 1) % d.num_choices
            variants.append((d.path, other))
    return variants


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_with_the_same_start_kernel_skip_and_se_choices_start_as_one_function(space, monkeypatch):
    """The classic failure of weight sharing at small scale (README, "Why the supernet did not
    learn"): every kernel size, skip and SE option starting as an unrelated random function.
    With `SupernetInit` on, they start as the same one; with TuNAS's init they do not. (SE's ½
    gate is normalised away by the project BN up to BN's ε, which the test sets near 0: on
    1×1 feature maps of 8 images some channels' variance is itself near ε.)"""
    monkeypatch.setattr("nascli.nn.supernet.BN_EPSILON", 1e-12)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    base = list(random_archs(space, 1, seed=7)[0])
    torch.manual_seed(0)
    tied = Supernet(SPACES[space], SETTINGS, SAME_START)
    torch.manual_seed(0)
    plain = Supernet(SPACES[space], SETTINGS)
    for net in (tied, plain):
        nn.init.normal_(net.classifier.weight)  # large logits: differences show
    with torch.no_grad():
        reference, plain_reference = tied(x, Sample.of(base)), plain(x, Sample.of(base))
        variants = _same_start_variants(SPACES[space], base)
        assert len(variants) >= 20
        differs = 0
        for path, other in variants:
            torch.testing.assert_close(tied(x, Sample.of(other)), reference, msg=path)
            differs += not torch.allclose(plain(x, Sample.of(other)), plain_reference, atol=2e-2)
        assert differs > len(variants) // 2, path


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_with_zero_width_every_expansion_and_width_also_starts_as_the_smallest(space, monkeypatch):
    """`zero_width` extends the same start to the decisions that slice channels: channels
    beyond each searched width's and expansion's smallest option start at zero, so a wider
    child computes what the narrowest computes (the extra channels are zeros downstream)."""
    monkeypatch.setattr("nascli.nn.supernet.BN_EPSILON", 1e-12)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kinds = ("kernel", "op", "se", "expansion", "filters")
    init = SupernetInit(zero_residual=True, tied_kernels=True, zero_se=True, zero_width=True)
    for seed in (7, 8):
        base = list(random_archs(space, 1, seed=seed)[0])
        torch.manual_seed(0)
        net = Supernet(SPACES[space], SETTINGS, init)
        torch.manual_seed(0)
        without = Supernet(SPACES[space], SETTINGS, SAME_START)
        for model in (net, without):
            with torch.no_grad():  # large logits (the zero columns of `zero_width` kept)
                model.classifier.weight.mul_(100)
        with torch.no_grad():
            reference = net(x, Sample.of(base))
            plain_reference = without(x, Sample.of(base))
            variants = _same_start_variants(SPACES[space], base, kinds)
            sliced = [v for v in variants if v[0].rsplit(".", 1)[1] in ("expansion", "filters")]
            assert len(sliced) >= 10
            differs = 0
            for path, other in variants:  # summing over more (zero) channels rounds differently
                output = net(x, Sample.of(other))
                torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-4, msg=path)
            for _path, other in sliced:  # those inside a skipped layer change nothing anyway
                differs += not torch.allclose(without(x, Sample.of(other)), plain_reference,
                                              atol=2e-2)  # fmt: skip
            assert differs >= 3, differs


def test_tied_kernels_keep_their_own_weights_and_the_smaller_kernel_at_the_centre():
    torch.manual_seed(0)
    net = Supernet(SPACES["proxylessnas"], SETTINGS, SupernetInit(tied_kernels=True))
    switch = next(m for m in net.modules() if isinstance(m, KernelSwitch) and len(m.convs) == 3)
    three, five, seven = (c.conv.weight.detach() for c in switch.convs)
    assert five.data_ptr() != three.data_ptr() and seven.data_ptr() != five.data_ptr()
    torch.testing.assert_close(five[..., 1:4, 1:4], three)
    torch.testing.assert_close(seven[..., 2:5, 2:5], three)
    assert float(five.abs().sum()) == pytest.approx(float(three.abs().sum()))
    assert float(three.abs().sum()) > 0


@pytest.mark.parametrize("space", SPACE_NAMES)
def test_with_zero_width_the_wider_channels_still_learn(space):
    """The classic trap of a zero start: a channel that is exactly 0 before a ReLU gets no
    gradient and stays 0 for good, so every wider expansion or width would compute what the
    narrowest computes, at a higher cost. A few steps of the widest child must make each
    sliced decision's largest option differ from its smallest by far more than rounding does
    (the slow ones, behind a small classifier, differ by ~1e-3 of the output). Without
    `zero_residual`, whose zero γ slows every residual branch alike, extra channels or not."""
    decisions = SPACES[space].decisions
    widest = list(largest_indices(SPACES[space]))
    torch.manual_seed(0)
    net = Supernet(SPACES[space], SETTINGS, SupernetInit(False, True, True, True))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x, Sample.of(widest)), y).backward()
        optimizer.step()
    x = torch.randn(8, 3, 32, 32, generator=generator)
    with torch.no_grad():
        reference = net(x, Sample.of(widest))
        same = []
        for d in decisions:
            if d.path.rsplit(".", 1)[1] in ("expansion", "filters") and d.num_choices > 1:
                narrow = list(widest)
                narrow[d.position] = min(range(d.num_choices), key=lambda i, d=d: d.choices[i])
                change = (net(x, Sample.of(narrow)) - reference).abs().max()
                if change < 1e-5 * reference.abs().max():  # float rounding is ~1e-7 of it
                    same.append(d.path)
    assert not same, same
