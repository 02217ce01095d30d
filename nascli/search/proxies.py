"""Zero-shot proxies: score a network at initialisation, without training (Zen-NAS, Lin et al., ICCV
2021, and its code's `ZeroShotProxy/`; TE-NAS, Chen et al., ICLR 2021).

One interface for every proxy: `score(name, net, settings, generator) -> float`, bigger is
better. `net` is a `Scorable`: any `nn.Module` mapping images to logits, its pre-GAP feature
extractor (Zen-Score), the input shape, and how to turn its residual adds off. Build one for a
nascli architecture with `scorable(network)`, or for your own module with `Scorable(model,
features, input_shape, num_classes)`.

Every proxy re-initialises the module it is given in place (weights N(0, 1), BN γ = 1, β = 0,
running statistics reset): pass a copy (`copy.deepcopy`) to keep trained weights. All random
draws (weights in module order, then inputs) come from the `generator`, so a seed fixes a score.

Residuals: with `residuals="drop"` (the reference: its candidates are built with
`no_reslink=True`) every residual add, and the projection shortcut feeding it, is removed while
scoring; the budgets (params, MACs, latency) are always taken with them. nascli's blocks expose
a `residual` flag that is switched off for the duration; any other module is traced with
`torch.fx` and each add of two tensors keeps only its deeper operand (the branch), so a
projection shortcut feeding the add disappears with it. A module fx cannot trace can be scored
with `residuals="keep"`, or built without residuals by its owner and passed as is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from nascli.cost.analytic import NetworkCost, count_macs, count_params, network_cost
from nascli.errors import NascliError
from nascli.nn.builder import before_pooling, build_model
from nascli.settings import check_fields, option
from nascli.space.network import Network

PROXIES = (
    "zen", "grad_norm", "synflow", "naswot", "te_ntk", "te_regions", "te_nas", "params", "macs",
    "random",
)  # fmt: skip
#: Proxies that rank a whole set of architectures rather than score one: TE-NAS's rank sum of
#: its two indicators (computed by `nascli proxies` from the columns named here).
POPULATION_PROXIES = {"te_nas_rank": ("te_ntk", "te_regions")}
BN_TERMS = ("paper", "reference")
RESIDUALS = ("drop", "keep")
SYNFLOW_VARIANTS = ("reference", "original")

#: Activation modules NASWOT reads its binary codes from (the sign of their input).
ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.Mish,
)  # fmt: skip

#: The reference's BN momentum; with it, after two passes of a fresh model
#: running_var = 0.81 + 0.09·v_clean + 0.1·v_perturbed (Zen-NAS code: `compute_zen_score.py`).
REFERENCE_BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class ProxySettings:
    """How the proxies are computed (the `strategy=zen` group and `nascli proxies` share it)."""

    batch_size: int = option(64, ge=1, le=65536)
    repeat: int = option(1, ge=1, le=10_000)
    gamma: float = option(0.01, gt=0, le=1000)
    #: paper: mean-over-channels of the clean pass's mini-batch variance (the paper's formula,
    #: reproduces its Table 5). reference: BN running_var after the two passes with momentum 0.1
    #: (what the released search computes: ≈ 0.19× the batch variance, −0.8 per BN layer).
    bn_term: str = option("paper", choices=BN_TERMS)
    residuals: str = option("drop", choices=RESIDUALS)
    #: reference: Zen-NAS's synflow (train-mode BN, per-layer mean over output channels,
    #: negated). original: Tanaka et al.'s Σ|θ·∂R/∂θ| over conv/linear weights, BN in eval mode.
    synflow: str = option("reference", choices=SYNFLOW_VARIANTS)
    #: TE-NAS's batch (Zen-NAS's `compute_te_nas_score` default 16). The NTK takes one backward
    #: pass of the whole batch per image (train-mode BN couples them): cost grows as B².
    te_batch_size: int = option(16, ge=2, le=4096)

    def __post_init__(self) -> None:
        check_fields(type(self), asdict(self), "proxy")

    @classmethod
    def from_mapping(cls, values: Any, prefix: str = "strategy") -> ProxySettings:
        """The proxy settings among `values` (other keys are ignored), checked."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in dict(values).items() if k in names}
        return cls(**check_fields(cls, given, prefix))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scorable:
    """A network as the proxies see it.

    model: images → logits. features: images → the feature map before global pooling (the
    Zen-Score's f); it must share modules with `model`. params/macs: counted with residuals
    (computed from `model` when not given).
    """

    model: nn.Module
    features: nn.Module | None
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int | None = None
    macs: int | None = None


