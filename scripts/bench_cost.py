"""Benchmark: compiled costs per second, batched, against decoding each architecture.

Target: ≥ 500,000 architectures per second on one core for the analytic costs (params, MACs,
peak memory) and the LUT, with the values identical to the decode path (checked on the same
architectures in this run). The decode column is what each cost did before it was compiled:
decode the architecture to layers, then count (or look up) layer by layer. The LUT is a table of
made-up times covering every layer of the space (the speed does not depend on the values);
Pixel-1 is TuNAS's model, compiled from the start, shown for comparison.

    python scripts/bench_cost.py [--archs 100000] [--decode-archs 2000] [--resolution 224]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from rich.console import Console
from rich.table import Table

from nascli.cost.analytic import network_cost
from nascli.cost.lut import NO_CORRECTION, LookupTable, distinct_layers
from nascli.cost.models import AnalyticCost, LutCost, Pixel1Cost
from nascli.report.machine import cpu_model
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES

TARGET_PER_SECOND = 500_000
FIELDS = {"params": "params", "macs": "macs", "peak_memory": "peak_memory_bytes"}


def rate(function, count: int, repeats: int = 3) -> float:
    """The best of `repeats` timings, as architectures per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return count / best


def decode_path(cost_name, space, rows, settings, lut: LookupTable) -> list[float]:
    """Each architecture decoded to layers, then counted (or looked up) layer by layer."""
    if cost_name == "lut":
        return [lut.predict(decode(space, r, settings)) for r in rows]
    field = FIELDS[cost_name]
    return [float(getattr(network_cost(decode(space, r, settings)), field)) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=100_000, help="batch size of the compiled")
    parser.add_argument("--decode-archs", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = NetworkSettings(resolution=args.resolution)
    generator = torch.Generator().manual_seed(0)

    table = Table(title=f"costs per second, 1 thread, {args.resolution}×{args.resolution}")
    columns = ("space", "cost", "compile s", "compiled archs/s", "decode archs/s", "ratio")
    for column in (*columns, "same values", "≥ 500k/s"):
        table.add_column(column, justify="left" if column in ("space", "cost") else "right")
    for name, space in SPACES.items():
        batch = sample_indices(space, args.archs, generator)
        few = batch[: args.decode_archs]
        rows = [tuple(r) for r in few.tolist()]
        rng = random.Random(0)
        lut = LookupTable(
            {k: rng.uniform(0.01, 2) for k in distinct_layers(space, settings)},
            {},
            {**NO_CORRECTION, "per_layer": 0.01},
        )
        for cost_name in (*FIELDS, "lut", "tunas_pixel1"):
            start = time.perf_counter()
            if cost_name == "lut":
                model = LutCost(space, settings, lut)
            elif cost_name == "tunas_pixel1":
                model = Pixel1Cost(space, settings)
            else:
                model = AnalyticCost(space, settings, cost_name)
            compile_s = time.perf_counter() - start
            fast = rate(lambda: model(batch), len(batch))  # noqa: B023 (called right here)
            if cost_name == "tunas_pixel1":
                table.add_row(
                    name, cost_name, f"{compile_s:.2f}", f"{fast:,.0f}", "–", "–", "–", ""
                )
                continue
            start = time.perf_counter()
            reference = decode_path(cost_name, space, rows, settings, lut)
            slow = len(rows) / (time.perf_counter() - start)
            got = model(few)
            if cost_name == "lut":  # float sums in another order
                same = torch.allclose(got, torch.tensor(reference, dtype=torch.float64))
            else:
                same = got.tolist() == reference
            table.add_row(
                name, cost_name, f"{compile_s:.2f}", f"{fast:,.0f}", f"{slow:,.0f}",
                f"{fast / slow:,.0f}×", "yes" if same else "NO",
                "yes" if fast >= TARGET_PER_SECOND else "NO",
            )  # fmt: skip
    console = Console(width=140)  # a log file keeps the table whole
    console.print(table)
    console.print(f"{cpu_model()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
