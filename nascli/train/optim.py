"""Optimisers and the learning-rate schedule.

`RMSpropTF` follows TensorFlow 1's RMSProp, which TuNAS's peak learning rate of 2.64 depends on
(TuNAS code: `mobile_train_eval.py` with TF 1's `RMSPropOptimizer`): the mean square starts at 1, ε
sits inside the square root, and the learning rate is applied inside the momentum buffer. PyTorch's
`torch.optim.RMSprop` differs on all three.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nascli.errors import NascliError


class RMSpropTF(torch.optim.Optimizer):
    """ms ← ρ·ms + (1−ρ)·g²;  mom ← μ·mom + lr·g/√(ms+ε);  w ← w − mom  (ms starts at 1).

    `weight_decay` adds wd·w to the gradient, as TuNAS's (wd/2)·Σw² loss term does.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
    ):
        defaults = {
            "lr": lr,
            "decay": decay,
            "momentum": momentum,
            "eps": eps,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["mean_square"] = torch.ones_like(p)
                    state["momentum"] = torch.zeros_like(p)
                ms, mom = state["mean_square"], state["momentum"]
                ms.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                step = grad / (ms + group["eps"]).sqrt()
                mom.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                p.sub_(mom)
        return loss


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_classifier: bool = False
) -> list[dict[str, Any]]:
    """Conv and linear kernels get weight decay; BN parameters and biases never do (TuNAS's search
    and training).

    TuNAS also leaves the classifier undecayed; `decay_classifier` turns it on.
    """
    classifier = getattr(model, "classifier", None)
    skip = set() if decay_classifier or classifier is None else set(classifier.parameters())
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 and p not in skip else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, cfg: Any, peak_lr: float, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """The optimiser of the recipe `cfg`; `weight_decay` overrides the recipe's (the supernet
    decays only the active slices itself and passes 0)."""
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    groups = parameter_groups(model, decay, cfg.decay_classifier)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(
            groups,
            lr=peak_lr,
            decay=cfg.rmsprop_decay,
            momentum=cfg.momentum,
            eps=cfg.rmsprop_epsilon,
        )
    raise NascliError(f"train.optimizer={cfg.optimizer!r}: choose sgd or rmsprop_tf")


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps to `peak`, then cosine decay to 0 at `total` (or flat)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise NascliError(f"train.schedule={schedule!r}: choose cosine or constant")
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))
