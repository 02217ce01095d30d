"""Benchmark: analytic params/MACs/peak memory per second, against measuring a built module.

Target: ≥ 2,000 architectures per second on one core for every space. The reference column
builds each module and counts params and MACs with torch.utils.flop_counter, the way one would
without an analytic model; the ratio is measured side by side in this run.

    python scripts/bench_cost.py [--archs 2000] [--reference-archs 10] [--resolution 224]
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from nascli.cost.analytic import count_macs, count_params, network_cost
from nascli.nn.builder import build_model
from nascli.report.machine import cpu_model
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES

TARGET_PER_SECOND = 2000


def analytic_rate(space, archs, settings) -> float:
    start = time.perf_counter()
    for indices in archs:
        network_cost(decode(space, indices, settings))
    return len(archs) / (time.perf_counter() - start)


def module_rate(space, archs, settings) -> float:
    start = time.perf_counter()
    for indices in archs:
        model = build_model(decode(space, indices, settings))
        count_params(model)
        count_macs(model, (3, settings.resolution, settings.resolution))
    return len(archs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=2000)
    parser.add_argument("--reference-archs", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = NetworkSettings(resolution=args.resolution)
    generator = torch.Generator().manual_seed(0)

    table = Table(title=f"analytic cost metrics, 1 thread, {args.resolution}×{args.resolution}")
    for column in ("space", "analytic archs/s", "module archs/s", "ratio", "≥ 2000/s"):
        table.add_column(column, justify="left" if column == "space" else "right")
    for name, space in SPACES.items():
        archs = [tuple(r) for r in sample_indices(space, args.archs, generator).tolist()]
        fast = analytic_rate(space, archs, settings)
        slow = module_rate(space, archs[: args.reference_archs], settings)
        table.add_row(
            name, f"{fast:,.0f}", f"{slow:,.2f}", f"{fast / slow:,.0f}×",
            "yes" if fast >= TARGET_PER_SECOND else "NO",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"{cpu_model()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
