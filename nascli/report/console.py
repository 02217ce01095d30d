"""The console commands print through: rich on the terminal (or plain text without one), and
every printed line also, as plain text, to the `nascli` logger, which Hydra's job logging writes
to the run's `<command>.log`. So the log file of a run holds what the run said."""

from __future__ import annotations

import io
import logging
from typing import Any

from rich.console import Console

LOG = logging.getLogger("nascli")


class RunConsole(Console):
    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*objects, **kwargs)
        if self.quiet or not LOG.isEnabledFor(logging.INFO):
            return
        plain = Console(file=io.StringIO(), width=max(self.width, 120), color_system=None)
        plain.print(*objects, **kwargs)
        text = plain.file.getvalue().rstrip()
        if text:
            LOG.info(text)
