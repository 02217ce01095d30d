"""Scorecard: every strategy at equal compute, winners retrained with one recipe, several seeds.

For each target and seed: run `nascli search` (TuNAS) and count its compute in
training-image equivalents (train images + reward images / 3: a forward pass costs about a
third of a training step). The random baseline gets as many candidates as that budget buys with
its recipe; the Zen-NAS evolution as many iterations (two forward passes of its batch each).
ProxylessNAS (`strategy=proxyless_cpu`) runs its own default length, 230 weight steps as TuNAS;
its budget is the weight steps' images plus the architecture steps' (each a training pass).
FBNet (`strategy=fbnet_cpu`) is counted the same way; it runs `--fbnet-epochs` epochs of the
search recipe (2 by default: 92 weight steps, since each of its steps runs every path and costs
about 13 TuNAS steps of wall time). The grid (`strategy=grid`, ProxylessNAS-Mobile over
MobileNet's width x resolution grid, `strategy.max_cost` at the target) joins only under a cost
that sees width and resolution (an analytic `cost=`); its budget is its trained points at the
random candidates' price, and its winner is retrained at its point's overrides.
`random_draw` is TuNAS's own latency-matched baseline (its `sample_random_architectures.py`
with one sample): one uniform draw inside the window, retrained as it is, with no selection;
over many seeds it gives the accuracy of a typical architecture at that cost, against which a
search shows whether it finds better than average. (`random` is the stronger, equal-compute
baseline: the best of as many trained candidates as TuNAS's budget buys.)
`--tunas-overrides` go to TuNAS's search alone (a `strategy.*` key that `retrain` and the
other strategies do not have); its run directory is the same, so give such a run its own
`--out`; `--random-overrides` go to the random baseline alone (e.g. more draws,
`strategy.max_attempts=4000000`, when a large budget buys more candidates than a million draws
find in a narrow window). With `--tunas-budget N` and `tunas` not among `--strategies`,
TuNAS's search is not run and N image-equivalents (its runs' value: 34,347 for the default
search) set the others' budgets.
Every winner is then retrained from scratch with one recipe (`train=cpu_quick` for
--retrain-epochs epochs, --retrain-seeds times) and scored on the test split: its score is the
mean over those retrainings. Per target the table gives mean ± std over seeds and Welch's
t-test of each strategy against random (two-sided). Every command resumes, so rerunning the
script after an interruption continues where it stopped.

    python scripts/scorecard.py [--space proxylessnas] [--targets 84 40] [--seeds 0 1 2]
        [--strategies tunas random random_draw zen proxyless fbnet grid] [--retrain-epochs 10]
        [--retrain-seeds 1] [--fbnet-epochs 2] [--tunas-budget N] [--out runs/scorecard]
        [--tunas-overrides strategy.zero_init_width=false ...] [--random-overrides ...]
        [-- extra overrides for every command, e.g. data=cifar10 data.root=~/data]
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
from typing import Any

from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table
from scipy import stats

import nascli.config  # registers the config schema
from nascli.data import load_data
from nascli.report.machine import machine_line
from nascli.report.summary import read_summary

STRATEGIES = ("tunas", "random", "random_draw", "zen", "proxyless", "fbnet", "grid")


def nascli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nascli", *args], check=True)


def summary(path: Path) -> dict:
    """A run's summary.json in the current format (older runs are read too)."""
    return read_summary(path).record()


def candidate_cost(extra: list[str]) -> tuple[float, dict]:
    """Training-image equivalents one random-baseline candidate costs with its recipe."""
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose(config_name="random_baseline", overrides=extra)
    data = load_data(cfg.data)
    batch, epochs = cfg.train.batch_size, cfg.train.epochs
    train = data.steps_per_epoch(batch) * batch * epochs
    evaluation = data.sizes.get("valid", 0) * epochs / 3  # a valid pass after every epoch
    return train + evaluation, {"recipe": cfg.train.name, "epochs": epochs}


def zen_batch(extra: list[str]) -> int:
    """Images one Zen-NAS iteration scores: the proxy's batch × repeats."""
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose(config_name="search", overrides=["strategy=zen", *extra])
    return cfg.strategy.batch_size * cfg.strategy.repeat


