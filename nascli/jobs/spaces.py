"""`nascli spaces`: the search spaces at a glance."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.table import Table

from nascli.report.tables import output_console
from nascli.space.references import references_in
from nascli.space.spaces import ALL_SPACES


def spaces_table() -> Table:
    table = Table(title="Search spaces (TuNAS; NAS-RL)", header_style="bold")
    table.add_column("space", no_wrap=True)
    table.add_column("decisions", justify="right", min_width=9)
    table.add_column("indices length", justify="right")
    table.add_column("log10 size", justify="right")
    table.add_column("references", no_wrap=True)  # names a user copies: never split
    for space in ALL_SPACES.values():
        table.add_row(
            f"{space.name}\n[dim]{space.title}[/dim]",
            str(space.num_searched),
            str(space.num_decisions),
            f"{space.log10_size:.2f}",
            "\n".join(references_in(space)) or "-",
        )
    table.caption = (
        "decisions: choices with more than one option; the indices also hold single-choice "
        "nodes. log10 size: log10 of the product of all decision sizes."
    )
    return table


def run(cfg: DictConfig) -> None:
    output_console(100).print(spaces_table())
