"""Rich tables for the terminal. The rows come from plain functions so files can reuse them."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from nascli.cost.analytic import NetworkCost
from nascli.space.arch import Architecture
from nascli.space.network import Network

LAYER_COLUMNS = (
    ("name", "layer"),
    ("type", "type"),
    ("kernel", "k"),
    ("expansion", "exp"),
    ("se", "SE"),
    ("stride", "s"),
    ("in_channels", "in"),
    ("out_channels", "out"),
    ("out_resolution", "res"),
    ("params", "params"),
    ("macs", "MACs"),
    ("sram_bytes", "SRAM"),
)


def layer_rows(network: Network, cost: NetworkCost) -> list[dict[str, Any]]:
    """One plain dict per layer: what the per-layer table and `arch.json` show."""
    rows = []
    layers = zip(network.layers, cost.layers, cost.layer_sram_bytes, strict=True)
    for layer, layer_cost, layer_sram in layers:
        kind = layer.kind + ("+x" if layer.residual else "")
        kernel: Any = layer.kernel if layer.kind in ("conv", "sepconv", "ibn") else None
        if layer.kernel_width and layer.kernel_width != layer.kernel:
            kernel = f"{layer.kernel}x{layer.kernel_width}"
        sources = [network.layers[p].name if p >= 0 else "image" for p in layer.inputs]
        if sources:  # NAS-RL: the concatenated inputs
            short = [name.removesuffix(".0").removeprefix("layer") for name in sources]
            kind += " ← " + "+".join(short)  # layer numbers
        rows.append(
            {
                "name": layer.name,
                "type": kind,
                "kernel": kernel,
                "expansion": layer.expansion if layer.kind == "ibn" else None,
                "se": bool(layer.se_channels),
                "stride": layer.stride,
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "out_resolution": layer.out_resolution,
                "act": layer.act,
                "mid_channels": layer.mid_channels or None,
                "se_channels": layer.se_channels or None,
                "params": layer_cost.params,
                "macs": layer_cost.macs,
                "sram_bytes": layer_sram,
            }
        )
        if sources:
            rows[-1]["inputs"] = sources
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "✓" if value else ""
    return str(value)


def human(value: float, unit: str = "", digits: int = 3) -> str:
    """1234567 -> '1.23M' (`digits` significant digits)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}{unit}"
    return f"{value:.{digits}g}{unit}"


def layer_table(network: Network, cost: NetworkCost, title: str) -> Table:
    table = Table(title=title, show_footer=True, header_style="bold")
    table.caption = (
        "+x: residual · ← inputs, concatenated · res: output resolution · MACs: "
        "multiply-accumulates · SRAM: int8 activation bytes the layer needs (MCUNet's "
        "convention; the network's is the maximum)"
    )
    totals = {
        "name": "total",
        "params": human(cost.params),
        "macs": human(cost.macs),
        "sram_bytes": f"max {human(cost.sram_bytes, 'B')}",
    }
    for key, header in LAYER_COLUMNS:
        text = key in ("name", "type")
        table.add_column(
            header, footer=totals.get(key, ""), justify="left" if text else "right", no_wrap=text
        )
    for row in layer_rows(network, cost):
        row |= {"params": human(row["params"]), "macs": human(row["macs"])}
        row["sram_bytes"] = human(row["sram_bytes"], "B") if row["sram_bytes"] else ""
        table.add_row(*(_cell(row[key]) for key, _ in LAYER_COLUMNS))
    return table


def result_table(
    arch: Architecture,
    title: str,
    cost: NetworkCost,
    cost_name: str,
    value: float,
    units: str,
    target: float | None,
    relation: str = "target",
) -> Table:
    """The rows every strategy reports for its architecture (callers add their own)."""
    table = Table(title="searched architecture", title_justify="left", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # indices a user copies: folded whole, never cut short
    table.add_row("space", title)
    table.add_row("indices", arch.text)
    where = "" if not target else f" ({value / target - 1:+.1%} vs {relation} {target:g} {units})"
    table.add_row(f"cost ({cost_name})", f"{value:.4g} {units}{where}")
    table.add_row("params · MACs", f"{human(cost.params)} · {human(cost.macs)}")
    return table


def output_console(width: int) -> Console:
    """The terminal's console; without one (a pipe, a file), one `width` columns wide, so that
    tables are not squeezed into 80 columns and no name a user copies is cut or split."""
    console = Console()
    return console if console.is_terminal else Console(width=width)
