"""One driver for the iterative search strategies: resume, the loop, progress, the log file,
checkpoints and signals. A strategy is a `Strategy`: its state and one unit of work at a time
(a TuNAS step, a Zen-NAS iteration, a random candidate trained by the `Evaluator`); the driver
does the rest the same way for all of them. A unit that trains (and checkpoints) by itself may
raise the trainer's `Interrupted`: the driver then writes its own checkpoint and stops too.

The checkpoint (`last.pt`) holds the run's fingerprint, the strategy's state, how many log rows
it covers and the seconds spent. `search_log.csv` is appended with the rows since the last
checkpoint just before it (a long search does not rewrite its whole log every time), and a
resumed run cuts the file back to the rows its checkpoint covers; the strategy's own tables are
rewritten with every checkpoint.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from rich.console import Console

from nascli.errors import Stopped
from nascli.files import LogFile, write_csv
from nascli.report.metrics import scalars
from nascli.train.checkpoint import load_checkpoint, save_checkpoint
from nascli.train.engine import Interrupted, progress_bar, stop_requests


class Strategy(ABC):
    """What the driver needs of a search strategy."""

    #: What one unit of work is called in messages.
    unit = "step"
    log_every = 1
    checkpoint_every = 0  # units between checkpoints (0: only at the end and on a signal)

    @property
    @abstractmethod
    def position(self) -> int:
        """Units done so far."""

    @property
    @abstractmethod
    def total(self) -> int:
        """Units in the whole run."""

    @abstractmethod
    def advance(self) -> Any:
        """Do one unit of work; what it returns is passed to `log_row`."""

    @abstractmethod
    def log_row(self, record: Any, seconds: float) -> dict[str, Any] | None:
        """The `search_log.csv` row after this unit, or None when this unit is not logged."""

    @abstractmethod
    def status(self, row: dict[str, Any]) -> str:
        """The progress line's status, from the last log row."""

    @abstractmethod
    def state(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None: ...

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Other CSV files (name -> rows) written with every checkpoint."""
        return {}


def drive(
    strategy: Strategy,
    out: Path,
    identity: dict[str, Any],
    console: Console,
    header: str,
    *,
    writer: bool = True,
    agreed_stop: Callable[[int], int] = lambda signum: signum,
    tensorboard: bool = False,
) -> tuple[list[dict[str, Any]], float]:
    """Run `strategy` to its end in `out`, resuming from `out/last.pt` when it is there, and
    return the log rows and the seconds spent in `advance` (over every resumed part).

    `writer`: this process writes the files (rank 0 under torchrun). `agreed_stop`: the signal
    every rank agrees to stop on (a reduction over ranks), given this rank's (0: none).
    `tensorboard`: each log row's numbers also as TensorBoard scalars at the unit's position.
    Raises `Stopped` after the checkpoint when a signal asked to stop."""
    checkpoint = out / "last.pt"
    log = LogFile(out / "search_log.csv")
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    unit = strategy.unit
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, identity)
        strategy.load_state(state["search"])
        seconds = state["seconds"]
        if "log" in state:  # a checkpoint that carried the whole log, before `log_rows`
            rows = state["log"]
            if writer:
                log.rewrite(rows)
        else:
            rows = log.resume(state["log_rows"], cut=writer)
        console.print(f"resuming from {unit} {strategy.position:,} of {strategy.total:,}")
    console.print(header, soft_wrap=True)
    sink = scalars(tensorboard and writer, out, strategy.position)

    def save() -> None:
        if not writer:
            return
        sink.flush()
        log.append(rows)  # before the checkpoint that counts them: a kill between loses none
        state = {"search": strategy.state(), "log_rows": len(rows), "seconds": seconds}
        save_checkpoint(checkpoint, {"fingerprint": identity, **state})
        for name, table in strategy.tables().items():
            write_csv(out / name, table)

    with closing(sink), stop_requests() as requested, progress_bar(console, writer) as progress:
        task = progress.add_task(
            "search", total=strategy.total, completed=strategy.position, status=""
        )
        while strategy.position < strategy.total:
            tick = time.perf_counter()
            try:
                record = strategy.advance()
            except Interrupted as inner:  # a unit that trains has checkpointed itself
                seconds += time.perf_counter() - tick
                save()
                raise Stopped(inner.signum, f"in {unit} {strategy.position}", out) from None
            seconds += time.perf_counter() - tick
            row = strategy.log_row(record, seconds)
            if row is not None:
                rows.append(row)
                sink.write(row, strategy.position)
            status = strategy.status(rows[-1]) if rows else ""
            progress.update(task, completed=strategy.position, refresh=True, status=status)
            stop = agreed_stop(requested.signum)
            every = strategy.checkpoint_every
            if (every > 0 and strategy.position % every == 0) or stop:
                save()
            if stop:
                raise Stopped(stop, f"at {unit} {strategy.position}", out)
    save()
    return rows, seconds
