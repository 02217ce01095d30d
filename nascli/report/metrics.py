"""Where a run's scalars go besides its CSV log: TensorBoard event files, when `tensorboard=true`
and the `tensorboard` package is installed (`pip install 'nascli[tensorboard]'`).

Every loop that logs rows (the search driver's `search_log.csv`, the trainer's `metrics.csv`)
hands each row to a `Scalars` sink as it logs it; the sink writes every numeric column of the
row at the row's position. The CSV stays the record; the events are for watching a run live.
A resumed run purges the events logged after the position it resumes from, so a unit done
again is not shown twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nascli.errors import NascliError

#: The events' folder inside a run directory.
EVENTS = "tensorboard"


def tensorboard_missing() -> str | None:
    """Why `tensorboard=true` cannot work here, or None when it can."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return (
            "tensorboard=true needs the tensorboard package: pip install 'nascli[tensorboard]' "
            "(or leave tensorboard=false; the CSV logs are written either way)"
        )
    return None


class Scalars:
    """Numeric columns of log rows as TensorBoard scalars, at `step`: one writer per run, in
    `<run>/tensorboard/`; `resume_from` purges what was logged after that position."""

    def __init__(self, run_dir: Path, resume_from: int = 0):
        missing = tensorboard_missing()
        if missing:
            raise NascliError(missing)
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_from + 1 if resume_from else None
        self.writer = SummaryWriter(str(run_dir / EVENTS), purge_step=purge)

    def write(self, row: dict[str, Any], step: int) -> None:
        for name, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NoScalars:
    """The sink when `tensorboard=false`: nothing beyond the CSV."""

    def write(self, row: dict[str, Any], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def scalars(enabled: bool, run_dir: Path | None, resume_from: int = 0) -> Scalars | NoScalars:
    """The run's sink: TensorBoard events in `run_dir` when `enabled` (and a run directory is
    written by this process), otherwise nothing."""
    if enabled and run_dir is not None:
        return Scalars(run_dir, resume_from)
    return NoScalars()
