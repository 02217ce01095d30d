"""Reproduction: TuNAS vs the latency-matched random baseline at the same compute budget.

For each seed: run `nascli search` (TuNAS), count its compute in training-image equivalents
(train images + reward images / 3, a forward pass costing about a third of a training step),
give `nascli random-baseline` as many candidates as that budget buys with its recipe, then
retrain both winners from scratch with the same recipe and compare test top-1 and cost.
Every command resumes, so rerunning the script after an interruption continues where it stopped.

    python scripts/repro_tunas_vs_random.py [--space proxylessnas] [--seeds 0 1 2]
        [--retrain-epochs 15] [--out runs/repro] [-- extra overrides, e.g. data=cifar10
        data.root=~/data]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table

import nascli.config
from nascli.data import load_data
from nascli.report.machine import machine_line


def nascli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nascli", *args], check=True)


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def candidate_cost(extra: list[str]) -> tuple[float, dict]:
    """Training-image equivalents one random-baseline candidate costs with its recipe."""
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose(config_name="random_baseline", overrides=extra)
    data = load_data(cfg.data)
    batch, epochs = cfg.train.batch_size, cfg.train.epochs
    train = data.steps_per_epoch(batch) * batch * epochs
    evaluation = data.sizes.get("valid", 0) * epochs / 3  # a valid pass after every epoch
    return train + evaluation, {"train_images": train, "recipe": cfg.train.name, "epochs": epochs}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="proxylessnas")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--retrain-epochs", type=int, default=15)
    parser.add_argument("--out", default="runs/repro")
    parser.add_argument("extra", nargs="*", help="overrides for every command (after --)")
    args = parser.parse_args()
    console = Console()
    out = Path(args.out)
    common = [f"space={args.space}", *args.extra]
    per_candidate, recipe = candidate_cost(common)
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        tunas_dir, random_dir = out / f"tunas/{seed}", out / f"random/{seed}"
        nascli("search", *common, f"seed={seed}", f"out={tunas_dir}")
        found = summary(tunas_dir)
        budget = found["images"] + found["reward_images"] / 3
        candidates = max(1, math.floor(budget / per_candidate + 0.5))
        nascli("random-baseline", *common, f"seed={seed}", f"strategy.num_samples={candidates}",
               f"out={random_dir}")  # fmt: skip
        for name, source in (("tunas", tunas_dir), ("random", random_dir)):
            target = out / f"retrain_{name}/{seed}"
            nascli("retrain", *common, f"arch={source}", f"seed={seed}",
                   f"train.epochs={args.retrain_epochs}", f"out={target}")  # fmt: skip
            trained = summary(target)
            row = summary(source)
            results.append({
                "seed": seed, "strategy": name, "indices": row["indices"], "cost": row["cost"],
                "cost_units": row["cost_units"], "target": row["target"],
                "test_top1": trained["test_top1"], "params": trained["params"],
                "search_budget": budget if name == "tunas" else candidates * per_candidate,
                "candidates": candidates if name == "random" else None,
                "search_seconds": row["search_seconds"],
            })  # fmt: skip
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    wall = time.perf_counter() - started

    table = Table(
        title=f"TuNAS vs random at equal compute · {args.space} · seeds {args.seeds} · "
        f"retrain {args.retrain_epochs} epochs · candidates: {recipe['recipe']} "
        f"({recipe['epochs']} epochs, {per_candidate:,.0f} image-equivalents each)",
        title_justify="left",
    )
    for column in ("strategy", "test top-1", "cost", "params", "budget (img-eq.)", "search s"):
        table.add_column(column, justify="right")
    for name in ("tunas", "random"):
        rows = [r for r in results if r["strategy"] == name]
        table.add_row(
            name,
            mean_std([100 * r["test_top1"] for r in rows]) + " %",
            mean_std([r["cost"] for r in rows]) + f" {rows[0]['cost_units']}",
            mean_std([r["params"] / 1e6 for r in rows]) + " M",
            mean_std([r["search_budget"] for r in rows]),
            mean_std([r["search_seconds"] for r in rows]),
        )
    console.print(table)
    console.print(f"wall time {wall / 60:.1f} min · {machine_line()} · results in {out}")


if __name__ == "__main__":
    main()