# ----------------------------------------------------------------------------- preparation
def gaussian_init(module: nn.Module, generator: torch.Generator) -> None:
    """The Zen-NAS initialisation: conv and linear weights N(0, 1) (not fan-scaled), biases 0,
    BN/GroupNorm γ = 1 and β = 0, BN running statistics reset (a fresh model's)."""
    _initialise(module, generator, lambda weight: 1.0)


def kaiming_init(module: nn.Module, generator: torch.Generator, mode: str) -> None:
    """TE-NAS's initialisation (`init='kaiming_normal'`): conv and linear weights
    N(0, 2 / fan) with fan the weight's fan-in or fan-out (`mode`), the rest as `gaussian_init`."""
    side = {"fan_in": 0, "fan_out": 1}[mode]
    _initialise(
        module,
        generator,
        lambda weight: math.sqrt(2.0 / nn.init._calculate_fan_in_and_fan_out(weight)[side]),
    )


def _initialise(
    module: nn.Module, generator: torch.Generator, std: Callable[[torch.Tensor], float]
) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (_ConvNd, nn.Linear)):
                m.weight.normal_(0.0, std(m.weight), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if isinstance(m, _BatchNorm) and m.track_running_stats:
                    m.reset_running_stats()


def _flagged(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(getattr(m, "residual", None), bool)]


@contextmanager
def without_residuals(module: nn.Module, residuals: str = "drop") -> Iterator[nn.Module]:
    """`module` with its residual adds removed for the duration (see the module docstring)."""
    if residuals == "keep":
        yield module
        return
    flagged = _flagged(module)
    if not flagged:
        yield strip_residual_adds(module)
        return
    with _set_attribute(flagged, "residual", False):
        yield module


@contextmanager
def _set_attribute(modules: list[nn.Module], name: str, value: Any) -> Iterator[list[nn.Module]]:
    """`module.name = value` for each of `modules` for the duration, then the old values."""
    saved = [getattr(m, name) for m in modules]
    for m in modules:
        setattr(m, name, value)
    try:
        yield modules
    finally:
        for m, old in zip(modules, saved, strict=True):
            setattr(m, name, old)


_ADDS = {operator.add, operator.iadd, torch.add}


def strip_residual_adds(module: nn.Module) -> nn.Module:
    """A `torch.fx` copy of `module` (sharing its parameters) in which every add of two tensors
    returns its deeper operand only; nodes that no longer feed the output are removed."""
    try:
        traced = fx.symbolic_trace(module)
    except Exception as error:  # fx raises many types for untraceable code
        raise NascliError(
            f"cannot trace {type(module).__name__} with torch.fx to remove its residual adds "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "pass residuals=keep, or score a version built without residuals"
        ) from None
    graph = traced.graph
    depth: dict[fx.Node, int] = {}
    changed = False
    for node in list(graph.nodes):
        inputs = [a for a in node.all_input_nodes if a in depth]
        depth[node] = 1 + max((depth[a] for a in inputs), default=0)
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        if is_add and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2]):
            left, right = node.args[:2]
            branch = left if depth[left] >= depth[right] else right
            node.replace_all_uses_with(branch)
            depth[node] = depth[branch]
            graph.erase_node(node)
            changed = True
    if not changed:
        return module
    graph.eliminate_dead_code()
    graph.lint()
    stripped = fx.GraphModule(traced, graph)
    stripped.delete_all_unused_submodules()
    stripped.train(module.training)
    return stripped


