"""Gradient-based search on the weight-shared supernet: ProxylessNAS's binarized paths
(`strategy=proxyless`, Cai et al., ICLR 2019, §3.2) and FBNet's Gumbel-softmax relaxation
(`strategy=fbnet`, Wu et al., CVPR 2019, §3.3), whose noise-free soft mixture is first-order
DARTS (Liu et al., ICLR 2019, Eq. 2; `strategy.relaxation=softmax`).

Architecture parameters α are one logit vector per decision (every option of every searched
decision: kernels, expansions, SE, skips and block widths). Widths are relaxed with FBNetV2's
channel masks: the layer runs at its largest width and channel c is scaled by Σ_b w_b·1[c <
width_b] (an expansion's widths are those of the layer's actual input width; under a relaxed
input width that is the largest one, where TuNAS's child uses its sampled input width).

One step = one shared-weight update on a train batch; every `arch_update_every` steps after
the weight warm-up, one α update on a batch of the **valid** split (never the batch the weights
saw). Weights and α have separate optimisers: α is not a supernet parameter.

* `binary` (ProxylessNAS): the weight step trains one child sampled from softmax(α). The α step
  samples another and runs every option with gates g = one-hot + p − stop_gradient(p): the
  forward is the sampled child's, and autograd gives ProxylessNAS's estimator
  ∂L/∂α_i = Σ_j ∂L/∂g_j · p_j (δ_ij − p_i) (its `full` mode, computing all paths; the released
  `full_v2` recomputes them in the backward pass to save memory). A decision whose sampled
  option is Zero gets no α update, as in the released code. Loss (the code's default, its
  `mul#log`, here `mul_log` since `#` cannot stand in a command-line override):
  `mul_log` α_r·CE·(log E[cost] / log target)^β with α_r = 0.2, β = 0.3; the paper's additive
  form is `add_linear` (the code's `add#linear`), CE + λ·(E[cost] − target)/target, λ = 0.1.
* `gumbel` (FBNet): weights m = softmax((α + g)/τ), g ~ Gumbel(0, 1), one draw per step (its
  weight and θ updates share it),
  τ = 5·exp(−0.045·epoch); both steps run every option with m (detached in the weight step).
  Loss CE·α_r·(log E_m[cost])^β with α_r = 0.2, β = 0.6 (`fbnet_log`).
* `softmax` (first-order DARTS): m = softmax(α), no noise, no temperature.

E[cost] is the cost model's exact expectation under the relaxed weights, differentiable
(`CompiledCost.expected`; TuNAS's Pixel-1 model, LUTs and the analytic costs have it). The
result is the argmax of α per decision (never of α + noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nascli.cost.models import CostModel
from nascli.data.augment import keyed_generator
from nascli.data.source import DataSource
from nascli.errors import NascliError
from nascli.nn.supernet import Sample, Supernet, SupernetInit
from nascli.search.budgets import BatchBudgets, BudgetSettings, limits_of
from nascli.search.policy import CategoricalPolicy
from nascli.search.tunas import (
    Batches,
    SupernetSearch,
    likeliest_within,
    probability_columns,
)
from nascli.settings import check_fields, option
from nascli.space.schema import Zero
from nascli.train.distributed import Context
from nascli.train.optim import build_optimizer

RELAXATIONS = ("binary", "gumbel", "softmax")
LOSSES = ("mul_log", "add_linear", "fbnet_log")


@dataclass(frozen=True)
class GradientSettings(BudgetSettings):
    """The `strategy=proxyless` and `strategy=fbnet` config groups (conf/strategy/*.yaml)."""

    name: str = option("proxyless", choices=("proxyless", "fbnet"))
    relaxation: str = option("binary", choices=RELAXATIONS)
    #: binary only. full: every option under one-hot gates (the code's full / full_v2, whose
    #: gradients are the same). two: two options drawn without replacement per decision, the
    #: gradient over them only, then α rescaled so the other options' probabilities stay put.
    binary_mode: str = option("full", choices=("full", "two"))
    loss: str = option("mul_log", choices=LOSSES)
    loss_alpha: float = option(0.2, gt=0, le=1000)  # α of mul_log and fbnet_log
    loss_beta: float = option(0.3, ge=0, le=100)  # β of mul_log (0.3) and fbnet_log (0.6)
    loss_lambda: float = option(0.1, ge=0, le=1000)  # λ of add_linear
    arch_lr: float = option(1e-3, gt=0, le=100)
    arch_adam_beta1: float = option(0.0, ge=0, lt=1)
    arch_adam_beta2: float = option(0.999, ge=0, lt=1)
    arch_weight_decay: float = option(0.0, ge=0, le=1)
    arch_init_std: float = option(1e-3, ge=0, le=10)  # α ~ N(0, std²)
    arch_update_every: int = option(5, ge=1, le=1_000_000)  # weight steps per α step
    warmup_fraction: float = option(0.25, ge=0, lt=1)  # weights only, α frozen
    temperature: float = option(5.0, gt=0, le=1000)  # gumbel: τ at epoch 0
    temperature_decay: float = option(0.045, ge=0, le=10)  # τ = temperature · exp(−decay·epoch)
    log_every: int = option(1, ge=1, le=1_000_000)
    checkpoint_every: int = option(50, ge=0)
    zero_init_residual: bool = option(False)
    tied_kernels: bool = option(False)
    zero_init_se: bool = option(False)
    zero_init_width: bool = option(False)
    #: DARTS's α gradient: 1 (first order, ξ = 0) or 2 (the unrolled w' = w − ξ·∇w L_train and
    #: its finite-difference Hessian term; relaxed mixtures only).
    order: int = option(1, choices=(1, 2))
    unrolled_lr: float | None = option(None, gt=0, le=100)  # ξ; null: the weights' current lr
    #: order 2: the Hessian-vector product by DARTS's central difference or by double backward.
    hessian: str = option("autograd", choices=("finite_difference", "autograd"))

    @classmethod
    def from_config(cls, cfg: Any) -> GradientSettings:
        settings = cls(**check_fields(cls, dict(cfg), "strategy"))
        if settings.order == 2 and settings.relaxation == "binary":
            raise NascliError(
                "strategy.order=2 (second-order DARTS) needs a relaxed mixture: set "
                "strategy.relaxation=softmax (DARTS) or gumbel"
            )
        if settings.loss == "fbnet_log" and settings.relaxation == "binary":
            raise NascliError(
                "strategy.loss=fbnet_log goes with a relaxed mixture: set strategy.relaxation="
                "gumbel or softmax (ProxylessNAS's losses are mul_log and add_linear)"
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def supernet_init(self) -> SupernetInit:
        return SupernetInit(
            self.zero_init_residual, self.tied_kernels, self.zero_init_se, self.zero_init_width
        )


def cost_loss(
    ce: torch.Tensor, expected: torch.Tensor, target: float | None, s: GradientSettings
) -> torch.Tensor:
    """The search loss from the cross-entropy and the expected cost (module docstring)."""
    if s.loss == "add_linear":
        return ce + s.loss_lambda * (expected - target) / target
    if s.loss == "mul_log":
        return s.loss_alpha * ce * (torch.log(expected) / math.log(target)) ** s.loss_beta
    log_cost = torch.log(expected)
    if not bool(log_cost > 0):  # (log LAT)^β with a negative base is NaN for non-integer β
        raise NascliError(
            f"fbnet_log needs an expected cost above 1 in the cost's units (got "
            f"{float(expected):.4g}): use a cost in ms or MACs, or strategy.loss=mul_log"
        )
    return s.loss_alpha * ce * log_cost**s.loss_beta


Loss = Callable[[list[torch.Tensor]], torch.Tensor]  # weights -> a scalar that depends on α


def central_difference(
    loss: Loss, alpha: torch.Tensor, weights: list[torch.Tensor], direction: list[torch.Tensor]
) -> torch.Tensor:
    """DARTS's Hessian-vector product ∇²_{α,w} L·v (Liu et al., ICLR 2019, Eq. 8, footnote 2):
    [∇α L(w + εv) − ∇α L(w − εv)] / 2ε with ε = 0.01 / ‖v‖."""
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in direction))
    if norm == 0:
        return torch.zeros_like(alpha)
    epsilon = 0.01 / norm
    sides = []
    for sign in (1.0, -1.0):
        moved = [w + sign * epsilon * v for w, v in zip(weights, direction, strict=True)]
        sides.append(torch.autograd.grad(loss(moved), [alpha])[0])
    return (sides[0] - sides[1]) / (2 * epsilon)


def autograd_product(
    loss: Loss, alpha: torch.Tensor, weights: list[torch.Tensor], direction: list[torch.Tensor]
) -> torch.Tensor:
    """The same product exactly: ∇α (∇w L · v), by double backward."""
    leaves = [w.detach().requires_grad_(True) for w in weights]
    grads = torch.autograd.grad(loss(leaves), leaves, create_graph=True, allow_unused=True)
    dot = sum((g * v).sum() for g, v in zip(grads, direction, strict=True) if g is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return torch.zeros_like(alpha)
    (product,) = torch.autograd.grad(dot, [alpha], allow_unused=True)
    return torch.zeros_like(alpha) if product is None else product


HESSIAN_PRODUCTS = {"finite_difference": central_difference, "autograd": autograd_product}


@dataclass
class GradientRecord:
    step: int
    lr: float
    temperature: float | None
    train_loss: float
    arch_loss: float | None
    quality: float | None  # top-1 of the α step's batch through the supernet
    expected_cost: float | None
    cost: float  # of the child the weight step trained (binary) or of argmax α


class GradientSearch(SupernetSearch):
    """α, the supernet and its optimiser, and one step of the search."""

    def __init__(
        self,
        supernet: Supernet,
        train_cfg: Any,
        settings: GradientSettings,
        data: DataSource,
        cost_model: CostModel,
        target: float | None,
        ctx: Context,
        seed: int,
    ):
        self.settings, self.train_cfg, self.ctx, self.seed = settings, train_cfg, ctx, seed
        self.name = settings.name
        self.net = supernet.to(ctx.device)
        self.space = supernet.space
        self.cost_model, self.target = cost_model, target
        if not getattr(cost_model, "expected", None) or not getattr(
            getattr(cost_model, "compiled", None), "additive", True
        ):
            raise NascliError(
                f"cost={cost_model.name} has no expectation over architectures (a measured cost, "
                "or a maximum over layers); the gradient strategies need cost=tunas_pixel1, lut, "
                "macs, params or flash"
            )
        if settings.loss != "fbnet_log" and target is None:
            raise NascliError(
                f"strategy.loss={settings.loss} needs a target: set "
                f"cost.target=<{cost_model.units}>"
            )
        if train_cfg.batch_size % ctx.world:
            raise NascliError(
                f"train.batch_size={train_cfg.batch_size} must be divisible by the "
                f"{ctx.world} ranks"
            )
        self.data = data.to(ctx.device)
        self.train_batches = Batches(data, "train", train_cfg.batch_size, ctx, seed, True)
        if data.sizes.get("valid", 0) < train_cfg.batch_size:
            raise NascliError(
                f"the architecture step needs a valid batch of {train_cfg.batch_size} images but "
                f"{data.name} holds {data.sizes.get('valid', 0)}; raise data.valid_fraction"
            )
        self.valid_batches = Batches(data, "valid", train_cfg.batch_size, ctx, seed, False)
        self.steps_per_epoch = self.train_batches.per_epoch
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        self.peak_lr = train_cfg.lr_per_256 * train_cfg.batch_size / 256
        self.warmup_steps = round(train_cfg.warmup_fraction * self.total_steps)
        self.weight_decay = train_cfg.weight_decay
        self.optimizer = build_optimizer(self.net, train_cfg, self.peak_lr, weight_decay=0.0)
        # α lives in a categorical policy (sampling, argmax, marginals), trained by torch's Adam.
        self.policy = CategoricalPolicy(self.space, ctx.device)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.policy.logits.shape, generator=generator, dtype=torch.float64)
        self.policy.logits = (noise * settings.arch_init_std).to(ctx.device).requires_grad_(True)
        self.searched = [d for d, size in enumerate(self.policy.sizes.tolist()) if size > 1]
        self.arch_optimizer = torch.optim.Adam(
            [self.policy.logits],
            lr=settings.arch_lr,
            betas=(settings.arch_adam_beta1, settings.arch_adam_beta2),
            weight_decay=settings.arch_weight_decay,
        )
        width = self.policy.valid.shape[1]
        zero_options = [
            [isinstance(c, Zero) for c in d.choices] + [False] * (width - d.num_choices)
            for d in self.space.decisions
        ]
        self.is_zero = torch.tensor(zero_options, device=ctx.device)
        limits = limits_of(settings)
        self.budgets = BatchBudgets(self.space, supernet.settings, limits) if limits else None
        self.step = 0
        self.log_every = settings.log_every
        self.checkpoint_every = settings.checkpoint_every
        self._pairs: torch.Tensor | None = None  # the last α step's two paths

    # ------------------------------------------------------------------ the driver's view
    def log_row(self, record: GradientRecord, seconds: float) -> dict[str, Any] | None:
        if record.step % self.log_every and self.step != self.total_steps:
            return None
        argmax = torch.tensor([self.final_indices()])
        with torch.no_grad():
            entropy = float(self.policy.entropy(argmax)[0])
        return {
            "step": record.step,
            "seconds": seconds,
            "lr": record.lr,
            "temperature": record.temperature,
            "train_loss": record.train_loss,
            "arch_loss": record.arch_loss,
            "quality": record.quality,
            "expected_cost": record.expected_cost,
            "cost": record.cost,
            "argmax_cost": float(self.cost_model(argmax)[0]),
            "entropy": entropy,
            **probability_columns(self.space, self.probabilities().detach()),
        }

    def status(self, row: dict[str, Any]) -> str:
        quality = "–" if row["quality"] is None else f"{row['quality']:.1%}"
        return (
            f"loss {row['train_loss']:.3f} · valid {quality} · argmax {row['argmax_cost']:.4g}"
            f" · entropy {row['entropy']:.1f}"
        )

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "supernet": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "alpha": self.policy.logits.detach().clone(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.policy.logits.copy_(state["alpha"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ α
    def probabilities(self) -> torch.Tensor:
        """(D, C) softmax(α), invalid options 0 (differentiable in α)."""
        return self.policy.log_probs().exp()

    def temperature(self, t: int) -> float | None:
        if self.settings.relaxation != "gumbel":
            return None
        epoch = t // self.steps_per_epoch  # annealed per epoch, never per step
        return self.settings.temperature * math.exp(-self.settings.temperature_decay * epoch)

    def relaxed_weights(self, t: int, grad: bool) -> torch.Tensor:
        """(D, C) the step's option weights: softmax(α), or a Gumbel-softmax draw at τ(t)."""
        logits = self.policy.logits.masked_fill(~self.policy.valid, -math.inf)
        if self.settings.relaxation == "gumbel":
            generator = keyed_generator(self.seed, t, 11)
            uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
            logits = (logits + gumbel.to(logits.device)) / self.temperature(t)
        weights = logits.softmax(dim=1)
        return weights if grad else weights.detach()

    @torch.no_grad()
    def sample_indices(self, t: int, salt: int) -> torch.Tensor:
        """One architecture drawn from softmax(α), keyed by (seed, step, salt)."""
        generator = keyed_generator(self.seed, t, salt)
        return self.policy.sample(1, generator)[0]

    def relaxed_sample(self, indices: torch.Tensor, weights: torch.Tensor) -> Sample:
        rows = {d: weights[d, : int(self.policy.sizes[d])].float() for d in self.searched}
        sample = Sample.of(indices.tolist())
        sample.weights = rows
        return sample

    def expected_cost(self, weights: torch.Tensor) -> torch.Tensor:
        vectors = [weights[d, : int(size)] for d, size in enumerate(self.policy.sizes.tolist())]
        return self.cost_model.expected(vectors)

    # ------------------------------------------------------------------ one step
    def update_weights(self, t: int) -> tuple[float, torch.Tensor]:
        """One shared-weight step on train batch t: the sampled child (binary) or the relaxed
        mixture with α fixed. Returns the loss and the indices the cost column reports."""
        lr = self.learning_rate(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.train_batches.get(t)
        self.net.train()
        indices = self.sample_indices(t, 7)
        if self.settings.relaxation == "binary":
            sample = Sample.of(indices.tolist())
        else:
            sample = self.relaxed_sample(indices, self.relaxed_weights(t, grad=False))
            indices = self.policy.argmax()
        logits = self.net(images, sample)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.train_cfg.label_smoothing)
        (loss / self.ctx.world).backward()  # summed over ranks: the global batch's mean
        self._average_gradients()
        if self.weight_decay:
            with torch.no_grad():
                for weight, index in self.net.active_decay():
                    weight.grad[index].add_(weight[index], alpha=self.weight_decay)
        if self.train_cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.train_cfg.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(self.rank_mean(loss.detach())), indices

    def arch_gradient(self, t: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """α's gradient from valid batch t (nothing from a train batch, except through the
        unrolled weights of `order=2`). Returns the loss, the expected cost and the batch's
        top-1 through the supernet."""
        if self.settings.order == 2:
            return self.second_order_gradient(t)
        images, labels = self.valid_batches.get(t)
        probs = self.probabilities()
        indices = self.sample_indices(t, 13)
        pairs = None
        if self.settings.relaxation == "binary" and self.settings.binary_mode == "two":
            pairs = self.two_paths(t)
            logits = self.policy.logits.masked_fill(~pairs, -math.inf)
            probs = logits.softmax(dim=1)  # over each decision's two drawn options
            generator = keyed_generator(self.seed, t, 19)
            drawn = torch.multinomial(probs.detach().float().cpu(), 1, generator=generator)
            indices = drawn[:, 0].to(indices.device)
        if self.settings.relaxation == "binary":
            one_hot = F.one_hot(indices, probs.shape[1]).to(probs.dtype)
            # forward: exactly one-hot (p − p is 0); backward: ∂p/∂α
            gates = one_hot + (probs - probs.detach())
            sample = self.relaxed_sample(indices, gates)
            if pairs is not None:
                sample.run = {d: pairs[d].nonzero()[:, 0].tolist() for d in self.searched}
            expected = self.expected_cost(probs)
        else:
            weights = self.relaxed_weights(t, grad=True)
            sample = self.relaxed_sample(indices, weights)
            expected = self.expected_cost(weights)
        self.net.train()  # batch statistics, as in every supernet pass
        logits = self.net(images, sample)
        ce = F.cross_entropy(logits, labels)
        loss = cost_loss(ce, expected, self.target, self.settings)
        self.arch_optimizer.zero_grad(set_to_none=True)
        (loss / self.ctx.world).backward()  # every rank's valid slice, summed below
        self.optimizer.zero_grad(set_to_none=True)  # the weights learn from train batches only
        grad = self.ctx.all_reduce(self.policy.logits.grad)
        if self.settings.relaxation == "binary":  # ProxylessNAS: no update when Zero is active
            zero = self.is_zero.gather(1, indices.view(-1, 1))[:, 0]
            grad[zero] = 0
        return self._arch_step_result(grad, logits, labels, loss, expected, pairs)

    def second_order_gradient(self, t: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """DARTS's second-order α gradient (Liu et al., ICLR 2019, Eq. 7-8 and Alg. 1):
        ∇α L_val(w', α) − ξ·∇²_{α,w} L_train(w, α)·∇w' L_val(w', α), with the unrolled
        weights w' = w − ξ·(μ·m + ∇w L_train(w, α) + wd·w) (m: the weight optimiser's momentum
        buffer, as in the DARTS code's unrolled step; wd on the kernels the forward used). The
        Hessian-vector product is DARTS's central difference (`hessian=finite_difference`) or
        exact by double backward (`hessian=autograd`). ξ is `unrolled_lr`, by default the
        weights' learning rate at step t (footnote 1). L_train is train batch t's
        cross-entropy, L_val the search loss on valid batch t."""
        from torch.func import functional_call

        train_images, train_labels = self.train_batches.get(t)
        images, labels = self.valid_batches.get(t)
        indices = self.sample_indices(t, 13)
        xi = self.settings.unrolled_lr or self.learning_rate(t)
        names = [name for name, _ in self.net.named_parameters()]
        params = [p for _, p in self.net.named_parameters()]
        alpha = self.policy.logits
        self.net.train()
        smoothing = self.train_cfg.label_smoothing

        def train_loss(weights: list[torch.Tensor]) -> torch.Tensor:
            """L_train at `weights` under α's relaxed mixture (differentiable in α)."""
            relaxed = self.relaxed_sample(indices, self.relaxed_weights(t, grad=True))
            moved = dict(zip(names, weights, strict=True))
            logits = functional_call(self.net, moved, (train_images, relaxed))
            return F.cross_entropy(logits, train_labels, label_smoothing=smoothing)

        # w': one step of the weights' optimiser on the train loss, α held fixed.
        fixed = self.relaxed_sample(indices, self.relaxed_weights(t, grad=False))
        logits = self.net(train_images, fixed)
        loss = F.cross_entropy(logits, train_labels, label_smoothing=smoothing)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        steps = {
            id(p): (g if g is not None else torch.zeros_like(p))
            for p, g in zip(params, grads, strict=True)
        }
        if self.weight_decay:
            for weight, index in self.net.active_decay():
                steps[id(weight)][index] += self.weight_decay * weight[index].detach()
        momentum = self.optimizer.param_groups[0].get("momentum", 0.0)
        unrolled = {}
        for name, p in zip(names, params, strict=True):
            step = steps[id(p)]
            buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                step = step + momentum * buffer
            unrolled[name] = (p.detach() - xi * step).requires_grad_(True)
        # ∇α and ∇w' of the search loss at w'.
        weights = self.relaxed_weights(t, grad=True)
        logits = functional_call(
            self.net, unrolled, (images, self.relaxed_sample(indices, weights))
        )
        ce = F.cross_entropy(logits, labels)
        expected = self.expected_cost(weights)
        loss = cost_loss(ce, expected, self.target, self.settings)
        found = torch.autograd.grad(loss, [alpha, *unrolled.values()], allow_unused=True)
        d_w = [
            g if g is not None else torch.zeros_like(w)
            for g, w in zip(found[1:], params, strict=True)
        ]
        product = HESSIAN_PRODUCTS[self.settings.hessian]
        hessian = product(train_loss, alpha, [p.detach() for p in params], d_w)
        grad = (found[0] - xi * hessian) / self.ctx.world
        self.arch_optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        alpha.grad = self.ctx.all_reduce(grad.detach().clone())
        return self._arch_step_result(alpha.grad, logits, labels, loss, expected, None)

    def _arch_step_result(
        self,
        grad: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        loss: torch.Tensor,
        expected: torch.Tensor,
        pairs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Both α gradients' ending: no gradient on options a decision does not have; the
        loss, expected cost and valid top-1 through the supernet, averaged over ranks."""
        grad.masked_fill_(~self.policy.valid, 0.0)
        quality = float(self.rank_mean((logits.argmax(1) == labels).float().mean()))
        self._pairs = pairs
        return self.rank_mean(loss.detach()), expected.detach(), quality

    def rank_mean(self, value: torch.Tensor) -> torch.Tensor:
        """A mean over this rank's slice made the global batch's (the slices are equal)."""
        if self.ctx.world == 1:
            return value
        return self.ctx.all_reduce(value.clone()) / self.ctx.world

    def two_paths(self, t: int) -> torch.Tensor:
        """(D, C) bool: two options per searched decision drawn from softmax(α) without
        replacement (single-choice decisions: their one option)."""
        probs = self.probabilities().detach().float().cpu()
        pairs = torch.zeros(probs.shape, dtype=torch.bool)
        pairs[:, 0] = True
        generator = keyed_generator(self.seed, t, 17)
        rows = torch.tensor(self.searched, dtype=torch.long)
        if len(rows):
            drawn = torch.multinomial(probs[rows], 2, replacement=False, generator=generator)
            pairs[rows] = False
            pairs[rows[:, None], drawn] = True
        return pairs.to(self.policy.logits.device)

    def arch_step(self, t: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One α update: the gradient, Adam, and in two-path mode ProxylessNAS's rescaling
        (α_k −= log Σ_{S} e^{α_new} − log Σ_{S} e^{α_old} over each decision's pair S)."""
        old = self.policy.logits.detach().clone()
        loss, cost, quality = self.arch_gradient(t)
        self.arch_optimizer.step()
        with torch.no_grad():
            logits = self.policy.logits
            if self._pairs is not None:
                pairs = self._pairs
                new_mass = logits.masked_fill(~pairs, -math.inf).logsumexp(dim=1, keepdim=True)
                old_mass = old.masked_fill(~pairs, -math.inf).logsumexp(dim=1, keepdim=True)
                logits.sub_(torch.where(pairs, new_mass - old_mass, torch.zeros_like(logits)))
            logits.masked_fill_(~self.policy.valid, 0.0)  # invalid options stay −∞ in softmax
        return loss, cost, quality

    def train_step(self) -> GradientRecord:
        t = self.step
        train_loss, indices = self.update_weights(t)
        s = self.settings
        warm = t < round(s.warmup_fraction * self.total_steps)
        arch_loss = expected = quality = None
        if not warm and (t % s.arch_update_every == 0):
            loss, cost, quality = self.arch_step(t)
            arch_loss, expected = float(loss), float(cost)
        self.step += 1
        return GradientRecord(
            step=t,
            lr=self.learning_rate(t),
            temperature=self.temperature(t),
            train_loss=train_loss,
            arch_loss=arch_loss,
            quality=quality,
            expected_cost=expected,
            cost=float(self.cost_model(indices.view(1, -1).cpu())[0]),
        )

    # ------------------------------------------------------------------ the result
    def final_indices(self) -> list[int]:
        """The argmax of α per decision (never of α plus noise)."""
        return self.policy.argmax().tolist()

    def result_indices(self) -> tuple[list[int], str]:
        """The argmax of α; with hard budgets, the likeliest architecture under softmax(α)
        within them when the argmax is not."""
        argmax = self.final_indices()
        if self.budgets is None or not bool(self.budgets.exceeded(torch.tensor([argmax]))[0]):
            return argmax, "argmax"
        with torch.no_grad():
            found = likeliest_within(
                self.policy, self.cost_model, None, 0.03, self.seed, self.budgets
            )
        if found is None:
            raise NascliError("no architecture of the final α fits the budgets: raise them")
        return found.tolist(), "likeliest_within_budgets"

    def details(self) -> dict[str, Any]:
        """What `summary.json` records of this strategy beyond the common fields."""
        s = self.settings
        arch_steps = sum(
            1
            for t in range(self.step)
            if t >= round(s.warmup_fraction * self.total_steps) and t % s.arch_update_every == 0
        )
        return {
            "relaxation": s.relaxation,
            "loss": s.loss,
            "arch_steps": arch_steps,
            "arch_images": arch_steps * self.train_cfg.batch_size,
        }
