"""Benchmark: the Zen-Score's cost against its floor, and architectures scored per second.

For N architectures sampled from a space, at the CPU default of `strategy=zen` (32×32, 1
channel, batch 64), with a 16-image batch, and at 224×224 (3 channels, batch 16): the
Zen-Score of the network (N(0, 1) re-initialisation, two train-mode passes, L1 difference, BN
term) is timed side by side with the floor it cannot beat: the same
network without residuals doing the same two forward passes on the same-sized batches, nothing
else. Both are timed alternately, `--repeats` times each per architecture, after one warm-up;
the medians are compared. Target: Zen-Score ≤ 1.2× the two passes at the CPU default. The
overhead is mostly drawing N(0, 1) weights (≈ 5 ms for ProxylessNAS's 1.9M feature weights on
one core), so small batches show the largest ratio.

TE-NAS's TE-Score (`proxy=te_nas`: NTK condition number and linear regions, batch
`te_batch_size` = 16 as Zen-NAS times it) is timed on the same networks, next to the Zen-Score,
`--te-repeats` times each; the NTK's B backward passes make it the slower proxy by design.

"Scored per second" is a whole search iteration as `strategy=zen` runs it: decode, budget
checks (analytic and Pixel-1), build the network (no initialiser), score it.

    python scripts/bench_zen.py [--space proxylessnas] [--archs 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from nascli.cost.models import Pixel1Cost
from nascli.report.machine import machine_line
from nascli.search.proxies import ProxySettings, scorable, score, without_residuals, zen_score
from nascli.search.zen import EvolutionSearch, ZenSettings
from nascli.space.arch import get_space, sample_indices
from nascli.space.network import NetworkSettings, decode

DIGITS = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
SETTINGS = {  # name: (network settings, scoring batch)
    "CPU default: 32 px": (DIGITS, 64),
    "32 px, batch 16": (DIGITS, 16),
    "224 px, batch 16": (NetworkSettings(resolution=224, num_classes=1000, in_channels=3), 16),
}


def two_passes(features: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """Seconds for the floor: two train-mode forward passes, no grad, nothing else."""
    x, y = torch.randn(shape), torch.randn(shape)
    tick = time.perf_counter()
    with torch.no_grad():
        features(x)
        features(y)
    return time.perf_counter() - tick


def bench(
    space_name: str, settings: NetworkSettings, batch: int, archs: int, repeats: int, te: int
):
    space = get_space(space_name)
    proxy = ProxySettings(batch_size=batch)
    rows = []
    for indices in sample_indices(space, archs, torch.Generator().manual_seed(0)).tolist():
        net = scorable(decode(space, tuple(indices), settings))
        shape = (batch, *net.input_shape)
        with without_residuals(net.features) as features:
            features.train()
            zen_score(features, net.input_shape, proxy, torch.Generator().manual_seed(0))
            two_passes(features, shape)  # warm-up of both
            zen, floor = [], []
            for r in range(repeats):
                tick = time.perf_counter()
                zen_score(features, net.input_shape, proxy, torch.Generator().manual_seed(r))
                zen.append(time.perf_counter() - tick)
                floor.append(two_passes(features, shape))
        te_nas = []
        for r in range(te):
            tick = time.perf_counter()
            score("te_nas", net, proxy, torch.Generator().manual_seed(r))
            te_nas.append(time.perf_counter() - tick)
        rows.append((statistics.median(zen), statistics.median(floor), statistics.median(te_nas)))
    return rows


def iterations_per_second(space_name: str, settings: NetworkSettings, batch: int, n: int):
    """Whole search iterations (mutation, budget checks, build, score) per second."""
    space = get_space(space_name)
    zen = ZenSettings.from_config(
        {"population_size": 16, "iterations": n, "batch_size": batch, "init_population": 2}
    )
    search = EvolutionSearch(space, settings, zen, Pixel1Cost(space, settings), None, seed=0)
    for _ in range(4):  # warm-up, and past the initial single mutations
        search.step()
    tick = time.perf_counter()
    for _ in range(n):
        search.step()
    return n / (time.perf_counter() - tick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="proxylessnas")
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--archs-224", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--te-repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    console.print(f"{machine_line()} · space {args.space}")
    table = Table(title="Zen-Score vs its floor (two forward passes), medians")
    for column in ("setting", "batch", "archs", "Zen-Score", "two passes", "ratio",
                   "per-arch ratios", "TE-Score (B=16)", "TE / Zen",
                   "scored/s (search)"):  # fmt: skip
        table.add_column(column, justify="right")
    default_ratio = None
    for name, (settings, batch) in SETTINGS.items():
        archs = args.archs if settings.resolution < 100 else args.archs_224
        rows = bench(args.space, settings, batch, archs, args.repeats, args.te_repeats)
        zen = statistics.median(z for z, _, _ in rows)
        floor = statistics.median(f for _, f, _ in rows)
        te_nas = statistics.median(t for _, _, t in rows)
        ratios = [z / f for z, f, _ in rows]
        rate = iterations_per_second(args.space, settings, batch, 30 if archs > 4 else 6)
        if default_ratio is None:
            default_ratio = zen / floor
        table.add_row(
            name, str(batch), str(archs), f"{zen * 1000:.1f} ms", f"{floor * 1000:.1f} ms",
            f"{zen / floor:.3f}", f"{min(ratios):.2f}–{max(ratios):.2f}",
            f"{te_nas * 1000:.0f} ms", f"{te_nas / zen:.0f}×", f"{rate:.1f}",
        )  # fmt: skip
    console.print(table)
    verdict = "meets" if default_ratio <= 1.2 else "MISSES"
    console.print(f"ratio at the CPU default {default_ratio:.3f} ({verdict} the ≤ 1.2× target)")


if __name__ == "__main__":
    main()