# ----------------------------------------------------------------------------- Zen-Score
@dataclass(frozen=True)
class ZenResult:
    score: float  # mean over repeats of log Δ + BN term
    repeats: tuple[float, ...]
    log_delta: tuple[float, ...]
    bn_term: tuple[float, ...]

    @property
    def std(self) -> float:
        values = torch.tensor(self.repeats, dtype=torch.float64)
        return float(values.std(unbiased=False)) if len(self.repeats) > 1 else 0.0


def _bn_log_sigma(bns: list[_BatchNorm]) -> torch.Tensor:
    """Σ over BN layers of log √(mean over channels of running_var)."""
    if not bns:
        return torch.zeros((), dtype=torch.float64)
    means = torch.stack([m.running_var.double().mean() for m in bns])
    return 0.5 * means.log().sum()


def zen_score(
    features: nn.Module,
    input_shape: tuple[int, ...],
    settings: ProxySettings,
    generator: torch.Generator,
) -> ZenResult:
    """The Zen-Score of a feature extractor (images → pre-GAP map), residuals as it is given.

    Per repeat: N(0, 1) re-initialisation, BN in train mode, x and ε ~ N(0, 1) of shape
    (batch, *input_shape), Δ = batch mean of the per-sample L1 norm of f(x) − f(x + γε), score =
    log Δ + Σ_BN log σ̄ (σ̄ per `settings.bn_term`). The result is the mean over repeats.

    The BN term is read from the BN layers' own running_var: with momentum 1 it holds the clean
    pass's (unbiased) mini-batch variance right after that pass (`paper`); with momentum 0.1 it
    holds the reference's mixture after both passes (`reference`). A BN layer the input never
    reaches keeps running_var = 1 and adds 0.
    """
    shape = (settings.batch_size, *input_shape)
    momentum = 1.0 if settings.bn_term == "paper" else REFERENCE_BN_MOMENTUM
    was_training = features.training
    scores, deltas, terms = [], [], []
    try:
        features.train()
        bns = [m for m in features.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        with torch.no_grad(), _set_attribute(bns, "momentum", momentum):
            for _ in range(settings.repeat):
                gaussian_init(features, generator)
                x = torch.randn(shape, generator=generator)
                eps = torch.randn(shape, generator=generator)
                clean = features(x)
                if settings.bn_term == "paper":
                    term = _bn_log_sigma(bns)
                perturbed = features(x + settings.gamma * eps)
                if settings.bn_term == "reference":
                    term = _bn_log_sigma(bns)
                delta = (clean - perturbed).abs().flatten(1).sum(1).mean()
                log_delta = float(torch.log(delta.double()))
                deltas.append(log_delta)
                terms.append(float(term))
                scores.append(log_delta + float(term))
    finally:
        features.train(was_training)
    return ZenResult(sum(scores) / len(scores), tuple(scores), tuple(deltas), tuple(terms))


# ----------------------------------------------------------------------------- other proxies
def grad_norm(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """‖∇θ CE‖₂ over all parameters after one backward of random labels on Gaussian images
    (N(0, 1) init, train mode), as Zen-NAS computes it."""
    model = net.model
    gaussian_init(model, generator)
    model.train()
    x = torch.randn((settings.batch_size, *net.input_shape), generator=generator)
    labels = torch.randint(net.num_classes, (settings.batch_size,), generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    total = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(total)


def synflow(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """Synaptic flow of |θ| on an all-ones image in float64 (see `ProxySettings.synflow`)."""
    model = net.model
    gaussian_init(model, generator)
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        model.to(torch.float64)
        model.train(settings.synflow == "reference")
        x = torch.ones((1, *net.input_shape), dtype=torch.float64)
        layers = [m for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
        with torch.enable_grad():
            output = model(x).sum()
            grads = torch.autograd.grad(output, [m.weight for m in layers], allow_unused=True)
        total = 0.0
        for layer, grad in zip(layers, grads, strict=True):
            if grad is None:
                continue
            flow = (layer.weight.detach() * grad).abs()
            if settings.synflow == "reference":  # Σ over inputs/kernel, mean over outputs
                total += float(flow.flatten(1).sum(1).mean())
            else:
                total += float(flow.sum())
        return -total if settings.synflow == "reference" else total
    finally:
        model.to(dtype)


def naswot(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """log|det K| of the Hamming-similarity kernel of the activation patterns (NASWOT): for each
    activation module's input, the per-sample binary code c = (x > 0), K += c·cᵀ + (1−c)(1−c)ᵀ."""
    model = net.model
    gaussian_init(model, generator)
    model.train()
    batch = settings.batch_size
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        code = (inputs[0] > 0).flatten(1).float()
        kernel.add_((code @ code.T + (1 - code) @ (1 - code).T).double())

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)
    ]
    if not handles:
        raise NascliError("naswot needs activation modules (nn.ReLU, nn.Hardswish, ...)")
    try:
        with torch.no_grad():
            model(torch.randn((batch, *net.input_shape), generator=generator))
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.linalg.slogdet(kernel).logabsdet)


# ----------------------------------------------------------------------------- TE-NAS
#: Eigenvalues of the empirical NTK below λ_max · B · ε(float32) are rounding noise of the
#: float32 gradients it is built from; κ is capped where λ_min reaches that floor, so a
#: singular NTK gets the worst finite κ (1 / (B · 2⁻²³), 1.3·10⁵ at B = 64) instead of Inf/NaN.
NTK_FLOOR = torch.finfo(torch.float32).eps


def ntk_condition(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """TE-NAS's trainability κ_N = λ_max / λ_min of the empirical NTK Θ = J Jᵀ (Chen et al.,
    ICLR 2021, Eq. 3; smaller is better), averaged over `settings.repeat` initialisations.

    As the TE-NAS code: Kaiming-normal init (fan-out), train mode, one batch of B Gaussian
    images; row i of J is the gradient of Σ_c logit_ic over the parameters named `weight`
    (conv, linear and norm weights); eigenvalues by float64 `eigvalsh`.
    """
    batch = settings.te_batch_size  # ≥ 2: a 1×1 NTK has κ = 1
    model = net.model
    params = [p for name, p in model.named_parameters() if "weight" in name and p.requires_grad]
    values = []
    for _ in range(settings.repeat):
        kaiming_init(model, generator, "fan_out")
        model.train()
        x = torch.randn((batch, *net.input_shape), generator=generator)
        with torch.enable_grad():
            logits = model(x)
            # all B backward passes at once (vmap over the grad outputs): seed i is ones on row i
            seeds = torch.eye(batch, dtype=logits.dtype)[:, :, None].expand(-1, -1, logits.shape[1])
            grads = torch.autograd.grad(
                logits, params, seeds, is_grads_batched=True, allow_unused=True
            )
        jacobian = torch.cat([g.flatten(1) for g in grads if g is not None], 1).double()
        values.append(condition_number(torch.linalg.eigvalsh(jacobian @ jacobian.T), batch))
    return sum(values) / len(values)


def condition_number(eigenvalues: torch.Tensor, batch: int) -> float:
    """λ_max / λ_min of ascending eigenvalues of a PSD matrix built from float32 gradients,
    finite always (see `NTK_FLOOR`)."""
    top = float(eigenvalues[-1])
    worst = 1.0 / (batch * NTK_FLOOR)
    if not math.isfinite(top) or top <= 0.0:
        return worst
    return top / max(float(eigenvalues[0]), top / worst)


def linear_regions(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """TE-NAS's expressivity: the number of distinct activation patterns among B =
    `te_batch_size` Gaussian images (bigger is better; at most B), averaged over
    `settings.repeat` initialisations.

    As Zen-NAS scores it on the whole network: Kaiming-normal init (fan-in), train mode, the
    pattern of an image is the 0/1 code (x > 0) at every activation on a 4-D tensor, compared
    exactly. TE-NAS hooks `nn.ReLU` only; nascli's spaces use ReLU6 and h-swish, whose code
    x > 0 is the same sign pattern. On whole nascli networks every image gets its own pattern,
    so the count is B for every architecture and only κ ranks them (measured: README).
    """
    model = net.model
    values = []
    for _ in range(settings.repeat):
        kaiming_init(model, generator, "fan_in")
        model.train()
        codes = _activation_codes(model, net.input_shape, settings.te_batch_size, generator)
        values.append(float(torch.unique(torch.cat(codes, 1), dim=0).shape[0]))
    return sum(values) / len(values)


def _activation_codes(
    model: nn.Module, input_shape: tuple[int, ...], batch: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Per image, the binary code (x > 0) of every activation's 4-D input, one forward pass."""
    codes: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if inputs[0].dim() == 4:
            codes.append((inputs[0] > 0).flatten(1))

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, ACTIVATIONS)
    ]
    try:
        with torch.no_grad():
            model(torch.randn((batch, *input_shape), generator=generator))
    finally:
        for handle in handles:
            handle.remove()
    if not codes:
        raise NascliError("linear regions need activation modules on feature maps (nn.ReLU, ...)")
    return codes


def te_score(net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """Zen-NAS's TE-Score: linear regions − NTK condition number (the raw values summed, not
    TE-NAS's rank sum; see `te_nas_rank`)."""
    return linear_regions(net, settings, generator) - ntk_condition(net, settings, generator)


def te_nas_rank(condition: Any, regions: Any, precision: int = 3) -> list[float]:
    """TE-NAS's importance over a set of architectures (Alg. 1): rank of κ descending plus rank
    of the region count ascending, so the best has the largest sum. Values are rounded to
    `precision` significant figures first and ties share the lowest rank, as the reference."""
    import pandas as pd

    def rounded(values: Any) -> pd.Series:
        return pd.Series([float(f"{float(v):.{precision}g}") for v in values])

    by_condition = rounded(condition).rank(method="min", ascending=False)
    by_regions = rounded(regions).rank(method="min", ascending=True)
    return (by_condition + by_regions).tolist()


def score(name: str, net: Scorable, settings: ProxySettings, generator: torch.Generator) -> float:
    """Proxy `name` of `net`; bigger is better. The net's residuals are handled per
    `settings.residuals` (params and MACs always count them)."""
    if name == "params":
        return float(net.params if net.params is not None else count_params(net.model))
    if name == "macs":
        return float(net.macs if net.macs is not None else count_macs(net.model, net.input_shape))
    if name == "random":
        return float(torch.randn((), generator=generator, dtype=torch.float64))
    if name == "zen":
        if net.features is None:
            raise NascliError("the Zen-Score needs the network's pre-GAP feature extractor")
        with without_residuals(net.features, settings.residuals) as features:
            return zen_score(features, net.input_shape, settings, generator).score
    functions: dict[str, Callable[[Scorable, ProxySettings, torch.Generator], float]] = {
        "grad_norm": grad_norm,
        "synflow": synflow,
        "naswot": naswot,
        # bigger is better for every proxy: TE-NAS's κ is negated, as Zen-NAS's `compute_NTK_score`
        "te_ntk": lambda *args: -ntk_condition(*args),
        "te_regions": linear_regions,
        "te_nas": te_score,
    }
    if name not in functions:
        raise NascliError(f"unknown proxy {name!r}; available: {', '.join(PROXIES)}")
    with without_residuals(net.model, settings.residuals) as model:
        plain = Scorable(model, None, net.input_shape, net.num_classes, net.params, net.macs)
        return functions[name](plain, settings, generator)


def scorable(network: Network, cost: NetworkCost | None = None) -> Scorable:
    """A nascli architecture as proxies see it: a fresh standalone model built without any
    initialisation (the proxies initialise it), its blocks before global pooling as features,
    and its analytic params and MACs (`cost`, computed when not given)."""
    with torch.device("meta"):
        model = build_model(network, init=False)
    model.to_empty(device="cpu")
    s = network.settings
    cost = cost if cost is not None else network_cost(network)
    features = before_pooling(model)
    shape = (s.in_channels, s.resolution, s.resolution)
    return Scorable(model, features, shape, s.num_classes, cost.params, cost.macs)
