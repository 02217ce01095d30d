"""TuNAS's rewards (`tunas/search_space_utils.py`), reward baseline and schedules
(`tunas/mobile_architecture_search.py`)."""

from __future__ import annotations

import math

import torch

from nascli.errors import NascliError

REWARDS = ("abs", "mnas", "mnas_hard", "quality")


def reward(
    quality: torch.Tensor, cost: torch.Tensor, target: float | None, kind: str, beta: float
) -> torch.Tensor:
    """R from quality Q (valid top-1) and cost T, with r = T/T0 and β (negative):
    abs: Q + β·|r − 1|;  mnas: Q·r^β;  mnas_hard: Q·min(r^β, 1);  quality: Q."""
    if kind == "quality":
        return quality
    if kind not in REWARDS:
        raise NascliError(f"strategy.reward={kind!r}: choose one of {', '.join(REWARDS)}")
    if target is None or target <= 0:
        raise NascliError(f"the {kind} reward needs a positive cost.target")
    ratio = cost / target
    if kind == "abs":
        return quality + beta * (ratio - 1).abs()
    factor = ratio.pow(beta)
    if kind == "mnas_hard":
        factor = factor.clamp(max=1.0)
    return quality * factor


class EmaBaseline:
    """Zero-debiased exponential moving average of the step's mean reward, updated *before*
    the advantage is computed, so it includes the current step."""

    def __init__(self, momentum: float = 0.95):
        self.momentum = momentum
        self.biased = 0.0
        self.steps = 0

    def update(self, mean_reward: float) -> float:
        self.steps += 1
        self.biased = self.momentum * self.biased + (1 - self.momentum) * mean_reward
        return self.value

    @property
    def value(self) -> float:
        if self.steps == 0:
            return 0.0
        return self.biased / (1 - self.momentum**self.steps)

    def state_dict(self) -> dict[str, float]:
        return {"biased": self.biased, "steps": self.steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.biased, self.steps = float(state["biased"]), int(state["steps"])


def warmup_probability(step: int, total: int, fraction: float) -> float:
    """p = 1 − clip(t / W, 0, 1) with W = ⌊fraction·S⌋: 1 at the start, 0 from step W on."""
    window = math.floor(fraction * total)
    if window <= 0:
        return 0.0
    return 1.0 - min(max(step / window, 0.0), 1.0)


def policy_learning_rate(
    step: int, total: int, base: float, delay_fraction: float, growth: float = 10.0
) -> float:
    """0 for t < D = ⌊delay·S⌋, then base·growth^((t − D)/(S − D)): TuNAS's ×10 by the end
    (growth 1: constant, as NAS-RL's controller)."""
    delay = math.floor(delay_fraction * total)
    if step < delay:
        return 0.0
    progress = (step - delay) / max(1, total - delay)
    return base * growth**progress