def tunas_budget(found: dict) -> float:
    return found["images"] + found["reward_images"] / 3


def gradient_budget(found: dict) -> float:
    """Weight steps' images plus the α steps' (a forward and backward pass each, as training)."""
    return found["images"] + found["arch_images"]


def zen_budget(found: dict) -> float:
    return found["scored_images"] * 2 / 3  # a clean and a perturbed forward pass per image


def mean_std(values: list[float], digits: int = 4) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    if abs(mean) >= 1000:  # image counts and budgets
        return f"{mean:,.0f}" + ("" if std is None else f" ± {std:,.0f}")
    return f"{mean:.{digits}g}" + ("" if std is None else f" ± {std:.2g}")


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value; None with fewer than two values per side."""
    if min(len(a), len(b)) < 2:
        return None
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return 1.0 if statistics.mean(a) == statistics.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def search_seed(
    out: Path,
    common: list[str],
    target: float,
    seed: int,
    args: argparse.Namespace,
    costs: tuple[float, float],
) -> list[dict[str, Any]]:
    """Search with every strategy at one target and seed at TuNAS's compute; retrain winners."""
    names = args.strategies
    per_candidate, per_iteration = costs
    base = [*common, f"cost.target={target:g}", f"seed={seed}"]
    runs: dict[str, tuple[Path, float]] = {}
    if "tunas" in names or args.tunas_budget is None:
        tunas_dir = out / f"tunas/{seed}"
        nascli("search", *base, *args.tunas_overrides, f"out={tunas_dir}")
        budget = tunas_budget(summary(tunas_dir))
        if "tunas" in names:
            runs["tunas"] = (tunas_dir, budget)
    else:
        budget = args.tunas_budget
    if "random" in names:
        candidates = max(1, math.floor(budget / per_candidate + 0.5))
        directory = out / f"random/{seed}"
        nascli(
            "random-baseline",
            *base,
            *args.random_overrides,
            f"strategy.num_samples={candidates}",
            f"out={directory}",
        )
        runs["random"] = (directory, candidates * per_candidate)
    if "random_draw" in names:  # TuNAS's own baseline: one draw in the window, not selected
        directory = out / f"random_draw/{seed}"
        nascli("random-baseline", *base, *args.random_overrides, "strategy.num_samples=1",
               f"out={directory}")  # fmt: skip
        runs["random_draw"] = (directory, per_candidate)
    if "zen" in names:
        iterations = max(1, math.floor(budget / per_iteration + 0.5))
        directory = out / f"zen/{seed}"
        nascli("search", *base, "strategy=zen", f"strategy.iterations={iterations}",
               f"out={directory}")  # fmt: skip
        runs["zen"] = (directory, zen_budget(summary(directory)))
    if "proxyless" in names:  # its own default length (230 weight steps, as TuNAS's)
        directory = out / f"proxyless/{seed}"
        nascli("search", *base, "strategy=proxyless_cpu", f"out={directory}")
        runs["proxyless"] = (directory, gradient_budget(summary(directory)))
    if "fbnet" in names:
        directory = out / f"fbnet/{seed}"
        nascli("search", *base, "strategy=fbnet_cpu", f"train.epochs={args.fbnet_epochs}",
               f"out={directory}")  # fmt: skip
        runs["fbnet"] = (directory, gradient_budget(summary(directory)))
    if "grid" in names:
        directory = out / f"grid/{seed}"
        nascli("search", *base, "strategy=grid", "train=candidate_cpu",
               f"strategy.max_cost={target:g}", f"out={directory}")  # fmt: skip
        runs["grid"] = (directory, summary(directory)["trained"] * per_candidate)
    rows = []
    for name, (directory, spent) in runs.items():
        found = summary(directory)
        # a grid point's network settings are config, not part of arch.json (summary.json's
        # details are top-level keys)
        point = [f"{k}={v}" for k, v in found.get("point", {}).items()]
        epochs, repeats = args.retrain_epochs, args.retrain_seeds
        tests = []
        for repeat in range(repeats):
            again = seed + 1000 * repeat
            retrained = out / f"retrain{epochs}_{name}/{seed}" / str(again)
            nascli("retrain", *common, *point, f"arch={directory}", f"seed={again}",
                   f"train.epochs={epochs}", f"out={retrained}")  # fmt: skip
            trained = summary(retrained)
            tests.append(trained["test_top1"])
        rows.append({
            "target": target, "seed": seed, "strategy": name, "indices": found["indices"],
            "cost": found["cost"], "cost_units": found["cost_units"],
            "test_top1": statistics.mean(tests), "test_top1_each": tests,
            "params": trained["params"],
            "budget": spent, "search_seconds": found["seconds"],
            "candidates": found.get("candidates") if name == "random" else None,
            "reward_top1_final": found.get("supernet_top1"),
        })  # fmt: skip
    return rows


