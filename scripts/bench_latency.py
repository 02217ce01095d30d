"""Benchmark: LUT accuracy and build time per space, and the Pixel-1 model's throughput.

For each space it runs `nascli profile-latency` at the default proxy settings (a fresh run
directory, nothing cached) and reads the validation report it writes; then it times the Pixel-1
cost model batched against one architecture at a time, side by side. Targets: ≥ 95% of LUT
predictions within ±10% and Spearman ρ ≥ 0.95 per space; a LUT built in ≤ 10 minutes; Pixel-1
≥ 10,000 architectures per second. On a shared machine one table's score moves from run to
run, so each space is profiled `--repeats` times (fresh each time) and every run is shown.
"alone" is the same table and validation with each layer summed as timed alone (no in-network
lines), chosen and scored the same way, side by side.

    python scripts/bench_latency.py [--threads N] [--repeats 3] [--archs 10000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nascli.cost.pixel1 import Pixel1Model
from nascli.report.machine import machine_line
from nascli.space.arch import sample_indices
from nascli.space.spaces import SPACES


def profile(space: str, threads: int | None, out: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "nascli", "profile-latency", f"space={space}",
               f"out={out}", "cost.cache=false"]  # fmt: skip
    if threads:
        command.append(f"cost.threads={threads}")
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return json.loads((out / "lut.json").read_text())["meta"], seconds


def pixel1_rates(space: str, archs: int) -> tuple[float, float]:
    model = Pixel1Model(SPACES[space])
    indices = sample_indices(SPACES[space], archs, torch.Generator().manual_seed(0))
    start = time.perf_counter()
    model(indices)
    batched = archs / (time.perf_counter() - start)
    few = indices[:500]
    start = time.perf_counter()
    for row in few:
        model(row.unsqueeze(0))
    return batched, len(few) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--archs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lut = Table(title="latency lookup tables (validated on 50 random archs)")
    for column in ("space", "run", "threads", "layers", "build + validate", "±10%", "±5%",
                   "MAPE", "Spearman ρ", "correction", "alone ±10% / ±5%", "repeat ±10%",
                   "probe p10–p90"):  # fmt: skip
        lut.add_column(column, justify="right")
    pixel = Table(title="tunas_pixel1 throughput (archs/s)")
    for column in ("space", "batched", "one at a time", "ratio"):
        pixel.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as folder:
        for space in SPACES:
            for repeat in range(args.repeats):
                out = Path(folder) / f"{space}-{repeat}"
                meta, seconds = profile(space, args.threads, out)
                kind, drift, halves = meta["correction_kind"], meta["drift"], meta["repeatability"]
                r, alone = meta["validation"][kind], meta["alone"]
                layers = len((out / "lut.csv").read_text().splitlines()) - 1
                lut.add_row(
                    space, str(repeat + 1), str(meta["threads"]), f"{layers:,}",
                    f"{seconds:.0f} s", f"{r['within_10']:.0%}", f"{r['within_5']:.0%}",
                    f"{r['mape']:.1%}", f"{r['spearman']:.3f}", kind,
                    f"{alone['within_10']:.0%} / {alone['within_5']:.0%}",
                    f"{halves['within_10']:.0%}",
                    f"{drift['probe_p10_ms']:.2f}–{drift['probe_p90_ms']:.2f} ms",
                )  # fmt: skip
            batched, single = pixel1_rates(space, args.archs)
            pixel.add_row(space, f"{batched:,.0f}", f"{single:,.0f}", f"{batched / single:,.0f}×")
    console = Console(width=160)
    console.print(lut)
    console.print(pixel)
    console.print(machine_line())


if __name__ == "__main__":
    main()
