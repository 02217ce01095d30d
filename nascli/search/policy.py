"""TuNAS's controller (`tunas/controller.py`): independent categorical logits per decision,
hierarchical log-prob and entropy, warmup replacement of samples, and Adam with β1 = 0 whose
second moment averages the *squared per-architecture* gradients, as TuNAS's cross-replica Adam
does.

The policy is small (one logit vector per decision), so its gradients are written out
analytically and computed per architecture in one vectorised expression; a test checks them
against autograd.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nascli.settings import check_fields, option
from nascli.space.schema import FILTERS, INPUT, OP
from nascli.space.spaces import SearchSpace


def ancestors(space: SearchSpace) -> list[list[tuple[int, int]]]:
    """For every decision, the (position, option) pairs of the choice nodes enclosing it: the
    decision is active only if each of those nodes selects that option."""
    return [list(placed.enclosing) for placed in space.placed[1]]


CONTROLLERS = ("categorical", "lstm")


@dataclass(frozen=True)
class ControllerSettings:
    """The `controller=` config group (conf/controller/*.yaml). `categorical` is TuNAS's
    independent logits (its settings are the strategy's `policy_*` keys); `lstm` is NAS-RL's
    (the other fields); `default` (name None) is the strategy's own."""

    name: str | None = option(None, choices=CONTROLLERS)  # None: the strategy's own
    hidden: int = option(35, ge=1, le=4096)
    layers: int = option(2, ge=1, le=16)
    init_range: float = option(0.08, gt=0, le=10)
    lr: float = option(0.0006, gt=0, le=10)
    adam_beta1: float = option(0.9, ge=0, lt=1)
    adam_beta2: float = option(0.999, ge=0, lt=1)
    adam_epsilon: float = option(1e-8, gt=0, le=1)
    temperature: float | None = option(None, gt=0, le=1000)
    tanh_constant: float | None = option(None, gt=0, le=1000)

    @classmethod
    def from_config(cls, cfg: Any) -> ControllerSettings:
        return cls(**check_fields(cls, dict(cfg), "controller"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_controller(
    space: SearchSpace,
    settings: ControllerSettings,
    device: torch.device | str,
    seed: int,
) -> Controller:
    """The controller `settings` names: TuNAS's categoricals (the caller gives them their
    `PolicyAdam`), or NAS-RL's LSTM (`nascli/search/lstm.py`) with its own Adam."""
    if settings.name == "lstm":
        from nascli.search.lstm import AnchorLSTMController, LSTMController

        if any(d.tag == INPUT for d in space.decisions):  # NAS-RL's skip connections
            return AnchorLSTMController(space, settings, device, seed)
        return LSTMController(space, settings, device, seed)
    return CategoricalPolicy(space, device)


class Controller(ABC):
    """A distribution over the architectures of a space that an RL strategy samples and updates
    (TuNAS's independent categoricals here; an autoregressive controller plugs in the same way).

    The base class holds what comes from the space alone: each decision's number of options and
    tag, and the hierarchy (`active`: a decision inside a skipped layer or an unchosen option is
    neither counted in log-probabilities and entropies nor updated)."""

    def __init__(self, space: SearchSpace, device: torch.device | str = "cpu"):
        self.space = space
        sizes = torch.tensor([d.num_choices for d in space.decisions])
        self.sizes = sizes.to(device)
        self.is_op = torch.tensor([d.tag == OP for d in space.decisions], device=device)
        self.is_filter = torch.tensor([d.tag == FILTERS for d in space.decisions], device=device)
        chains = ancestors(space)
        depth = max(1, max(len(c) for c in chains))
        self.cond_pos = torch.zeros(len(chains), depth, dtype=torch.long)
        self.cond_val = torch.full((len(chains), depth), -1, dtype=torch.long)
        for d, chain in enumerate(chains):
            for j, (position, selected) in enumerate(chain):
                self.cond_pos[d, j], self.cond_val[d, j] = position, selected
        self.cond_pos, self.cond_val = self.cond_pos.to(device), self.cond_val.to(device)

    def active(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, D) bool: decisions whose enclosing choices all select them."""
        chosen = indices[:, self.cond_pos]  # (B, D, depth)
        ok = (chosen == self.cond_val) | (self.cond_val < 0)
        return ok.all(dim=2)

    @abstractmethod
    def sample(
        self, num: int, generator: torch.Generator | None = None, temperature: float | None = None
    ) -> torch.Tensor:
        """(num, D) indices; at `temperature` τ < 1 nearer the mode."""

    @abstractmethod
    def log_prob(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log-probability of each architecture over its active (or `counted`) decisions."""

    @abstractmethod
    def entropy(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) entropy over each architecture's active decisions (or the `counted` ones)."""

    @abstractmethod
    def argmax(self) -> torch.Tensor:
        """(D,) the likeliest option of every decision."""

    @abstractmethod
    def update(
        self,
        indices: torch.Tensor,
        advantages: torch.Tensor,
        counted: torch.Tensor,
        lr: float,
        entropy_coefficient: float = 0.0,
    ) -> None:
        """One REINFORCE step on the loss mean_k(−A_k·log π(a_k) − c·H(a_k)), counting only
        `counted` decisions."""

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """What must agree across ranks (checked at the end of a distributed search)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def marginals(self) -> torch.Tensor | None:
        """(D, C) each decision's option probabilities where the controller has them."""
        return None


class CategoricalPolicy(Controller):
    """One categorical distribution per decision over its options, logits starting at 0,
    updated by `adam` (a `PolicyAdam`; needed only by `update`)."""

    def __init__(
        self,
        space: SearchSpace,
        device: torch.device | str = "cpu",
        adam: PolicyAdam | None = None,
    ):
        super().__init__(space, device)
        width = int(self.sizes.max())
        self.valid = (torch.arange(width, device=device)[None, :] < self.sizes[:, None]).to(device)
        self.logits = torch.zeros(len(self.sizes), width, dtype=torch.float64, device=device)
        self.adam = adam

    # ---------------------------------------------------------------- distribution
    def log_probs(self) -> torch.Tensor:
        """(D, C) log-probabilities; invalid options are -inf."""
        return self.logits.masked_fill(~self.valid, -math.inf).log_softmax(dim=1)

    def probs(self) -> torch.Tensor:
        return self.log_probs().exp()

    def sample(
        self,
        num: int,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """(num, D) indices drawn independently per decision; at `temperature` τ from
        softmax(log π / τ) instead (τ < 1: nearer the mode)."""
        if temperature is None:
            probs = self.probs().float().cpu()
        else:
            probs = (self.log_probs().float().cpu() / temperature).softmax(dim=1)
        flat = torch.multinomial(
            probs.repeat(num, 1), 1, replacement=True, generator=generator
        ).view(num, -1)
        return flat.to(self.logits.device)

    def argmax(self) -> torch.Tensor:
        return self.logits.masked_fill(~self.valid, -math.inf).argmax(dim=1)

    def log_prob(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) hierarchical log π(arch): the sum over active (and `counted`) decisions."""
        mask = self.active(indices) if counted is None else counted
        picked = self.log_probs().gather(1, indices.T).T  # (B, D)
        return (picked * mask).sum(dim=1)

    def node_entropy(self) -> torch.Tensor:
        logp = self.log_probs()
        return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=1)

    def entropy(self, indices: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) hierarchical entropy: per-node entropies summed over active decisions (or the
        `counted` ones)."""
        mask = self.active(indices) if counted is None else counted
        return (self.node_entropy()[None, :] * mask).sum(dim=1)

    # ---------------------------------------------------------------- gradients
    def loss_gradients(
        self,
        indices: torch.Tensor,
        advantages: torch.Tensor,
        counted: torch.Tensor,
        entropy_coefficient: float = 0.0,
    ) -> torch.Tensor:
        """(B, D, C) gradient of each architecture's loss −A·log π(a) − c·H(a) w.r.t. the
        logits, counting only `counted` decisions (active and not replaced by a warmup)."""
        logp = self.log_probs()
        p = logp.exp()
        onehot = torch.zeros(len(indices), *self.logits.shape, dtype=p.dtype, device=p.device)
        onehot.scatter_(2, indices.unsqueeze(2), 1.0)
        mask = counted.to(p.dtype).unsqueeze(2)
        grad = -advantages.to(p.dtype)[:, None, None] * (onehot - p) * mask
        if entropy_coefficient:
            h = self.node_entropy()
            dh = -p * (logp.nan_to_num(neginf=0.0) + h[:, None])  # ∂H_d/∂logits_d
            grad = grad - entropy_coefficient * dh * mask
        return grad * self.valid

    def update(
        self,
        indices: torch.Tensor,
        advantages: torch.Tensor,
        counted: torch.Tensor,
        lr: float,
        entropy_coefficient: float = 0.0,
    ) -> None:
        if self.adam is None:
            raise ValueError("this policy has no optimiser: pass adam=PolicyAdam(...)")
        grads = self.loss_gradients(indices, advantages, counted, entropy_coefficient)
        self.adam.step(self.logits, grads, lr)

    def marginals(self) -> torch.Tensor:
        return self.probs()

    def tensors(self) -> list[torch.Tensor]:
        return [self.logits]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"logits": self.logits.clone()}
        if self.adam is not None:
            state["adam"] = self.adam.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.logits.copy_(state["logits"])
        if self.adam is not None and "adam" in state:
            self.adam.load_state_dict(state["adam"])


class PolicyAdam:
    """Adam over the logits with per-architecture gradients g_k:
    m ← β1·m + (1−β1)·mean_k g_k;  v ← β2·v + (1−β2)·mean_k g_k² ("per_arch", TuNAS's
    cross-replica form) or (mean_k g_k)² ("mean", standard Adam on the averaged gradient).
    Moments update even when lr is 0 (the RL delay)."""

    def __init__(
        self,
        shape: torch.Size,
        beta1: float = 0.0,
        beta2: float = 0.999,
        eps: float = 1e-8,
        second_moment: str = "per_arch",
        device: torch.device | str = "cpu",
    ):
        if second_moment not in ("per_arch", "mean"):
            raise ValueError("second_moment must be per_arch or mean")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.second_moment = second_moment
        self.m = torch.zeros(shape, dtype=torch.float64, device=device)
        self.v = torch.zeros(shape, dtype=torch.float64, device=device)
        self.t = 0

    def step(self, logits: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
        """`grads` is (B, *shape): one gradient per architecture of the step."""
        self.t += 1
        mean = grads.mean(dim=0)
        square = (grads * grads).mean(dim=0) if self.second_moment == "per_arch" else mean**2
        self.m.mul_(self.beta1).add_(mean, alpha=1 - self.beta1)
        self.v.mul_(self.beta2).add_(square, alpha=1 - self.beta2)
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        logits.sub_(lr * m_hat / (v_hat.sqrt() + self.eps))

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m.clone(), "v": self.v.clone(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])
        self.t = int(state["t"])


def apply_warmup(
    policy: Controller,
    indices: torch.Tensor,
    p_op: float,
    p_filter: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per node, independently: with probability `p_op` an op node runs *mixed*
    (the uniform average of its branches); with probability `p_filter` a filter node takes its
    largest choice. Returns (indices, mixed, replaced); replaced nodes carry no log-prob."""
    shape = indices.shape
    u_op = torch.rand(shape, generator=generator).to(indices.device)
    u_filter = torch.rand(shape, generator=generator).to(indices.device)
    mixed = (u_op < p_op) & policy.is_op
    widest = (u_filter < p_filter) & policy.is_filter
    indices = torch.where(widest, (policy.sizes - 1).expand(shape), indices)
    return indices, mixed, mixed | widest
