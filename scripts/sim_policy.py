"""Simulation: does TuNAS's policy land on its cost target within a short search?

The policy half of a search without the supernet: the same policy, Adam, baseline, warmups,
reward and Pixel-1 cost model as `nascli search`, but each child's reward accuracy is drawn as
Q = 0.5 + slope·ln(T/T0) + N(0, σ²): σ = 0.04 is the binomial noise of 64 reward images near
90%, and `slope` is how much accuracy follows cost (0.1: about 1 point per 10% of cost). Seconds
per setting, so the policy's settings can be chosen before spending minutes on real searches.
Printed per setting: how many seeds' argmax, and how many seeds' likeliest architecture within
the window (`strategy.final_selection=likeliest_in_window`), land within ±3% of the target.

    python scripts/sim_policy.py [--space proxylessnas] [--target 84] [--seeds 6]
        [--slopes -0.1 0 0.1] [--settings 0.05:-0.1 0.3:-0.5]   (policy lr : β)
"""

from __future__ import annotations

import argparse

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from nascli.config import CostConfig
from nascli.cost.models import make_cost_model
from nascli.data.augment import keyed_generator
from nascli.search.policy import CategoricalPolicy, PolicyAdam, apply_warmup
from nascli.search.rewards import EmaBaseline, policy_learning_rate, reward, warmup_probability
from nascli.search.tunas import likeliest_within
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SPACES


def simulate(cost_model, space, target, lr, beta, seed, slope, sigma, steps, archs, window):
    """(argmax error, likeliest-in-window error or None, final policy entropy)."""
    policy = CategoricalPolicy(space)
    policy.adam = PolicyAdam(policy.logits.shape)
    baseline = EmaBaseline(0.95)
    noise = torch.Generator().manual_seed(10_000 + seed)
    for t in range(steps):
        p = warmup_probability(t, steps, 0.25)
        generator = keyed_generator(seed, t, 7)
        indices = policy.sample(archs, generator)
        indices, _, replaced = apply_warmup(policy, indices, p, p, generator)
        cost = cost_model(indices).double()
        quality = 0.5 + slope * torch.log(cost / target)
        quality = quality + sigma * torch.randn(archs, generator=noise, dtype=torch.float64)
        rewards = reward(quality, cost, target, "abs", beta)
        advantages = rewards - baseline.update(float(rewards.mean()))
        counted = policy.active(indices) & ~replaced
        policy.update(indices, advantages, counted, policy_learning_rate(t, steps, lr, 0.25))
    argmax = float(cost_model(policy.argmax()[None])[0]) / target - 1
    found = likeliest_within(policy, cost_model, target, window, seed)
    chosen = None if found is None else float(cost_model(found[None])[0]) / target - 1
    return argmax, chosen, float(policy.node_entropy().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="proxylessnas", choices=list(SPACES))
    parser.add_argument("--target", type=float, default=84.0, help="Pixel-1 ms")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--slopes", type=float, nargs="+", default=[-0.1, 0.0, 0.1])
    parser.add_argument("--settings", nargs="+", default=["0.05:-0.1", "0.3:-0.5", "0.3:-1.0"])
    parser.add_argument("--steps", type=int, default=230, help="the default search's 230")
    parser.add_argument("--archs", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=0.04)
    parser.add_argument("--window", type=float, default=0.03)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = SPACES[args.space]
    settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
    cost_cfg = OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": "tunas_pixel1"})
    cost_model = make_cost_model(cost_cfg, space, settings)
    table = Table(
        title=f"{args.space} · target {args.target:g} ms · {args.steps} steps × {args.archs} "
        f"archs · σ {args.sigma} · {args.seeds} seeds",
        title_justify="left",
    )
    for column in ("slope", "policy lr", "β", "argmax ±3%", "argmax error (mean, max)"):
        table.add_column(column, justify="right")
    for column in ("likeliest in window ±3%", "entropy (nats)"):
        table.add_column(column, justify="right")
    for slope in args.slopes:
        for setting in args.settings:
            lr, beta = (float(v) for v in setting.split(":"))
            runs = [
                simulate(cost_model, space, args.target, lr, beta, seed, slope, args.sigma,
                         args.steps, args.archs, args.window)
                for seed in range(args.seeds)
            ]  # fmt: skip
            errors = [abs(r[0]) for r in runs]
            landed = sum(e <= args.window for e in errors)
            chosen = sum(r[1] is not None and abs(r[1]) <= args.window for r in runs)
            entropy = sum(r[2] for r in runs) / len(runs)
            table.add_row(
                f"{slope:+g}", f"{lr:g}", f"{beta:g}", f"{landed}/{len(runs)}",
                f"{sum(errors) / len(errors):.1%}, {max(errors):.1%}",
                f"{chosen}/{len(runs)}", f"{entropy:.1f}",
            )  # fmt: skip
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
