"""PNG plots of run logs (matplotlib, headless)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay out, write as a PNG and release a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def search_curves(
    path: Path, log: pd.DataFrame, target: float | None, units: str, chance: float | None = None
) -> None:
    """Reward, baseline and valid accuracy against chance; the policy's entropy; and cost with
    its target, against the step."""
    plt = pyplot()
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(7, 8), sharex=True, height_ratios=(3, 1.4, 3)
    )
    if "reward" in log:  # RL strategies
        top.plot(log["step"], log["reward"], lw=0.6, alpha=0.6, label="reward (mean of step)")
        top.plot(log["step"], log["baseline"], lw=1.2, label="baseline")
    quality = log.dropna(subset=["quality"])
    top.plot(quality["step"], quality["quality"], lw=0.6, alpha=0.6, label="valid top-1 (supernet)")
    if chance is not None:
        top.axhline(chance, color="0.4", ls=":", lw=0.9, label=f"chance ({chance:.0%})")
    top.set_ylabel("reward / accuracy")
    top.legend(fontsize=8)
    middle.plot(log["step"], log["entropy"], lw=1.0, color="tab:purple")
    middle.set_ylabel("entropy (nats)")
    bottom.plot(log["step"], log["cost"], lw=0.6, alpha=0.6, label="sampled")
    bottom.plot(log["step"], log["argmax_cost"], lw=1.2, label="argmax of policy")
    if target is not None:
        bottom.axhline(target, color="k", ls="--", lw=0.8, label="target")
    bottom.set_ylabel(f"cost ({units})")
    bottom.set_xlabel("step")
    bottom.legend(fontsize=8)
    save(fig, path)


def probability_heatmap(path: Path, log: pd.DataFrame) -> None:
    """One row per (decision, option), one column per logged step, colour = probability."""
    columns = [c for c in log.columns if c.startswith("p/")]
    if not columns:
        return
    plt = pyplot()
    values = log[columns].to_numpy().T
    height = max(4.0, 0.09 * len(columns))
    fig, ax = plt.subplots(figsize=(9, height))
    steps = log["step"].to_numpy()
    image = ax.imshow(
        values,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        extent=(float(steps[0]), float(steps[-1]) + 1, len(columns), 0),
    )
    ax.set_yticks(np.arange(len(columns)) + 0.5)
    ax.set_yticklabels([c[2:] for c in columns], fontsize=4)
    ax.set_xlabel("step")
    ax.set_title("policy probability of each option", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    save(fig, path, dpi=130)


def accuracy_vs_cost(
    path: Path,
    costs: list[float],
    accuracies: list[float],
    units: str,
    target: float | None,
    best_number: int | None = None,
    labels: list[str] | None = None,
) -> None:
    """One point per architecture (or run); the best starred, the target as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(costs, accuracies, s=18)
    if best_number is not None:
        ax.scatter([costs[best_number]], [accuracies[best_number]], marker="*", s=160, c="C3",
                   label="best")  # fmt: skip
    for i, label in enumerate(labels or []):
        ax.annotate(label, (costs[i], accuracies[i]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    if target is not None:
        ax.axvline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set_xlabel(f"cost ({units})")
    ax.set_ylabel("valid top-1")
    ax.legend(fontsize=8)
    save(fig, path)


def evolution_curves(
    path: Path,
    log: pd.DataFrame,
    population: pd.DataFrame,
    proxy: str,
    budget: float | None,
    units: str,
) -> None:
    """Best, mean and worst population score against the iteration; and the final population's
    score against its cost, the best starred and the budget as a line."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if len(log):
        left.plot(log["iteration"], log["best_score"], lw=1.4, label="best")
        left.plot(log["iteration"], log["mean_score"], lw=1.0, label="population mean")
        left.plot(log["iteration"], log["worst_score"], lw=0.8, alpha=0.7, label="worst")
    left.set_xlabel("iteration")
    left.set_ylabel(f"{proxy} score")
    left.legend(fontsize=8)
    if len(population):
        right.scatter(population["cost"], population["score"], s=12, alpha=0.7)
        best = population["score"].idxmax()
        right.scatter([population.loc[best, "cost"]], [population.loc[best, "score"]],
                      marker="*", s=160, c="C3", label="best")  # fmt: skip
    if budget is not None:
        right.axvline(budget, color="k", ls="--", lw=0.8, label="budget")
    right.set_xlabel(f"cost ({units})")
    right.set_ylabel(f"{proxy} score")
    right.set_title("final population", fontsize=9)
    right.legend(fontsize=8)
    save(fig, path)


def proxy_scatter(
    path: Path, frame: pd.DataFrame, names: list[str], accuracy: str, stats: pd.DataFrame
) -> None:
    """One panel per proxy: accuracy against the proxy's score, with τ and ρ in the title."""
    plt = pyplot()
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        ax.scatter(frame[name], frame[accuracy], s=12)
        row = stats.set_index("proxy").loc[name]
        ax.set_title(f"{name}: τ {row['kendall_tau']:.2f} · ρ {row['spearman_rho']:.2f}",
                     fontsize=9)  # fmt: skip
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel(accuracy, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    save(fig, path)


def reward_curve(
    path: Path, children: pd.DataFrame, log: pd.DataFrame, reference: Sequence[float] = ()
) -> None:
    """Multi-trial RL: each child's reward against the number of architectures sampled, with
    each controller step's mean reward and baseline, and the mean reward (± one standard
    error) of `reference`, children drawn uniformly at random, when there are any."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(children["child"] + 1, children["reward"], s=12, alpha=0.6, label="child")
    if len(log):
        ax.plot(log["children"], log["reward"], lw=1.2, label="mean of step")
        ax.plot(log["children"], log["baseline"], lw=1.2, label="baseline")
    if len(reference):
        mean = float(np.mean(reference))
        error = (
            float(np.std(reference, ddof=1) / np.sqrt(len(reference))) if len(reference) > 1 else 0
        )
        ax.axhline(mean, color="gray", ls="--", lw=1.2,
                   label=f"uniform random ({len(reference)} children)")  # fmt: skip
        ax.axhspan(mean - error, mean + error, color="gray", alpha=0.15, lw=0)
    ax.set_xlabel("architectures sampled")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    save(fig, path)


def macs_cdfs(path: Path, curves: dict[str, Any], budget_note: str) -> None:
    """MCUNet's Fig. 3: per design space, the CDF of the MACs of its samples within the
    budgets (label -> sorted MACs)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        if len(values):
            ax.plot(values / 1e6, np.arange(1, len(values) + 1) / len(values), label=label)
    ax.set_xlabel("MACs (M) of the samples that fit")
    ax.set_ylabel("cumulative share")
    ax.set_title(budget_note, fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)
