"""`nascli compare RUN_DIR...`: one table (and one plot, and the table as CSV beside it) over
search, random-baseline, retrain and profile-latency runs, from the common fields of the
`summary.json` each writes (`nascli.report.summary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nascli.files import write_csv
from nascli.report import plots
from nascli.report.summary import read_summary
from nascli.report.tables import human


def read_run(path: Path) -> dict[str, Any]:
    """The comparable facts of one run directory: its summary's common fields."""
    summary = read_summary(path)
    return {
        "run": str(path),
        "kind": summary.command,
        "strategy": summary.strategy or summary.command,
        "space": summary.space,
        "indices": summary.indices,
        "target": summary.target,
        "cost": summary.cost,
        "cost_units": summary.cost_units or "",
        "params": summary.params,
        "macs": summary.macs,
        "valid_top1": summary.valid_top1,
        # A weight-shared search: the supernet's accuracy on the reward batches at the end (not
        # a trained network's), beside chance.
        "supernet_top1": summary.supernet_top1,
        "chance_top1": summary.chance_top1,
        "test_top1": summary.test_top1,
        "seconds": summary.seconds,
        "images": summary.images,
    }


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "%":
        return f"{value:.2%}"
    if kind == "human":
        return human(value)
    if kind == "s":
        return f"{value:,.0f} s"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.4g}"


def _supernet(row: dict[str, Any]) -> str:
    if row["supernet_top1"] is None:
        return "–"
    chance = row["chance_top1"]
    return _fmt(row["supernet_top1"], "%") + (f" (chance {chance:.0%})" if chance else "")


def compare(runs: list[Path], plot: Path | None, console: Console) -> list[dict[str, Any]]:
    rows = [read_run(path) for path in runs]
    # A retrain of a searched architecture inherits that search's cost for the plot.
    by_indices = {(r["space"], r["indices"]): r for r in rows if r["cost"] is not None}
    for row in rows:
        source = by_indices.get((row["space"], row["indices"]))
        if row["cost"] is None and source is not None:
            row["cost"], row["cost_units"] = source["cost"], source["cost_units"]
            row["target"] = source["target"]
    table = Table(title="runs", title_justify="left")
    columns = ("run", "strategy", "space", "target", "cost", "params", "MACs", "valid top1",
               "supernet reward top1", "test top1", "time", "images")  # fmt: skip
    for column in columns:  # the run, strategy and space a user copies: never split
        whole = column in ("run", "strategy", "space")
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=whole)
    for r in rows:
        units = f" {r['cost_units']}" if r["cost"] is not None else ""
        table.add_row(
            Path(r["run"]).name or r["run"], r["strategy"], r["space"] or "–",
            _fmt(r["target"]), _fmt(r["cost"]) + units, _fmt(r["params"], "human"),
            _fmt(r["macs"], "human"), _fmt(r["valid_top1"], "%"), _supernet(r),
            _fmt(r["test_top1"], "%"),
            _fmt(r["seconds"], "s"), _fmt(r["images"], "int"),
        )  # fmt: skip
    console.print(table)
    if plot is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_csv(plot.with_suffix(".csv"), rows)
        console.print(f"wrote {plot.with_suffix('.csv')}")
    plotted = [
        r for r in rows if r["cost"] is not None and (r["test_top1"] or r["valid_top1"]) is not None
    ]
    if plot is not None and plotted:
        plot.parent.mkdir(parents=True, exist_ok=True)
        targets = {r["target"] for r in plotted if r["target"] is not None}
        plots.accuracy_vs_cost(
            plot,
            [r["cost"] for r in plotted],
            [r["test_top1"] if r["test_top1"] is not None else r["valid_top1"] for r in plotted],
            plotted[0]["cost_units"],
            targets.pop() if len(targets) == 1 else None,
            labels=[f"{r['strategy']}: {Path(r['run']).name}" for r in plotted],
        )
        console.print(f"wrote {plot} (test top-1 where retrained, else valid)")
    return rows
