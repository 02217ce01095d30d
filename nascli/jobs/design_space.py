"""`nascli design-space`: choose the (width multiplier, resolution) space whose architectures
that fit the board's memory have the most computation (MCUNet's TinyNAS stage 1), before
searching it.

Writes `design_space.csv` (every space: width, resolution, samples that fit and their share,
mean / median / 80th-percentile MACs of those, samples each budget rejected; best first),
`plots/macs_cdf.png` (the CDFs of the best and a few other spaces, as MCUNet's Fig. 3) and
`summary.json`; prints the ranking, the timing, and the overrides that select the winner.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig
from rich.table import Table

from nascli.config import configured_space, design_grid, network_settings, run_directory
from nascli.cost.models import make_cost_model
from nascli.errors import NascliError
from nascli.files import write_csv, write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.tables import human
from nascli.search.design import Budgets, rank_design_spaces
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SearchSpace


def kb(value: float | None) -> str:
    return "none" if value is None else f"{value / 1e3:,.0f} kB"


def lut_costs(
    cfg: DictConfig,
    space: SearchSpace,
    base: NetworkSettings,
    widths: list[float],
    resolutions: list[int],
) -> dict[tuple[float, int], Any] | None:
    """The latency table of every (width, resolution) space, from the user cache where
    `nascli profile-latency` stores them; all of them or one line saying how to make the
    missing ones (a table holds one width and resolution), before any work."""
    if cfg.design.max_cost is None:
        return None
    if cfg.cost.path:
        raise NascliError(
            "design-space needs a latency table per space, found in the cache by its settings: "
            "leave cost.path unset"
        )
    tables, missing = {}, []
    for width in widths:
        for resolution in resolutions:
            settings = replace(base, width_multiplier=width, resolution=resolution)
            try:
                tables[(width, resolution)] = make_cost_model(cfg.cost, space, settings)
            except NascliError:
                missing.append((width, resolution))
    if missing:
        shown = ", ".join(f"w{w:g} r{r}" for w, r in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        sweep = (
            f"nascli profile-latency -m space={space.name} "
            f"space.width_multiplier={','.join(sorted({f'{w:g}' for w, _ in missing}))} "
            f"data.resolution={','.join(sorted({str(r) for _, r in missing}, key=int))}"
        )
        raise NascliError(
            f"no latency table for {len(missing)} of the {len(widths) * len(resolutions)} spaces "
            f"({shown}{more}) with these cost settings on this machine; make them with `{sweep}` "
            "(the same data/cost settings)"
        )
    return tables


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    console = RunConsole()
    widths, resolutions = design_grid(cfg)
    space = configured_space(cfg)  # a NAS-RL space's costs are decoded per sample: slower
    given = {name: cfg.budget.get(name) for name in ("params", "macs", "peak_memory")}
    budgets = Budgets(
        cfg.budget.sram, cfg.budget.flash, cfg.cost.name, cfg.design.max_cost, **given
    )
    if not budgets.limits() and budgets.max_cost is None:
        raise NascliError("no budget: choose a board= or set budget.sram=, budget.flash=, "
                          "another budget.* or design.max_cost=")  # fmt: skip
    base = network_settings(cfg)
    tables = lut_costs(cfg, space, base, widths, resolutions) if budgets.cost == "lut" else None
    samples = cfg.design.samples
    note = (
        f"{cfg.board.name}: SRAM {kb(budgets.sram)}, Flash {kb(budgets.flash)} (int8, "
        f"kB = 1,000 B)"
        + "".join(f", {n} ≤ {human(v)}" for n, v in given.items() if v is not None)
        + (f", {budgets.cost} ≤ {budgets.max_cost:g}" if budgets.max_cost is not None else "")
    )
    others = [n for n, v in given.items() if v is not None]  # their rejections get columns
    console.print(
        f"design spaces of {space.title}: {len(widths)} widths × {len(resolutions)} "
        f"resolutions, {samples:,} samples each · {note}",
        soft_wrap=True,
    )
    with console.status("compiling and evaluating the costs of every space"):
        report = rank_design_spaces(
            space, base, widths, resolutions, samples, budgets, seed=cfg.seed, tables=tables
        )
    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "rank": rank + 1,
            "width": r.width,
            "resolution": r.resolution,
            "fit": r.fit,
            "share": r.share,
            "mean_macs": r.mean_macs,
            "median_macs": r.median_macs,
            "top20_macs": r.top20_macs,
            "over_sram": r.over_sram,
            "over_flash": r.over_flash,
            "over_cost": r.over_cost,
            **{f"over_{n}": getattr(r, f"over_{n}") for n in others},
        }
        for rank, r in enumerate(report.ranked)
    ]
    write_csv(out / "design_space.csv", rows)
    table = Table(title="design spaces by mean MACs of the samples that fit", title_justify="left")
    for column in ("#", "width", "res", "fit", "mean MACs", "top 20% above", "over SRAM",
                   "over Flash", "over cost", *(f"over {n}" for n in others)):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows[:10]:
        fits = row["fit"] > 0
        table.add_row(
            str(row["rank"]), f"{row['width']:g}", str(row["resolution"]),
            f"{row['share']:.1%}", human(row["mean_macs"]) if fits else "–",
            human(row["top20_macs"]) if fits else "–", str(row["over_sram"]),
            str(row["over_flash"]), str(row["over_cost"]),
            *(str(row[f"over_{n}"]) for n in others),
        )  # fmt: skip
    console.print(table)
    best = report.ranked[0]
    if best.fit == 0:
        raise NascliError(f"no sample of any space fits {note}: relax the budgets or widen the "
                          "grid (smaller widths, lower resolutions)", exit_code=1)  # fmt: skip
    count = max(0, min(cfg.design.plot, len(report.ranked)))
    if count:
        step = max(1, (len([r for r in report.ranked if r.fit]) - 1) // max(1, count - 1))
        picks = [r for r in report.ranked if r.fit][::step][:count]
        (out / "plots").mkdir(exist_ok=True)
        plots.macs_cdfs(
            out / "plots" / "macs_cdf.png",
            {
                f"w{r.width:g}-r{r.resolution} (mean {human(r.mean_macs)})": report.macs[
                    (r.width, r.resolution)
                ].tolist()
                for r in picks
            },
            note,
        )
    wall = time.perf_counter() - started
    rate = report.evaluations / max(report.evaluate_seconds, 1e-9)
    console.print(
        f"{report.evaluations:,} cost evaluations in {report.evaluate_seconds:.2f} s "
        f"({rate:,.0f}/s) after {report.compile_seconds:.1f} s compiling {len(rows)} spaces; "
        f"{wall:.1f} s in all",
        soft_wrap=True,
    )
    write_json(
        out / "summary.json",
        {
            "command": "design-space",
            "space": space.name,
            "board": cfg.board.name,
            "sram_budget": budgets.sram,
            "flash_budget": budgets.flash,
            "budgets": budgets.limits(),
            "best_width": best.width,
            "best_resolution": best.resolution,
            "best_mean_macs": best.mean_macs,
            "best_share": best.share,
            "samples": samples,
            "spaces": len(rows),
            "compile_seconds": report.compile_seconds,
            "evaluate_seconds": report.evaluate_seconds,
            "wall_seconds": wall,
        },
    )
    where = f"space={cfg.space.name}"
    if space.graph:  # NAS-RL's spaces: their depth, and the strategy that searches them
        where += f" space.layers={space.graph_layers} strategy=nasrl"
    console.print(
        f"best: width ×{best.width:g} at {best.resolution} px ({best.share:.1%} of samples fit, "
        f"mean {human(best.mean_macs)} MACs). Search it with: nascli search "
        f"{where} space.width_multiplier={best.width:g} "
        f"data.resolution={best.resolution} · wrote {out}/design_space.csv, summary.json, "
        "plots/",
        soft_wrap=True,
        markup=False,
    )