def target_table(rows: list[dict[str, Any]], target: float, title: str) -> Table:
    table = Table(title=f"{title} · target {target:g}", title_justify="left")
    for column in ("strategy", "test top-1 %", "per seed", "cost", "params M",
                   "budget (img-eq.)", "search s", "vs random p"):  # fmt: skip
        table.add_column(column, justify="right")
    random_top1 = [100 * r["test_top1"] for r in rows if r["strategy"] == "random"]
    for name in STRATEGIES:
        own = [r for r in rows if r["strategy"] == name]
        if not own:
            continue
        top1 = [100 * r["test_top1"] for r in own]
        p = None if name == "random" else welch_p(top1, random_top1)
        table.add_row(
            name,
            mean_std(top1),
            ", ".join(f"{v:.1f}" for v in top1),
            mean_std([r["cost"] for r in own]) + f" {own[0]['cost_units']}",
            mean_std([r["params"] / 1e6 for r in own], 3),
            mean_std([r["budget"] for r in own]),
            mean_std([r["search_seconds"] for r in own], 3),
            "–" if p is None else f"{p:.3f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="proxylessnas")
    parser.add_argument("--targets", type=float, nargs="+", default=[84.0, 40.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    default = ["tunas", "random", "zen", "proxyless"]
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=default)
    parser.add_argument("--retrain-epochs", type=int, default=10)
    parser.add_argument("--retrain-seeds", type=int, default=1)
    parser.add_argument("--fbnet-epochs", type=int, default=2, help="epochs of FBNet's search")
    parser.add_argument(
        "--tunas-budget",
        type=float,
        default=None,
        help="image-equivalents of TuNAS's search, used instead of running it when tunas is "
        "not among --strategies",
    )
    parser.add_argument(
        "--tunas-overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for TuNAS's search only (e.g. strategy.zero_init_width=false), which "
        "the other commands would refuse",
    )
    parser.add_argument(
        "--random-overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for the random baseline only (e.g. strategy.max_attempts=4000000)",
    )
    parser.add_argument("--out", default="runs/scorecard")
    parser.add_argument("extra", nargs="*", help="overrides for every command (after --)")
    args = parser.parse_args()
    console = Console(width=160)
    out = Path(args.out)
    common = [f"space={args.space}", *args.extra]
    if "grid" in args.strategies and not any(e.startswith("cost=") for e in args.extra):
        parser.error("grid needs an analytic cost (-- cost=macs ...): the search's Pixel-1 model "
                     "predicts one 224 px, width-1 network and ignores the grid's width and "
                     "resolution")  # fmt: skip
    per_candidate, recipe = candidate_cost(common)
    per_iteration = zen_batch(common) * 2 / 3
    started = time.perf_counter()
    results_path = out / f"results_retrain{args.retrain_epochs}x{args.retrain_seeds}.json"
    results: list[dict[str, Any]] = []
    for target in args.targets:
        for seed in args.seeds:
            where = out / f"{target:g}"
            costs = (per_candidate, per_iteration)
            results += search_seed(where, common, target, seed, args, costs)
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
    title = (
        f"{args.space} · seeds {args.seeds} · retrain {args.retrain_epochs} epochs × "
        f"{args.retrain_seeds} · random "
        f"candidates: {recipe['recipe']} ({recipe['epochs']} epochs, {per_candidate:,.0f} "
        "img-eq. each)"
    )
    for target in args.targets:
        console.print(target_table([r for r in results if r["target"] == target], target, title))
    console.print(f"wall time {(time.perf_counter() - started) / 60:.1f} min · {machine_line()}")
    console.print(f"results in {results_path}")


if __name__ == "__main__":
    main()
